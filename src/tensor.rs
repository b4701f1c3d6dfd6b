//! Tensors: a shape, a dtype and device storage, shared by reference counting.
//!
//! Tensors are row-major and contiguous. Activations are 2-D `[tokens, features]`
//! (sequences are packed end to end, see [`crate::data::batch::PackedBatch`]).
//! A tensor is immutable once it is shared; in-place updates (optimizer steps,
//! gradient accumulation) need the only reference (`as_mut_slice`), which the
//! training loop has once the tape that borrowed the weights is gone.
//!
//! Every tensor carries an id: the autograd tape keys gradients by it. Cloning a
//! `Tensor` clones the handle (same id, same storage).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::backend::cpu::CpuStorage;
use crate::backend::cuda::{CudaDevice, CudaStorage};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I32,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a tensor lives.
#[derive(Clone, Debug)]
pub enum Device {
    Cpu,
    Cuda(CudaDevice),
}

impl Device {
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(d) => format!("cuda:{}", d.ordinal()),
        }
    }

    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.ordinal() == b.ordinal(),
            _ => false,
        }
    }
}

/// Device memory of a tensor.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// Identity of a tensor for the autograd tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Element types that the CPU backend stores.
pub trait Element: Copy + Send + Sync + 'static + std::fmt::Debug {
    const DTYPE: DType;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    fn wrap(v: Vec<Self>) -> CpuStorage;
}

macro_rules! impl_element {
    ($t:ty, $dt:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dt;
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$dt(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$dt(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$dt(v)
            }
        }
    };
}
impl_element!(f32, F32);
impl_element!(f64, F64);
impl_element!(i32, I32);

/// A tensor handle.
#[derive(Clone, Debug)]
pub struct Tensor {
    id: TensorId,
    shape: Vec<usize>,
    dtype: DType,
    storage: Arc<Storage>,
    requires_grad: bool,
}

impl Tensor {
    /// Wrap existing storage (used by the backends).
    pub fn from_storage(storage: Storage, shape: &[usize], dtype: DType) -> Tensor {
        Tensor { id: TensorId::fresh(), shape: shape.to_vec(), dtype, storage: Arc::new(storage), requires_grad: false }
    }

