//! What the CUDA benchmarks share: the device (a GPU, or the CPU emulation with
//! `QF_BENCH_EMULATION=1`), inputs, Pfam-like batches, timing, and the roofline table
//! against the copy bandwidth and GEMM rate measured in the same run.

#![allow(dead_code)]

use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use qf_engine::backend::cuda::CudaDevice;
use qf_engine::tensor::Storage;
use qf_engine::{DType, Device, Grads, Tape, Tensor};

#[path = "../../tests/kernel_emu/mod.rs"]
#[allow(dead_code)]
mod kernel_emu;

/// A preset's layer: name, hidden, heads.
pub const PRESETS: [(&str, usize, usize); 4] =
    [("8M", 320, 20), ("35M", 480, 20), ("150M", 640, 20), ("650M", 1280, 20)];
pub const TOKENS: usize = 16_384;

/// What a benchmark moved or computed per call, for its roofline fraction.
#[derive(Clone, Copy)]
pub enum Work {
    Bytes(f64),
    Flops(f64),
}

struct Row {
    name: String,
    seconds: f64,
    work: Work,
}

thread_local! {
    static ROWS: RefCell<Vec<Row>> = const { RefCell::new(Vec::new()) };
}

pub struct Bench {
    pub dev: CudaDevice,
    pub emulated: bool,
    pub dtype: DType,
}

impl Bench {
    pub fn device(&self) -> Device {
        Device::Cuda(self.dev.clone())
    }

    pub fn tensor(&self, shape: &[usize], dtype: DType, seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| ((qf_engine::data::rng::splitmix64(&mut s) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5)
            .collect();
        Tensor::from_f32(v, shape, dtype, &self.device()).unwrap()
    }

    pub fn ints(&self, v: Vec<i32>) -> Tensor {
        let n = v.len();
        Tensor::from_i32(v, &[n], &self.device()).unwrap()
    }

    /// Time `f` (waited for) in criterion, and once more by hand for the roofline table.
    pub fn run(&self, c: &mut Criterion, group: &str, id: &str, work: Work, f: &mut dyn FnMut()) {
        let mut g = c.benchmark_group(group);
        if self.emulated {
            g.sample_size(10).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_millis(10));
        }
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                f();
                self.dev.synchronize().unwrap();
            })
        });
        g.finish();
        f();
        self.dev.synchronize().unwrap();
        let reps = if self.emulated { 1 } else { 20 };
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        self.dev.synchronize().unwrap();
        let seconds = t.elapsed().as_secs_f64() / reps as f64;
        ROWS.with(|r| r.borrow_mut().push(Row { name: format!("{group}/{id}"), seconds, work }));
    }
}

impl Bench {
    /// Like [`Bench::run`] for work that needs fresh state per call: `setup` is untimed
    /// and returns the timed closure (criterion's `iter_batched`).
    pub fn run_with_setup(
        &self,
        c: &mut Criterion,
        group: &str,
        id: &str,
        work: Work,
        setup: &mut dyn FnMut() -> Box<dyn FnOnce()>,
    ) {
        let mut g = c.benchmark_group(group);
        if self.emulated {
            g.sample_size(10).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_millis(10));
        }
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter_batched(
                || {
                    let f = setup();
                    self.dev.synchronize().unwrap();
                    f
                },
                |f| {
                    f();
                    self.dev.synchronize().unwrap();
                },
                criterion::BatchSize::PerIteration,
            )
        });
        g.finish();
        let reps = if self.emulated { 1 } else { 10 };
        let mut seconds = 0.0;
        for _ in 0..reps {
            let f = setup();
            self.dev.synchronize().unwrap();
            let t = Instant::now();
            f();
            self.dev.synchronize().unwrap();
            seconds += t.elapsed().as_secs_f64();
        }
        let seconds = seconds / reps as f64;
        ROWS.with(|r| r.borrow_mut().push(Row { name: format!("{group}/{id}"), seconds, work }));
    }
}

