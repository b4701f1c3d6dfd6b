//! Helpers of the GPU tests (`tests/cuda_ops.rs`, `tests/cuda_model.rs`): opening a
//! device or skipping visibly, tolerances, rounding to the compute dtype, and a generic
//! forward + backward comparison of a CUDA op against the CPU op in f64.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use half::{bf16, f16};
use qf_engine::backend::cuda::{device::unavailable_reason, kernels, CudaDevice};
use qf_engine::{DType, Device, Grads, Tape, Tensor};

use crate::common::TestRng;

/// The three compute dtypes every kernel is tested in.
pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Print a line that `cargo test`'s output capture does not swallow (so a SKIP shows in
/// CI logs without `--nocapture`).
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A measurement line: shown when the tests run with `--nocapture` (the GPU check does),
/// kept out of ordinary `cargo test` output.
pub fn detail(line: &str) {
    eprintln!("{line}");
}

/// What this process runs CUDA on: a real GPU; else the CPU emulation of
/// `tests/kernel_emu` installed as the driver and cuBLAS (every kernel, the real
/// launchers, cudarc and the engine's CUDA backend run; only the device is emulated);
/// else nothing, with the reason. `QF_CUDA_EMULATION=0` turns the emulation off.
#[derive(Clone, Debug)]
pub enum Cuda {
    Real,
    Emulated,
    Absent(String),
}

pub fn cuda(test: &str) -> Cuda {
    static CUDA: std::sync::OnceLock<Cuda> = std::sync::OnceLock::new();
    CUDA.get_or_init(|| {
        let Some(why) = unavailable_reason() else { return Cuda::Real };
        if std::env::var("QF_CUDA_EMULATION").is_ok_and(|v| v == "0") {
            return Cuda::Absent(format!("{why} (emulation off: QF_CUDA_EMULATION=0)"));
        }
        let Some(emu) = crate::kernel_emu::emulator(test) else { return Cuda::Absent(why) };
        if let Err(e) = emu.install_as_cuda() {
            return Cuda::Absent(format!("{why}; the CUDA emulation could not be installed: {e}"));
        }
        match unavailable_reason() {
            None => Cuda::Emulated,
            Some(still) => Cuda::Absent(format!("{why}; with the CUDA emulation installed: {still}")),
        }
    })
    .clone()
}

/// Whether the tests run on the CPU emulation (too slow for the long training checks).
pub fn emulated() -> bool {
    matches!(cuda("emulated"), Cuda::Emulated)
}

/// A fresh CUDA device (a GPU, or the CPU emulation without one), or `None` after
/// printing `SKIP: no CUDA device: <reason>`.
pub fn open_cuda(test: &str) -> Option<CudaDevice> {
    match cuda(test) {
        Cuda::Real => {}
        Cuda::Emulated => say(&format!("EMULATED: no GPU; the CUDA backend runs on the CPU emulation [{test}]")),
        Cuda::Absent(why) => {
            say(&format!("SKIP: no CUDA device: {why} [{test}]"));
            return None;
        }
    }
    if !kernels::BUILT_WITH_KERNELS {
        say(&format!("SKIP: no CUDA device: this build has no CUDA kernels ({}) [{test}]", kernels::KERNEL_BUILD_NOTE));
        return None;
    }
    Some(CudaDevice::open(0).unwrap_or_else(|e| panic!("a CUDA device is present but cannot be opened: {e:#}")))
}

/// A fresh CUDA device computing in `dtype`, with every uninitialised buffer poisoned
/// with NaN; or `None` after printing `SKIP: no CUDA device: <reason>`.
pub fn gpu(test: &str, dtype: DType) -> Option<CudaDevice> {
    let dev = open_cuda(test)?;
    dev.set_compute_dtype(dtype).unwrap();
    dev.set_poison_uninit(true);
    Some(dev)
}

/// Where the op under test runs: the GPU (the point of these tests), or the CPU in f32 —
/// the same harness against the same f64 reference, which CI runs to prove the
/// harness itself (and the CPU's f32 path) before a GPU ever sees it.
#[derive(Clone, Debug)]
pub enum Target {
    Cpu32,
    Gpu(CudaDevice),
}

