//! What the kernel parity tests share, on the emulator (`tests/emu_*.rs`) and on a GPU
//! (`tests/cuda_*.rs`): seeded inputs and the element-wise comparison with its report.

use crate::rng::Rng;

/// Per-element tolerance: |got - want| <= atol + rtol * |want|.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

/// The worst element of a comparison, as a multiple of its tolerance (infinite for NaN).
#[derive(Clone, Copy, Debug)]
pub struct Worst {
    pub ratio: f64,
    pub index: usize,
    pub got: f64,
    pub want: f64,
}

/// Compares `got` with `want` element by element; the worst element relative to its tolerance.
pub fn worst(got: &[f32], want: &[f64], tol: Tolerance) -> Worst {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let mut w = Worst {
        ratio: -1.0,
        index: 0,
        got: 0.0,
        want: 0.0,
    };
    for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - r).abs();
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else {
            err / (tol.atol + tol.rtol * r.abs())
        };
        if ratio > w.ratio {
            w = Worst {
                ratio,
                index: i,
                got: g as f64,
                want: r,
            };
        }
    }
    w.ratio = w.ratio.max(0.0);
    w
}

/// Fails with the worst element (index, got, want) when any element is off or unwritten (NaN).
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: Tolerance) {
    let w = worst(got, want, tol);
    assert!(
        w.ratio <= 1.0,
        "{what}: worst element {}: got {} want {} ({:.2} x tolerance, atol {:.3e} rtol {:.1e})",
        w.index,
        w.got,
        w.want,
        w.ratio,
        tol.atol,
        tol.rtol
    );
}

/// `len` values that probe a rounding to BF16: first those where it can go wrong (ties of both
/// parities, half an ulp and a bit either side, subnormals, signed zeros, infinities, overflow
/// past the largest BF16, NaNs of both signs with quiet and signalling payloads), then ordinary
/// values in [-4, 4) and arbitrary bit patterns in turn.
pub fn bf16_probe_values(rng: &mut Rng, len: usize) -> Vec<f32> {
    let mut edges = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        -1e-40,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc0_1234),
    ];
    for hi in [0x3f80u32, 0x3f81, 0xbf80, 0xbf81, 0x0000, 0x0001, 0x7f7f, 0xff7f] {
        for lo in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
            edges.push(f32::from_bits(hi << 16 | lo));
        }
    }
    (0..len)
        .map(|i| match edges.get(i) {
            Some(&x) => x,
            None if i % 2 == 0 => rng.range(-4.0, 4.0) as f32,
            None => f32::from_bits(rng.below(1 << 32) as u32),
        })
        .collect()
}

/// `len` values uniform in [lo, hi).
pub fn uniform(rng: &mut Rng, len: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..len).map(|_| rng.range(lo, hi) as f32).collect()
}

/// `len` logits on a coarse grid (-2, -1, 0, 1), so that ties are common, with a NaN in about
/// one value in 16: inputs for a class arg-max, whose rules for both are what a test checks.
pub fn tied_logits(rng: &mut Rng, len: usize) -> Vec<f32> {
    uniform(rng, len, 0.0, 1.0)
        .iter()
        .map(|&u| {
            if u < 1.0 / 16.0 {
                f32::NAN
            } else {
                (u * 4.0).floor() - 2.0
            }
        })
        .collect()
}

/// The f32 values widened, for the f64 CPU twins.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The largest magnitude.
pub fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64))
}

/// Asserts that every `(module, kernel)` was compiled for every architecture of this build (as the
/// ptxas report records it), naming each one that was not. Architecture-specific targets (sm_90a,
/// which a kernel file names for itself) count only for the modules built for them: such a
/// module's kernels must exist for each of its own targets. Does nothing in a build without
/// kernels.
pub fn assert_compiled_for_every_arch<'a>(kernels: impl IntoIterator<Item = (&'a str, &'a str)>) {
    if !crate::kernels::BUILT {
        return;
    }
    let rows = crate::kernels::parse_ptxas_report(crate::kernels::PTXAS_REPORT).expect("the ptxas report parses");
    let specific = |arch: &str| arch.ends_with('a');
    let mut archs: Vec<&str> = rows.iter().map(|r| r.arch.as_str()).filter(|a| !specific(a)).collect();
    archs.sort();
    archs.dedup();
    assert!(archs.contains(&"sm_90"), "no sm_90 code in {archs:?}");
    let mut missing = Vec::new();
    for (module, kernel) in kernels {
        let mut own: Vec<&str> = rows
            .iter()
            .filter(|r| r.module == module && specific(&r.arch))
            .map(|r| r.arch.as_str())
            .collect();
        own.sort();
        own.dedup();
        let expected = if own.is_empty() { &archs } else { &own };
        for arch in expected {
            if !rows
                .iter()
                .any(|r| r.module == module && r.kernel == kernel && r.arch == *arch)
            {
                missing.push(format!("{module}::{kernel} for {arch}"));
            }
        }
    }
    assert!(missing.is_empty(), "launched but not compiled: {}", missing.join(", "));
}
