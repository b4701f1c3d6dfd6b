//! Every CUDA op, forward and backward, against the CPU op in f64 on fresh random
//! inputs, in f32, f16 and bf16 (docs/ARCHITECTURE.md tolerances: fp32 ≤ 1e-5, halves ≤ 1e-2,
//! NaN never passes). Odd sizes, several packed sequences of different lengths,
//! outputs poisoned with NaN before the kernels run, gradient buffers starting from
//! random values (accumulation checked). Dropout, casts and the AdamW step are checked
//! bit for bit. Without a GPU every test prints `SKIP: no CUDA device: …` and returns;
//! `harness_on_the_cpu_in_f32` runs the same cases with the CPU's f32 path in place of
//! the GPU (so CI proves the harness, and the GPU session spends its time on the GPU).

mod common;
mod cuda_common;
mod kernel_emu;

use approx::assert_relative_eq;
use common::TestRng;
use cuda_common::{check_op, detail, explained_tol, gpu, on_gpu, round_to, rounded, tol, Input, Target, DTYPES};
use half::{bf16, f16};
use qf_engine::backend::cpu::adamw::{adamw_update, AdamConsts, AdamHyper};
use qf_engine::backend::cpu::attention::prob_offsets;
use qf_engine::backend::cpu::philox::{dropout_keep, dropout_scale};
use qf_engine::backend::cuda::{self, CudaDevice};
use qf_engine::ops::cross_entropy::IGNORE_INDEX;
use qf_engine::ops::{self, SeqLayout};
use qf_engine::{DType, Device, Grads, Tape, Tensor};

fn uniform(rng: &mut TestRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

fn cuda_dev(d: &CudaDevice) -> Device {
    Device::Cuda(d.clone())
}

fn embedding_cases(t: &Target) {
    let mut rng = TestRng::new(101);
    {
        for (n, dim) in [(77usize, 37usize), (300, 96)] {
            let ids: Vec<i32> = (0..n).map(|i| if i % 5 == 0 { 5 } else { rng.below(33) as i32 }).collect();
            let scale: Vec<f64> = (0..n).map(|i| if i % 11 == 3 { 0.0 } else { 0.88 + 0.1 * rng.uniform() }).collect();
            let inputs = [
                Input::ints(ids),
                Input::param(&mut rng, DType::F32, &[33, dim], 0.0, 0.5, true),
                Input::aux(scale, &[n], DType::F64),
            ];
            let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::embedding(t, &i[0], &i[1], &i[2])?]);
            check_op(t, &mut rng, &format!("embedding {n}x{dim}"), &inputs, &f);
        }
    }
}

#[test]
fn embedding_with_token_dropout_scale_and_repeated_ids() {
    on_gpu("embedding", embedding_cases);
}

fn layer_norm_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(102));
    {
        // rows not a multiple of 8 (warps per block); dims below, at and above 32 lanes;
        // 7000 needs 56,000 bytes of shared memory (the raised limit).
        for (rows, dim, grad_params) in [(133usize, 45usize, true), (9, 1000, true), (70, 64, false), (9, 7000, true)] {
            let mut x = Input::act(&mut rng, dt, &[rows, dim], 2.0, true);
            x.data = rounded(dt, &x.data.iter().map(|v| v + 3.0).collect::<Vec<_>>()); // mean ≠ 0: two-pass variance
            let inputs = [
                x,
                Input::param(&mut rng, DType::F32, &[dim], 1.0, 0.2, grad_params),
                Input::param(&mut rng, DType::F32, &[dim], 0.0, 0.2, grad_params),
            ];
            let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::layer_norm(t, &i[0], &i[1], &i[2], 1e-5)?]);
            let what = format!("layer_norm {rows}x{dim}{}", if grad_params { "" } else { " frozen" });
            check_op(t, &mut rng, &what, &inputs, &f);
        }
    }
}

#[test]
fn layer_norm_trainable_frozen_and_wide() {
    on_gpu("layer_norm", layer_norm_cases);
}

fn linear_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(103));
    {
        for (n, k, m, bias, w_grad, x_grad) in [
            (67usize, 45usize, 29usize, true, true, true),
            (130, 96, 384, false, true, true),
            (33, 21, 17, true, false, true),
            (40, 64, 5000, true, true, false),
        ] {
            // The weight is an f32 master; its values are rounded to the compute dtype so
            // that the half copy the GEMM reads is exact and the reference sees the same.
            let mut inputs = vec![
                Input::act(&mut rng, dt, &[n, k], 1.0, x_grad),
                Input::param(&mut rng, dt, &[m, k], 0.0, 0.2, w_grad),
            ];
            if bias {
                inputs.push(Input::param(&mut rng, DType::F32, &[m], 0.0, 0.5, true));
            }
            let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::linear(t, &i[0], &i[1], i.get(2))?]);
            let what = format!("linear {n}x{k}->{m} bias={bias} dW={w_grad} dx={x_grad}");
            let e = check_op(t, &mut rng, &what, &inputs, &f);
            if w_grad {
                // gradients are listed for the inputs that take one: x (when trainable), W, b
                let dw_err = e.grads[usize::from(x_grad)];
                detail(&format!("  {what} [{dt}]: fp32-accumulated weight gradient error {dw_err:.2e}"));
            }
        }
    }
}

#[test]
fn linear_gemm_with_fp32_weight_gradients() {
    on_gpu("linear", linear_cases);
}

