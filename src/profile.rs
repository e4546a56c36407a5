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
/// When the table's period began: profiling turned on, or the table last taken.
static PERIOD_START: Mutex<Option<Instant>> = Mutex::new(None);

/// Turns the host time table on or off (NVTX ranges are always emitted). Turning it on starts
/// the period whose wall time the printed shares refer to.
pub fn enable(on: bool) {
    if on && !enabled() {
        start_period();
    }
    ENABLED.store(on, Ordering::Relaxed);
}

fn start_period() {
    *PERIOD_START.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
}

/// Wall time since the table's period began, if profiling was ever on.
pub fn period_ms() -> Option<f64> {
    let start = *PERIOD_START.lock().unwrap_or_else(|e| e.into_inner());
    start.map(|t| t.elapsed().as_secs_f64() * 1e3)
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

/// The rows collected so far, largest total first; clears the table and starts a new period.
pub fn take_table() -> Vec<ProfileRow> {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    if enabled() {
        start_period();
    }
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

/// The table as text, each row's share of `wall_ms` (the period's wall time). Phases (`phase.*`)
/// nest op rows, and an op may run inside a training step or inside validation, so a share of
/// the wall time is the one base every row has.
pub fn format_table(rows: &[ProfileRow], wall_ms: f64) -> String {
    let mut out = format!(
        "{:<28} {:>9} {:>12} {:>12} {:>8}\n",
        "range", "calls", "total ms", "mean us", "of wall"
    );
    for r in rows {
        out += &format!(
            "{:<28} {:>9} {:>12.2} {:>12.1} {:>7.1}%\n",
            r.name,
            r.calls,
            r.total_ms,
            r.mean_us,
            100.0 * r.total_ms / wall_ms.max(1e-12)
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

/// Prints the table of a training command when profiling was enabled (`--profile`), each row's
/// share of the wall time since profiling began; on a GPU also the kernels' table: launches and
/// GPU time per kernel, their sum against the steps' wall time (the rest is the GPU waiting for
/// the host).
pub fn print_training_table(device: &Device) {
    if !enabled() {
        return;
    }
    // Enabling started the period.
    let wall_ms = period_ms().unwrap_or_default();
    let rows = take_table();
    println!(
        "host time table: {:.2} s of wall time since profiling began",
        wall_ms / 1e3
    );
    println!("{}", format_table(&rows, wall_ms));
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
    fn shares_are_of_the_wall_time() {
        let row = |name: &str, total_ms: f64| ProfileRow {
            name: name.into(),
            calls: 1,
            total_ms,
            mean_us: total_ms * 1e3,
        };
        // Validation outside the steps, and an op inside both.
        let rows = [
            row("phase.step", 100.0),
            row("phase.validation", 80.0),
            row("conv2d", 120.0),
        ];
        let table = format_table(&rows, 200.0);
        assert!(table.contains("of wall"), "{table}");
        for share in ["50.0%", "40.0%", "60.0%"] {
            assert!(table.contains(share), "{share} in {table}");
        }
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
        let period = period_ms().expect("profiling was on");
        enable(false);
        let rows = take_table();
        let row = rows.iter().find(|r| r.name == "test.on").expect("row");
        assert_eq!(row.calls, 3);
        assert!(row.total_ms >= 3.0, "{row:?}");
        assert!(
            period >= row.total_ms,
            "the period ({period} ms) holds the ranges: {row:?}"
        );
        assert!(format_table(&rows, period).contains("test.on"));
    }
}
