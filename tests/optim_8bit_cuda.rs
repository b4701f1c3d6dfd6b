//! The block-wise 8-bit AdamW kernel (`kernels/adam8bit.cu`) against the CPU reference
//! (`optim::adam8bit`) on fresh random inputs, the 8-bit optimizer on the GPU against the
//! CPU one (including checkpoint names and a save → restore round trip), and the kernel's
//! bandwidth. Every test needs a GPU and prints `SKIP: no CUDA device: <reason>` without.
//!
//! Tolerance (documented in `src/optim/optimizer.rs`): parameters, half copies and block
//! absmax values bit-identical; codes identical up to requantisation ties (a code one
//! away from the CPU's only where `x / absmax` lies exactly on the fp32 midpoint of the two
//! map entries). The optimizer-level test expects exact equality: the two sides decide a
//! tie by the same comparison on the same values.

mod common;
mod cuda_common;
mod kernel_emu;

use std::time::Instant;

use common::TestRng;
use qf_engine::autograd::Grads;
use qf_engine::backend::cpu::adam8bit::QuantizedMoments;
use qf_engine::backend::cpu::adamw::{adamw_update, AdamConsts, AdamHyper};
use qf_engine::backend::cpu::quant8::{signed_dynamic_map, unsigned_dynamic_map, QuantMap, BLOCK_SIZE};
use qf_engine::backend::cuda::adam8bit::{adam8bit_step, DeviceQuantizedMoments};
use qf_engine::backend::cuda::CudaDevice;
use qf_engine::model::checkpoint::{write_safetensors, MappedSafetensors, NamedTensor};
use qf_engine::model::Params;
use qf_engine::ops::adam8bit::upload_maps;
use qf_engine::optim::adam8bit::{self, Adam8bitState};
use qf_engine::optim::{OptimConfig, Optimizer, OptimizerKind};
use qf_engine::{DType, Device, Tensor};

/// The GPU (or, without one, the CPU emulation of CUDA), or `None` after printing why
/// the test is skipped.
fn cuda() -> Option<CudaDevice> {
    cuda_common::open_cuda("optim_8bit_cuda")
}

fn randn(rng: &mut TestRng, n: usize, std: f64) -> Vec<f32> {
    rng.normals(n, std).into_iter().map(|x| x as f32).collect()
}