fn bias_gelu_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(104));
    {
        for (rows, cols, bias, x_grad) in
            [(70usize, 133usize, true, true), (9, 1920, true, true), (31, 45, false, true), (17, 40, true, false)]
        {
            let mut inputs = vec![Input::act(&mut rng, dt, &[rows, cols], 1.5, x_grad)];
            if bias {
                inputs.push(Input::param(&mut rng, DType::F32, &[cols], 0.0, 1.0, true));
            }
            let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::bias_gelu(t, &i[0], i.get(1))?]);
            check_op(t, &mut rng, &format!("bias_gelu {rows}x{cols} bias={bias} dx={x_grad}"), &inputs, &f);
        }
    }
}

#[test]
fn bias_gelu_with_and_without_bias() {
    on_gpu("bias_gelu", bias_gelu_cases);
}

fn elementwise_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(105));
    {
        // 13·77 = 1001 elements: vector accesses plus a scalar tail.
        let a = Input::act(&mut rng, dt, &[13, 77], 1.0, true);
        let b = Input::act(&mut rng, dt, &[13, 77], 1.0, true);
        let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::tanh(t, &i[0])?]);
        check_op(t, &mut rng, "tanh", std::slice::from_ref(&a), &f);
        let f = |t: &Tape, i: &[Tensor]| {
            let s = ops::add(t, &i[0], &i[1])?;
            let s2 = ops::scale(t, &s, -1.7)?;
            // i[0] feeds two ops: its gradient buffer accumulates twice
            Ok(vec![ops::add(t, &s2, &i[0])?, s])
        };
        check_op(t, &mut rng, "add/scale", &[a, b], &f);
    }
}

#[test]
fn tanh_add_and_scale() {
    on_gpu("elementwise", elementwise_cases);
}

#[test]
fn scale_by_device_scalar_reads_the_factor_on_the_device() {
    for dt in DTYPES {
        let Some(dev) = gpu("scale_by_device_scalar", dt) else { return };
        let mut rng = TestRng::new(106);
        let x = rounded(dt, &rng.normals(1001, 1.0));
        let t = Tensor::from_f32(x.iter().map(|&v| v as f32).collect(), &[1001], dt, &cuda_dev(&dev)).unwrap();
        let s = Tensor::from_f32(vec![-2.5], &[1], DType::F32, &cuda_dev(&dev)).unwrap();
        cuda::elementwise::scale_by_device_scalar(&t, &s).unwrap();
        let want: Vec<f64> = x.iter().map(|v| round_to(dt, v * -2.5)).collect();
        let e = cuda_common::rel_err(&t.to_vec_f32().unwrap(), &want);
        assert!(e == 0.0, "[{dt}] scale_by_device_scalar error {e:e}");
    }
}

fn rotary_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(107));
    {
        // Crops keep their true positions: windows start at 0, 117, 1020 and 3000.
        let mut pos: Vec<i32> = Vec::new();
        for (start, len) in [(0, 5), (117, 8), (1020, 11), (3000, 3)] {
            pos.extend(start..start + len);
        }
        let n = pos.len();
        for (heads, hd) in [(3usize, 16usize), (2, 24), (5, 64)] {
            let inputs = [Input::act(&mut rng, dt, &[n, heads * hd], 1.0, true), Input::ints(pos.clone())];
            let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::rotary(t, &i[0], &i[1], heads, 0.37)?]);
            check_op(t, &mut rng, &format!("rotary {heads}x{hd}"), &inputs, &f);
        }
        // A shared offset leaves q·k unchanged up to rounding (RoPE sees differences).
        let (heads, hd) = (2usize, 32usize);
        let q = Input::act(&mut rng, dt, &[6, heads * hd], 1.0, false).on(t);
        let k = Input::act(&mut rng, dt, &[6, heads * hd], 1.0, false).on(t);
        let dots = |off: i32| -> Vec<f64> {
            let p = Tensor::from_i32((0..6).map(|i| i + off).collect(), &[6], &t.device()).unwrap();
            let tape = Tape::inference();
            let qr = ops::rotary(&tape, &q, &p, heads, 1.0).unwrap();
            let kr = ops::rotary(&tape, &k, &p, heads, 1.0).unwrap();
            let (qv, kv) = (qr.to_vec_f64().unwrap(), kr.to_vec_f64().unwrap());
            let w = heads * hd;
            (0..6)
                .flat_map(|i| (0..6).map(move |j| (i, j)))
                .map(|(i, j)| (0..w).map(|c| qv[i * w + c] * kv[j * w + c]).sum())
                .collect()
        };
        let (d0, d1) = (dots(0), dots(777));
        let e = cuda_common::rel_err(&d1.iter().map(|&x| x as f32).collect::<Vec<_>>(), &d0);
        detail(&format!("  rotary shared offset 777 [{dt}]: q·k changed by {e:.2e}"));
        assert!(e <= 10.0 * tol(dt), "[{dt}] a shared rotary offset changed q·k by {e:e}");
    }
}

#[test]
fn rotary_with_position_offsets() {
    on_gpu("rotary", rotary_cases);
}

/// GPU padded probabilities `[n_seqs, heads, L, L]` → the CPU's packed blocks; checks
/// that everything outside the valid blocks is exactly zero.
fn padded_to_packed(v: &[f32], cu: &[usize], heads: usize) -> Vec<f64> {
    let l = cu.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    let (offs, total) = prob_offsets(cu, heads);
    let mut out = vec![0f64; total];
    for s in 0..cu.len() - 1 {
        let len = cu[s + 1] - cu[s];
        for h in 0..heads {
            for i in 0..l {
                for j in 0..l {
                    let x = v[((s * heads + h) * l + i) * l + j];
                    if i < len && j < len {
                        out[offs[s] + (h * len + i) * len + j] = x as f64;
                    } else {
                        assert!(x == 0.0, "padded probability [{s},{h},{i},{j}] = {x}, not 0");
                    }
                }
            }
        }
    }
    out
}

