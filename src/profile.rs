//! Profiling: NVTX ranges for nsys, and a host-side time table for `--profile`.
//!
//! Every op launch and every training phase opens a [`Range`]. The NVTX push/pop is a call
//! through a function pointer that the NVTX library leaves empty unless a tool (nsys, ncu) is
//! attached; with none attached a range costs about 45 ns, most of it the nvtx crate copying
//! the name into a C string (measured in docs/PROFILING.md; ~10 us per training step). With
//! `--profile` the ranges also add their wall time to a table printed at the end of the run.
//! The table is process-wide, like NVTX itself; it is off unless [`enable`] was called.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::device::Device;
use crate::device::cuda::KernelTime;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Keyed by (name, is_backward).
type Table = HashMap<(&'static str, bool), (u64, Duration)>;
static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Turns the host time table on or off (NVTX ranges are always emitted).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An open range; closes on drop.
pub struct Range {
    name: &'static str,
    backward: bool,
    start: Option<Instant>,
}

/// Opens a named range (an NVTX push, and a table entry when profiling is enabled).
pub fn range(name: &'static str) -> Range {
    nvtx::range_push!("{}", name);
    Range {
        name,
        backward: false,
        start: enabled().then(Instant::now),
    }
}

/// Opens the range of an op's backward pass, shown as `{name}.bwd`.
pub fn backward_range(name: &'static str) -> Range {
    nvtx::range_push!("{}.bwd", name);
    Range {
        name,
        backward: true,
        start: enabled().then(Instant::now),
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        nvtx::range_pop!();
        if let Some(start) = self.start {
            let elapsed = start.elapsed();
            let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let entry = table
                .get_or_insert_with(HashMap::new)
                .entry((self.name, self.backward))
                .or_default();
            entry.0 += 1;
            entry.1 += elapsed;
        }
    }
}

/// One row of the time table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProfileRow {
    pub name: String,
    pub calls: u64,
    pub total_ms: f64,
    pub mean_us: f64,
}

/// The rows collected so far, largest total first; clears the table.
pub fn take_table() -> Vec<ProfileRow> {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<ProfileRow> = table
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|((name, backward), (calls, total))| ProfileRow {
            name: if backward {
                format!("{name}.bwd")
            } else {
                name.to_string()
            },
            calls,
            total_ms: total.as_secs_f64() * 1e3,
            mean_us: total.as_secs_f64() * 1e6 / calls.max(1) as f64,
        })
        .collect();
    rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    rows
}

/// The table as text. `phase.*` rows (training phases) nest the op rows, so shares are given
/// relative to `reference` (e.g. the `phase.step` total) when present.
pub fn format_table(rows: &[ProfileRow], reference: Option<&str>) -> String {
    let base = reference
        .and_then(|r| rows.iter().find(|row| row.name == r))
        .map(|r| r.total_ms)
        .unwrap_or_else(|| {
            rows.iter()
                .filter(|r| !r.name.starts_with("phase."))
                .map(|r| r.total_ms)
                .sum()
        });
    let mut out = format!(
        "{:<28} {:>9} {:>12} {:>12} {:>8}\n",
        "range", "calls", "total ms", "mean us", "share"
    );
    for r in rows {
        out += &format!(
            "{:<28} {:>9} {:>12.2} {:>12.1} {:>7.1}%\n",
            r.name,
            r.calls,
            r.total_ms,
            r.mean_us,
            100.0 * r.total_ms / base.max(1e-12)
        );
    }
    out
}

/// Turns `--profile` on for a run on `device`: the host table, and on a GPU the per-kernel
/// CUDA-event times.
pub fn enable_for(on: bool, device: &Device) {
    enable(on);
    if let Device::Cuda(d) = device {
        d.set_kernel_timing(on);
    }
}

/// Prints the table of a training command, shares relative to `phase.step`, when profiling
/// was enabled (`--profile`); on a GPU also the kernels' table: launches and GPU time per
/// kernel, their sum against the steps' wall time (the rest is the GPU waiting for the host).
pub fn print_training_table(device: &Device) {
    if !enabled() {
        return;
    }
    let rows = take_table();
    println!("{}", format_table(&rows, Some("phase.step")));
    let Device::Cuda(d) = device else { return };
    match d.take_kernel_times() {
        Ok(kernels) if !kernels.is_empty() => {
            let step_ms = rows.iter().find(|r| r.name == "phase.step").map(|r| r.total_ms);
            println!("{}", format_kernel_table(&kernels, step_ms));
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: no kernel times: {e}"),
    }
}

/// The per-kernel table: launches, total and mean GPU time, share of all kernel time.
pub fn format_kernel_table(kernels: &[KernelTime], step_wall_ms: Option<f64>) -> String {
    let gpu_ms: f64 = kernels.iter().map(|k| k.total_ms).sum();
    let mut out = format!(
        "{:<36} {:>9} {:>12} {:>12} {:>8}\n",
        "kernel (CUDA events)", "launches", "total ms", "mean us", "share"
    );
    for k in kernels {
        out += &format!(
            "{:<36} {:>9} {:>12.2} {:>12.1} {:>7.1}%\n",
            k.kernel,
            k.launches,
            k.total_ms,
            1e3 * k.total_ms / k.launches.max(1) as f64,
            100.0 * k.total_ms / gpu_ms.max(1e-12)
        );
    }
    out += &format!("kernels: {gpu_ms:.2} ms of GPU time");
    if let Some(wall) = step_wall_ms {
        out += &format!(
            " in {wall:.2} ms of steps (wall); the GPU waited {:.2} ms ({:.1}%) between launches",
            (wall - gpu_ms).max(0.0),
            100.0 * (wall - gpu_ms).max(0.0) / wall.max(1e-12)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_table_shares_and_idle_time_add_up() {
        let kernels = [
            KernelTime {
                kernel: "a".into(),
                launches: 4,
                total_ms: 3.0,
            },
            KernelTime {
                kernel: "b".into(),
                launches: 1,
                total_ms: 1.0,
            },
        ];
        let table = format_kernel_table(&kernels, Some(5.0));
        assert!(table.contains("75.0%") && table.contains("25.0%"), "{table}");
        assert!(table.contains("750.0"), "mean of a in us: {table}");
        assert!(table.contains("waited 1.00 ms (20.0%)"), "{table}");
    }

    #[test]
    fn ranges_are_counted_only_when_enabled() {
        // One test touches the process-wide table so that tests cannot race on it.
        take_table();
        enable(false);
        drop(range("test.off"));
        assert!(take_table().iter().all(|r| r.name != "test.off"));
        enable(true);
        for _ in 0..3 {
            let _r = range("test.on");
            std::thread::sleep(Duration::from_millis(1));
        }
        enable(false);
        let rows = take_table();
        let row = rows.iter().find(|r| r.name == "test.on").expect("row");
        assert_eq!(row.calls, 3);
        assert!(row.total_ms >= 3.0, "{row:?}");
        assert!(format_table(&rows, None).contains("test.on"));
    }
}
