//! The optimizer kernels — `adamw_step` (`kernels/adamw.cu`) and `adam8bit_step`
//! (`kernels/adam8bit.cu`) — run on the CPU through the kernel emulator of
//! `tests/kernel_emu`, with exactly the argument lists, quantisation maps and launch
//! shapes of their launchers in `src/backend/cuda/{adamw,adam8bit,grad_norm}.rs` (grid `min(blocks, k·SMs)`,
//! here for an H100's 132 SMs and for 1–2 SMs, where the grid- and block-stride loops
//! make several passes), against the engine's CPU optimizer:
//!
//! * `adamw_step` against `backend::cpu::adamw::adamw_update` BIT FOR BIT (p, m, v and the
//!   f16/bf16 compute copy), over several steps in a row, with the loss-scale × clip
//!   factor read from a device scalar and decoupled weight decay on and off;
//! * `adam8bit_step` against `optim::adam8bit::step` (block-wise 8-bit AdamW, 256-element
//!   blocks, signed map for m, unsigned for v), several steps with the state carried in
//!   the kernel's own buffers: parameters, half copies and both absmax arrays
//!   bit-identical, codes identical up to requantisation ties (a code one away only where
//!   `x / absmax` is exactly the fp32 midpoint of the two map entries — the tolerance of
//!   `tests/optim_8bit_cuda.rs`), non-finite gradients resetting their element's moments;
//!   the dequantised moments also within the maps' round-trip bound of the fp32 AdamW
//!   moments, and the first step from zero state equal to fp32 AdamW;
//! * the skip flag (nothing written), the nullable pointers, empty tensors, and the GPU
//!   optimizer's overflow pipeline `sum_squares_f32` → `clip_and_scale` → both steps, as
//!   `Optimizer::step` chains them on the GPU.
//!
//! Outputs the kernels write (the half copies, the scalars of `clip_and_scale`) are
//! poisoned before each launch, and every compared value is checked finite, so a NaN
//! never passes as "equal bits".

mod common;
mod kernel_emu;

use common::TestRng;
use cudarc::driver::LaunchConfig;
use half::{bf16, f16};
use kernel_emu::{ptr, ptr_mut, Emulator, Shape};
use qf_engine::backend::cpu::adam8bit::QuantizedMoments;
use qf_engine::backend::cpu::adamw::{adamw_update, AdamConsts, AdamHyper};
use qf_engine::backend::cpu::quant8::{
    max_round_trip_error, n_blocks, nearest_code, signed_dynamic_map, unsigned_dynamic_map, zero_code, QuantMap,
    BLOCK_SIZE, MAP_SIZE,
};
use qf_engine::backend::cuda::adamw::consts_args;
use qf_engine::backend::cuda::launch::{Arg, NULL};
use qf_engine::optim::adam8bit::{self, Adam8bitState, MIN_8BIT_SIZE};

/// A `long long` argument.
fn long(n: usize) -> Arg {
    Arg::I64(n as i64)
}

/// Threads per block of the optimizer kernels (`THREADS` of optim.rs).
const THREADS: u32 = 256;
/// Multiprocessors of an H100 SXM.
const H100_SMS: u32 = 132;

// ---------------------------------------------------------------------------------------
// The launchers of src/backend/cuda/{adamw,adam8bit,grad_norm}.rs, with the SM count given.
// ---------------------------------------------------------------------------------------

/// One emulated launch (the emulator serialises launches across the tests' threads).
fn run(emu: &Emulator, name: &str, shape: Shape, args: &[Arg]) {
    emu.run(name, shape, args);
}

