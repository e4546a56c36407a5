//! Dense matrix products on the CPU (the `gemm` crate), and the `matmul` op.

use gemm::Parallelism;
use num_traits::Zero;

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

/// `c (m x n) [+]= op(a) * op(b)` on row-major slices, where `op(a)` is m x k (`a` is stored
/// k x m when `trans_a`) and `op(b)` is k x n (`b` stored n x k when `trans_b`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_into<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    trans_a: bool,
    b: &[T],
    trans_b: bool,
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
) {
    let rows = RowStrides {
        a: if trans_a { m } else { k },
        b: if trans_b { k } else { n },
        c: n,
    };
    gemm_strided(m, n, k, a, trans_a, b, trans_b, c, rows, accumulate, parallel);
}

/// Row strides (leading dimensions, in elements) of the three row-major matrices of a GEMM as
/// they are stored, so that a product can read and write blocks of larger matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowStrides {
    pub a: usize,
    pub b: usize,
    pub c: usize,
}

/// Elements a row-major `rows x cols` matrix with rows `ld` apart spans (0 when empty).
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// [`gemm_into`] on blocks of larger matrices: rows of `a`, `b` and `c` are `ld.a`, `ld.b` and
/// `ld.c` elements apart.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    trans_a: bool,
    b: &[T],
    trans_b: bool,
    c: &mut [T],
    ld: RowStrides,
    accumulate: bool,
    parallel: bool,
) {
    assert!(
        ld.c >= n && c.len() >= span(m, n, ld.c),
        "gemm: c too short for its rows"
    );
    // SAFETY: `c` is exclusively borrowed and bounds the m x n matrix at `ld.c` (asserted).
    unsafe {
        gemm_to_ptr(
            m,
            n,
            k,
            a,
            trans_a,
            b,
            trans_b,
            c.as_mut_ptr(),
            ld,
            accumulate,
            parallel,
        )
    }
}

/// [`gemm_strided`] writing through a pointer, for callers that fill disjoint blocks of one
/// output from several threads.
///
/// # Safety
/// `c` must be valid for reads and writes of the m x n matrix with rows `ld.c` apart, must not
/// overlap `a` or `b`, and no other thread may access those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_to_ptr<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    trans_a: bool,
    b: &[T],
    trans_b: bool,
    c: *mut T,
    ld: RowStrides,
    accumulate: bool,
    parallel: bool,
) {
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    assert!(
        ld.a >= a_cols && a.len() >= span(a_rows, a_cols, ld.a),
        "gemm: a too short for its rows"
    );
    assert!(
        ld.b >= b_cols && b.len() >= span(b_rows, b_cols, ld.b),
        "gemm: b too short for its rows"
    );
    assert!(ld.c >= n, "gemm: c rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                // SAFETY: row r of the m x n block at ld.c, valid by the caller's contract.
                unsafe { std::slice::from_raw_parts_mut(c.add(r * ld.c), n) }.fill(T::zero());
            }
        }
        return;
    }
    let (a_rs, a_cs) = if trans_a {
        (1, ld.a as isize)
    } else {
        (ld.a as isize, 1)
    };
    let (b_rs, b_cs) = if trans_b {
        (1, ld.b as isize)
    } else {
        (ld.b as isize, 1)
    };
    let par = if parallel && m * n * k >= 1 << 15 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above bound every index the strides reach in `a` and `b`; `c` is
    // valid, unaliased and unshared by the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ld.c as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// `[m, k] x [k, n] -> [m, n]`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_t(a, false, b, false)
}

/// Matrix product with either operand read transposed.
pub fn matmul_t(a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool) -> Result<Tensor> {
    let [ar, ac] = a.dims2("matmul")?;
    let [br, bc] = b.dims2("matmul")?;
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(Error::shape(
            "matmul",
            format!(
                "inner sizes differ: {:?}{} x {:?}{}",
                a.shape(),
                if trans_a { "^T" } else { "" },
                b.shape(),
                if trans_b { "^T" } else { "" }
            ),
        ));
    }
    if !a.is_cpu() || !b.is_cpu() {
        return cuda::matmul_t(a, trans_a, b, trans_b, [m, n, k]);
    }
    with_cpu_dtype!("matmul", [a, b], T => {
        let mut c = vec![T::zero(); m * n];
        gemm_into(m, n, k, a.as_slice::<T>()?, trans_a, b.as_slice::<T>()?, trans_b, &mut c, false, true);
        Ok(Tensor::cpu(vec![m, n], c))
    })
}

/// The CUDA branch: `device::cuda::gemm` with the FP32 tiles.
mod cuda {
    use super::super::conv::cuda::{storage, tensor};
    use crate::device::cuda::gemm::{self, GemmAlgo, GemmShape};
    use crate::error::Result;
    use crate::tensor::Tensor;

    pub(super) fn matmul_t(
        a: &Tensor,
        trans_a: bool,
        b: &Tensor,
        trans_b: bool,
        [m, n, k]: [usize; 3],
    ) -> Result<Tensor> {
        let a_s = storage("matmul", "left operand", a)?;
        let b_s = storage("matmul", "right operand", b)?;
        let shape = GemmShape {
            m,
            n,
            k,
            trans_a,
            trans_b,
        };
        Ok(tensor(vec![m, n], gemm::matmul(a_s, b_s, &shape, GemmAlgo::DEFAULT)?))
    }
}

impl Tape {
    /// `[m, k] x [k, n] -> [m, n]`.
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        let _range = crate::profile::range("matmul");
        let out = matmul(self.value(a), self.value(b))?;
        Ok(self.record("matmul", out, &[a, b], |ctx| {
            // dA = dC B^T, dB = A^T dC
            let ga = if ctx.needs_grad(0) {
                Some(matmul_t(ctx.grad, false, ctx.input(1), true)?)
            } else {
                None
            };
            let gb = if ctx.needs_grad(1) {
                Some(matmul_t(ctx.input(0), true, ctx.grad, false)?)
            } else {
                None
            };
            Ok(vec![ga, gb])
        }))
    }
}