impl Target {
    pub fn device(&self) -> Device {
        match self {
            Target::Cpu32 => Device::Cpu,
            Target::Gpu(d) => Device::Cuda(d.clone()),
        }
    }
    /// The activations' dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Target::Cpu32 => DType::F32,
            Target::Gpu(d) => d.compute_dtype(),
        }
    }
    pub fn is_gpu(&self) -> bool {
        matches!(self, Target::Gpu(_))
    }
    pub fn synchronize(&self) {
        if let Target::Gpu(d) = self {
            d.synchronize().unwrap();
        }
    }
    /// A float tensor of `v` in `dtype` on this target.
    pub fn tensor(&self, v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_f32(v, shape, dtype, &self.device()).unwrap()
    }
}

/// Run `f` on every GPU dtype (f32, f16, bf16), each with a fresh device; prints SKIP
/// and returns when there is no GPU.
pub fn on_gpu(test: &str, f: impl Fn(&Target)) {
    for dt in DTYPES {
        let Some(dev) = gpu(test, dt) else { return };
        f(&Target::Gpu(dev));
    }
}

/// ‖out − ref‖ / ‖ref‖ bound of docs/ARCHITECTURE.md: fp32 1e-5 against f64, fp16/bf16 1e-2 (kept
/// for checks of derived quantities, e.g. q·k under a rotary offset).
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

/// The bound for a tensor of `dtype` against its exact (f64) value `reference`, set from
/// the errors measured on the CPU emulation of CUDA (2026-12-06, every op of
/// `tests/cuda_ops.rs`):
/// - f32: 1e-6. Worst measured 3.7e-7 (attention output; all others ≤ 2.5e-7).
/// - f16/bf16: 3× the error of rounding the exact answer to the dtype, the floor no kernel
///   can beat (≈ 2e-4 in f16, 1.6e-3 in bf16). Measured errors are 1.0–2.3× that floor
///   (worst: the gradient of add/scale in bf16, 2.3×, whose inputs are rounded too).
pub fn explained_tol(dtype: DType, reference: &[f64]) -> f64 {
    match dtype {
        DType::F32 | DType::F64 | DType::I32 => 1e-6,
        DType::F16 | DType::BF16 => {
            let rounded: Vec<f32> = reference.iter().map(|&x| round_to(dtype, x) as f32).collect();
            (3.0 * rel_err(&rounded, reference)).max(1e-6)
        }
    }
}

/// `v` rounded to the nearest value of `dtype` (round to nearest even).
///
/// Halves are rounded from f32, not with `half`'s f64 conversion: that drops the low 32
/// bits of the f64 mantissa before rounding, so an f32 just above a tie (e.g. 0xbd888004
/// → bf16) rounds down there, unlike the device's `__float2bfloat16_rn` (found by the CPU
/// emulation of CUDA). The f64 → f32 step rounds to odd, which keeps the second rounding
/// exact (f32 carries 13 and 16 more mantissa bits than f16 and bf16).
pub fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F16 => f16::from_f32(to_f32_round_to_odd(v)).to_f64(),
        DType::BF16 => bf16::from_f32(to_f32_round_to_odd(v)).to_f64(),
        DType::F64 => v,
        DType::I32 => v.round(),
    }
}

/// `v` as f32, rounded to odd: exact values stay; an inexact one lands on the neighbour
/// of its two f32 neighbours whose last mantissa bit is 1.
fn to_f32_round_to_odd(v: f64) -> f32 {
    let f = v as f32;
    if f as f64 == v || f == 0.0 || f.to_bits() & 1 == 1 {
        return f;
    }
    // f is v rounded to nearest with an even last bit: step one ulp towards v.
    let towards_v = if v.abs() > (f as f64).abs() { 1 } else { -1i32 };
    f32::from_bits(f.to_bits().wrapping_add_signed(towards_v))
}

pub fn rounded(dtype: DType, v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| round_to(dtype, x)).collect()
}

/// Relative L2 error ‖got − want‖ / ‖want‖ (‖got − want‖ when `want` is zero); any
/// non-finite value in `got` gives infinity, so NaN never passes.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() || !w.is_finite() {
            return f64::INFINITY;
        }
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Root mean square.
pub fn rms(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
}

/// A committed fixture under `tests/fixtures`: at the path compiled in, or — when the
/// binary runs on another machine (the GPU check carries prebuilt test binaries) —
/// relative to `$QF_FIXTURES_DIR`, or to the current directory (the repository root).
pub fn fixture(rel: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let root = match std::env::var_os("QF_FIXTURES_DIR") {
        Some(d) => PathBuf::from(d),
        None if built.is_dir() => built,
        None => PathBuf::from("tests/fixtures"),
    };
    let p = root.join(rel);
    assert!(p.exists(), "fixture {} not found (run from the repository root or set QF_FIXTURES_DIR)", p.display());
    p
}