/// The CPU's packed blocks → padded (zeros outside).
fn packed_to_padded(v: &[f64], cu: &[usize], heads: usize) -> Vec<f64> {
    let l = cu.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    let (offs, _) = prob_offsets(cu, heads);
    let mut out = vec![0f64; (cu.len() - 1) * heads * l * l];
    for s in 0..cu.len() - 1 {
        let len = cu[s + 1] - cu[s];
        for h in 0..heads {
            for i in 0..len {
                for j in 0..len {
                    out[((s * heads + h) * l + i) * l + j] = v[offs[s] + (h * len + i) * len + j];
                }
            }
        }
    }
    out
}

/// Attention on the GPU (padded probabilities) against the CPU (packed), with a
/// gradient on the probabilities as the contact head gives one.
/// On the CPU target both sides use the packed layout.
#[allow(clippy::too_many_arguments)]
fn check_attention(t: &Target, rng: &mut TestRng, cu: &[u32], heads: usize, hd: usize, probs: bool, k_grad: bool) {
    let dt = t.dtype();
    let n = *cu.last().unwrap() as usize;
    let cuu: Vec<usize> = cu.iter().map(|&c| c as usize).collect();
    let w = heads * hd;
    let ins = [
        Input::act(rng, dt, &[n, w], 1.0, true),
        Input::act(rng, dt, &[n, w], 1.0, k_grad),
        Input::act(rng, dt, &[n, w], 1.0, true),
    ];
    let scale = 0.6;
    let what = format!("attention cu={cu:?} {heads}x{hd} probs={probs} dK={k_grad}");
    let run = |tape: &Tape, t: &[Tensor], layout: &SeqLayout| {
        let (o, p) = ops::attention(tape, &t[0], &t[1], &t[2], layout, heads, scale, probs).unwrap();
        let mut v = vec![o];
        v.extend(p);
        v
    };
    // GPU
    let g_in: Vec<Tensor> = ins.iter().map(|i| i.on(t)).collect();
    let g_layout = SeqLayout::new(cu, &t.device()).unwrap();
    let g_tape = Tape::new();
    let g_out = run(&g_tape, &g_in, &g_layout);
    // CPU
    let c_in: Vec<Tensor> = ins.iter().map(Input::cpu).collect();
    let c_layout = SeqLayout::new(cu, &Device::Cpu).unwrap();
    let c_tape = Tape::new();
    let c_out = run(&c_tape, &c_in, &c_layout);

    let want = c_out[0].to_vec_f64().unwrap();
    let e = cuda_common::rel_err(&g_out[0].to_vec_f32().unwrap(), &want);
    let bound = explained_tol(g_out[0].dtype(), &want);
    detail(&format!("  {what} [{dt}] output: rel err {e:.2e} (bound {bound:.1e})"));
    assert!(e <= bound, "{what} [{dt}]: output error {e:e}");
    let to_packed = |v: Vec<f32>| -> Vec<f64> {
        if t.is_gpu() {
            padded_to_packed(&v, &cuu, heads)
        } else {
            v.into_iter().map(f64::from).collect()
        }
    };
    if probs {
        let gp = to_packed(g_out[1].to_vec_f32().unwrap());
        let want = c_out[1].to_vec_f64().unwrap();
        let e = cuda_common::rel_err(&gp.iter().map(|&x| x as f32).collect::<Vec<_>>(), &want);
        let bound = explained_tol(g_out[1].dtype(), &want);
        detail(&format!("  {what} [{dt}] probabilities: rel err {e:.2e} (bound {bound:.1e})"));
        assert!(e <= bound, "{what} [{dt}]: probability error {e:e}");
    }
    // Upstream gradients: random on the output and (packed / padded) on the probabilities.
    let s_out = rounded(dt, &rng.normals(n * w, 1.0));
    let mut c_roots = vec![(&c_out[0], Tensor::from_vec(s_out.clone(), &[n, w]).unwrap())];
    let mut g_roots = vec![(&g_out[0], t.tensor(&s_out, &[n, w], dt))];
    if probs {
        let s_p = rounded(dt, &rng.normals(c_out[1].numel(), 1.0));
        c_roots.push((&c_out[1], Tensor::from_vec(s_p.clone(), c_out[1].shape()).unwrap()));
        let seed = if t.is_gpu() { packed_to_padded(&s_p, &cuu, heads) } else { s_p };
        g_roots.push((&g_out[1], t.tensor(&seed, g_out[1].shape(), dt)));
    }
    let mut c_grads = Grads::new();
    c_tape.backward_from_many(&c_roots, &mut c_grads).unwrap();
    let mut g_grads = Grads::new();
    let mut want = Vec::new();
    for (gi, ci) in g_in.iter().zip(&c_in) {
        if !gi.requires_grad() {
            want.push(None);
            continue;
        }
        let g = c_grads.get(ci).unwrap().to_vec_f64().unwrap();
        let start = rounded(dt, &rng.normals(g.len(), cuda_common::rms(&g)));
        g_grads.insert(gi, t.tensor(&start, gi.shape(), dt));
        want.push(Some(start.iter().zip(&g).map(|(a, b)| a + b).collect::<Vec<f64>>()));
    }
    g_tape.backward_from_many(&g_roots, &mut g_grads).unwrap();
    for (idx, (gi, w)) in g_in.iter().zip(&want).enumerate() {
        let Some(w) = w else {
            assert!(g_grads.get(gi).is_none(), "{what}: frozen input {idx} got a gradient");
            continue;
        };
        let got = g_grads.get(gi).unwrap();
        let e = cuda_common::rel_err(&got.to_vec_f32().unwrap(), w);
        let bound = explained_tol(got.dtype(), w);
        detail(&format!("  {what} [{dt}] grad of {}: rel err {e:.2e} (bound {bound:.1e})", ["q", "k", "v"][idx]));
        assert!(e <= bound, "{what} [{dt}]: gradient of input {idx} error {e:e}");
    }
}

