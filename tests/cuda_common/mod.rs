//! The GPU for one test at a time. The process has one device per ordinal, and its convolution
//! version, allocator counters and transfer counters are settings and readings of that one
//! device, while the tests of a file run in parallel threads: a test that sets or counts them
//! holds the device through [`TestDevice`], so that a neighbour cannot change the kernels under
//! it or add to what it counts.

#![allow(dead_code)]

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use lrc::device::cuda::{ConvAlgo, CudaDevice};

static DEVICE_LOCK: Mutex<()> = Mutex::new(());

/// The device, held alone until dropped; the default convolution version is restored then, also
/// when the test failed.
pub struct TestDevice {
    device: Arc<CudaDevice>,
    _alone: MutexGuard<'static, ()>,
}

impl Deref for TestDevice {
    type Target = Arc<CudaDevice>;
    fn deref(&self) -> &Arc<CudaDevice> {
        &self.device
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.device.set_conv_algo(ConvAlgo::DEFAULT);
    }
}

/// GPU 0, held alone, with `algo` for the convolution ops and every fresh output buffer filled
/// with NaN (so that an element a kernel fails to write shows up).
pub fn exclusive_device(algo: ConvAlgo) -> TestDevice {
    // A test that failed while holding the lock leaves it poisoned; the device is still sound.
    let alone = DEVICE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let device = CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    device.set_poison_fresh_buffers(true);
    device.set_conv_algo(algo);
    TestDevice { device, _alone: alone }
}