/// `capped_config(dev, blocks, per_sm)`: `blocks` blocks of 256 threads, at most
/// `per_sm · sms` of them.
fn capped_shape(blocks: usize, per_sm: u32, sms: u32) -> Shape {
    let cap = per_sm.saturating_mul(sms).max(1) as usize;
    let grid = blocks.clamp(1, cap) as u32;
    Shape::of(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// `upload_maps`: the signed then the unsigned dynamic map.
fn maps() -> Vec<f32> {
    let mut maps = Vec::with_capacity(2 * MAP_SIZE);
    maps.extend_from_slice(signed_dynamic_map());
    maps.extend_from_slice(unsigned_dynamic_map());
    maps
}

/// The dtype of a parameter's compute copy.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Half {
    None,
    F16,
    Bf16,
}

const HALVES: [Half; 3] = [Half::None, Half::F16, Half::Bf16];

/// The fp16/bf16 compute copy the kernels refresh (raw bits), poisoned with NaN
/// (0xFFFF is a NaN in both formats) before a launch: the kernels WRITE it.
struct HalfCopy {
    kind: Half,
    bits: Vec<u16>,
}

const POISON16: u16 = 0xFFFF;

impl HalfCopy {
    fn poisoned(kind: Half, n: usize) -> Self {
        HalfCopy { kind, bits: vec![POISON16; if kind == Half::None { 0 } else { n }] }
    }

    /// `p_opt(half)`.
    fn arg(&mut self) -> Arg {
        match self.kind {
            Half::None => NULL,
            _ => ptr_mut(&mut self.bits),
        }
    }

    /// `half_kind(half)`: 0 none, 1 f16, 2 bf16.
    fn abi_kind(&self) -> i32 {
        match self.kind {
            Half::None => 0,
            Half::F16 => 1,
            Half::Bf16 => 2,
        }
    }

    /// The copy holds `p` rounded to nearest even, element for element.
    fn expect(&self, p: &[f32], what: &str) {
        let want: Vec<u16> = match self.kind {
            Half::None => return,
            Half::F16 => p.iter().map(|&x| f16::from_f32(x).to_bits()).collect(),
            Half::Bf16 => p.iter().map(|&x| bf16::from_f32(x).to_bits()).collect(),
        };
        assert_eq!(self.bits.len(), want.len());
        for (i, (&got, &w)) in self.bits.iter().zip(&want).enumerate() {
            assert_eq!(
                got, w,
                "{what}: {:?} copy element {i} is {got:#06x}, want {w:#06x} (p = {:e})",
                self.kind, p[i]
            );
        }
    }

    fn untouched(&self, what: &str) {
        assert!(self.bits.iter().all(|&b| b == POISON16), "{what}: the {:?} copy was written", self.kind);
    }
}

/// `backend::cuda::adamw::adamw_step`.
#[allow(clippy::too_many_arguments)]
fn launch_adamw(
    emu: &Emulator,
    sms: u32,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    half: &mut HalfCopy,
    c: &AdamConsts,
    grad_scale: Arg,
    skip: Arg,
) {
    let n = p.len();
    assert!(g.len() == n && m.len() == n && v.len() == n);
    let mut args = vec![ptr_mut(p), ptr(g), ptr_mut(m), ptr_mut(v), half.arg(), Arg::I32(half.abi_kind()), long(n)];
    args.extend(consts_args(c));
    args.extend([grad_scale, skip]);
    run(emu, "adamw_step", capped_shape(n.div_ceil(THREADS as usize), 32, sms), &args);
}

/// `backend::cuda::adam8bit::adam8bit_step` (the state laid out as `DeviceQuantizedMoments`).
#[allow(clippy::too_many_arguments)]
fn launch_adam8bit(
    emu: &Emulator,
    sms: u32,
    p: &mut [f32],
    g: &[f32],
    q: &mut QuantizedMoments,
    maps: &[f32],
    half: &mut HalfCopy,
    c: &AdamConsts,
    grad_scale: Arg,
    skip: Arg,
) {
    let n = p.len();
    assert!(g.len() == n && q.m_codes.len() == n && q.v_codes.len() == n);
    assert!(q.m_absmax.len() == n_blocks(n) && q.v_absmax.len() == n_blocks(n) && maps.len() == 2 * MAP_SIZE);
    let mut args = vec![
        ptr_mut(p),
        ptr(g),
        ptr_mut(&mut q.m_codes),
        ptr_mut(&mut q.m_absmax),
        ptr_mut(&mut q.v_codes),
        ptr_mut(&mut q.v_absmax),
        ptr(maps),
        half.arg(),
        Arg::I32(half.abi_kind()),
        long(n),
    ];
    args.extend(consts_args(c));
    args.extend([grad_scale, skip]);
    run(emu, "adam8bit_step", capped_shape(n.div_ceil(BLOCK_SIZE), 8, sms), &args);
}

/// `DeviceQuantizedMoments::zeros`: the maps' zero codes, absmax 0.
fn zero_moments(n: usize) -> QuantizedMoments {
    QuantizedMoments {
        m_codes: vec![zero_code(signed_dynamic_map()); n],
        m_absmax: vec![0.0; n_blocks(n)],
        v_codes: vec![zero_code(unsigned_dynamic_map()); n],
        v_absmax: vec![0.0; n_blocks(n)],
    }
}

// ---------------------------------------------------------------------------------------
// Inputs and comparisons.
// ---------------------------------------------------------------------------------------

fn randn(rng: &mut TestRng, n: usize, std: f64) -> Vec<f32> {
    rng.normals(n, std).into_iter().map(|x| x as f32).collect()
}

/// Gradients times `loss_scale`: N(0, 1e-2) with a heavy tail (a few elements 100×
/// larger) and some tiny negative ones (their m rounds to the zero code, so the sign
/// rule of the requantisation must act).
fn grads(rng: &mut TestRng, n: usize, loss_scale: f32) -> Vec<f32> {
    let mut g = randn(rng, n, 1e-2);
    for _ in 0..n / 500 + 1 {
        let i = rng.below(n);
        g[i] *= 100.0;
    }
    for i in (5..n).step_by(97) {
        g[i] = -1e-9;
    }
    g.iter().map(|&x| x * loss_scale).collect()
}

/// `got` and `want` have the same bits everywhere and are finite; returns the number of
/// elements compared. Panics naming the first difference, the count and the worst ulp gap.
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut first = None;
    let (mut count, mut worst_ulps) = (0usize, 0u64);
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(a.is_finite(), "{what}[{i}] is {a} (want {b:e})");
        assert!(b.is_finite(), "{what}[{i}]: the reference is {b}");
        if a.to_bits() != b.to_bits() {
            count += 1;
            first.get_or_insert((i, a, b));
            let ord = |x: f32| {
                let u = x.to_bits() as i64;
                if u & 0x8000_0000 != 0 {
                    0x8000_0000 - u
                } else {
                    u
                }
            };
            worst_ulps = worst_ulps.max((ord(a) - ord(b)).unsigned_abs());
        }
    }
    if let Some((i, a, b)) = first {
        panic!(
            "{what}: {count} of {} elements differ (worst {worst_ulps} ulp); first [{i}]: {a:e} vs {b:e}",
            got.len()
        );
    }
    got.len()
}

/// Two 8-bit states are identical (absmax bit for bit, finite; codes equal).
fn assert_same_state(what: &str, got: &QuantizedMoments, want: &QuantizedMoments) {
    assert_same_bits(&format!("{what}: m absmax"), &got.m_absmax, &want.m_absmax);
    assert_same_bits(&format!("{what}: v absmax"), &got.v_absmax, &want.v_absmax);
    for (name, a, b) in [("m codes", &got.m_codes, &want.m_codes), ("v codes", &got.v_codes, &want.v_codes)] {
        assert_eq!(a.len(), b.len(), "{what}: {name} lengths");
        let diff = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
        if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
            panic!("{what}: {diff} of {} {name} differ; first [{i}]: {} vs {}", a.len(), a[i], b[i]);
        }
    }
}

/// [`common::quant::tie_differences`], with at most one tie per 10,000 codes (one allowed
/// in a small tensor).
fn check_codes(
    what: &str,
    want: &[u8],
    got: &[u8],
    x_new: impl Fn(usize) -> f32,
    absmax: &[f32],
    map: &QuantMap,
) -> usize {
    let ties = common::quant::tie_differences(what, want, got, x_new, absmax, map);
    assert!(ties * 10_000 <= want.len().max(10_000), "{what}: {ties} tie differences in {} codes", want.len());
    ties
}