fn attention_cases(t: &Target) {
    let mut rng = TestRng::new(108);
    // lengths 1, 4, 33, 2, 71: shorter and longer than a warp, one of length 1
    check_attention(t, &mut rng, &[0, 1, 5, 38, 40, 111], 3, 16, true, true);
    check_attention(t, &mut rng, &[0, 7, 136, 150], 4, 24, true, true);
    check_attention(t, &mut rng, &[0, 4, 11], 2, 32, false, false);
}

#[test]
fn attention_packed_sequences_with_probabilities_and_their_gradient() {
    on_gpu("attention", attention_cases);
}

/// A packed batch of `lens` with crop offsets: cu_seqlens and per-token positions.
fn crop_batch(lens: &[usize], offsets: &[i32]) -> (Vec<u32>, Vec<i32>) {
    let (mut cu, mut pos) = (vec![0u32], Vec::new());
    for (&l, &off) in lens.iter().zip(offsets.iter().cycle()) {
        cu.push(cu.last().unwrap() + l as u32);
        pos.extend((0..l as i32).map(|i| off + i));
    }
    (cu, pos)
}

/// Flash batches: every supported head dim, lengths 1 and across the 64-row tiles, crop
/// offsets, with and without probabilities (and their gradient), a frozen k.
const FLASH_CASES: [(&[usize], usize, usize, bool, bool); 5] = [
    (&[1, 4, 33, 2, 71], 3, 16, true, true),
    (&[7, 129, 14], 2, 24, true, true),
    (&[4, 7, 65], 2, 32, false, false),
    (&[65, 3], 1, 64, true, true),
    (&[20, 1, 66], 1, 128, false, true),
];

/// `ops::flash_attention` on the target against the CPU op in f64 (the twin of the
/// kernel). On an f32 GPU it runs the unfused fallback, whose probabilities are padded:
/// there the cases ask for none.
fn flash_attention_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(114));
    let packed_probs = !(t.is_gpu() && dt == DType::F32);
    for (lens, heads, hd, probs, k_grad) in FLASH_CASES {
        let probs = probs && packed_probs;
        let (cu, pos) = crop_batch(lens, &[0, 300, 17, 1020]);
        let n = pos.len();
        let w = heads * hd;
        let inputs = [
            Input::act(&mut rng, dt, &[n, w], 1.0, true),
            Input::act(&mut rng, dt, &[n, w], 1.5, k_grad),
            Input::act(&mut rng, dt, &[n, w], 1.0, true),
            Input::ints(pos),
        ];
        let (g_layout, c_layout) =
            (SeqLayout::new(&cu, &t.device()).unwrap(), SeqLayout::new(&cu, &Device::Cpu).unwrap());
        let f = |tape: &Tape, i: &[Tensor]| {
            let layout = if i[0].is_cpu() { &c_layout } else { &g_layout };
            let c_q = (hd as f64).powf(-0.5);
            let (o, p) = ops::flash_attention(tape, &i[0], &i[1], &i[2], &i[3], layout, heads, c_q, probs)?;
            Ok(std::iter::once(o).chain(p).collect())
        };
        let what = format!("flash_attention {lens:?} {heads}x{hd} probs={probs} dK={k_grad}");
        check_op(t, &mut rng, &what, &inputs, &f);
    }
}

#[test]
fn flash_attention_with_rotary_inside_against_the_cpu() {
    on_gpu("flash_attention", flash_attention_cases);
}