/// Packed lengths: `tokens` of Pfam-like lengths, or of one fixed length.
pub fn lengths(mix: &str, tokens: usize) -> Vec<u32> {
    let mut cu = vec![0u32];
    let mut s = 42u64;
    while (*cu.last().unwrap() as usize) < tokens {
        let len = match mix {
            "pfam" => {
                // log-normal, median ≈ 120, mean ≈ 156 (Pfam domains), in [20, 1022] + cls/eos
                let u1 = ((qf_engine::data::rng::splitmix64(&mut s) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                let u2 = (qf_engine::data::rng::splitmix64(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                ((120f64.ln() + 0.7 * z).exp().clamp(20.0, 1022.0) as u32) + 2
            }
            fixed => fixed.parse().unwrap(),
        };
        let len = len.min((tokens - *cu.last().unwrap() as usize) as u32).max(1);
        cu.push(cu.last().unwrap() + len);
    }
    cu
}

pub fn bytes(ts: &[&Tensor]) -> f64 {
    ts.iter().map(|t| (t.numel() * t.dtype().size_in_bytes()) as f64).sum()
}

/// The backward pass from `outs`, each seeded with a small constant gradient.
pub fn backward(tape: Tape, outs: &[&Tensor]) {
    let roots: Vec<(&Tensor, Tensor)> = outs
        .iter()
        .map(|y| (*y, Tensor::from_f32(vec![1e-3; y.numel()], y.shape(), y.dtype(), &y.device()).unwrap()))
        .collect();
    tape.backward_from_many(&roots, &mut Grads::new()).unwrap();
}

/// Copy bandwidth (a device-to-device copy, read + write) and the dense GEMM rate.
pub fn references(b: &Bench) -> (f64, f64, String) {
    let n = if b.emulated { 1 << 16 } else { 64 << 20 };
    let t = b.tensor(&[n], DType::F32, 23);
    let Storage::Cuda(s) = t.storage() else { unreachable!() };
    s.duplicate().unwrap();
    b.dev.synchronize().unwrap();
    let reps = if b.emulated { 2 } else { 20 };
    let t0 = Instant::now();
    for _ in 0..reps {
        s.duplicate().unwrap();
    }
    b.dev.synchronize().unwrap();
    let copy = 2.0 * (4 * n) as f64 * reps as f64 / t0.elapsed().as_secs_f64();
    let (gemm, shape) = qf_engine::train::bench::gemm_peak(&b.device(), b.dtype).unwrap();
    (copy, gemm, shape)
}

pub fn print_roofline(b: &Bench, copy: f64, gemm: f64, shape: &str) {
    println!(
        "\nroofline on {} ({}): copy bandwidth {:.1} GB/s, dense GEMM {:.2} TFLOP/s ({shape}){}",
        b.dev.name(),
        b.dtype.name(),
        copy / 1e9,
        gemm / 1e12,
        if b.emulated { " — CPU emulation: these numbers mean nothing" } else { "" }
    );
    println!("{:<58} {:>10} {:>14} {:>9}", "kernel / shape", "time", "achieved", "roofline");
    ROWS.with(|rows| {
        for r in rows.borrow().iter() {
            let (achieved, frac) = match r.work {
                Work::Bytes(x) => (format!("{:.1} GB/s", x / r.seconds / 1e9), x / r.seconds / copy),
                Work::Flops(x) => (format!("{:.2} TFLOP/s", x / r.seconds / 1e12), x / r.seconds / gemm),
            };
            println!("{:<58} {:>8.3} ms {:>14} {:>8.1}%", r.name, 1e3 * r.seconds, achieved, 100.0 * frac);
        }
    });
}

pub fn open() -> Option<Bench> {
    let emulated = match CudaDevice::open(0) {
        Ok(_) => false,
        Err(e) if std::env::var("QF_BENCH_EMULATION").is_ok_and(|v| v == "1") => {
            let emu = kernel_emu::emulator("cuda_ops bench")?;
            emu.install_as_cuda().unwrap_or_else(|x| panic!("{e:#}; and the emulation: {x}"));
            true
        }
        Err(e) => {
            println!("SKIP: no CUDA device ({e:#}); set QF_BENCH_EMULATION=1 to run on the CPU emulation");
            return None;
        }
    };
    let dev = CudaDevice::open(0).ok()?;
    let dtype = DType::BF16;
    dev.set_compute_dtype(dtype).unwrap();
    Some(Bench { dev, emulated, dtype })
}