// ---------------------------------------------------------------------------------------
// The kernels and their ABI.
// ---------------------------------------------------------------------------------------

/// The `extern "C"` kernels a kernel file defines (its source, `__launch_bounds__` skipped).
fn kernels_in_file(stem: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels").join(format!("{stem}.cu"));
    let src = std::fs::read_to_string(&path).unwrap();
    let mut names = Vec::new();
    for part in src.split("extern \"C\"").skip(1) {
        let Some(decl) = part.trim_start().strip_prefix("__global__") else { continue };
        let mut decl = decl.trim_start().strip_prefix("void").expect("a kernel returns void").trim_start();
        if let Some(rest) = decl.strip_prefix("__launch_bounds__") {
            decl = rest[rest.find(')').unwrap() + 1..].trim_start();
        }
        names.push(decl.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
    }
    names.sort();
    names
}

/// Every kernel of the two files is one this file covers, and each takes the argument
/// kinds its launcher passes (pointers `P`, `int` `I`, `long long` `L`, `float` `F`).
#[test]
fn optimizer_kernels_take_the_launchers_argument_lists() {
    kernel_emu::schedules("optimizer_kernels_take_the_launchers_argument_lists", |emu| {
        assert_eq!(kernels_in_file("adamw"), ["adamw_step"], "kernels/adamw.cu: a kernel this file does not test");
        assert_eq!(
            kernels_in_file("adam8bit"),
            ["adam8bit_step"],
            "kernels/adam8bit.cu: a kernel this file does not test"
        );
        // p, g, m, v, p_half, half_kind, n, 7 AdamConsts fields, grad_scale, skip.
        assert_eq!(emu.kernel_kinds("adamw_step").as_deref(), Some("PPPPPILFFFFFFFPP"));
        // p, g, m_code, m_absmax, v_code, v_absmax, maps, p_half, half_kind, n, 7 fields, grad_scale, skip.
        assert_eq!(emu.kernel_kinds("adam8bit_step").as_deref(), Some("PPPPPPPPILFFFFFFFPP"));
        let mods: Vec<(String, String)> = emu.kernels();
        assert!(mods.iter().any(|(m, k)| m == "adamw" && k == "adamw_step"), "{mods:?}");
        assert!(mods.iter().any(|(m, k)| m == "adam8bit" && k == "adam8bit_step"), "{mods:?}");
    });
}

// ---------------------------------------------------------------------------------------
// adamw_step
// ---------------------------------------------------------------------------------------

/// The hyper-parameters of step `t` of a run and the loss scale its gradients carry:
/// plain fp32 (scale 1), loss scale 1024 with clipping (0.37), loss scale 65536 without
/// weight decay and other betas/eps, loss scale 1 with clipping (0.25).
fn hyper(t: u64) -> (AdamHyper, f32) {
    let d = AdamHyper::default();
    match t {
        1 => (AdamHyper { lr: 1e-3, weight_decay: 0.01, step: 1, grad_scale: 1.0, ..d }, 1.0),
        2 => (AdamHyper { lr: 3e-3, weight_decay: 0.1, step: 2, grad_scale: 0.37 / 1024.0, ..d }, 1024.0),
        3 => (
            AdamHyper {
                lr: 5e-4,
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
                weight_decay: 0.0,
                step: 3,
                grad_scale: 1.0 / 65536.0,
            },
            65536.0,
        ),
        _ => (AdamHyper { lr: 2e-3, weight_decay: 0.05, step: t, grad_scale: 0.25, ..d }, 1.0),
    }
}

/// Three steps in a row from a fresh optimizer (m = v = 0), each half-copy kind on every
/// size; the kernel's p, m, v and half copy equal `adamw_update` chained on the CPU, bit
/// for bit. Sizes: one element, one partial block, 40 blocks in one pass (132 SMs), and
/// grids of 32 and 64 blocks over 10,007 and 20,000 elements (two grid-stride passes each).
#[test]
fn adamw_step_is_bit_identical_to_adamw_update_over_several_steps() {
    kernel_emu::schedules("adamw_step_is_bit_identical_to_adamw_update_over_several_steps", |emu| {
        let cases: [(usize, u32); 5] = [(1, H100_SMS), (255, H100_SMS), (10_007, H100_SMS), (10_007, 1), (20_000, 2)];
        let mut compared = 0;
        for (ci, &(n, sms)) in cases.iter().enumerate() {
            let mut rng = TestRng::new(1000 + ci as u64);
            let mut p = randn(&mut rng, n, 0.1);
            if n > 2 {
                p[0] = 0.0;
            }
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            let (mut pr, mut mr, mut vr) = (p.clone(), m.clone(), v.clone());
            for t in 1..=3u64 {
                let (hp, loss_scale) = hyper(t);
                let c = AdamConsts::new(&hp).unwrap();
                let mut g = grads(&mut rng, n, loss_scale);
                if n > 2 {
                    g[n / 2] = 0.0;
                }
                let mut half = HalfCopy::poisoned(HALVES[(ci + t as usize) % 3], n);
                let (scale, skip) = (vec![c.grad_scale], vec![0i32]);
                let p_prev = p.clone();
                launch_adamw(emu, sms, &mut p, &g, &mut m, &mut v, &mut half, &c, ptr(&scale), ptr(&skip));
                for i in 0..n {
                    (pr[i], mr[i], vr[i]) = adamw_update(pr[i], g[i], mr[i], vr[i], &c);
                }
                let what = format!("adamw n={n} sms={sms} step {t}");
                compared += assert_same_bits(&format!("{what}: p"), &p, &pr);
                assert_same_bits(&format!("{what}: m"), &m, &mr);
                assert_same_bits(&format!("{what}: v"), &v, &vr);
                half.expect(&p, &what);
                let moved = p.iter().zip(&p_prev).filter(|(a, b)| a != b).count();
                assert!(moved * 10 >= n * 9, "{what}: only {moved} of {n} parameters moved");
            }
        }
        println!(
            "adamw_step: p, m, v and half copies bit-identical to adamw_update over {compared} element-steps (0 ulp)"
        );
    });
}

/// `*skip != 0` (the overflow flag) leaves p, m, v and the half copy untouched, whatever
/// the gradients hold; with `skip == 0` and non-finite gradients the fp32 step propagates
/// them (as PyTorch, and only into those elements); null `grad_scale`/`skip`/`p_half`
/// mean 1 / no skip / no copy (even with a half kind given).
#[test]
fn adamw_step_skip_flag_and_nullable_pointers() {
    kernel_emu::schedules("adamw_step_skip_flag_and_nullable_pointers", |emu| {
        let n = 3000;
        let mut rng = TestRng::new(77);
        let p0 = randn(&mut rng, n, 0.1);
        let m0 = randn(&mut rng, n, 1e-3);
        let v0: Vec<f32> = randn(&mut rng, n, 1e-3).into_iter().map(|x| x * x).collect();
        let mut g = grads(&mut rng, n, 1024.0);
        let bad = [17usize, 1500, n - 1];
        (g[bad[0]], g[bad[1]], g[bad[2]]) = (f32::INFINITY, f32::NAN, f32::NEG_INFINITY);
        let (hp, _) = hyper(2);
        let c = AdamConsts::new(&hp).unwrap();
        let scale = vec![c.grad_scale];
        for (flag, sms) in [(1i32, H100_SMS), (-7, 1)] {
            for kind in [Half::F16, Half::Bf16] {
                let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
                let mut half = HalfCopy::poisoned(kind, n);
                let skip = vec![flag];
                launch_adamw(emu, sms, &mut p, &g, &mut m, &mut v, &mut half, &c, ptr(&scale), ptr(&skip));
                let what = format!("adamw skipped (flag {flag}, {kind:?})");
                assert_same_bits(&format!("{what}: p"), &p, &p0);
                assert_same_bits(&format!("{what}: m"), &m, &m0);
                assert_same_bits(&format!("{what}: v"), &v, &v0);
                half.untouched(&what);
            }
        }
        // Taken with the non-finite gradients: exactly those elements go non-finite.
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        let mut half = HalfCopy::poisoned(Half::None, n);
        let skip = vec![0i32];
        launch_adamw(emu, H100_SMS, &mut p, &g, &mut m, &mut v, &mut half, &c, ptr(&scale), ptr(&skip));
        for i in 0..n {
            let (pw, mw, vw) = adamw_update(p0[i], g[i], m0[i], v0[i], &c);
            if bad.contains(&i) {
                assert!(pw.is_nan() && p[i].is_nan(), "p[{i}] = {} with gradient {} (reference {pw})", p[i], g[i]);
                assert!(
                    !m[i].is_finite() && !v[i].is_finite(),
                    "m, v [{i}] = {}, {} with gradient {}",
                    m[i],
                    v[i],
                    g[i]
                );
                assert_eq!((m[i].is_nan(), v[i].is_nan()), (mw.is_nan(), vw.is_nan()), "m, v [{i}]");
                assert!(m[i].is_nan() || m[i] == mw, "m[{i}] = {} vs {mw}", m[i]);
            } else {
                assert_same_bits(
                    &format!("adamw non-finite grads elsewhere [{i}]"),
                    &[p[i], m[i], v[i]],
                    &[pw, mw, vw],
                );
            }
        }
        // Null grad_scale (= 1), null skip (= 0), null p_half with half_kind 1 (no copy).
        let c1 = AdamConsts::new(&AdamHyper { grad_scale: 1.0, ..hp }).unwrap();
        let gf: Vec<f32> = g.iter().map(|&x| if x.is_finite() { x / 1024.0 } else { 0.0 }).collect();
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        let mut args = vec![ptr_mut(&mut p), ptr(&gf), ptr_mut(&mut m), ptr_mut(&mut v), NULL, Arg::I32(1), long(n)];
        args.extend(consts_args(&c1));
        args.extend([NULL, NULL]);
        run(emu, "adamw_step", capped_shape(n.div_ceil(256), 32, H100_SMS), &args);
        let mut want = (p0.clone(), m0.clone(), v0.clone());
        for i in 0..n {
            (want.0[i], want.1[i], want.2[i]) = adamw_update(p0[i], gf[i], m0[i], v0[i], &c1);
        }
        assert_same_bits("adamw null scalars: p", &p, &want.0);
        assert_same_bits("adamw null scalars: m", &m, &want.1);
        assert_same_bits("adamw null scalars: v", &v, &want.2);
        // n = 0 (the launcher's grid of one block): nothing is touched.
        let (mut e, ge) = (Vec::<f32>::new(), Vec::<f32>::new());
        let (mut em, mut ev) = (Vec::<f32>::new(), Vec::<f32>::new());
        let mut half = HalfCopy::poisoned(Half::Bf16, 0);
        launch_adamw(emu, H100_SMS, &mut e, &ge, &mut em, &mut ev, &mut half, &c, ptr(&scale), ptr(&[0i32]));
    });
}

// ---------------------------------------------------------------------------------------
// adam8bit_step
// ---------------------------------------------------------------------------------------

/// What one compared 8-bit step showed.
#[derive(Default)]
struct Stats8 {
    elements: usize,
    ties: usize,
    sign_fixes: usize,
    empty_blocks: usize,
    reset_elements: usize,
    worst_m_err: f64,
    worst_v_err: f64,
}

/// One emulated 8-bit step against `adam8bit::step` from the same state (the kernel's
/// own buffers, carried between launches), with every check of the 8-bit contract.
#[allow(clippy::too_many_arguments)]
fn compare_8bit_step(
    emu: &Emulator,
    sms: u32,
    maps: &[f32],
    p: &mut [f32],
    q: &mut QuantizedMoments,
    g: &[f32],
    hp: &AdamHyper,
    half_kind: Half,
    what: &str,
    stats: &mut Stats8,
) {
    let n = p.len();
    let c = AdamConsts::new(hp).unwrap();
    let (smap, umap) = (signed_dynamic_map(), unsigned_dynamic_map());
    let (p_before, before) = (p.to_vec(), q.clone());
    // CPU reference from the same state.
    let mut p_cpu = p.to_vec();
    let mut state = Adam8bitState::Blockwise8bit(q.clone());
    adam8bit::step(&mut p_cpu, g, &mut state, hp).unwrap();
    let Adam8bitState::Blockwise8bit(cpu) = state else { unreachable!() };
    // The kernel.
    let mut half = HalfCopy::poisoned(half_kind, n);
    let (scale, skip) = (vec![c.grad_scale], vec![0i32]);
    launch_adam8bit(emu, sms, p, g, q, maps, &mut half, &c, ptr(&scale), ptr(&skip));

    assert_same_bits(&format!("{what}: p"), p, &p_cpu);
    half.expect(p, what);
    assert_same_bits(&format!("{what}: m absmax"), &q.m_absmax, &cpu.m_absmax);
    assert_same_bits(&format!("{what}: v absmax"), &q.v_absmax, &cpu.v_absmax);
    // The updated fp32 moments of element i, from the state before the step.
    let updated = |i: usize| {
        let b = i / BLOCK_SIZE;
        let m = smap[before.m_codes[i] as usize] * before.m_absmax[b];
        let v = umap[before.v_codes[i] as usize] * before.v_absmax[b];
        if g[i].is_finite() {
            let (_, m, v) = adamw_update(p_before[i], g[i], m, v, &c);
            (m, v)
        } else {
            (0.0, 0.0)
        }
    };
    stats.ties +=
        check_codes(&format!("{what}: m codes"), &cpu.m_codes, &q.m_codes, |i| updated(i).0, &cpu.m_absmax, smap);
    stats.ties +=
        check_codes(&format!("{what}: v codes"), &cpu.v_codes, &q.v_codes, |i| updated(i).1, &cpu.v_absmax, umap);
    stats.elements += n;

    // The contract itself, independently of the CPU implementation.
    let (m_zero, v_zero) = (zero_code(smap), zero_code(umap));
    let (m_bound, v_bound) = (max_round_trip_error(smap) as f64, max_round_trip_error(umap) as f64);
    for b in 0..n_blocks(n) {
        let range = b * BLOCK_SIZE..((b + 1) * BLOCK_SIZE).min(n);
        let xs: Vec<(f32, f32)> = range.clone().map(updated).collect();
        let (am, av) = (q.m_absmax[b], q.v_absmax[b]);
        assert_eq!(am, xs.iter().fold(0f32, |a, x| a.max(x.0.abs())), "{what}: block {b} m absmax");
        assert_eq!(av, xs.iter().fold(0f32, |a, x| a.max(x.1.abs())), "{what}: block {b} v absmax");
        if am == 0.0 && av == 0.0 {
            stats.empty_blocks += 1;
        }
        for (i, (xm, xv)) in range.zip(xs) {
            let (cm, cv) = (q.m_codes[i], q.v_codes[i]);
            if !g[i].is_finite() {
                stats.reset_elements += 1;
                assert_eq!(p[i].to_bits(), p_before[i].to_bits(), "{what}: p[{i}] moved with gradient {}", g[i]);
                assert_eq!((cm, cv), (m_zero, v_zero), "{what}: moments [{i}] not reset with gradient {}", g[i]);
                continue;
            }
            if am == 0.0 {
                assert_eq!(cm, m_zero, "{what}: m code [{i}] in an all-zero block");
            } else {
                let err = (smap[cm as usize] as f64 * am as f64 - xm as f64).abs() / am as f64;
                assert!(err <= m_bound + 1e-6, "{what}: m[{i}] = {xm:e} decodes {err:e}·absmax away");
                stats.worst_m_err = stats.worst_m_err.max(err);
                if xm < 0.0 {
                    assert!(smap[cm as usize] < 0.0, "{what}: m[{i}] = {xm:e} lost its sign (code {cm})");
                }
                if nearest_code(smap, xm / am) != cm {
                    stats.sign_fixes += 1;
                }
            }
            if av == 0.0 {
                assert_eq!(cv, v_zero, "{what}: v code [{i}] in an all-zero block");
            } else {
                let err = (umap[cv as usize] as f64 * av as f64 - xv as f64).abs() / av as f64;
                assert!(err <= v_bound + 1e-6, "{what}: v[{i}] = {xv:e} decodes {err:e}·absmax away");
                stats.worst_v_err = stats.worst_v_err.max(err);
            }
        }
    }
}

/// Four steps in a row from zero state, the state carried in the kernel's buffers, each
/// compared with the CPU 8-bit AdamW from the same state. Sizes: one partial block; 3
/// blocks whose last holds one element (grid 3, 2 SMs); 10 blocks in one pass (132 SMs);
/// 20 and 36 blocks on a grid of 8 (1 SM: three and five block-stride passes, the partial
/// block in the last). Gradients carry loss scales 1, 1024, 65536; step 1 has an
/// all-zero-gradient block (empty absmax), step 2 NaN/±inf elements and an
/// all-non-finite block. Step 1 from zero state also equals fp32 AdamW bit for bit.
#[test]
fn adam8bit_step_matches_the_cpu_8bit_adamw_over_several_steps() {
    kernel_emu::schedules("adam8bit_step_matches_the_cpu_8bit_adamw_over_several_steps", |emu| {
        let maps = maps();
        let cases: [(usize, u32); 5] = [(100, H100_SMS), (513, 2), (2_500, H100_SMS), (5_000, 1), (9_000, 1)];
        let mut stats = Stats8::default();
        for (ci, &(n, sms)) in cases.iter().enumerate() {
            let mut rng = TestRng::new(2000 + ci as u64);
            let nb = n_blocks(n);
            let mut p = randn(&mut rng, n, 0.05);
            let mut q = zero_moments(n);
            for t in 1..=4u64 {
                let (mut hp, loss_scale) = hyper(t);
                hp.lr *= 1.5;
                let mut g = grads(&mut rng, n, loss_scale);
                if t == 1 && nb >= 3 {
                    g[(nb - 2) * BLOCK_SIZE..(nb - 1) * BLOCK_SIZE].fill(0.0);
                }
                if t == 2 {
                    (g[n / 3], g[n / 2], g[n - 1]) = (f32::NAN, f32::INFINITY, f32::NEG_INFINITY);
                    if nb >= 3 {
                        for (k, x) in g[BLOCK_SIZE..2 * BLOCK_SIZE].iter_mut().enumerate() {
                            *x = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k % 3];
                        }
                    }
                }
                let p0 = p.clone();
                let what = format!("adam8bit n={n} sms={sms} step {t}");
                compare_8bit_step(
                    emu,
                    sms,
                    &maps,
                    &mut p,
                    &mut q,
                    &g,
                    &hp,
                    HALVES[(ci + t as usize) % 3],
                    &what,
                    &mut stats,
                );
                if t == 1 {
                    // From zero state the dequantised moments are exactly zero: fp32 AdamW.
                    let c = AdamConsts::new(&hp).unwrap();
                    let want: Vec<f32> = (0..n).map(|i| adamw_update(p0[i], g[i], 0.0, 0.0, &c).0).collect();
                    assert_same_bits(&format!("{what}: p vs fp32 AdamW"), &p, &want);
                }
            }
        }
        assert!(stats.sign_fixes > 0, "the sign rule of the m requantisation never acted");
        assert!(stats.empty_blocks > 0 && stats.reset_elements > 0, "no empty block / no non-finite gradient");
        println!(
            "adam8bit_step: {} element-steps; p, half copies, absmax bit-identical; code differences (ties) {}; \
             sign-rule codes {}; empty blocks {}; reset elements {}; worst dequantisation error m {:.3e}·absmax \
             (bound {:.3e}), v {:.3e}·absmax (bound {:.3e})",
            stats.elements,
            stats.ties,
            stats.sign_fixes,
            stats.empty_blocks,
            stats.reset_elements,
            stats.worst_m_err,
            max_round_trip_error(signed_dynamic_map()),
            stats.worst_v_err,
            max_round_trip_error(unsigned_dynamic_map()),
        );
    });
}

