//! The CUDA device runtime on a GPU: copies, the caching allocator, copy-on-write, event timers,
//! one device per ordinal. These tests need a CUDA GPU: `cargo test --release -- --include-ignored`.

use std::sync::{Arc, Mutex, MutexGuard};

use lrc::device::cuda::conv::conv2d_forward;
use lrc::device::cuda::{ConvAlgo, CudaDevice, CudaStorage, GpuTimer, PinnedUpload};
use lrc::ops::conv::ConvGeom;

fn device() -> Arc<CudaDevice> {
    CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"))
}

/// The tests share one device, whose allocator counters and poisoning flag they observe: one
/// at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pinned_uploads_land_intact_while_their_buffers_are_reused() {
    let _serial = serial();
    let device = device();
    // Two buffers for twelve uploads queued without a wait in between, each larger than the last
    // (so buffers are also freed and grown): every reuse must wait for the copy before it.
    let mut upload = PinnedUpload::new(&device, 2).unwrap();
    let batches: Vec<Vec<f32>> = (0..12)
        .map(|i| (0..(1 << 20) + 4099 * i).map(|j| (i * 1_000_003 + j) as f32).collect())
        .collect();
    let on_device: Vec<CudaStorage> = batches.iter().map(|b| upload.upload(b).unwrap()).collect();
    for (i, (b, d)) in batches.iter().zip(&on_device).enumerate() {
        assert!(d.to_host().unwrap() == *b, "upload {i} did not land intact");
    }
    assert!(upload.upload(&[]).unwrap().is_empty());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn data_survives_the_round_trip() {
    let _serial = serial();
    let device = device();
    let data: Vec<f32> = (0..100_003).map(|i| (i as f32).sin()).collect();
    let s = CudaStorage::from_host(&device, &data).unwrap();
    assert_eq!(s.len(), data.len());
    assert_eq!(s.to_host().unwrap(), data);
    let empty = CudaStorage::from_host(&device, &[]).unwrap();
    assert!(empty.is_empty());
    assert!(empty.to_host().unwrap().is_empty());
    assert_eq!(
        CudaStorage::full(&device, 5, 2.5).unwrap().to_host().unwrap(),
        vec![2.5; 5]
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn opening_an_ordinal_twice_gives_one_device() {
    let _serial = serial();
    let a = device();
    let b = device();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(CudaDevice::open(1000).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn poisoned_buffers_are_nan_until_written() {
    let _serial = serial();
    let device = device();
    device.set_poison_fresh_buffers(true);
    let s = CudaStorage::alloc(&device, 1000).unwrap();
    assert!(s.to_host().unwrap().iter().all(|v| v.is_nan()));
    device.set_poison_fresh_buffers(false);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn writes_through_a_clone_copy_first() {
    let _serial = serial();
    let device = device();
    let a = CudaStorage::from_host(&device, &[1.0, 2.0, 3.0]).unwrap();
    let mut b = a.clone();
    assert!(a.shares_buffer(&b));
    let before = b.device_ptr();
    let after = b.device_ptr_mut().unwrap();
    assert_ne!(before, after, "a shared block must be copied before a write");
    assert!(!a.shares_buffer(&b));
    assert_eq!(b.to_host().unwrap(), vec![1.0, 2.0, 3.0]);
    let mut c = CudaStorage::from_host(&device, &[4.0]).unwrap();
    let p = c.device_ptr();
    assert_eq!(c.device_ptr_mut().unwrap(), p, "an unshared block is written in place");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_repeated_step_allocates_nothing_new() {
    let _serial = serial();
    let device = device();
    let g = ConvGeom {
        n: 2,
        c_in: 8,
        h: 33,
        w: 31,
        c_out: 16,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let x = CudaStorage::full(&device, g.n * g.c_in * g.h * g.w, 0.5).unwrap();
    let w = CudaStorage::full(&device, g.c_out * g.c_in * 9, 0.25).unwrap();
    let step = || {
        let runnable = ConvAlgo::ALL
            .into_iter()
            .filter(|a| a.runs_on(device.compute_capability()));
        for algo in runnable {
            let y = conv2d_forward(&g, &x, &w, None, algo).unwrap();
            let (dw, db) = lrc::device::cuda::conv::conv2d_backward_weight(&g, &x, &y, algo).unwrap();
            drop((y, dw, db));
        }
    };
    step();
    let before = device.alloc_stats();
    step();
    step();
    let after = device.alloc_stats();
    assert_eq!(
        after.device_allocations, before.device_allocations,
        "steps after the first must be served from the cache"
    );
    assert!(after.cache_hits > before.cache_hits);
    device.empty_cache().unwrap();
    let emptied = device.alloc_stats();
    assert_eq!(emptied.bytes_cached, 0);
    assert!(emptied.device_frees > 0);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_timer_measures_queued_work() {
    let _serial = serial();
    let device = device();
    let timer = GpuTimer::new(&device).unwrap();
    let g = ConvGeom {
        n: 8,
        c_in: 64,
        h: 64,
        w: 64,
        c_out: 64,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let x = CudaStorage::full(&device, g.n * g.c_in * g.h * g.w, 1.0).unwrap();
    let w = CudaStorage::full(&device, g.c_out * g.c_in * 9, 1.0).unwrap();
    timer.start().unwrap();
    let y = conv2d_forward(&g, &x, &w, None, ConvAlgo::Fp32Tiled).unwrap();
    timer.stop().unwrap();
    let ms = timer.elapsed_ms().unwrap();
    assert!(ms > 0.0 && ms < 10_000.0, "{ms} ms");
    // Interior outputs sum 64 channels x 9 taps of 1 x 1.
    let host = y.to_host().unwrap();
    assert_eq!(host[g.w + 1], 576.0);
}
