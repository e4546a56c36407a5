//! Finite-difference gradient checks in f64.
//!
//! The analytic gradients of the tape are compared with central differences
//! `D(h) = (f(x + h) - f(x - h)) / 2h`, Richardson-extrapolated as `(4 D(h/2) - D(h)) / 3` so
//! that the O(h^2) truncation error cancels (sharp losses such as InfoNCE at t = 0.07 have large
//! third derivatives). With h = 1e-5 in f64 the rest is rounding, O(eps_machine |f| / h) ~
//! 1e-11 |f|: correct gradients agree to better than 1e-6 relative; a wrong one is off by O(1).

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Copy, Debug)]
pub struct GradCheckConfig {
    /// Step of the central difference.
    pub step: f64,
    /// At most this many coordinates of each input are perturbed (chosen at random).
    pub max_coords: usize,
    pub seed: u64,
    /// Gradients smaller than `floor` times the largest one checked are compared on that
    /// absolute scale instead of relatively: their numeric value is mostly rounding noise
    /// (e.g. the bias of a convolution followed by instance norm has gradient exactly 0).
    pub floor: f64,
}

impl Default for GradCheckConfig {
    fn default() -> Self {
        GradCheckConfig {
            step: 1e-5,
            max_coords: 64,
            floor: 1e-2,
            seed: 0,
        }
    }
}

/// The worst disagreement found.
#[derive(Clone, Debug, Default)]
pub struct GradReport {
    /// `|analytic - numeric| / max(|analytic|, |numeric|, floor)`.
    pub worst_rel_error: f64,
    /// The absolute scale below which gradients were compared absolutely.
    pub floor: f64,
    pub input: usize,
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
    pub coords_checked: usize,
}

impl std::fmt::Display for GradReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worst relative error {:.3e} at input {} index {} (analytic {:.10e}, numeric {:.10e}; {} coordinates, floor {:.1e})",
            self.worst_rel_error, self.input, self.index, self.analytic, self.numeric, self.coords_checked, self.floor
        )
    }
}

fn evaluate(inputs: &[Tensor], f: &dyn Fn(&mut Tape, &[Var]) -> Result<Var>) -> Result<f64> {
    let mut tape = Tape::no_grad();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.constant(t.clone())).collect();
    let out = f(&mut tape, &vars)?;
    tape.value(out).scalar()
}

/// Checks the gradient of the scalar `f(inputs)` with respect to every input (all f64).
pub fn check_gradients(
    inputs: &[Tensor],
    f: impl Fn(&mut Tape, &[Var]) -> Result<Var>,
    cfg: GradCheckConfig,
) -> Result<GradReport> {
    if inputs.iter().any(|t| t.dtype() != DType::F64 || !t.is_cpu()) {
        return Err(Error::dtype(
            "check_gradients",
            "gradient checks run on f64 CPU tensors",
        ));
    }
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone())).collect();
    let out = f(&mut tape, &vars)?;
    let grads = tape.backward(out)?;
    let mut rng = Rng::new(cfg.seed);
    // (input, index, analytic, numeric) of every checked coordinate.
    let mut checked: Vec<(usize, usize, f64, f64)> = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let analytic = match grads.get(vars[i]) {
            Some(g) => g.to_f64_vec()?,
            None => vec![0.0; input.numel()],
        };
        let mut coords: Vec<usize> = (0..input.numel()).collect();
        if coords.len() > cfg.max_coords {
            rng.shuffle(&mut coords);
            coords.truncate(cfg.max_coords);
        }
        for &j in &coords {
            let mut shifted = inputs.to_vec();
            let base = input.as_slice::<f64>()?[j];
            let mut central = |h: f64| -> Result<f64> {
                shifted[i].data_mut::<f64>()?[j] = base + h;
                let up = evaluate(&shifted, &f)?;
                shifted[i].data_mut::<f64>()?[j] = base - h;
                let down = evaluate(&shifted, &f)?;
                Ok((up - down) / (2.0 * h))
            };
            // Richardson extrapolation cancels the h^2 term of the central difference.
            let (coarse, fine) = (central(cfg.step)?, central(cfg.step / 2.0)?);
            checked.push((i, j, analytic[j], (4.0 * fine - coarse) / 3.0));
        }
    }
    let largest = checked.iter().fold(0.0f64, |m, c| m.max(c.3.abs()));
    let floor = (cfg.floor * largest).max(f64::MIN_POSITIVE);
    let mut report = GradReport {
        floor,
        ..GradReport::default()
    };
    for &(i, j, a, n) in &checked {
        let rel = (a - n).abs() / a.abs().max(n.abs()).max(floor);
        if rel > report.worst_rel_error || report.coords_checked == 0 {
            report = GradReport {
                worst_rel_error: rel,
                input: i,
                index: j,
                analytic: a,
                numeric: n,
                ..report
            };
        }
        report.coords_checked += 1;
    }
    Ok(report)
}

/// Reduces a tensor-valued output to a scalar with fixed random weights, `sum(y * r)`, so that
/// every output element contributes a distinct amount to the checked gradient.
pub fn random_projection(tape: &mut Tape, y: Var, seed: u64) -> Result<Var> {
    let value = tape.value(y);
    let r = projection_weights(value.shape(), value.dtype(), seed)?;
    let r = tape.constant(r);
    let prod = tape.mul(y, r)?;
    tape.sum(prod)
}

/// The weights of [`random_projection`] for an output of `shape`.
pub fn projection_weights(shape: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
    Tensor::uniform(shape.to_vec(), -1.0, 1.0, DType::F64, &mut Rng::new(seed ^ 0x5EED)).to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_gradient_is_caught() {
        let x = Tensor::uniform(vec![5], -1.0, 1.0, DType::F64, &mut Rng::new(1));
        let report = check_gradients(
            &[x],
            |tape, v| {
                // y = 2x recorded with the gradient of 3x.
                let y = crate::ops::pointwise::scale(tape.value(v[0]), 2.0)?;
                let y = tape.record("wrong", y, &[v[0]], |ctx| {
                    Ok(vec![Some(crate::ops::pointwise::scale(ctx.grad, 3.0)?)])
                });
                tape.sum(y)
            },
            GradCheckConfig::default(),
        )
        .unwrap();
        assert!((report.worst_rel_error - 1.0 / 3.0).abs() < 1e-6, "{report}");
    }
}