/// Requantisation ties, made on purpose: with β1 = 0 and zero state, step 1 stores m = g
/// exactly, so a block whose largest gradient is ±1 (absmax 1) and whose other elements
/// are the fp32 midpoints of neighbouring signed-map entries puts every element on a tie,
/// which must go to the even code of the pair (quant8::nearest_code, as bitsandbytes'
/// pivot search), then through the sign rule. Here codes must be IDENTICAL to the CPU's
/// and to that rule — the tie tolerance of the other tests does not apply.
#[test]
fn adam8bit_requantisation_ties_go_to_the_even_code() {
    kernel_emu::schedules("adam8bit_requantisation_ties_go_to_the_even_code", |emu| {
        let smap = signed_dynamic_map();
        let maps = maps();
        let n = 300; // a full block (every neighbouring pair) and a partial one (pairs around 0)
        let mid = |lo: usize| (smap[lo] + smap[lo + 1]) * 0.5;
        // Element k sits on the tie between codes lo and lo + 1 (None: the block's ±1).
        let pair = |k: usize| match k {
            0 | BLOCK_SIZE => None,
            k if k < BLOCK_SIZE => Some(k - 1),
            k => Some(k - BLOCK_SIZE - 1 + 105),
        };
        let g: Vec<f32> = (0..n).map(|k| pair(k).map_or(if k == 0 { 1.0 } else { -1.0 }, mid)).collect();
        let hp = AdamHyper { beta1: 0.0, weight_decay: 0.0, step: 1, grad_scale: 1.0, ..AdamHyper::default() };
        let mut rng = TestRng::new(5);
        let p0 = randn(&mut rng, n, 0.05);
        // The contract checks (tie-tolerant), then the exact comparison from the same start.
        let (mut p, mut q) = (p0.clone(), zero_moments(n));
        compare_8bit_step(emu, 1, &maps, &mut p, &mut q, &g, &hp, Half::Bf16, "adam8bit ties", &mut Stats8::default());
        let (mut p_cpu, mut state) = (p0.clone(), Adam8bitState::Blockwise8bit(zero_moments(n)));
        adam8bit::step(&mut p_cpu, &g, &mut state, &hp).unwrap();
        let Adam8bitState::Blockwise8bit(cpu) = state else { unreachable!() };
        let (mut p, mut q) = (p0.clone(), zero_moments(n));
        let c = AdamConsts::new(&hp).unwrap();
        let (scale, skip) = (vec![1f32], vec![0i32]);
        let mut half = HalfCopy::poisoned(Half::None, n);
        launch_adam8bit(emu, 1, &mut p, &g, &mut q, &maps, &mut half, &c, ptr(&scale), ptr(&skip));
        assert_same_bits("adam8bit ties: p", &p, &p_cpu);
        assert_same_state("adam8bit ties", &q, &cpu);
        assert_eq!((q.m_absmax[0], q.m_absmax[1]), (1.0, 1.0), "the construction needs absmax 1");
        let mut ties = 0;
        for (k, (&x, &code)) in g.iter().zip(&q.m_codes).enumerate() {
            let Some(lo) = pair(k) else { continue };
            assert_eq!(x / q.m_absmax[k / BLOCK_SIZE], mid(lo), "element {k} is not on a tie");
            let mut want = if lo % 2 == 0 { lo } else { lo + 1 };
            if x < 0.0 && smap[want] >= 0.0 && want > 0 {
                want -= 1;
            } else if x > 0.0 && smap[want] < 0.0 {
                want += 1;
            }
            assert_eq!(code as usize, want, "tie at element {k} between codes {lo} and {}", lo + 1);
            ties += 1;
        }
        assert_eq!(ties, n - 2);
        println!("adam8bit_step: {ties} deliberate requantisation ties, every one on the even code as the CPU");
    });
}