    /// A CPU tensor owning `data`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("tensor data has {} elements but shape {:?} needs {}", data.len(), shape, n);
        }
        Ok(Tensor::from_storage(Storage::Cpu(T::wrap(data)), shape, T::DTYPE))
    }

    /// A CPU tensor of zeros.
    pub fn zeros_cpu(shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let s = match dtype {
            DType::F32 => CpuStorage::F32(crate::backend::cpu::filled(n, 0.0)),
            DType::F64 => CpuStorage::F64(crate::backend::cpu::filled(n, 0.0)),
            DType::I32 => CpuStorage::I32(crate::backend::cpu::filled(n, 0)),
            d => bail!("the CPU backend does not store {d} tensors (it computes in f32 or f64)"),
        };
        Ok(Tensor::from_storage(Storage::Cpu(s), shape, dtype))
    }

    /// Zeros of the given shape and dtype on `device`.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Tensor::zeros_cpu(shape, dtype),
            Device::Cuda(d) => {
                let n: usize = shape.iter().product();
                Ok(Tensor::from_storage(Storage::Cuda(d.zeros(dtype, n)?), shape, dtype))
            }
        }
    }

    /// Zeros with this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(&self.shape, self.dtype, &self.device())
    }

    /// A float tensor from f32 values, converted to `dtype` on `device`.
    pub fn from_f32(data: Vec<f32>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        // Moved first, converted where it lives: the CPU backend holds no half types.
        Tensor::from_vec(data, shape)?.to_device(device)?.to_dtype(dtype)
    }

    /// An i32 tensor (ids, labels, offsets) on `device`.
    pub fn from_i32(data: Vec<i32>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data, shape)?.to_device(device)
    }

    pub fn id(&self) -> TensorId {
        self.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// The same tensor, marked as needing (or not) a gradient.
    pub fn with_requires_grad(mut self, on: bool) -> Tensor {
        self.requires_grad = on;
        self
    }

    /// Mark in place (parameters are frozen or unfrozen this way).
    pub fn set_requires_grad(&mut self, on: bool) {
        self.requires_grad = on;
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(c) => Device::Cuda(c.device().clone()),
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(&*self.storage, Storage::Cpu(_))
    }

    /// `(rows, cols)` of a 2-D tensor.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => bail!("expected a 2-D tensor, got shape {:?}", self.shape),
        }
    }

    /// The same storage under another shape with the same element count. The result is a
    /// new tensor id: use only outside the tape (or through an op that records the reshape).
    pub fn reshaped(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            bail!("cannot reshape {:?} into {:?}", self.shape, shape);
        }
        Ok(Tensor {
            id: TensorId::fresh(),
            shape: shape.to_vec(),
            dtype: self.dtype,
            storage: self.storage.clone(),
            requires_grad: false,
        })
    }

    /// Host slice of a CPU tensor of element type `T`.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        match &*self.storage {
            Storage::Cpu(s) => {
                T::slice(s).ok_or_else(|| anyhow::anyhow!("tensor has dtype {}, expected {}", self.dtype, T::DTYPE))
            }
            Storage::Cuda(_) => bail!("tensor is on the GPU; copy it to the CPU first"),
        }
    }

    /// Mutable host slice; fails if the storage is shared with another handle.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T]> {
        let dtype = self.dtype;
        match self.storage_mut()? {
            Storage::Cpu(s) => {
                T::slice_mut(s).ok_or_else(|| anyhow::anyhow!("tensor has dtype {dtype}, expected {}", T::DTYPE))
            }
            Storage::Cuda(_) => bail!("tensor is on the GPU; use the CUDA backend"),
        }
    }

    /// Mutable storage; fails if the storage is shared (e.g. still held by a tape).
    pub fn storage_mut(&mut self) -> Result<&mut Storage> {
        let shape = self.shape.clone();
        Arc::get_mut(&mut self.storage).ok_or_else(|| {
            anyhow::anyhow!(
                "tensor {shape:?} is shared and cannot be updated in place (drop the tape or other handles first)"
            )
        })
    }

    /// Make the storage unique to this handle, copying it if it is shared, so that it can
    /// be updated in place without changing what other handles see.
    pub fn make_unique(&mut self) -> Result<()> {
        if Arc::get_mut(&mut self.storage).is_none() {
            let copy = self.deep_clone()?;
            self.storage = copy.storage;
        }
        Ok(())
    }

    /// Copy to the host as f32 (from any dtype and device).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s.to_f32_vec()),
            Storage::Cuda(c) => c.to_f32_vec(),
        }
    }

    /// Copy to the host as f64 (from any float dtype and device).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F64(v)) => Ok(v.clone()),
            _ => Ok(self.to_vec_f32()?.into_iter().map(f64::from).collect()),
        }
    }

    /// Copy to the host as i32.
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        match &*self.storage {
            Storage::Cpu(CpuStorage::I32(v)) => Ok(v.clone()),
            Storage::Cuda(c) => c.to_i32_vec(),
            _ => bail!("tensor has dtype {}, expected i32", self.dtype),
        }
    }

    /// The single value of a one-element tensor.
    pub fn scalar_f32(&self) -> Result<f32> {
        if self.numel() != 1 {
            bail!("expected a one-element tensor, got shape {:?}", self.shape);
        }
        Ok(self.to_vec_f32()?[0])
    }

    /// Convert the element type (a new tensor; same tensor when the dtype already matches).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        match &*self.storage {
            Storage::Cpu(s) => Ok(Tensor::from_storage(Storage::Cpu(s.to_dtype(dtype)?), &self.shape, dtype)),
            Storage::Cuda(c) => Ok(Tensor::from_storage(Storage::Cuda(c.to_dtype(dtype)?), &self.shape, dtype)),
        }
    }

    /// Copy to a device (a new tensor; same tensor when it is already there). The copy keeps
    /// `requires_grad` so that parameters stay parameters.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().same(device) {
            return Ok(self.clone());
        }
        let storage = match (&*self.storage, device) {
            (Storage::Cpu(s), Device::Cuda(d)) => Storage::Cuda(d.upload(s)?),
            (Storage::Cuda(c), Device::Cpu) => Storage::Cpu(c.download()?),
            (Storage::Cuda(c), Device::Cuda(d)) => Storage::Cuda(d.upload(&c.download()?)?),
            (Storage::Cpu(_), Device::Cpu) => unreachable!("same device handled above"),
        };
        let dtype = match &storage {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(c) => c.dtype(),
        };
        let mut t = Tensor::from_storage(storage, &self.shape, dtype);
        t.requires_grad = self.requires_grad;
        Ok(t)
    }

    /// A deep copy with a fresh id (for snapshots in tests and checkpoints).
    pub fn deep_clone(&self) -> Result<Tensor> {
        let storage = match &*self.storage {
            Storage::Cpu(s) => Storage::Cpu(s.clone()),
            Storage::Cuda(c) => Storage::Cuda(c.duplicate()?),
        };
        let mut t = Tensor::from_storage(storage, &self.shape, self.dtype);
        t.requires_grad = self.requires_grad;
        Ok(t)
    }
}

/// Check that two tensors have the same shape, naming them in the error.
pub fn ensure_same_shape(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.shape() != b.shape() {
        bail!("{what}: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    Ok(())
}
