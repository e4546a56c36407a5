//! `Tensor`: a shape and a reference-counted storage that lives on one device.
//!
//! CPU storage holds f32 (training) or f64 (finite-difference gradient checks); every CPU op is
//! generic over [`Element`]. CUDA storage holds f32. Cloning a tensor is cheap (the storage is
//! shared); ops never mutate their inputs, and in-place updates (optimizers) go through
//! [`Tensor::data_mut`], which copies first if the storage is shared.

use std::fmt;
use std::sync::Arc;

use crate::device::Device;
use crate::device::cuda::CudaStorage;
use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
        })
    }
}

#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// A floating-point element type the CPU ops are generic over.
pub trait Element:
    num_traits::Float
    + num_traits::FromPrimitive
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
    + Default
    + fmt::Debug
    + fmt::Display
    + Send
    + Sync
    + 'static
{
    const DTYPE: DType;
    fn slice(storage: &CpuStorage) -> Option<&[Self]>;
    fn vec_mut(storage: &mut CpuStorage) -> Option<&mut Vec<Self>>;
    fn wrap(data: Vec<Self>) -> CpuStorage;
    /// Lossless for f64, rounding for f32; used for constants in generic code.
    fn of(x: f64) -> Self;
    fn as_f64(self) -> f64;
    /// Runs `f` on a per-thread scratch buffer of `len` elements whose contents are
    /// unspecified (callers overwrite it), so hot loops do not allocate and zero large
    /// temporaries (im2col matrices) on every call.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

thread_local! {
    static SCRATCH_F32: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static SCRATCH_F64: std::cell::Cell<Vec<f64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The buffer is taken out of its slot while in use: a re-entrant call (rayon may run another
/// task on this thread inside `f`) finds an empty slot and allocates its own.
fn with_slot<T: Copy + Default, R>(
    slot: &'static std::thread::LocalKey<std::cell::Cell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut buf = slot.take();
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    let out = f(&mut buf[..len]);
    slot.set(buf);
    out
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn slice(storage: &CpuStorage) -> Option<&[f32]> {
        match storage {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn vec_mut(storage: &mut CpuStorage) -> Option<&mut Vec<f32>> {
        match storage {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(data: Vec<f32>) -> CpuStorage {
        CpuStorage::F32(data)
    }
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        with_slot(&SCRATCH_F32, len, f)
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn slice(storage: &CpuStorage) -> Option<&[f64]> {
        match storage {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn vec_mut(storage: &mut CpuStorage) -> Option<&mut Vec<f64>> {
        match storage {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(data: Vec<f64>) -> CpuStorage {
        CpuStorage::F64(data)
    }
    fn of(x: f64) -> f64 {
        x
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
        with_slot(&SCRATCH_F64, len, f)
    }
}

#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {}, {})", self.shape, self.dtype(), self.device_name())
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub fn from_storage(shape: Vec<usize>, storage: Storage) -> Tensor {
        Tensor {
            shape,
            storage: Arc::new(storage),
        }
    }

    /// A CPU tensor holding `data` with the given shape.
    pub fn from_vec<T: Element>(shape: impl Into<Vec<usize>>, data: Vec<T>) -> Result<Tensor> {
        let shape = shape.into();
        if numel(&shape) != data.len() {
            return Err(Error::shape(
                "from_vec",
                format!("shape {shape:?} needs {} elements, got {}", numel(&shape), data.len()),
            ));
        }
        Ok(Tensor::from_storage(shape, Storage::Cpu(T::wrap(data))))
    }

    /// Like `from_vec` for callers that built the data to fit the shape themselves.
    pub(crate) fn cpu<T: Element>(shape: Vec<usize>, data: Vec<T>) -> Tensor {
        debug_assert_eq!(numel(&shape), data.len());
        Tensor::from_storage(shape, Storage::Cpu(T::wrap(data)))
    }

    pub fn full(shape: impl Into<Vec<usize>>, value: f64, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = numel(&shape);
        match dtype {
            DType::F32 => Tensor::cpu(shape, vec![value as f32; n]),
            DType::F64 => Tensor::cpu(shape, vec![value; n]),
        }
    }

    pub fn zeros(shape: impl Into<Vec<usize>>, dtype: DType) -> Tensor {
        Tensor::full(shape, 0.0, dtype)
    }

    /// Zeros with the shape, dtype and device of `self` (filled on the device, no copy).
    pub fn zeros_like(&self) -> Result<Tensor> {
        match &*self.storage {
            Storage::Cuda(c) => Ok(Tensor::from_storage(
                self.shape.clone(),
                Storage::Cuda(CudaStorage::zeros(&c.device(), self.numel())?),
            )),
            Storage::Cpu(_) => Ok(Tensor::zeros(self.shape.clone(), self.dtype())),
        }
    }

    /// Values drawn uniformly from [lo, hi).
    pub fn uniform(shape: impl Into<Vec<usize>>, lo: f64, hi: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let shape = shape.into();
        let data: Vec<f64> = (0..numel(&shape)).map(|_| rng.range(lo, hi)).collect();
        Tensor::cpu(shape, data).to_dtype(dtype).expect("cpu cast cannot fail")
    }

    /// Values drawn from N(0, std^2).
    pub fn randn(shape: impl Into<Vec<usize>>, std: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let shape = shape.into();
        let data: Vec<f64> = (0..numel(&shape)).map(|_| std * rng.normal()).collect();
        Tensor::cpu(shape, data).to_dtype(dtype).expect("cpu cast cannot fail")
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// The shape as [N, C, H, W], or a shape error naming `op`.
    pub fn dims4(&self, op: &'static str) -> Result<[usize; 4]> {
        match self.shape[..] {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(Error::shape(
                op,
                format!("expected an NCHW tensor, got shape {:?}", self.shape),
            )),
        }
    }

    /// The shape as [rows, cols], or a shape error naming `op`.
    pub fn dims2(&self, op: &'static str) -> Result<[usize; 2]> {
        match self.shape[..] {
            [r, c] => Ok([r, c]),
            _ => Err(Error::shape(
                op,
                format!("expected a 2-D tensor, got shape {:?}", self.shape),
            )),
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(_)) => DType::F32,
            Storage::Cpu(CpuStorage::F64(_)) => DType::F64,
            Storage::Cuda(_) => DType::F32,
        }
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(c) => Device::Cuda(c.device()),
        }
    }

    fn device_name(&self) -> String {
        self.device().to_string()
    }

    pub fn is_cpu(&self) -> bool {
        matches!(&*self.storage, Storage::Cpu(_))
    }

    pub fn cuda_storage(&self) -> Option<&CudaStorage> {
        match &*self.storage {
            Storage::Cuda(c) => Some(c),
            Storage::Cpu(_) => None,
        }
    }

    /// The CPU data as a slice of `T`; an error on another device or dtype.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        match &*self.storage {
            Storage::Cpu(c) => T::slice(c).ok_or_else(|| {
                Error::dtype(
                    "as_slice",
                    format!("tensor holds {}, asked for {}", self.dtype(), T::DTYPE),
                )
            }),
            Storage::Cuda(_) => Err(Error::Device(
                "as_slice needs a CPU tensor; copy it with to_device first".into(),
            )),
        }
    }

    /// Mutable CPU data; copies the storage first if another tensor shares it.
    pub fn data_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        let dtype = self.dtype();
        match Arc::make_mut(&mut self.storage) {
            Storage::Cpu(c) => T::vec_mut(c)
                .map(|v| v.as_mut_slice())
                .ok_or_else(|| Error::dtype("data_mut", format!("tensor holds {dtype}, asked for {}", T::DTYPE))),
            Storage::Cuda(_) => Err(Error::Device("data_mut needs a CPU tensor".into())),
        }
    }

    /// Mutable CUDA storage; copies first if shared.
    pub fn cuda_storage_mut(&mut self) -> Option<&mut CudaStorage> {
        match Arc::make_mut(&mut self.storage) {
            Storage::Cuda(c) => Some(c),
            Storage::Cpu(_) => None,
        }
    }

    /// The data copied to the host as f64, whatever the device and dtype.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v.iter().map(|&x| x as f64).collect()),
            Storage::Cpu(CpuStorage::F64(v)) => Ok(v.clone()),
            Storage::Cuda(c) => Ok(c.to_host()?.into_iter().map(|x| x as f64).collect()),
        }
    }

    /// The data copied to the host as f32, whatever the device and dtype.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v.clone()),
            Storage::Cpu(CpuStorage::F64(v)) => Ok(v.iter().map(|&x| x as f32).collect()),
            Storage::Cuda(c) => c.to_host(),
        }
    }

    /// A single-element tensor's value (copies to the host).
    pub fn scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "scalar",
                format!("tensor of shape {:?} is not a scalar", self.shape),
            ));
        }
        Ok(self.to_f64_vec()?[0])
    }

    /// The same data with a new element type (CPU only; CUDA tensors are f32).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        match (&*self.storage, dtype) {
            (Storage::Cpu(CpuStorage::F32(v)), DType::F64) => Ok(Tensor::cpu(
                self.shape.clone(),
                v.iter().map(|&x| x as f64).collect::<Vec<f64>>(),
            )),
            (Storage::Cpu(CpuStorage::F64(v)), DType::F32) => Ok(Tensor::cpu(
                self.shape.clone(),
                v.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
            )),
            _ => Err(Error::dtype(
                "to_dtype",
                format!("CUDA tensors hold f32; cannot convert to {dtype}"),
            )),
        }
    }

    /// A copy on `device` (or `self` if it is already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        match (&*self.storage, device) {
            (Storage::Cpu(_), Device::Cpu) => Ok(self.clone()),
            (Storage::Cuda(c), Device::Cpu) => Ok(Tensor::cpu(self.shape.clone(), c.to_host()?)),
            (Storage::Cpu(_), Device::Cuda(dev)) => {
                let host = self.to_f32_vec()?;
                Ok(Tensor::from_storage(
                    self.shape.clone(),
                    Storage::Cuda(CudaStorage::from_host(dev, &host)?),
                ))
            }
            (Storage::Cuda(c), Device::Cuda(dev)) => {
                if c.device().ordinal() == dev.ordinal() {
                    Ok(self.clone())
                } else {
                    let host = c.to_host()?;
                    Ok(Tensor::from_storage(
                        self.shape.clone(),
                        Storage::Cuda(CudaStorage::from_host(dev, &host)?),
                    ))
                }
            }
        }
    }

    /// The same storage seen with another shape of the same element count.
    pub fn reshape(&self, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        let shape = shape.into();
        if numel(&shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} ({} elements) as {shape:?}", self.shape, self.numel()),
            ));
        }
        Ok(Tensor {
            shape,
            storage: self.storage.clone(),
        })
    }

    /// Rows `start..start + len` of the leading axis, copied (CPU).
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<Tensor> {
        if self.shape.is_empty() || start + len > self.shape[0] {
            return Err(Error::shape(
                "narrow_rows",
                format!("rows {start}..{} of {:?}", start + len, self.shape),
            ));
        }
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = len;
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(Tensor::cpu(shape, v[start * row..(start + len) * row].to_vec())),
            Storage::Cpu(CpuStorage::F64(v)) => Ok(Tensor::cpu(shape, v[start * row..(start + len) * row].to_vec())),
            Storage::Cuda(_) => Err(Error::Device("narrow_rows needs a CPU tensor".into())),
        }
    }

    /// True when both tensors share one storage (no copy was made).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }
}

/// Checks that all tensors are on the CPU with one dtype, and returns it.
pub fn common_cpu_dtype(op: &'static str, tensors: &[&Tensor]) -> Result<DType> {
    let first = tensors[0].dtype();
    for t in tensors {
        if !t.is_cpu() {
            return Err(Error::Device(format!("{op}: mixed CPU and CUDA operands")));
        }
        if t.dtype() != first {
            return Err(Error::dtype(op, format!("mixed {first} and {} operands", t.dtype())));
        }
    }
    Ok(first)
}

/// Runs `$body` with the type alias `$T` bound to the element type shared by the CPU tensors
/// listed, so that one generic kernel call serves f32 and f64.
#[macro_export]
macro_rules! with_cpu_dtype {
    ($op:expr, [$($t:expr),+ $(,)?], $T:ident => $body:expr) => {{
        match $crate::tensor::common_cpu_dtype($op, &[$($t),+])? {
            $crate::tensor::DType::F32 => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
        }
    }};
}