/// A set skip flag writes nothing — parameters, codes, absmax, half copy — even with
/// non-finite gradients; null `grad_scale`/`skip`/`p_half` mean 1 / no skip / no copy;
/// an empty tensor launches one block that touches nothing.
#[test]
fn adam8bit_step_skip_flag_and_nullable_pointers() {
    kernel_emu::schedules("adam8bit_step_skip_flag_and_nullable_pointers", |emu| {
        let maps = maps();
        let n = 1000;
        let mut rng = TestRng::new(88);
        let mut p = randn(&mut rng, n, 0.05);
        let mut q = zero_moments(n);
        let mut stats = Stats8::default();
        let (hp, loss) = hyper(1);
        let g = grads(&mut rng, n, loss);
        compare_8bit_step(emu, 1, &maps, &mut p, &mut q, &g, &hp, Half::F16, "adam8bit first step", &mut stats);
        let (p1, q1) = (p.clone(), q.clone());
        let (hp2, loss) = hyper(2);
        let c2 = AdamConsts::new(&hp2).unwrap();
        let mut g2 = grads(&mut rng, n, loss);
        (g2[3], g2[700]) = (f32::INFINITY, f32::NAN);
        for (flag, sms) in [(1i32, H100_SMS), (-7, 1)] {
            for kind in [Half::F16, Half::Bf16, Half::None] {
                let mut half = HalfCopy::poisoned(kind, n);
                let (scale, skip) = (vec![c2.grad_scale], vec![flag]);
                launch_adam8bit(emu, sms, &mut p, &g2, &mut q, &maps, &mut half, &c2, ptr(&scale), ptr(&skip));
                let what = format!("adam8bit skipped (flag {flag}, {kind:?})");
                assert_same_bits(&format!("{what}: p"), &p, &p1);
                assert_same_state(&format!("{what}: the 8-bit state"), &q, &q1);
                half.untouched(&what);
            }
        }
        // Null grad_scale (= 1), null skip (= 0), null p_half with half_kind 2 (no copy).
        let hp1 = AdamHyper { grad_scale: 1.0, ..hp2 };
        let c1 = AdamConsts::new(&hp1).unwrap();
        let g1: Vec<f32> = g2.iter().map(|&x| x / 1024.0).collect();
        let mut p_cpu = p.clone();
        let mut state = Adam8bitState::Blockwise8bit(q.clone());
        adam8bit::step(&mut p_cpu, &g1, &mut state, &hp1).unwrap();
        let mut args = vec![
            ptr_mut(&mut p),
            ptr(&g1),
            ptr_mut(&mut q.m_codes),
            ptr_mut(&mut q.m_absmax),
            ptr_mut(&mut q.v_codes),
            ptr_mut(&mut q.v_absmax),
            ptr(&maps),
            NULL,
            Arg::I32(2),
            long(n),
        ];
        args.extend(consts_args(&c1));
        args.extend([NULL, NULL]);
        run(emu, "adam8bit_step", capped_shape(n_blocks(n), 8, H100_SMS), &args);
        assert_same_bits("adam8bit null scalars: p", &p, &p_cpu);
        let Adam8bitState::Blockwise8bit(want) = state else { unreachable!() };
        assert_same_state("adam8bit null scalars", &q, &want);
        // n = 0.
        let (mut e, ge) = (Vec::<f32>::new(), Vec::<f32>::new());
        let mut qe = zero_moments(0);
        let mut half = HalfCopy::poisoned(Half::F16, 0);
        launch_adam8bit(emu, H100_SMS, &mut e, &ge, &mut qe, &maps, &mut half, &c1, ptr(&[1f32]), ptr(&[0i32]));
        assert_same_state("adam8bit n = 0", &qe, &zero_moments(0));
    });
}

