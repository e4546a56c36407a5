//! Class labels: one class index per position, into the segmentation losses and out of a
//! model's logits.
//!
//! A fine-tuning step feeds the same labels to Dice and to cross-entropy. [`Labels`] keeps the
//! copy the first CUDA loss made, so that the batch's labels cross to the device once per step;
//! plain slices work too and are copied by each loss that needs them on a device.
//! [`arg_max_classes`] turns logits into labels where they are, so that from a GPU one byte per
//! pixel comes back instead of a float per class.

use std::cell::OnceCell;
use std::sync::Arc;

use rayon::prelude::*;

use crate::device::cuda::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Labels a loss accepts: their host values, and a device copy on demand.
pub trait LabelSource {
    /// One class index per position.
    fn host(&self) -> &[u32];

    /// The labels on `device`; a fresh copy unless the source keeps one.
    fn on_device(&self, device: &Arc<CudaDevice>) -> Result<CudaStorage> {
        CudaStorage::from_host_u32(device, self.host())
    }
}

impl LabelSource for [u32] {
    fn host(&self) -> &[u32] {
        self
    }
}

impl<const N: usize> LabelSource for [u32; N] {
    fn host(&self) -> &[u32] {
        self
    }
}

impl LabelSource for Vec<u32> {
    fn host(&self) -> &[u32] {
        self
    }
}

/// Host labels that remember their device copy: the first loss on a device uploads them, later
/// losses of the same step share that copy.
pub struct Labels<'a> {
    host: &'a [u32],
    device: OnceCell<CudaStorage>,
}

impl<'a> Labels<'a> {
    pub fn new(host: &'a [u32]) -> Labels<'a> {
        Labels {
            host,
            device: OnceCell::new(),
        }
    }
}

impl LabelSource for Labels<'_> {
    fn host(&self) -> &[u32] {
        self.host
    }

    fn on_device(&self, device: &Arc<CudaDevice>) -> Result<CudaStorage> {
        if let Some(copy) = self.device.get() {
            if Arc::ptr_eq(&copy.device(), device) {
                return Ok(copy.clone());
            }
            // Another device: copy again, keep the first.
            return CudaStorage::from_host_u32(device, self.host);
        }
        let copy = CudaStorage::from_host_u32(device, self.host)?;
        Ok(self.device.get_or_init(|| copy).clone())
    }
}

/// The class of the largest logit at each position of logits `[N, C, ...]`, as bytes in
/// (image, position) order: the first class on ties; comparisons with a NaN are false, so a NaN
/// never replaces the best class so far (and one in class 0 keeps class 0).
/// On a CUDA device the kernel `class_arg_max_thread` computes them and only the bytes cross.
pub fn arg_max_classes(logits: &Tensor) -> Result<Vec<u8>> {
    const OP: &str = "arg_max_classes";
    let shape = logits.shape();
    if shape.len() < 2 || shape[1] == 0 || shape[1] > 256 {
        return Err(Error::shape(
            OP,
            format!("logits {shape:?}: expected [N, C, ...] with 1 to 256 classes"),
        ));
    }
    let (n, classes) = (shape[0], shape[1]);
    let plane: usize = shape[2..].iter().product();
    if !logits.is_cpu() {
        let s = crate::device::cuda::loss::ChannelShape {
            outer: n,
            channels: classes,
            inner: plane,
        };
        return crate::device::cuda::loss::class_arg_max(super::conv::cuda::storage(OP, "logits", logits)?, &s);
    }
    Ok(match logits.dtype() {
        DType::F32 => cpu::arg_max_classes(logits.as_slice::<f32>()?, classes, plane),
        DType::F64 => cpu::arg_max_classes(logits.as_slice::<f64>()?, classes, plane),
    })
}

/// The CPU twin of the class arg-max.
pub mod cpu {
    use super::*;

    /// Labels of `logits` (images of `classes` planes of `plane` values), each image on its own
    /// core.
    pub fn arg_max_classes<T: PartialOrd + Copy + Sync>(logits: &[T], classes: usize, plane: usize) -> Vec<u8> {
        if plane == 0 {
            return Vec::new();
        }
        logits
            .par_chunks(classes * plane)
            .flat_map_iter(|image| {
                (0..plane).map(move |j| {
                    let mut best = 0;
                    for k in 1..classes {
                        if image[k * plane + j] > image[best * plane + j] {
                            best = k;
                        }
                    }
                    best as u8
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_largest_class_wins_and_nan_never_does() {
        // Two images of 3 classes x 4 pixels.
        let nan = f32::NAN;
        #[rustfmt::skip]
        let logits = vec![
            1.0, 5.0, 2.0, nan,   0.0, 5.0, 9.0, 1.0,   3.0, 1.0, 9.0, 2.0,
            nan, 0.0, 0.0, 0.0,   nan, 0.0, -1.0, 0.0,  nan, 1.0, -1.0, 0.0,
        ];
        let t = Tensor::from_vec(vec![2, 3, 2, 2], logits).unwrap();
        // Pixel 1 ties classes 0 and 1 (5.0) -> 0; pixel 2 ties classes 1 and 2 (9.0) -> 1;
        // pixel 3's class 0 is NaN, which nothing beats. Image 2: pixel 0 is NaN in every class,
        // pixel 1 has 1.0 in class 2, pixel 2 ties at 0.0 ... -1.0 (class 0), pixel 3 ties all.
        assert_eq!(arg_max_classes(&t).unwrap(), vec![2, 0, 1, 0, 0, 2, 0, 0]);
        let t64 = Tensor::from_vec(vec![1, 2, 3], vec![0.5f64, -2.0, 7.0, 0.75, -3.0, 7.5]).unwrap();
        assert_eq!(arg_max_classes(&t64).unwrap(), vec![1, 0, 1]);
    }

    #[test]
    fn logits_without_a_class_axis_or_with_too_many_classes_are_refused() {
        for shape in [vec![4], vec![1, 0, 2], vec![1, 257, 1]] {
            let len = shape.iter().product();
            let t = Tensor::from_vec(shape.clone(), vec![0.0f32; len]).unwrap();
            let e = arg_max_classes(&t).unwrap_err().to_string();
            assert!(e.contains("1 to 256 classes"), "{shape:?}: {e}");
        }
    }
}
