//! The convolution choices `tf32-fastest` and `bf16-fastest` ([`ConvAlgo::CHOICES`]): for each
//! pass and geometry, the fastest version of one operand precision, timed on the device the
//! first time a pass meets that geometry and remembered by the device for the rest of the
//! process, as cuDNN's benchmark mode does.
//!
//! Timing runs every candidate on the call's own operands and output (each writes the whole
//! output, so the chosen version's run that follows leaves the right result): one warm-up run,
//! then [`TIMED_RUNS`] between two CUDA events, and waits for the second event, the one place a
//! choice waits for the device; it does so inside the NVTX range `conv.tune`, once per geometry
//! and pass. Candidates whose plans launch the same kernel (a tap-major version on a shape it
//! does not serve runs the plain one's kernels) are timed once.

use std::sync::Arc;

use super::conv::{ConvAlgo, ConvLaunch, ConvPass};
use super::{CudaDevice, GpuTimer};
use crate::error::Result;

/// Runs of each candidate between the timing events.
pub const TIMED_RUNS: usize = 3;

/// What a choice is remembered by: the pass, whether it is a transposed convolution's, the
/// geometry (n, c_in, h, w, c_out, kh, kw, stride, pad, in that geometry's own terms) and the
/// choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TuneKey {
    pub pass: ConvPass,
    pub transposed: bool,
    pub geometry: [usize; 9],
    pub choice: ConvAlgo,
}

/// Runs `pass` with `algo`: a version as it is; for a choice, the version the device remembers
/// for `key`, choosing it first (see the module's comment) when it has none. `plan_for` makes a
/// version's launch, `run` runs a launch on the call's operands.
pub(crate) fn run_pass(
    device: &Arc<CudaDevice>,
    algo: ConvAlgo,
    key: TuneKey,
    plan_for: impl Fn(ConvAlgo) -> ConvLaunch,
    run: impl Fn(ConvLaunch) -> Result<()>,
) -> Result<()> {
    let Some(candidates) = algo.candidates(device.compute_capability()) else {
        return run(plan_for(algo));
    };
    let chosen = match device.tuned_conv(&key) {
        Some(version) => version,
        None => {
            let _range = crate::profile::range("conv.tune");
            let timer = GpuTimer::new(device)?;
            let chosen = fastest(&candidates, &plan_for, |launch| {
                run(launch)?;
                timer.start()?;
                for _ in 0..TIMED_RUNS {
                    run(launch)?;
                }
                timer.stop()?;
                Ok(f64::from(timer.elapsed_ms()?))
            })?;
            device.remember_conv(key, chosen);
            chosen
        }
    };
    run(plan_for(chosen))
}

/// The candidate whose launch `time` measures fastest (the first of equals), timing each
/// distinct kernel once.
pub(crate) fn fastest(
    candidates: &[ConvAlgo],
    plan_for: impl Fn(ConvAlgo) -> ConvLaunch,
    mut time: impl FnMut(ConvLaunch) -> Result<f64>,
) -> Result<ConvAlgo> {
    let mut timed: Vec<&'static str> = Vec::new();
    let mut best: Option<(f64, ConvAlgo)> = None;
    for &candidate in candidates {
        let launch = plan_for(candidate);
        if timed.contains(&launch.kernel) {
            continue;
        }
        timed.push(launch.kernel);
        let ms = time(launch)?;
        if best.is_none_or(|(b, _)| ms < b) {
            best = Some((ms, candidate));
        }
    }
    Ok(best.map_or(candidates[0], |(_, a)| a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda::conv::plan;
    use crate::ops::conv::ConvGeom;

    fn g(c_in: usize, c_out: usize) -> ConvGeom {
        ConvGeom {
            n: 2,
            c_in,
            h: 16,
            w: 16,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        }
    }

    #[test]
    fn choices_choose_among_the_versions_of_their_precision_the_device_runs() {
        use ConvAlgo::*;
        assert_eq!(
            Tf32Fastest.candidates((9, 0)),
            Some(vec![Tf32Mma, Tf32MmaTap, Tf32MmaWide, Tf32MmaHalo, Tf32Wgmma])
        );
        assert_eq!(
            Bf16Fastest.candidates((9, 0)),
            Some(vec![Bf16Mma, Bf16MmaTap, Bf16MmaWide, Bf16MmaHalo, Bf16Wgmma])
        );
        // wgmma runs on compute capability 9.0 alone.
        assert_eq!(
            Tf32Fastest.candidates((8, 0)),
            Some(vec![Tf32Mma, Tf32MmaTap, Tf32MmaWide, Tf32MmaHalo])
        );
        assert_eq!(
            Bf16Fastest.candidates((12, 0)),
            Some(vec![Bf16Mma, Bf16MmaTap, Bf16MmaWide, Bf16MmaHalo])
        );
        for version in ConvAlgo::ALL {
            assert_eq!(version.candidates((9, 0)), None);
        }
    }

    #[test]
    fn the_fastest_distinct_kernel_wins_and_the_first_of_equals() {
        let candidates = ConvAlgo::Tf32Fastest.candidates((9, 0)).unwrap();
        let plan_on = |geom: ConvGeom| move |a| plan(ConvPass::Forward, &geom, a, 132);
        // Times by kernel: the tap-major kernel fastest.
        let by_kernel = |launch: ConvLaunch| {
            Ok(if launch.kernel.contains("_k3t_") {
                1.0
            } else if launch.kernel.contains("wgmma") {
                2.0
            } else {
                3.0
            })
        };
        assert_eq!(
            fastest(&candidates, plan_on(g(64, 64)), by_kernel).unwrap(),
            ConvAlgo::Tf32MmaTap
        );
        // With c_in = 1 the tap-major version runs tf32-mma's kernel: timed once, and the
        // first of the two (tf32-mma) is its name.
        let mut timed = Vec::new();
        let chosen = fastest(&candidates, plan_on(g(1, 64)), |launch| {
            timed.push(launch.kernel);
            Ok(if launch.kernel.contains("wgmma") { 5.0 } else { 1.0 })
        })
        .unwrap();
        assert_eq!(chosen, ConvAlgo::Tf32Mma);
        assert_eq!(timed.len(), 2, "{timed:?}");
        // Equal times: the first candidate.
        assert_eq!(
            fastest(&candidates, plan_on(g(64, 64)), |_| Ok(1.0)).unwrap(),
            ConvAlgo::Tf32Mma
        );
        // A failed run is the choice's error.
        assert!(fastest(&candidates, plan_on(g(64, 64)), |_| Err(crate::Error::config("no"))).is_err());
    }

    #[test]
    fn choice_names_round_trip_and_plan_as_the_plain_version() {
        for choice in ConvAlgo::CHOICES {
            assert_eq!(choice.name().parse::<ConvAlgo>().unwrap(), choice);
            assert_eq!(ConvAlgo::from_index(choice as u8), choice);
            assert!(choice.runs_on((8, 0)));
        }
        let geom = g(64, 64);
        for pass in [ConvPass::Forward, ConvPass::BackwardData, ConvPass::BackwardWeight] {
            assert_eq!(
                plan(pass, &geom, ConvAlgo::Tf32Fastest, 132),
                plan(pass, &geom, ConvAlgo::Tf32Mma, 132)
            );
            assert_eq!(
                plan(pass, &geom, ConvAlgo::Bf16Fastest, 132),
                plan(pass, &geom, ConvAlgo::Bf16Mma, 132)
            );
        }
        let e = "fastest".parse::<ConvAlgo>().unwrap_err().to_string();
        assert!(e.contains("tf32-fastest") && e.contains("bf16-mma-tap"), "{e}");
    }
}