// ---------------------------------------------------------------------------------------
// The overflow pipeline of Optimizer::step on the GPU (ops::grad_norm).
// ---------------------------------------------------------------------------------------

/// `backend::cuda::grad_norm::sum_squares`.
fn launch_sum_squares(emu: &Emulator, sms: u32, acc: &mut [f32], nonfinite: &mut [i32], x: &[f32]) {
    let n = x.len();
    let args = [ptr_mut(acc), ptr_mut(nonfinite), ptr(x), long(n)];
    run(emu, "sum_squares_f32", capped_shape(n.div_ceil(THREADS as usize), 8, sms), &args);
}

/// What `clip_and_scale` wrote.
struct Scalars {
    sumsq: f32,
    coef: Vec<f32>,
    skip: Vec<i32>,
    norm: f32,
}

/// `ops::grad_norm`'s norm / clip / overflow launches over `grads`, with the
/// outputs of `clip_and_scale` poisoned (`skip` with `skip_poison`).
fn norm_clip(emu: &Emulator, sms: u32, grads: &[&[f32]], max_norm: f32, inv_scale: f32, skip_poison: i32) -> Scalars {
    let (mut sumsq, mut nonfinite) = (vec![0f32], vec![0i32]);
    for g in grads {
        launch_sum_squares(emu, sms, &mut sumsq, &mut nonfinite, g);
    }
    let (mut coef, mut skip, mut norm) = (vec![f32::NAN], vec![skip_poison], vec![f32::NAN]);
    let one = Shape::of(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 });
    let args = [
        ptr_mut(&mut coef),
        ptr(&sumsq),
        ptr(&nonfinite),
        ptr_mut(&mut skip),
        Arg::F32(max_norm),
        Arg::F32(inv_scale),
        ptr_mut(&mut norm),
    ];
    run(emu, "clip_and_scale", one, &args);
    Scalars { sumsq: sumsq[0], coef, skip, norm: norm[0] }
}

