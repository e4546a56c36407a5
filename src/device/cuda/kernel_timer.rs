//! Per-kernel GPU times for `--profile`: with timing on, every launch is bracketed by two CUDA
//! events on the stream; the pairs are resolved into per-kernel totals in batches (which waits
//! for the stream, so it happens only while profiling) and when the table is taken.

use std::collections::HashMap;

use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

use super::{CudaDevice, driver_error};
use crate::error::Result;

/// Pairs kept before they are resolved: bounds the events alive and the waits on the stream.
const RESOLVE_EVERY: usize = 4096;

#[derive(Default)]
pub(crate) struct KernelTimer {
    pending: Vec<(&'static str, CudaEvent, CudaEvent)>,
    spare: Vec<CudaEvent>,
    totals: HashMap<&'static str, (u64, f64)>,
}

/// One kernel's launches and GPU time.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KernelTime {
    pub kernel: String,
    pub launches: u64,
    pub total_ms: f64,
}

impl KernelTimer {
    fn event(&mut self, device: &CudaDevice) -> Result<CudaEvent> {
        match self.spare.pop() {
            Some(e) => Ok(e),
            None => device
                .stream()
                .context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver_error("create event")),
        }
    }

    /// Waits for the recorded pairs and adds their times to the totals.
    fn resolve(&mut self) -> Result<()> {
        if let Some((_, _, last)) = self.pending.last() {
            last.synchronize()
                .map_err(driver_error("wait for a kernel timing event"))?;
        }
        for (name, start, stop) in self.pending.drain(..) {
            let ms = start.elapsed_ms(&stop).map_err(driver_error("kernel timing"))? as f64;
            let entry = self.totals.entry(name).or_default();
            entry.0 += 1;
            entry.1 += ms;
            self.spare.push(start);
            self.spare.push(stop);
        }
        Ok(())
    }
}

impl CudaDevice {
    /// Turns per-kernel timing on or off (off by default: it adds two events per launch).
    pub fn set_kernel_timing(&self, on: bool) {
        let mut timer = self.kernel_timer.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            timer.get_or_insert_with(KernelTimer::default);
        } else {
            *timer = None;
        }
    }

    /// The per-kernel totals so far, largest first; clears them. Waits for the stream.
    pub fn take_kernel_times(&self) -> Result<Vec<KernelTime>> {
        let mut guard = self.kernel_timer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(timer) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        timer.resolve()?;
        let mut rows: Vec<KernelTime> = timer
            .totals
            .drain()
            .map(|(kernel, (launches, total_ms))| KernelTime {
                kernel: kernel.to_string(),
                launches,
                total_ms,
            })
            .collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        Ok(rows)
    }

    /// Runs `launch` (one kernel launch on the stream), timed when timing is on.
    pub(crate) fn timed_launch(&self, kernel: &'static str, launch: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut guard = self.kernel_timer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(timer) = guard.as_mut() else {
            drop(guard);
            return launch();
        };
        let (start, stop) = (timer.event(self)?, timer.event(self)?);
        start.record(self.stream()).map_err(driver_error("record event"))?;
        launch()?;
        stop.record(self.stream()).map_err(driver_error("record event"))?;
        timer.pending.push((kernel, start, stop));
        if timer.pending.len() >= RESOLVE_EVERY {
            timer.resolve()?;
        }
        Ok(())
    }
}