/// Gradients with a heavy tail: a few elements 100× larger.
fn grads(rng: &mut TestRng, n: usize) -> Vec<f32> {
    let mut g = randn(rng, n, 1e-2);
    for _ in 0..n / 500 + 1 {
        let i = rng.below(n);
        g[i] *= 100.0;
    }
    g
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn moments(s: &Adam8bitState) -> &QuantizedMoments {
    match s {
        Adam8bitState::Blockwise8bit(q) => q,
        Adam8bitState::Fp32 { .. } => panic!("expected 8-bit state"),
    }
}

/// [`common::quant::tie_differences`], with at most one tie per 10,000 codes.
fn check_codes(what: &str, cpu: &[u8], gpu: &[u8], x_new: impl Fn(usize) -> f32, absmax: &[f32], map: &QuantMap) {
    let ties = common::quant::tie_differences(what, cpu, gpu, x_new, absmax, map);
    assert!(ties * 10_000 <= cpu.len(), "{what}: {ties} tie differences in {} codes", cpu.len());
}

/// One kernel step against the CPU reference, starting both from the same CPU state.
fn compare_one_step(dev: &CudaDevice, maps: &Tensor, rng: &mut TestRng, n: usize, state: &mut Adam8bitState, t: u64) {
    let d = Device::Cuda(dev.clone());
    let mut p = randn(rng, n, 0.05);
    let mut g = grads(rng, n);
    if t == 2 {
        g[n / 3] = f32::NAN;
        g[n / 2] = f32::INFINITY;
    }
    let hp = AdamHyper { lr: 3e-3, weight_decay: 0.05, step: t, grad_scale: 0.5, ..AdamHyper::default() };
    let c = AdamConsts::new(&hp).unwrap();
    let before = moments(state).clone();
    // GPU from the same inputs.
    let p_gpu = Tensor::from_f32(p.clone(), &[n], DType::F32, &d).unwrap();
    let g_gpu = Tensor::from_f32(g.clone(), &[n], DType::F32, &d).unwrap();
    let half = Tensor::zeros(&[n], DType::BF16, &d).unwrap();
    let scale = Tensor::from_f32(vec![0.5], &[1], DType::F32, &d).unwrap();
    let skip = Tensor::from_i32(vec![0], &[1], &d).unwrap();
    let mut q_gpu = DeviceQuantizedMoments::upload(dev, &before).unwrap();
    adam8bit_step(dev, &p_gpu, &g_gpu, &mut q_gpu, maps, Some(&half), &c, &scale, &skip).unwrap();
    // CPU reference.
    let p_old = p.clone();
    adam8bit::step(&mut p, &g, state, &hp).unwrap();
    let cpu = moments(state);
    let gpu = q_gpu.download().unwrap();
    let p_dev = p_gpu.to_vec_f32().unwrap();
    assert_eq!(bits(&p_dev), bits(&p), "n={n} t={t}: parameters differ");
    let want_half: Vec<f32> = p.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_eq!(bits(&half.to_vec_f32().unwrap()), bits(&want_half), "n={n} t={t}: bf16 copy differs");
    assert_eq!(bits(&gpu.m_absmax), bits(&cpu.m_absmax), "n={n} t={t}: m absmax differs");
    assert_eq!(bits(&gpu.v_absmax), bits(&cpu.v_absmax), "n={n} t={t}: v absmax differs");
    let (smap, umap) = (signed_dynamic_map(), unsigned_dynamic_map());
    // The updated moments of element i, recomputed from the state before the step.
    let updated = |i: usize| {
        let b = i / BLOCK_SIZE;
        let m = smap[before.m_codes[i] as usize] * before.m_absmax[b];
        let v = umap[before.v_codes[i] as usize] * before.v_absmax[b];
        let (_, m, v) = adamw_update(p_old[i], g[i], m, v, &c);
        (m, v)
    };
    check_codes("m codes", &cpu.m_codes, &gpu.m_codes, |i| updated(i).0, &cpu.m_absmax, smap);
    check_codes("v codes", &cpu.v_codes, &gpu.v_codes, |i| updated(i).1, &cpu.v_absmax, umap);
}

#[test]
fn adam8bit_kernel_matches_the_cpu_reference() {
    let Some(dev) = cuda() else { return };
    let maps = upload_maps(&dev).unwrap();
    let mut rng = TestRng::new(2024);
    // Whole blocks, a partial last block, many blocks (more than the grid: block-stride loop).
    for n in [4096usize, 3 * 4096 + 77, 1_000_003] {
        let mut state = Adam8bitState::new(n);
        for t in 1..=4 {
            compare_one_step(&dev, &maps, &mut rng, n, &mut state, t);
        }
    }
}

#[test]
fn skipped_step_writes_nothing() {
    let Some(dev) = cuda() else { return };
    let d = Device::Cuda(dev.clone());
    let maps = upload_maps(&dev).unwrap();
    let mut rng = TestRng::new(7);
    let n = 5000;
    let mut state = Adam8bitState::new(n);
    let p0 = randn(&mut rng, n, 0.1);
    let mut p = p0.clone();
    adam8bit::step(&mut p, &grads(&mut rng, n), &mut state, &AdamHyper::default()).unwrap();
    let q0 = moments(&state).clone();
    let p_gpu = Tensor::from_f32(p.clone(), &[n], DType::F32, &d).unwrap();
    let g_gpu = Tensor::from_f32(grads(&mut rng, n), &[n], DType::F32, &d).unwrap();
    let mut q = DeviceQuantizedMoments::upload(&dev, &q0).unwrap();
    let scale = Tensor::from_f32(vec![1.0], &[1], DType::F32, &d).unwrap();
    let skip = Tensor::from_i32(vec![1], &[1], &d).unwrap();
    let c = AdamConsts::new(&AdamHyper { step: 2, ..AdamHyper::default() }).unwrap();
    adam8bit_step(&dev, &p_gpu, &g_gpu, &mut q, &maps, None, &c, &scale, &skip).unwrap();
    assert_eq!(bits(&p_gpu.to_vec_f32().unwrap()), bits(&p));
    assert_eq!(q.download().unwrap(), q0);
}

/// A parameter store with 8-bit-sized tensors, a partial block, and small fp32-state ones.
fn params(rng: &mut TestRng) -> Params {
    let mut ps = Params::new();
    for (name, shape, decay) in [
        ("a.weight", vec![64usize, 100], true),
        ("a.bias", vec![300], false),
        ("b.weight", vec![1000, 77], true),
        ("c.weight", vec![4096], false),
    ] {
        let n: usize = shape.iter().product();
        ps.add(name, Tensor::from_vec(randn(rng, n, 0.05), &shape).unwrap(), decay).unwrap();
    }
    ps
}

fn step_both(cpu: (&mut Optimizer, &mut Params), gpu: (&mut Optimizer, &mut Params), rng: &mut TestRng, dev: &Device) {
    let (mut gc, mut gg) = (Grads::new(), Grads::new());
    for id in cpu.1.ids() {
        let t = cpu.1.get(id);
        let g = Tensor::from_vec(grads(rng, t.numel()), t.shape()).unwrap();
        gg.insert(gpu.1.get(id), g.to_device(dev).unwrap());
        gc.insert(t, g);
    }
    let sc = cpu.0.step(cpu.1, &gc, 2e-3, 0.25).unwrap();
    let sg = gpu.0.step(gpu.1, &gg, 2e-3, 0.25).unwrap();
    assert!(!sc.skipped && !sg.skipped);
    assert!((sc.grad_norm - sg.grad_norm).abs() <= 1e-4 * sc.grad_norm, "norms {} vs {}", sc.grad_norm, sg.grad_norm);
}

fn assert_same(cpu: (&Optimizer, &Params), gpu: (&Optimizer, &Params)) {
    for ((name, a), (_, b)) in cpu.1.iter().zip(gpu.1.iter()) {
        assert_eq!(bits(&a.to_vec_f32().unwrap()), bits(&b.to_vec_f32().unwrap()), "parameter {name} differs");
    }
    let (sa, sb): (Vec<NamedTensor>, Vec<NamedTensor>) =
        (cpu.0.state_tensors().unwrap(), gpu.0.state_tensors().unwrap());
    let names = |s: &[NamedTensor]| s.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&sa), names(&sb), "checkpoint names differ");
    for (a, b) in sa.iter().zip(&sb) {
        assert_eq!((a.dtype, &a.shape), (b.dtype, &b.shape), "{}", a.name);
        assert!(a.data == b.data, "optimizer state `{}` differs between CPU and GPU", a.name);
    }
    assert_eq!(cpu.0.state_bytes(), gpu.0.state_bytes());
}