/// How an op input lives on each side.
#[derive(Clone, Debug)]
pub enum Kind {
    /// An activation: f64 on the CPU, the compute dtype on the GPU (values rounded to it).
    Act { grad: bool },
    /// A parameter: f64 on the CPU, f32 master on the GPU.
    Param { grad: bool },
    /// An auxiliary float input (targets, masks, scales, class weights): f32 on the GPU,
    /// `cpu` on the CPU.
    Aux { cpu: DType },
    /// i32 indices on both sides.
    Ints(Vec<i32>),
}

/// One input of an op: values (already rounded as they should be), shape, kind.
#[derive(Clone, Debug)]
pub struct Input {
    pub data: Vec<f64>,
    pub shape: Vec<usize>,
    pub kind: Kind,
}

impl Input {
    /// An activation of N(0, std²) values rounded to `dtype`.
    pub fn act(rng: &mut TestRng, dtype: DType, shape: &[usize], std: f64, grad: bool) -> Input {
        let n = shape.iter().product();
        Input { data: rounded(dtype, &rng.normals(n, std)), shape: shape.to_vec(), kind: Kind::Act { grad } }
    }
    /// A parameter of N(mean, std²) values rounded to `round` (f32, or the compute dtype
    /// for matrices that the GPU reads through a half copy).
    pub fn param(rng: &mut TestRng, round: DType, shape: &[usize], mean: f64, std: f64, grad: bool) -> Input {
        let n = shape.iter().product();
        let v: Vec<f64> = rng.normals(n, std).into_iter().map(|x| x + mean).collect();
        Input { data: rounded(round, &v), shape: shape.to_vec(), kind: Kind::Param { grad } }
    }
    pub fn aux(data: Vec<f64>, shape: &[usize], cpu: DType) -> Input {
        Input { data: rounded(DType::F32, &data), shape: shape.to_vec(), kind: Kind::Aux { cpu } }
    }
    pub fn ints(v: Vec<i32>) -> Input {
        let n = v.len();
        Input { data: Vec::new(), shape: vec![n], kind: Kind::Ints(v) }
    }

    fn grad(&self) -> bool {
        matches!(self.kind, Kind::Act { grad: true } | Kind::Param { grad: true })
    }

    /// The CPU tensor (f64 floats).
    pub fn cpu(&self) -> Tensor {
        match &self.kind {
            Kind::Ints(v) => Tensor::from_vec(v.clone(), &self.shape).unwrap(),
            Kind::Aux { cpu: DType::F32 } => {
                Tensor::from_vec(self.data.iter().map(|&x| x as f32).collect::<Vec<f32>>(), &self.shape).unwrap()
            }
            _ => Tensor::from_vec(self.data.clone(), &self.shape).unwrap().with_requires_grad(self.grad()),
        }
    }

    /// The tensor on `target`: activations in its compute dtype, parameters and
    /// auxiliary floats in f32, indices in i32.
    pub fn on(&self, target: &Target) -> Tensor {
        let d = target.device();
        match &self.kind {
            Kind::Ints(v) => Tensor::from_i32(v.clone(), &self.shape, &d).unwrap(),
            Kind::Aux { .. } => target.tensor(&self.data, &self.shape, DType::F32),
            Kind::Param { grad } => target.tensor(&self.data, &self.shape, DType::F32).with_requires_grad(*grad),
            Kind::Act { grad } => target.tensor(&self.data, &self.shape, target.dtype()).with_requires_grad(*grad),
        }
    }

    /// The GPU tensor.
    pub fn gpu(&self, dev: &CudaDevice) -> Tensor {
        self.on(&Target::Gpu(dev.clone()))
    }
}

/// A function of the inputs returning one or more outputs (the same code runs on both
/// devices).
pub type OpFn<'a> = dyn Fn(&Tape, &[Tensor]) -> Result<Vec<Tensor>> + 'a;

/// Errors of one comparison.
#[derive(Debug, Default)]
pub struct Errors {
    pub outputs: Vec<f64>,
    pub grads: Vec<f64>,
}

impl Errors {
    pub fn worst(&self) -> f64 {
        self.outputs.iter().chain(&self.grads).copied().fold(0.0, f64::max)
    }
}