/// The flash kernels against the unfused CUDA path (rotary kernel, padded blocks, cuBLAS,
/// masked softmax) on the same device and inputs: outputs, probabilities and gradients.
/// Measured worst relative difference (emulation): fp16 6.2e-4, bf16 4.9e-3; bounds 2e-3
/// and 1.2e-2.
#[test]
fn flash_attention_agrees_with_the_unfused_path() {
    for (dt, bound) in [(DType::F16, 2e-3), (DType::BF16, 1.2e-2)] {
        let Some(dev) = gpu("flash_attention_agrees_with_the_unfused_path", dt) else { return };
        let t = Target::Gpu(dev);
        let mut rng = TestRng::new(115);
        let mut worst = 0f64;
        for (lens, heads, hd, _, _) in FLASH_CASES {
            let (cu, pos) = crop_batch(lens, &[5, 0, 900]);
            let cuu: Vec<usize> = cu.iter().map(|&c| c as usize).collect();
            let (n, w) = (pos.len(), heads * hd);
            let layout = SeqLayout::new(&cu, &t.device()).unwrap();
            let positions = Tensor::from_i32(pos, &[n], &t.device()).unwrap();
            let data: Vec<Vec<f64>> = [1.0, 1.5, 1.0].iter().map(|&s| rounded(dt, &rng.normals(n * w, s))).collect();
            let seed_out = rounded(dt, &rng.normals(n * w, 1.0));
            let seed_p = rounded(dt, &rng.normals(prob_offsets(&cuu, heads).1, 1.0));
            let c_q = (hd as f64).powf(-0.5);
            // [out, probs (packed), dq, dk, dv] of one path.
            let run = |fused: bool| -> Vec<Vec<f64>> {
                let ins: Vec<Tensor> = data.iter().map(|d| t.tensor(d, &[n, w], dt).with_requires_grad(true)).collect();
                let tape = Tape::new();
                let (o, p) = if fused {
                    ops::flash_attention(&tape, &ins[0], &ins[1], &ins[2], &positions, &layout, heads, c_q, true)
                } else {
                    let q = ops::rotary(&tape, &ins[0], &positions, heads, c_q).unwrap();
                    let k = ops::rotary(&tape, &ins[1], &positions, heads, 1.0).unwrap();
                    ops::attention(&tape, &q, &k, &ins[2], &layout, heads, 1.0, true)
                }
                .unwrap();
                let p = p.unwrap();
                let p_seed = if fused { seed_p.clone() } else { packed_to_padded(&seed_p, &cuu, heads) };
                let mut out = vec![o.to_vec_f64().unwrap()];
                out.push(if fused {
                    p.to_vec_f64().unwrap()
                } else {
                    padded_to_packed(&p.to_vec_f32().unwrap(), &cuu, heads)
                });
                let roots = [(&o, t.tensor(&seed_out, &[n, w], dt)), (&p, t.tensor(&p_seed, p.shape(), dt))];
                let mut grads = Grads::new();
                tape.backward_from_many(&roots, &mut grads).unwrap();
                out.extend(ins.iter().map(|x| grads.get(x).unwrap().to_vec_f64().unwrap()));
                out
            };
            let (fused, unfused) = (run(true), run(false));
            for (what, (a, b)) in ["out", "probs", "dq", "dk", "dv"].iter().zip(fused.iter().zip(&unfused)) {
                let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
                let e = cuda_common::rel_err(&a32, b);
                detail(&format!("  flash vs unfused {lens:?} {heads}x{hd} [{dt}] {what}: rel diff {e:.2e}"));
                worst = worst.max(e);
                assert!(e <= bound, "flash vs unfused {lens:?} {heads}x{hd} [{dt}] {what}: {e:e} > {bound:e}");
            }
        }
        detail(&format!("flash vs unfused [{dt}]: worst relative difference {worst:.2e}"));
    }
}

/// The tensor-core check kernels of `kernels/tensor_core_check.cu` on the device: on a GPU
/// this is the hardware's own fragment layout against the one the CPU emulation
/// implements (tests/emulated_tensor_core.rs); on the emulation it repeats that test
/// through the fake driver. Correct layouts match an f64 GEMM to fp32 accumulation
/// (measured on the emulation: ≤ 4.1e-8; bound 1e-6 leaves room for the tensor core's
/// own summation order), deliberately permuted ones do not (relative error ≥ 0.78).
#[test]
fn tensor_core_fragment_layouts_on_the_device() {
    use qf_engine::backend::cuda::kernels;
    use qf_engine::backend::cuda::launch::{empty, p};
    for dt in [DType::F16, DType::BF16] {
        let Some(dev) = gpu("tensor_core", dt) else { return };
        let d = Device::Cuda(dev.clone());
        let mut rng = TestRng::new(116);
        for (k, n) in [(16usize, 8usize), (24, 24), (56, 24), (64, 64)] {
            let a = rounded(dt, &rng.normals(16 * k, 1.0));
            let b = rounded(dt, &rng.normals(k * n, 1.0));
            let mut want = vec![0f64; 16 * n];
            for i in 0..16 {
                for j in 0..n {
                    want[i * n + j] = (0..k).map(|q| a[i * k + q] * b[q * n + j]).sum();
                }
            }
            let to_dev = |v: &[f64], shape: &[usize]| {
                Tensor::from_f32(v.iter().map(|&x| x as f32).collect(), shape, dt, &d).unwrap()
            };
            let (ta, tb) = (to_dev(&a, &[16, k]), to_dev(&b, &[k, n]));
            for variant in 0..4 {
                let c = empty(&dev, &[16, n], DType::F32).unwrap();
                let cfg = cudarc::driver::LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (32, 1, 1),
                    shared_mem_bytes: ((16 * (k + 8) + k * (n + 8)) * 2) as u32,
                };
                kernels::tensor_core_check::tc_gemm_check(
                    &dev,
                    cfg,
                    p(&c).unwrap(),
                    p(&ta).unwrap(),
                    p(&tb).unwrap(),
                    k as i32,
                    n as i32,
                    variant,
                )
                .unwrap();
                let e = cuda_common::rel_err(&c.to_vec_f32().unwrap(), &want);
                detail(&format!("  tensor core [{dt}] k={k} n={n} variant {variant}: rel err {e:.2e}"));
                if variant < 2 {
                    assert!(e <= 1e-6, "[{dt}] k={k} n={n}: the documented layout (variant {variant}) is off by {e:e}");
                } else {
                    assert!(
                        e > 0.3,
                        "[{dt}] k={k} n={n}: the permuted layout (variant {variant}) was not caught ({e:e})"
                    );
                }
            }
        }
    }
}