#[test]
fn eight_bit_optimizer_on_the_gpu_matches_the_cpu_and_restores_from_checkpoints() {
    let Some(dev) = cuda() else { return };
    let d = Device::Cuda(dev.clone());
    let mut rng = TestRng::new(99);
    let mut pc = params(&mut rng);
    let mut pg = pc.clone();
    pg.to_device(&d).unwrap();
    let cfg = OptimConfig { kind: OptimizerKind::AdamW8bit, weight_decay: 0.1, ..OptimConfig::default() };
    let (mut oc, mut og) = (Optimizer::new(cfg.clone()), Optimizer::new(cfg.clone()));
    for _ in 0..3 {
        step_both((&mut oc, &mut pc), (&mut og, &mut pg), &mut rng, &d);
        assert_same((&oc, &pc), (&og, &pg));
    }
    // Save the GPU state, restore it into fresh optimizers on both devices, step on.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    write_safetensors(&path, &og.state_tensors().unwrap(), None).unwrap();
    let file = MappedSafetensors::open(&path).unwrap();
    let (mut rc, mut rg) = (Optimizer::new(cfg.clone()), Optimizer::new(cfg));
    rc.load_state(&file, &pc, og.step).unwrap();
    rg.load_state(&file, &pg, og.step).unwrap();
    assert_same((&rc, &pc), (&rg, &pg));
    step_both((&mut rc, &mut pc), (&mut rg, &mut pg), &mut rng, &d);
    assert_same((&rc, &pc), (&rg, &pg));
}

#[test]
fn adam8bit_kernel_bandwidth() {
    if cuda_common::emulated() {
        eprintln!("SKIP: bandwidth means nothing on the CPU emulation of CUDA [adam8bit_kernel_bandwidth]");
        return;
    }
    let Some(dev) = cuda() else { return };
    let d = Device::Cuda(dev.clone());
    let n = 64 << 20;
    let maps = upload_maps(&dev).unwrap();
    let p = Tensor::zeros(&[n], DType::F32, &d).unwrap();
    let g = Tensor::from_f32(vec![1e-3; n], &[n], DType::F32, &d).unwrap();
    let half = Tensor::zeros(&[n], DType::BF16, &d).unwrap();
    let mut q = DeviceQuantizedMoments::upload(&dev, &QuantizedMoments::zeros(n)).unwrap();
    let scale = Tensor::from_f32(vec![1.0], &[1], DType::F32, &d).unwrap();
    let skip = Tensor::from_i32(vec![0], &[1], &d).unwrap();
    let c = AdamConsts::new(&AdamHyper::default()).unwrap();
    let time = |f: &mut dyn FnMut()| {
        f();
        dev.synchronize().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            f();
        }
        dev.synchronize().unwrap();
        t0.elapsed().as_secs_f64() / 10.0
    };
    let t_step = time(&mut || adam8bit_step(&dev, &p, &g, &mut q, &maps, Some(&half), &c, &scale, &skip).unwrap());
    let big = Tensor::zeros(&[n * 4], DType::F32, &d).unwrap();
    let t_copy = time(&mut || drop(big.deep_clone().unwrap()));
    // Bytes the step must move per element: p read+write 8, g 4, codes read+write 4,
    // bf16 copy 2 (absmax: 16 bytes per 256 elements).
    let step_bw = n as f64 * (18.0 + 16.0 / 256.0) / t_step;
    let copy_bw = 2.0 * 16.0 * n as f64 / t_copy;
    println!(
        "adam8bit_step: {:.0} GB/s effective ({:.2} ms for {n} elements); device-to-device copy {:.0} GB/s; ratio {:.2}",
        step_bw / 1e9,
        t_step * 1e3,
        copy_bw / 1e9,
        step_bw / copy_bw
    );
    assert!(step_bw >= 0.7 * copy_bw, "the 8-bit step reaches {:.0}% of copy bandwidth", 100.0 * step_bw / copy_bw);
}
