//! `embed` on the CUDA backend (a GPU, or without one the CPU emulation of
//! `tests/kernel_emu`) against the same run on the CPU: every output (means, per-residue
//! vectors, `<cls>` vectors of layers 0, 1 and 2, contacts) of the esm_tiny fixture on
//! the embed fixture's four proteins, long ones as windows, in f32, and in f16 and bf16
//! with the flash attention. Without a CUDA device it prints
//! `SKIP: no CUDA device: …` and returns.

mod common;
mod cuda_common;
mod kernel_emu;

use std::collections::BTreeMap;
use std::path::Path;

use cuda_common::{detail, fixture, gpu};
use qf_engine::backend::cuda::AttentionKernel;
use qf_engine::embed::{embed_fasta, EmbedJob, Format, Include, LengthPolicy};
use qf_engine::model::ContactModel;
use qf_engine::{DType, Device};

/// Worst relative error of any output tensor against the CPU, about 3× the worst
/// measured on the CPU emulation of CUDA (2026-12-06; the `detail` lines):
///
/// | dtype | worst measured | bound |
/// |---|---|---|
/// | f32 (flash falls back to the unfused path in f32) | 8.1e-7 (a per-residue state) | 3e-6 |
/// | f16 | 2.3e-3 (a `<cls>` state) | 7e-3 |
/// | bf16 | 1.7e-2 (a `<cls>` state) | 5e-2 |
///
/// Half precision rounds every stored activation (unit roundoff 4.9e-4 in f16, 3.9e-3 in
/// bf16) through two layers; a broken kernel gives errors of order one.
fn tol(dt: DType) -> f64 {
    match dt {
        DType::F32 => 3e-6,
        DType::F16 => 7e-3,
        _ => 5e-2,
    }
}

fn job(out: &Path) -> EmbedJob {
    EmbedJob {
        input: fixture("embed/sequences.fasta"),
        output: out.to_path_buf(),
        model_source: "esm_tiny".into(),
        layers: vec![0, 1, 2],
        include: Include { mean: true, per_tok: true, bos: true, contacts: true },
        length: LengthPolicy::Windows { max_len: 42 },
        max_tokens: 100,
        format: Format::Safetensors { shard_bytes: 1 << 20 },
        resume: false,
        show_progress: false,
    }
}

fn read_all(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in st.tensors() {
                let v = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
                all.insert(name, v);
            }
        }
    }
    all
}

fn embed_on(device: &Device, dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let mut model = ContactModel::from_pretrained(&fixture("esm_tiny"), 0).unwrap().0;
    model.params.to_device(device).unwrap();
    let s = embed_fasta(&model, &job(dir), device).unwrap();
    assert_eq!(s.embedded, 4);
    assert_eq!(s.windowed, 2, "windows not exercised");
    read_all(dir)
}

fn matches_cpu(dt: DType, attention: AttentionKernel) {
    let Some(dev) = gpu(&format!("embed {dt} {attention} attention"), dt) else { return };
    dev.set_attention_kernel(attention);
    let tmp = tempfile::tempdir().unwrap();
    let cpu = embed_on(&Device::Cpu, &tmp.path().join("cpu"));
    let cuda = embed_on(&Device::Cuda(dev), &tmp.path().join("cuda"));
    assert_eq!(cpu.keys().collect::<Vec<_>>(), cuda.keys().collect::<Vec<_>>());
    assert_eq!(cpu.len(), 40);
    let mut worst = (0f64, String::new());
    for (name, want) in &cpu {
        let e = common::rel_err(&cuda[name], want);
        if e > worst.0 {
            worst = (e, name.clone());
        }
        assert!(e <= tol(dt), "[{dt}, {attention}] {name}: CUDA differs from the CPU by {e:.2e} > {:.0e}", tol(dt));
    }
    detail(&format!("  embed [{dt}, {attention}]: {} tensors, worst rel err {:.2e} ({})", cpu.len(), worst.0, worst.1));
}

#[test]
fn embed_f16_flash_matches_cpu() {
    matches_cpu(DType::F16, AttentionKernel::Flash);
}

#[test]
fn embed_f32_unfused_matches_cpu() {
    matches_cpu(DType::F32, AttentionKernel::Unfused);
}

#[test]
fn embed_bf16_matches_cpu() {
    matches_cpu(DType::BF16, AttentionKernel::Flash);
}
