//! Choosing where and in which precision to train.

use anyhow::{bail, Result};

use crate::backend::cuda::{device::unavailable_reason, CudaDevice};
use crate::ops::linear::CpuBf16;
use crate::tensor::{DType, Device};

/// `--device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when there is one, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Ok(DeviceChoice::Cuda(n)),
                None => bail!("unknown device `{s}`: use auto, cpu, cuda or cuda:N"),
            },
        }
    }
}

/// `--precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// fp32 on the CPU, bf16 on the GPU.
    Auto,
    Fp32,
    Fp16,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Precision::Auto),
            "fp32" | "f32" => Ok(Precision::Fp32),
            "fp16" | "f16" => Ok(Precision::Fp16),
            "bf16" => Ok(Precision::Bf16),
            _ => bail!("unknown precision `{s}`: use fp32, fp16 or bf16"),
        }
    }
}

/// Open the chosen device and fix the activation dtype. Returns the device and the
/// compute dtype. `Auto` falls back to the CPU and says why.
pub fn open(choice: &DeviceChoice, precision: Precision) -> Result<(Device, DType, Option<String>)> {
    let (device, note) = match choice {
        DeviceChoice::Cpu => (Device::Cpu, None),
        DeviceChoice::Cuda(n) => (Device::Cuda(CudaDevice::open(*n)?), None),
        DeviceChoice::Auto => match unavailable_reason() {
            Some(why) => (Device::Cpu, Some(format!("using the CPU: {why}"))),
            None => match CudaDevice::open(0) {
                Ok(d) => (Device::Cuda(d), None),
                Err(e) => (Device::Cpu, Some(format!("using the CPU: {e:#}"))),
            },
        },
    };
    let dtype = match (&device, precision) {
        (Device::Cpu, Precision::Auto | Precision::Fp32) => DType::F32,
        // Activations stay fp32; the linear layers multiply in bf16 (AVX512-BF16).
        (Device::Cpu, Precision::Bf16) => DType::F32,
        (Device::Cpu, Precision::Fp16) => {
            bail!("the CPU computes in fp32, or bf16 on a CPU with AVX512-BF16; Fp16 needs --device cuda")
        }
        (Device::Cuda(_), Precision::Auto | Precision::Bf16) => DType::BF16,
        (Device::Cuda(_), Precision::Fp16) => DType::F16,
        (Device::Cuda(_), Precision::Fp32) => DType::F32,
    };
    if device.is_cpu() {
        let mode = if precision == Precision::Bf16 { CpuBf16::Training } else { CpuBf16::Off };
        crate::ops::linear::set_cpu_bf16(mode)?;
    }
    if let Device::Cuda(d) = &device {
        d.set_compute_dtype(dtype)?;
    }
    Ok((device, dtype, note))
}

/// What a run computes in, for logs and results: the activation dtype, or on the CPU with
/// bf16 products on, those.
pub fn compute_label(device: &Device, dtype: DType) -> String {
    if device.is_cpu() && crate::ops::linear::cpu_bf16() != CpuBf16::Off {
        "bf16 (linear layers and attention; fp32 sums and elsewhere)".into()
    } else {
        dtype.name().into()
    }
}

/// [`open`] for the inference commands (predict, eval, embed, `bench --mode infer`). With
/// `--precision bf16` on the CPU, activations stay fp32 (the returned dtype) and the linear
/// layers multiply bf16-rounded operands with fp32 sums on AVX512-BF16, through weights
/// packed once (see [`crate::ops::linear::set_cpu_bf16`]).
pub fn open_for_inference(choice: &DeviceChoice, precision: Precision) -> Result<(Device, DType, Option<String>)> {
    let opened = open(choice, precision)?;
    if opened.0.is_cpu() && precision == Precision::Bf16 {
        crate::ops::linear::set_cpu_bf16(CpuBf16::Inference)?;
    }
    Ok(opened)
}

/// Use `n` threads for the CPU backend (0 = all cores), each flushing subnormal floats to
/// zero (see [`crate::backend::cpu::denormals`]), as does the calling thread. Only the
/// first call builds the pool.
pub fn set_threads(n: usize) {
    crate::backend::cpu::denormals::flush_denormals_on_this_thread();
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .start_handler(|_| crate::backend::cpu::denormals::flush_denormals_on_this_thread())
        .build_global();
}