fn cross_entropy_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(109));
    {
        // 45 classes: 256-thread rows; 5000: 1024-thread rows (wide path).
        for (rows, classes) in [(37usize, 45usize), (9, 5000)] {
            let labels: Vec<i32> =
                (0..rows).map(|r| if r % 7 == 3 { IGNORE_INDEX } else { rng.below(classes) as i32 }).collect();
            let weights = uniform(&mut rng, classes, 0.2, 3.0);
            let logits = Input::act(&mut rng, dt, &[rows, classes], 2.0, true);
            let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::cross_entropy(t, &i[0], &i[1], Some(&i[2]))?]);
            let inputs = [logits.clone(), Input::ints(labels.clone()), Input::aux(weights, &[classes], DType::F32)];
            check_op(t, &mut rng, &format!("cross_entropy {rows}x{classes} weighted"), &inputs, &f);
            let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::cross_entropy(t, &i[0], &i[1], None)?]);
            check_op(t, &mut rng, &format!("cross_entropy {rows}x{classes}"), &inputs[..2], &f);
        }
        // fp16 loss scaling: the upstream gradient 65536 must be applied before the
        // rounding of the logits' gradient (no underflow of small softmax terms).
        let (rows, classes) = (64usize, 5000usize);
        let labels: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
        let inputs = [Input::act(&mut rng, dt, &[rows, classes], 1.0, true), Input::ints(labels)];
        let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::scale(t, &ops::cross_entropy(t, &i[0], &i[1], None)?, 65536.0)?]);
        check_op(t, &mut rng, "cross_entropy × 65536 (loss scale)", &inputs, &f);
    }
}

#[test]
fn weighted_cross_entropy_with_ignored_rows() {
    on_gpu("cross_entropy", cross_entropy_cases);
}

fn bce_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(110));
    {
        let (r, c) = (23usize, 31usize);
        let targets: Vec<f64> = (0..r * c).map(|_| (rng.uniform() < 0.3) as i32 as f64).collect();
        let mask: Vec<f64> = (0..r * c).map(|i| if i % 5 == 2 { 0.0 } else { 1.0 }).collect();
        let inputs = [
            Input::act(&mut rng, dt, &[r, c], 3.0, true),
            Input::aux(targets, &[r, c], DType::F64),
            Input::aux(mask, &[r, c], DType::F64),
        ];
        let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::bce_with_logits(t, &i[0], &i[1], &i[2])?]);
        check_op(t, &mut rng, "bce_with_logits", &inputs, &f);
    }
}

#[test]
fn masked_binary_cross_entropy() {
    on_gpu("bce", bce_cases);
}

#[test]
fn dropout_draws_the_cpu_mask_exactly() {
    for dt in DTYPES {
        let Some(dev) = gpu("dropout", dt) else { return };
        let mut rng = TestRng::new(111);
        let n = 1001; // a partial last group of 4
        let (p, seed) = (0.3f64, 0xDEAD_BEEF_u64);
        let x = rounded(dt, &rng.normals(n, 1.0));
        let g0 = rounded(dt, &rng.normals(n, 1.0));
        let dy = rounded(dt, &rng.normals(n, 1.0));
        let f32v = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        // GPU
        let xg = Tensor::from_f32(f32v(&x), &[n], dt, &cuda_dev(&dev)).unwrap().with_requires_grad(true);
        let tape = Tape::with_seed(seed);
        let _ = tape.dropout_stream(12345); // a non-zero offset for this call site
        let y = ops::dropout(&tape, &xg, p).unwrap();
        let mut grads = Grads::new();
        grads.insert(&xg, Tensor::from_f32(f32v(&g0), &[n], dt, &cuda_dev(&dev)).unwrap());
        let yv = y.to_vec_f32().unwrap();
        tape.backward_from(&y, Tensor::from_f32(f32v(&dy), &[n], dt, &cuda_dev(&dev)).unwrap(), &mut grads).unwrap();
        let dx = grads.get(&xg).unwrap().to_vec_f32().unwrap();
        // CPU twin: the same (seed, offset) and fp32 arithmetic, rounded to dt once.
        let offset = 12345usize.div_ceil(4) as u64;
        let s = dropout_scale(p as f32);
        let mut kept = 0;
        for i in 0..n {
            let keep = dropout_keep(i as u64, p as f32, seed, offset);
            kept += keep as usize;
            let want_y = if keep { round_to(dt, (x[i] as f32 * s) as f64) } else { 0.0 };
            let want_dx = round_to(dt, (g0[i] as f32 + if keep { dy[i] as f32 * s } else { 0.0 }) as f64);
            assert_eq!(yv[i] as f64, want_y, "[{dt}] dropout forward element {i}");
            assert_eq!(dx[i] as f64, want_dx, "[{dt}] dropout backward element {i}");
        }
        detail(&format!("  dropout [{dt}]: {kept}/{n} kept (p = {p}), bit-identical to the CPU mask"));
        assert!((600..800).contains(&kept), "implausible keep count {kept}");
    }
}

fn gather_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(112));
    {
        let inputs = [Input::act(&mut rng, dt, &[50, 37], 1.0, true), Input::ints(vec![0, 7, 49, 13, 21])];
        let f = |t: &Tape, i: &[Tensor]| Ok(vec![ops::gather_rows(t, &i[0], &i[1])?]);
        check_op(t, &mut rng, "gather_rows", &inputs, &f);
    }
}

#[test]
fn gather_rows_and_scatter_add() {
    on_gpu("gather_rows", gather_cases);
}