/// Run `f` forward and backward on `target` and on the CPU in f64, and compare every
/// output and every input gradient:
///
/// * outputs are poisoned before the kernels run (the GPU device poisons fresh buffers);
/// * the upstream gradients are random (rounded to each output's dtype on `target`);
/// * every input gradient buffer on `target` starts from random non-zero values
///   (scaled like the expected gradient), so a kernel that writes where it should
///   accumulate, or accumulates twice, is caught: the expected result is that start
///   plus the CPU gradient.
///
/// Panics naming `what` and the dtype when an error exceeds `tol`; returns the errors.
/// Run `f` on the target and on the CPU in f64, forward and backward from random upstream
/// gradients, and bound every output and input gradient by [`explained_tol`].
pub fn check_op(target: &Target, rng: &mut TestRng, what: &str, inputs: &[Input], f: &OpFn) -> Errors {
    let dtype = target.dtype();
    let seed = rng.next_u64();
    // Forward on the target first: its output dtypes decide how the upstream gradients
    // are rounded.
    let g_in: Vec<Tensor> = inputs.iter().map(|i| i.on(target)).collect();
    let g_tape = Tape::with_seed(seed);
    let g_out = f(&g_tape, &g_in).unwrap_or_else(|e| panic!("{what} [{dtype}]: forward failed: {e:#}"));
    let seeds: Vec<Vec<f64>> = g_out.iter().map(|o| rounded(o.dtype(), &rng.normals(o.numel(), 1.0))).collect();

    // CPU reference in f64.
    let c_in: Vec<Tensor> = inputs.iter().map(Input::cpu).collect();
    let c_tape = Tape::with_seed(seed);
    let c_out = f(&c_tape, &c_in).unwrap_or_else(|e| panic!("{what}: CPU f64 forward failed: {e:#}"));
    let c_roots: Vec<(&Tensor, Tensor)> =
        c_out.iter().zip(&seeds).map(|(o, s)| (o, Tensor::from_vec(s.clone(), o.shape()).unwrap())).collect();
    let mut c_grads = Grads::new();
    c_tape.backward_from_many(&c_roots, &mut c_grads).unwrap_or_else(|e| panic!("{what}: CPU backward: {e:#}"));

    let mut errs = Errors::default();
    for (k, (g, c)) in g_out.iter().zip(&c_out).enumerate() {
        let want = c.to_vec_f64().unwrap();
        let e = rel_err(&g.to_vec_f32().unwrap(), &want);
        let tol = explained_tol(g.dtype(), &want);
        detail(&format!("  {what} [{dtype}] output {k}: rel err {e:.2e} (bound {tol:.1e})"));
        assert!(e <= tol, "{what} [{dtype}]: output {k} error {e:.3e} > {tol:.1e}");
        errs.outputs.push(e);
    }

    // Backward on the target from random starting gradients.
    let mut g_grads = Grads::new();
    let mut expected: Vec<Option<Vec<f64>>> = Vec::new();
    for (inp, (gi, ci)) in inputs.iter().zip(g_in.iter().zip(&c_in)) {
        if !inp.grad() {
            expected.push(None);
            continue;
        }
        let want = match c_grads.get(ci) {
            Some(t) => t.to_vec_f64().unwrap(),
            None => vec![0.0; ci.numel()],
        };
        let start = rounded(gi.dtype(), &rng.normals(gi.numel(), rms(&want).max(1e-3)));
        g_grads.insert(gi, target.tensor(&start, gi.shape(), gi.dtype()));
        expected.push(Some(start.iter().zip(&want).map(|(a, b)| a + b).collect()));
    }
    let g_roots: Vec<(&Tensor, Tensor)> =
        g_out.iter().zip(&seeds).map(|(o, s)| (o, target.tensor(s, o.shape(), o.dtype()))).collect();
    g_tape.backward_from_many(&g_roots, &mut g_grads).unwrap_or_else(|e| panic!("{what} [{dtype}]: backward: {e:#}"));
    for (k, (gi, want)) in g_in.iter().zip(&expected).enumerate() {
        let Some(want) = want else {
            assert!(g_grads.get(gi).is_none(), "{what} [{dtype}]: input {k} needs no gradient but got one");
            continue;
        };
        let got = g_grads.get(gi).unwrap_or_else(|| panic!("{what} [{dtype}]: input {k} lost its gradient buffer"));
        let e = rel_err(&got.to_vec_f32().unwrap(), want);
        let tol = explained_tol(got.dtype(), want);
        detail(&format!("  {what} [{dtype}] grad of input {k}: rel err {e:.2e} (bound {tol:.1e})"));
        assert!(e <= tol, "{what} [{dtype}]: gradient of input {k} error {e:.3e} > {tol:.1e}");
        errs.grads.push(e);
    }
    target.synchronize();
    errs
}