/// The GPU optimizer's step as `Optimizer::step` chains it, with the AdamW8bit kind:
/// a 1,000-element tensor (under `MIN_8BIT_SIZE`: fp32 moments, `adamw_step`) and a
/// 4,396-element one (8-bit, `adam8bit_step`), gradients loss-scaled by 1024, clipping at
/// norm 1. Finite gradients: `skip` written 0, the clip active, `coef` = inv_scale·clip
/// formed from the device sum of squares, and both steps equal the CPU references with
/// `grad_scale = coef`. An inf, a NaN, or a finite gradient whose square overflows: `skip`
/// written 1, and neither kernel writes anything.
#[test]
fn overflow_pipeline_skips_both_optimizer_kernels() {
    kernel_emu::schedules("overflow_pipeline_skips_both_optimizer_kernels", |emu| {
        let (na, nb) = (1000usize, 4396usize);
        assert!(na < MIN_8BIT_SIZE && nb >= MIN_8BIT_SIZE);
        let maps = maps();
        let mut rng = TestRng::new(4242);
        let (loss_scale, max_norm) = (1024f32, 1.0f32);
        let inv = 1.0 / loss_scale;
        let (mut pa, mut pb) = (randn(&mut rng, na, 0.05), randn(&mut rng, nb, 0.05));
        let (mut ma, mut va) = (vec![0f32; na], vec![0f32; na]);
        let mut qb = zero_moments(nb);
        let base = AdamHyper { lr: 2e-3, weight_decay: 0.1, ..AdamHyper::default() };
        let mut step = 0u64;
        for (round, overflow) in ["", "inf", "huge", "", "nan"].into_iter().enumerate() {
            let sms = if round % 2 == 0 { H100_SMS } else { 1 };
            let mut ga = grads(&mut rng, na, loss_scale * 10.0);
            let mut gb = grads(&mut rng, nb, loss_scale * 10.0);
            match overflow {
                "inf" => gb[nb - 1] = f32::INFINITY,
                "nan" => ga[100] = f32::NAN,
                "huge" => ga[na - 1] = 3e19, // finite, but its square is not
                _ => {}
            }
            let poison = if overflow.is_empty() { 1 } else { 0 };
            let s = norm_clip(emu, sms, &[&ga, &gb], max_norm, inv, poison);
            let what = format!("round {round} ({})", if overflow.is_empty() { "finite" } else { overflow });
            // The optimizer's per-tensor constants carry grad_scale 1: the factor is on the device.
            let c = AdamConsts::new(&AdamHyper { step: step + 1, grad_scale: 1.0, ..base }).unwrap();
            let (pa0, ma0, va0, pb0, qb0) = (pa.clone(), ma.clone(), va.clone(), pb.clone(), qb.clone());
            let (mut ha, mut hb) = (HalfCopy::poisoned(Half::Bf16, na), HalfCopy::poisoned(Half::F16, nb));
            launch_adamw(emu, sms, &mut pa, &ga, &mut ma, &mut va, &mut ha, &c, ptr(&s.coef), ptr(&s.skip));
            launch_adam8bit(emu, sms, &mut pb, &gb, &mut qb, &maps, &mut hb, &c, ptr(&s.coef), ptr(&s.skip));
            if !overflow.is_empty() {
                assert_eq!(s.skip, [1], "{what}: skip flag");
                assert_same_bits(&format!("{what}: skipped fp32 p"), &pa, &pa0);
                assert_same_bits(&format!("{what}: skipped m"), &ma, &ma0);
                assert_same_bits(&format!("{what}: skipped v"), &va, &va0);
                assert_same_bits(&format!("{what}: skipped 8-bit p"), &pb, &pb0);
                assert_same_state(&format!("{what}: skipped 8-bit state"), &qb, &qb0);
                ha.untouched(&what);
                hb.untouched(&what);
                continue;
            }
            assert_eq!(s.skip, [0], "{what}: skip flag");
            let exact: f64 = ga.iter().chain(&gb).map(|&x| x as f64 * x as f64).sum();
            assert!(((s.sumsq as f64 - exact) / exact).abs() < 1e-5, "{what}: Σg² {} vs {exact}", s.sumsq);
            let norm = s.sumsq.sqrt() * inv;
            let clip = (max_norm / (norm + 1e-6)).min(1.0);
            assert!(clip < 0.5, "{what}: clipping must act (norm {norm})");
            assert_eq!(s.norm.to_bits(), norm.to_bits(), "{what}: norm");
            assert_eq!(s.coef[0].to_bits(), (inv * clip).to_bits(), "{what}: coef");
            println!(
                "overflow pipeline {what}: Σg² rel. error {:.1e} (fp32 atomics vs f64), clip {clip:.4}, coef {:e}",
                ((s.sumsq as f64 - exact) / exact).abs(),
                s.coef[0]
            );
            // The CPU references with grad_scale = the device coefficient.
            let hp = AdamHyper { step: step + 1, grad_scale: s.coef[0] as f64, ..base };
            let cc = AdamConsts::new(&hp).unwrap();
            assert_eq!(cc.grad_scale, s.coef[0]);
            let mut want = (pa0.clone(), ma0.clone(), va0.clone());
            for i in 0..na {
                (want.0[i], want.1[i], want.2[i]) = adamw_update(pa0[i], ga[i], ma0[i], va0[i], &cc);
            }
            assert_same_bits(&format!("{what}: fp32 p"), &pa, &want.0);
            assert_same_bits(&format!("{what}: m"), &ma, &want.1);
            assert_same_bits(&format!("{what}: v"), &va, &want.2);
            ha.expect(&pa, &what);
            let mut pb_cpu = pb0.clone();
            let mut state = Adam8bitState::Blockwise8bit(qb0.clone());
            adam8bit::step(&mut pb_cpu, &gb, &mut state, &hp).unwrap();
            assert_same_bits(&format!("{what}: 8-bit p"), &pb, &pb_cpu);
            let Adam8bitState::Blockwise8bit(want) = state else { unreachable!() };
            assert_same_state(&format!("{what}: 8-bit state"), &qb, &want);
            hb.expect(&pb, &what);
            step += 1;
        }
        assert_eq!(step, 2);
    });
}