fn mean_pool_cases(t: &Target) {
    let (dt, mut rng) = (t.dtype(), TestRng::new(114));
    // Four packed sequences of 3 (one residue), 20, 9 and 41 tokens; dim 37.
    let cu = [0u32, 3, 23, 32, 73];
    let inputs = [Input::act(&mut rng, dt, &[73, 37], 1.0, true)];
    let f = move |t: &Tape, i: &[Tensor]| {
        let layout = ops::SeqLayout::new(&cu, &i[0].device())?;
        Ok(vec![ops::mean_pool(t, &i[0], &layout)?])
    };
    check_op(t, &mut rng, "mean_pool", &inputs, &f);
}

#[test]
fn mean_pool_over_residues() {
    on_gpu("mean_pool", mean_pool_cases);
}

/// Every case above with the CPU's f32 path in place of the GPU, against the same f64
/// reference: proves the harness (input rounding, seeded gradient buffers, layout
/// conversions) on any machine, and the CPU's f32 ops to 1e-5.
#[test]
fn harness_on_the_cpu_in_f32() {
    let t = Target::Cpu32;
    for cases in [
        embedding_cases,
        layer_norm_cases,
        linear_cases,
        bias_gelu_cases,
        elementwise_cases,
        rotary_cases,
        attention_cases,
        flash_attention_cases,
        cross_entropy_cases,
        bce_cases,
        gather_cases,
        mean_pool_cases,
    ] {
        cases(&t);
    }
}

#[test]
fn casts_round_to_nearest_even_with_specials() {
    let Some(dev) = gpu("casts", DType::F32) else { return };
    let mut rng = TestRng::new(113);
    let mut v: Vec<f32> = rng.normals(4099, 100.0).into_iter().map(|x| x as f32).collect();
    v.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        65504.0,
        65519.0,
        65520.0,
        1e-7,
        -3e-8,
        1e-40,
        3.0e38,
        f32::MIN_POSITIVE,
        1.0 + f32::EPSILON,
    ]);
    let n = v.len();
    let x = Tensor::from_f32(v.clone(), &[n], DType::F32, &cuda_dev(&dev)).unwrap();
    for dt in [DType::F16, DType::BF16] {
        let h = x.to_dtype(dt).unwrap();
        let back = h.to_dtype(DType::F32).unwrap().to_vec_f32().unwrap();
        for (i, (&orig, &got)) in v.iter().zip(&back).enumerate() {
            let want = match dt {
                DType::F16 => f16::from_f32(orig).to_f32(),
                _ => bf16::from_f32(orig).to_f32(),
            };
            let same = (want.is_nan() && got.is_nan()) || want.to_bits() == got.to_bits();
            assert!(same, "[{dt}] cast of {orig:e} (element {i}) gave {got:e}, want {want:e}");
        }
    }
    detail(&format!("  casts f32 ↔ f16/bf16: {n} values bit-identical to round-to-nearest-even"));
}

/// The fused AdamW kernel against `adamw_update`, bit for bit, with the half copy
/// refreshed; and a skipped step leaves everything untouched.
#[test]
fn adamw_kernel_is_bit_identical_to_the_cpu_update() {
    let Some(dev) = gpu("adamw", DType::F32) else { return };
    let d = cuda_dev(&dev);
    let mut rng = TestRng::new(114);
    let n = 10_007;
    let f32v = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let p0 = f32v(rng.normals(n, 0.1));
    let g = f32v(rng.normals(n, 1e-2));
    let m0 = f32v(rng.normals(n, 1e-3));
    let v0: Vec<f32> = f32v(rng.normals(n, 1e-3)).into_iter().map(|x| x * x).collect();
    let hp = AdamHyper { lr: 3e-4, weight_decay: 0.01, step: 7, grad_scale: 0.37, ..AdamHyper::default() };
    let c = AdamConsts::new(&hp).unwrap();
    let mut want = (p0.clone(), m0.clone(), v0.clone());
    for i in 0..n {
        (want.0[i], want.1[i], want.2[i]) = adamw_update(p0[i], g[i], m0[i], v0[i], &c);
    }
    for half in [None, Some(DType::F16), Some(DType::BF16)] {
        let t = |v: &[f32]| Tensor::from_f32(v.to_vec(), &[n], DType::F32, &d).unwrap();
        let (p, gt, m, v) = (t(&p0), t(&g), t(&m0), t(&v0));
        let h = half.map(|dt| p.to_dtype(dt).unwrap());
        let scale = Tensor::from_f32(vec![0.37], &[1], DType::F32, &d).unwrap();
        let skip = Tensor::from_i32(vec![1], &[1], &d).unwrap();
        // skipped: nothing changes
        cuda::adamw::adamw_step(&dev, &p, &gt, &m, &v, h.as_ref(), &c, &scale, &skip).unwrap();
        assert_eq!(p.to_vec_f32().unwrap(), p0, "a skipped step changed p");
        assert_eq!(m.to_vec_f32().unwrap(), m0, "a skipped step changed m");
        assert_eq!(v.to_vec_f32().unwrap(), v0, "a skipped step changed v");
        // taken
        let go = Tensor::from_i32(vec![0], &[1], &d).unwrap();
        cuda::adamw::adamw_step(&dev, &p, &gt, &m, &v, h.as_ref(), &c, &scale, &go).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&p.to_vec_f32().unwrap()), bits(&want.0), "p differs from adamw_update");
        assert_eq!(bits(&m.to_vec_f32().unwrap()), bits(&want.1), "m differs from adamw_update");
        assert_eq!(bits(&v.to_vec_f32().unwrap()), bits(&want.2), "v differs from adamw_update");
        if let (Some(h), Some(dt)) = (&h, half) {
            let hv = h.to_vec_f32().unwrap();
            for (i, (&h, &w)) in hv.iter().zip(&want.0).enumerate() {
                assert_eq!(h as f64, round_to(dt, w as f64), "[{dt}] half copy element {i}");
            }
        }
        detail(&format!("  adamw [{:?} copy]: bit-identical to adamw_update over {n} elements", half));
    }
}

