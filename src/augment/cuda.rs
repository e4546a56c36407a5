//! The elastic transform on a CUDA GPU, equal to the CPU's ([`super::elastic`]) bit for bit for
//! the same generator: the raw noise is drawn on the host from the same stream as
//! [`random_field`](super::elastic::random_field) draws it (one field per image, in image
//! order) and uploaded; the GPU smooths it and warps (kernels/elastic.cu).

use std::sync::Arc;

use super::elastic::{DisplacementField, ElasticParams, field_noise, gaussian_kernel_f32};
use crate::device::cuda::{CudaDevice, CudaStorage, elastic};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// `n` displacement fields for `h x w` images on the device (n x 2 x h x w: each image's dy
/// plane, then its dx plane), the ones `n` calls of
/// [`random_field`](super::elastic::random_field) with `rng` would give.
pub fn random_fields_cuda(
    device: &Arc<CudaDevice>,
    n: usize,
    h: usize,
    w: usize,
    params: &ElasticParams,
    rng: &mut Rng,
) -> Result<CudaStorage> {
    params.validate()?;
    let mut noise = Vec::with_capacity(2 * n * h * w);
    for _ in 0..n {
        let (dy, dx) = field_noise(h, w, rng);
        noise.extend(dy);
        noise.extend(dx);
    }
    let noise = CudaStorage::from_host(device, &noise)?;
    let taps = CudaStorage::from_host(device, &gaussian_kernel_f32(params.sigma))?;
    elastic::fields(&noise, &taps, n, h, w, params.alpha)
}

/// The fields of [`random_fields_cuda`] copied to the host.
pub fn fields_to_host(fields: &CudaStorage, n: usize, h: usize, w: usize) -> Result<Vec<DisplacementField>> {
    if fields.len() != 2 * n * h * w {
        return Err(Error::shape(
            "elastic field",
            format!("{} values are not {n} fields of {h} x {w}", fields.len()),
        ));
    }
    let host = fields.to_host()?;
    Ok(host
        .chunks(2 * h * w)
        .take(n)
        .map(|f| DisplacementField {
            h,
            w,
            dy: f[..h * w].to_vec(),
            dx: f[h * w..].to_vec(),
        })
        .collect())
}

/// Images and region maps after the transform.
#[derive(Clone, Debug, PartialEq)]
pub struct ElasticBatch {
    /// n x h x w, bilinear.
    pub images: Vec<f32>,
    /// n x h x w, nearest neighbour (0 outside), when region maps were given.
    pub labels: Option<Vec<u16>>,
}

/// The elastic transform of `n` images (and their region maps) on the GPU with one random field
/// per image drawn from `rng`: equal to `warp_bilinear` / `warp_nearest` with `random_field`
/// called per image in order.
#[allow(clippy::too_many_arguments)]
pub fn elastic_batch_cuda(
    device: &Arc<CudaDevice>,
    images: &[f32],
    labels: Option<&[u16]>,
    n: usize,
    h: usize,
    w: usize,
    params: &ElasticParams,
    rng: &mut Rng,
) -> Result<ElasticBatch> {
    const OP: &str = "elastic";
    let len = n * h * w;
    if images.len() != len || labels.is_some_and(|l| l.len() != len) {
        return Err(Error::shape(
            OP,
            format!(
                "{} image values and {:?} labels for {n} images of {h} x {w}",
                images.len(),
                labels.map(<[u16]>::len)
            ),
        ));
    }
    let fields = random_fields_cuda(device, n, h, w, params, rng)?;
    let images = CudaStorage::from_host(device, images)?;
    let labels = labels
        .map(|l| CudaStorage::from_host_pod(device, &l.iter().map(|&v| u32::from(v)).collect::<Vec<u32>>()))
        .transpose()?;
    let (warped, warped_labels) = elastic::warp(&fields, &images, labels.as_ref(), n, h, w)?;
    Ok(ElasticBatch {
        images: warped.to_host()?,
        labels: warped_labels
            .map(|l| {
                l.to_host_pod::<u32>()
                    .map(|v| v.into_iter().map(|x| x as u16).collect())
            })
            .transpose()?,
    })
}
