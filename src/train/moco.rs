//! MoCo's two mechanisms: the queue of negative keys and the momentum (key) encoder.

use crate::device::Device;
use crate::device::cuda::optim::queue_write_calls;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::pointwise;
use crate::tensor::{DType, Tensor};

/// A first-in first-out ring of `capacity` unit keys, each tagged with the volume (case) it
/// came from so that a query's own volume can be left out of its negatives. The keys live on the
/// training device (a CUDA queue is written in place by a kernel); the case tags, which are batch
/// metadata, stay on the host.
#[derive(Clone, Debug)]
pub struct KeyQueue {
    keys: Tensor,
    cases: Vec<i64>,
    dim: usize,
    capacity: usize,
    /// Next slot to overwrite.
    ptr: usize,
    /// Slots written so far (saturates at capacity); empty slots are never used as negatives.
    filled: usize,
}

impl KeyQueue {
    pub fn new(capacity: usize, dim: usize) -> Result<KeyQueue> {
        if capacity == 0 || dim == 0 {
            return Err(Error::config("the MoCo queue needs a positive size and dimension"));
        }
        Ok(KeyQueue {
            keys: Tensor::zeros(vec![capacity, dim], DType::F32),
            cases: vec![-1; capacity],
            dim,
            capacity,
            ptr: 0,
            filled: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// The same queue with its keys on `device`.
    pub fn to_device(&self, device: &Device) -> Result<KeyQueue> {
        Ok(KeyQueue {
            keys: self.keys.to_device(device)?,
            ..self.clone()
        })
    }

    /// Adds a batch of keys `[B, dim]` (B must divide the capacity, as in MoCo, so that a batch
    /// never wraps), overwriting the oldest. Keys on the queue's device are written there
    /// without a copy through the host.
    pub fn enqueue(&mut self, keys: &Tensor, cases: &[i64]) -> Result<()> {
        let b = cases.len();
        if keys.shape() != [b, self.dim] {
            return Err(Error::shape(
                "enqueue",
                format!("keys {:?} for {b} cases of dim {}", keys.shape(), self.dim),
            ));
        }
        if b == 0 || !self.capacity.is_multiple_of(b) {
            return Err(Error::config(format!(
                "the MoCo queue size ({}) must be a multiple of the batch size ({b})",
                self.capacity
            )));
        }
        let range = self.ptr * self.dim..(self.ptr + b) * self.dim;
        if self.keys.is_cpu() {
            let new = keys.to_f32_vec()?;
            self.keys.data_mut::<f32>()?[range].copy_from_slice(&new);
        } else {
            let src = keys
                .cuda_storage()
                .ok_or_else(|| Error::Device("enqueue: the keys are on the CPU, the queue on CUDA".into()))?;
            let queue = self.keys.cuda_storage_mut().expect("a CUDA queue");
            let calls = queue_write_calls(
                queue.device_ptr_mut()?,
                src.device_ptr(),
                self.capacity,
                self.dim,
                b,
                self.ptr,
            )?;
            // SAFETY: the queue holds capacity x dim values and src b x dim (shape checked above);
            // both stay alive until the stream runs the write (src is kept by the caller's keys
            // tensor until then, or returns to the caching allocator, whose later users queue
            // behind it).
            unsafe { queue.device().run(&calls) }?;
        }
        self.cases[self.ptr..self.ptr + b].copy_from_slice(cases);
        self.ptr = (self.ptr + b) % self.capacity;
        self.filled = (self.filled + b).min(self.capacity);
        Ok(())
    }

    /// The filled part of the queue as a `[len, dim]` tensor, in slot order: the queue's own
    /// storage once it is full (no copy).
    pub fn negatives(&self) -> Result<Tensor> {
        if self.filled == self.capacity {
            Ok(self.keys.clone())
        } else {
            self.keys.narrow_rows(0, self.filled)
        }
    }

    /// `[B, len]` mask: true where a negative comes from the same case as the query (and so
    /// must be left out when `exclude_same_case` is on).
    pub fn same_case_mask(&self, query_cases: &[i64]) -> Vec<bool> {
        query_cases
            .iter()
            .flat_map(|&c| self.cases[..self.filled].iter().map(move |&k| k == c))
            .collect()
    }

    /// The queue's content for a checkpoint: keys, case tags and the write pointer.
    pub fn state(&self) -> Result<(Tensor, Tensor)> {
        let cases: Vec<f64> = self.cases.iter().map(|&c| c as f64).collect();
        let mut meta = cases;
        meta.push(self.ptr as f64);
        meta.push(self.filled as f64);
        Ok((
            Tensor::from_vec(vec![self.capacity, self.dim], self.keys.to_f32_vec()?)?,
            Tensor::from_vec(vec![meta.len()], meta)?,
        ))
    }

    pub fn restore(&mut self, keys: &Tensor, meta: &Tensor) -> Result<()> {
        let meta = meta.to_f64_vec()?;
        if keys.shape() != [self.capacity, self.dim] || meta.len() != self.capacity + 2 {
            return Err(Error::config(format!(
                "checkpoint queue {:?} does not fit a queue of {} x {}",
                keys.shape(),
                self.capacity,
                self.dim
            )));
        }
        self.keys = Tensor::from_vec(vec![self.capacity, self.dim], keys.to_f32_vec()?)?;
        self.cases = meta[..self.capacity].iter().map(|&c| c as i64).collect();
        self.ptr = meta[self.capacity] as usize;
        self.filled = meta[self.capacity + 1] as usize;
        Ok(())
    }
}

/// `key = m * key + (1 - m) * query` for every parameter (same names, same order).
pub fn momentum_update(key: &mut ParamStore, query: &ParamStore, m: f64) -> Result<()> {
    if key.len() != query.len() {
        return Err(Error::config("momentum update between models of different shapes"));
    }
    for (k, q) in key.params_mut().iter_mut().zip(query.params()) {
        if k.value.shape() != q.value.shape() {
            return Err(Error::shape(
                "momentum_update",
                format!("{}: {:?} vs {:?}", k.name, k.value.shape(), q.value.shape()),
            ));
        }
    }
    if key.params().iter().all(|k| k.value.is_cpu()) {
        for (k, q) in key.params_mut().iter_mut().zip(query.params()) {
            k.value = pointwise::add(&pointwise::scale(&k.value, m)?, &pointwise::scale(&q.value, 1.0 - m)?)?;
        }
        return Ok(());
    }
    momentum_update_cuda(key, query, m)
}

/// The CUDA momentum update: one fused launch per 96 tensors (`kernels/optim.cu`).
fn momentum_update_cuda(key: &mut ParamStore, query: &ParamStore, m: f64) -> Result<()> {
    use crate::device::cuda::optim::{StepRule, TensorSlot, multi_tensor_calls};

    let mut slots = Vec::with_capacity(key.len());
    let mut device = None;
    for (k, q) in key.params_mut().iter_mut().zip(query.params()) {
        let on_cpu = || Error::Device(format!("momentum update: {} is on the CPU in one model only", k.name));
        let qs = q.value.cuda_storage().ok_or_else(on_cpu)?;
        let len = k.value.numel();
        let ks = k.value.cuda_storage_mut().ok_or_else(on_cpu)?;
        device.get_or_insert(ks.device());
        slots.push(TensorSlot {
            param: ks.device_ptr_mut()?,
            grad: qs.device_ptr(),
            state1: 0,
            state2: 0,
            len,
        });
    }
    let Some(device) = device else { return Ok(()) };
    let calls = multi_tensor_calls(&slots, &StepRule::Lerp { m })?;
    // SAFETY: every address belongs to a CUDA parameter of the two stores, of the length given
    // (shapes checked above), kept alive by the stores until the stream runs the launch.
    unsafe { device.run(&calls) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys of dim 2 as a `[len / 2, 2]` tensor.
    fn keys(v: &[f32]) -> Tensor {
        Tensor::from_vec(vec![v.len() / 2, 2], v.to_vec()).unwrap()
    }

    #[test]
    fn queue_is_fifo_and_tracks_cases() {
        let mut q = KeyQueue::new(4, 2).unwrap();
        assert!(q.is_empty());
        q.enqueue(&keys(&[1.0, 1.0, 2.0, 2.0]), &[10, 11]).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q.negatives().unwrap().shape(), &[2, 2]);
        q.enqueue(&keys(&[3.0, 3.0, 4.0, 4.0]), &[12, 10]).unwrap();
        q.enqueue(&keys(&[5.0, 5.0, 6.0, 6.0]), &[13, 14]).unwrap();
        // The oldest batch (1, 2) was overwritten in place.
        assert_eq!(
            q.negatives().unwrap().as_slice::<f32>().unwrap(),
            &[5.0, 5.0, 6.0, 6.0, 3.0, 3.0, 4.0, 4.0]
        );
        assert_eq!(
            q.same_case_mask(&[10, 13]),
            vec![false, false, false, true, true, false, false, false]
        );
        assert!(q.enqueue(&keys(&[0.0; 6]), &[1, 2, 3]).is_err(), "3 does not divide 4");
        let (keys, meta) = q.state().unwrap();
        let mut r = KeyQueue::new(4, 2).unwrap();
        r.restore(&keys, &meta).unwrap();
        assert_eq!(
            r.negatives().unwrap().as_slice::<f32>().unwrap(),
            q.negatives().unwrap().as_slice::<f32>().unwrap()
        );
        assert_eq!(r.same_case_mask(&[10]), q.same_case_mask(&[10]));
    }

    #[test]
    fn momentum_update_mixes_weights() {
        let mut key = ParamStore::new();
        key.add("w", Tensor::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap());
        let mut query = ParamStore::new();
        query.add("w", Tensor::from_vec(vec![2], vec![3.0f32, -2.0]).unwrap());
        momentum_update(&mut key, &query, 0.75).unwrap();
        assert_eq!(key.params()[0].value.as_slice::<f32>().unwrap(), &[1.5, 1.0]);
        // m = 1 freezes the key encoder; m = 0 copies the query encoder.
        momentum_update(&mut key, &query, 1.0).unwrap();
        assert_eq!(key.params()[0].value.as_slice::<f32>().unwrap(), &[1.5, 1.0]);
        momentum_update(&mut key, &query, 0.0).unwrap();
        assert_eq!(key.params()[0].value.as_slice::<f32>().unwrap(), &[3.0, -2.0]);
    }
}