/// Global norm, clip coefficient and overflow flag on the device.
#[test]
fn gradient_norm_clip_and_overflow_skip() {
    let Some(dev) = gpu("grad_norm", DType::F32) else { return };
    let d = cuda_dev(&dev);
    let mut rng = TestRng::new(115);
    let parts: Vec<Vec<f32>> =
        [1000usize, 37, 5000].iter().map(|&n| rng.normals(n, 30.0).into_iter().map(|x| x as f32).collect()).collect();
    let run = |parts: &[Vec<f32>], max_norm: f32, inv: f32| {
        let z = |dt| Tensor::zeros(&[1], dt, &d).unwrap();
        let (sumsq, nonfinite, coef, skip, norm) =
            (z(DType::F32), z(DType::I32), z(DType::F32), z(DType::I32), z(DType::F32));
        for p in parts {
            let t = Tensor::from_f32(p.clone(), &[p.len()], DType::F32, &d).unwrap();
            cuda::grad_norm::sum_squares(&dev, &sumsq, &nonfinite, &t).unwrap();
        }
        cuda::grad_norm::clip_and_scale(&dev, &coef, &sumsq, &nonfinite, &skip, max_norm, inv, &norm).unwrap();
        (norm.scalar_f32().unwrap() as f64, coef.scalar_f32().unwrap() as f64, skip.to_vec_i32().unwrap()[0])
    };
    let inv = 1.0 / 1024.0;
    let s: f64 = parts.iter().flatten().map(|&x| (x as f64) * (x as f64)).sum();
    let want_norm = s.sqrt() * inv as f64;
    for max_norm in [1.0f32, 1e6, 0.0] {
        let (norm, coef, skip) = run(&parts, max_norm, inv);
        let clip = if max_norm > 0.0 { (max_norm as f64 / (want_norm + 1e-6)).min(1.0) } else { 1.0 };
        let want_coef = inv as f64 * clip;
        detail(&format!(
            "  grad norm {norm:.6} (want {want_norm:.6}), coef {coef:.4e} (want {want_coef:.4e}) max_norm {max_norm}"
        ));
        assert_relative_eq!(norm, want_norm, max_relative = 1e-5);
        assert_relative_eq!(coef, want_coef, max_relative = 1e-5);
        assert_eq!(skip, 0);
    }
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut p2 = parts.clone();
        p2[1][17] = bad;
        let (_, _, skip) = run(&p2, 1.0, inv);
        assert_eq!(skip, 1, "a {bad} gradient did not set the skip flag");
    }
    // finite values whose squares overflow fp32 also skip
    let (_, _, skip) = run(&[vec![3e30f32; 4]], 1.0, inv);
    assert_eq!(skip, 1, "an overflowing sum of squares did not set the skip flag");
}

#[test]
fn out_of_memory_is_a_typed_error_naming_the_budget() {
    let Some(dev) = gpu("out_of_memory", DType::F32) else { return };
    let (_, total) = dev.memory_info().unwrap();
    // Twice the card: a plain pool allocation that must fail at once.
    let e = dev.zeros(DType::F32, total / 2).map(|_| ()).unwrap_err();
    assert!(cuda::device::is_out_of_memory(&e), "not an OutOfMemory error: {e:#}");
    let msg = format!("{:#}", cuda::device::with_budget_hint(e, 16384));
    detail(&format!("  out-of-memory message: {msg}"));
    assert!(msg.contains("16384 tokens") && msg.contains("--max-tokens 8192"), "{msg}");
    // The device still works afterwards.
    let t = Tensor::from_f32(vec![1.0, 2.0], &[2], DType::F32, &cuda_dev(&dev)).unwrap();
    assert_eq!(t.to_vec_f32().unwrap(), vec![1.0, 2.0]);
}

/// The harness's rounding to bf16 against a brute-force round-to-nearest-even from f64:
/// the two bf16 neighbours of `v`, the nearer one, the even one on a tie. Values near
/// bf16 ties, with bits below f32 precision, and f32 values just above a tie
/// (0xbd888004, which `half`'s f64 conversion misrounds).
#[test]
fn harness_rounds_to_bf16_like_the_device() {
    let nearest_even = |v: f64| -> f64 {
        let below = bf16::from_bits(((v as f32).to_bits() >> 16) as u16); // truncated towards 0
        let above = bf16::from_bits(below.to_bits() + 1);
        let (db, da) = ((v - below.to_f64()).abs(), (above.to_f64() - v).abs());
        if db < da || (db == da && below.to_bits() % 2 == 0) {
            below.to_f64()
        } else {
            above.to_f64()
        }
    };
    let mut rng = TestRng::new(7);
    let mut cases = vec![f32::from_bits(0xbd88_8004) as f64];
    for _ in 0..20_000 {
        // an f32 on a bf16 tie, below the largest binade (no overflow to infinity)
        let tie = f32::from_bits(((rng.next_u64() as u32) & 0x7eff_0000) | 0x8000) as f64;
        let nudge = tie * 1e-12 * (rng.uniform() - 0.5); // below f32 precision
        cases.extend([tie, tie + nudge, -(tie + nudge), rng.normal() * 3.0]);
    }
    for v in cases {
        assert_eq!(round_to(DType::BF16, v), nearest_even(v), "bf16 rounding of {v:e}");
    }
}
