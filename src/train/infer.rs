//! Whole-slice segmentation with a trained model: pad each slice to the U-Net's multiple, run
//! batches without gradients, take the arg-max class, cut the padding away.

use rayon::prelude::*;

use crate::autograd::Tape;
use crate::data::crop::{pad_to_multiple, unpad};
use crate::device::Device;
use crate::error::Result;
use crate::nn::{ParamStore, SegModel};
use crate::ops::labels::arg_max_classes;
use crate::tensor::Tensor;

/// Labels of `slices` (each `h * w`, normalised) by `model`, `batch` slices per forward pass.
pub fn segment_slices(
    model: &SegModel,
    params: &ParamStore,
    slices: &[&[f32]],
    h: usize,
    w: usize,
    batch: usize,
    pad_value: f32,
) -> Result<Vec<Vec<u8>>> {
    // Inputs go where the parameters are; the logits come back for the arg-max.
    let device = params.params().first().map_or(Device::Cpu, |p| p.value.device());
    let mut out = Vec::with_capacity(slices.len());
    for chunk in slices.chunks(batch.max(1)) {
        let _range = crate::profile::range("phase.inference");
        let mut data = Vec::new();
        let mut padding = None;
        for s in chunk {
            let (p, pad) = pad_to_multiple(s, h, w, model.local.config().size_multiple(), pad_value);
            data.extend(p);
            padding = Some(pad);
        }
        let pad = padding.expect("non-empty chunk");
        let (ph, pw) = (pad.padded_h, pad.padded_w);
        let mut tape = Tape::no_grad();
        let bound = params.bind_frozen(&mut tape);
        let x = Tensor::from_vec(vec![chunk.len(), 1, ph, pw], data)?.to_device(&device)?;
        let x = tape.constant(x);
        let logits = model.forward(&mut tape, &bound, x)?;
        // Labels where the logits are: from a GPU one byte per pixel crosses, not a float per
        // class.
        let labels = arg_max_classes(tape.value(logits))?;
        out.extend(labels.par_chunks(ph * pw).map(|l| unpad(l, &pad)).collect::<Vec<_>>());
    }
    Ok(out)
}
