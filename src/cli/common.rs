//! Arguments and helpers shared by several commands.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;

use qf_engine::data::dataset::LabelledSet;
use qf_engine::data::fasta::{read_fasta, FastaLabels};
use qf_engine::data::pfam::read_pfam_split;
use qf_engine::data::stockholm::read_stockholm;
use qf_engine::model::lora::LoraConfig;
use qf_engine::tensor::Device;
use qf_engine::train::{DeviceChoice, Precision};

/// The adapters' shape (`--lora-*`), shared by `train` and `bench`.
#[derive(Args, Debug, Clone)]
pub struct LoraArgs {
    /// Projections that get adapters: query, key, value, attn_out, ffn_in, ffn_out (or all).
    #[arg(long, default_value = "query,value")]
    pub lora_targets: String,

    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,

    #[arg(long, default_value_t = 8.0)]
    pub lora_alpha: f64,

    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
}

impl LoraArgs {
    /// The adapters asked for, validated.
    pub fn config(&self) -> Result<LoraConfig> {
        let cfg = LoraConfig {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: LoraConfig::parse_targets(&self.lora_targets)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto (GPU if present), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,

    /// auto (fp32 on CPU, bf16 on GPU), fp32, fp16 (dynamic loss scaling; GPU only), bf16.
    /// On a CPU with AVX512-BF16, bf16 runs the products of the linear layers and of
    /// attention (and in training their backward products) on bf16-rounded operands with
    /// fp32 sums, as PyTorch's CPU autocast does; activations, the softmax, weights,
    /// gradients and optimizer state stay fp32 (see the README's Performance notes for
    /// speed and accuracy).
    #[arg(long, default_value = "auto")]
    pub precision: String,

    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,

    /// CUDA attention: flash (the fused kernel, rotary inside) or unfused (the reference
    /// path: rotary kernel, padded blocks, cuBLAS and a masked softmax).
    #[arg(long, default_value = "flash")]
    pub attention: String,

    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// How strictly model files are read.
#[derive(Args, Debug, Clone)]
pub struct WeightsArgs {
    /// Load weights, adapters and a resumed optimizer state even when they hold NaN or
    /// ±Inf (refused by default: such a model computes NaN for every input). For
    /// inspecting a broken checkpoint.
    #[arg(long)]
    pub allow_nonfinite: bool,
}

impl WeightsArgs {
    pub fn apply(&self) {
        qf_engine::model::checkpoint::set_allow_nonfinite(self.allow_nonfinite);
    }
}

/// Apply the process-wide device settings: CPU threads and the CUDA attention path.
pub fn apply_device_settings(a: &DeviceArgs) -> Result<()> {
    qf_engine::train::device::set_threads(a.threads);
    qf_engine::backend::cuda::device::set_default_attention(a.attention.parse()?);
    Ok(())
}

pub fn open_device(a: &DeviceArgs) -> Result<Device> {
    apply_device_settings(a)?;
    let (d, _, note) = qf_engine::train::device::open_for_inference(
        &a.device.parse::<DeviceChoice>()?,
        a.precision.parse::<Precision>()?,
    )?;
    if let Some(n) = note {
        eprintln!("{n}");
    }
    Ok(d)
}

/// A labelled set from a Pfam split directory or a FASTA/Stockholm file.
pub fn read_eval_set(
    data: Option<&Path>,
    split: &str,
    file: Option<&Path>,
    labels: Option<&Path>,
) -> Result<LabelledSet> {
    match (data, file) {
        (Some(d), _) => read_pfam_split(d, split),
        (None, Some(f)) => read_sequences(f, labels, true),
        (None, None) => bail!("give --data DIR (a Pfam split directory) or --file FASTA"),
    }
}

/// Sequences from FASTA or Stockholm; `labelled` reads families from headers or a TSV.
pub fn read_sequences(path: &Path, labels: Option<&Path>, labelled: bool) -> Result<LabelledSet> {
    let name = path.to_string_lossy();
    if name.ends_with(".sto") || name.ends_with(".sto.gz") || name.ends_with(".stk") {
        return read_stockholm(path);
    }
    let how = match (labelled, labels) {
        (_, Some(t)) => FastaLabels::Tsv(t.to_path_buf()),
        (true, None) => FastaLabels::Header,
        (false, None) => FastaLabels::None,
    };
    read_fasta(path, &how)
}
