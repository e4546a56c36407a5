//! Finite-difference gradient checks in f64.
//!
//! The analytic gradients of the tape are compared with central differences
//! `(f(x + h) - f(x - h)) / 2h`. With h = 1e-5 in f64 the truncation error is O(h^2 f''') ~ 1e-10
//! and the rounding error O(eps_machine |f| / h) ~ 1e-11 |f|, so correct gradients agree to
//! better than 1e-6 relative; a wrong one is off by O(1).

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
}

impl Default for GradCheckConfig {
    fn default() -> Self {
        GradCheckConfig {
            step: 1e-5,
            max_coords: 64,
            seed: 0,
        }
    }
}

/// The worst disagreement found.
#[derive(Clone, Debug, Default)]
pub struct GradReport {
    /// `|analytic - numeric| / max(|analytic|, |numeric|, floor)`, the floor being 1e-6 times
    /// the largest numeric gradient of that input (so that entries that are zero up to rounding
    /// do not count as relative errors of 100%).
    pub worst_rel_error: f64,
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
            "worst relative error {:.3e} at input {} index {} (analytic {:.10e}, numeric {:.10e}; {} coordinates)",
            self.worst_rel_error, self.input, self.index, self.analytic, self.numeric, self.coords_checked
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
    let mut report = GradReport::default();
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
        let mut numeric = Vec::with_capacity(coords.len());
        for &j in &coords {
            let mut shifted = inputs.to_vec();
            let base = input.as_slice::<f64>()?[j];
            shifted[i].data_mut::<f64>()?[j] = base + cfg.step;
            let up = evaluate(&shifted, &f)?;
            shifted[i].data_mut::<f64>()?[j] = base - cfg.step;
            let down = evaluate(&shifted, &f)?;
            numeric.push((up - down) / (2.0 * cfg.step));
        }
        let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let floor = (1e-6 * scale).max(1e-12);
        for (&j, &n) in coords.iter().zip(&numeric) {
            let a = analytic[j];
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
    }
    Ok(report)
}

/// Reduces a tensor-valued output to a scalar with fixed random weights, `sum(y * r)`, so that
/// every output element contributes a distinct amount to the checked gradient.
pub fn random_projection(tape: &mut Tape, y: Var, seed: u64) -> Result<Var> {
    let shape = tape.value(y).shape().to_vec();
    let r = Tensor::uniform(shape, -1.0, 1.0, DType::F64, &mut Rng::new(seed ^ 0x5EED));
    let r = tape.constant(r);
    let prod = tape.mul(y, r)?;
    tape.sum(prod)
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
                let y = tape.record(y, &[v[0]], |ctx| {
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
