//! Runtime SIMD dispatch for the CPU kernels' hot loops.
//!
//! Rust's default x86-64 target assumes only SSE2, so loops with `exp`, rounding or
//! divisions vectorise poorly (or call scalar libm). [`dispatch`] runs a [`Kernel`] inside
//! a function compiled for AVX-512 (x86-64-v4) or AVX2+FMA (v3) when the CPU has them.
//! The kernel's `run` is `#[inline(always)]`, so it is inlined into that function and
//! compiled with its features (a closure would not be: LLVM keeps it out of line).
//! Results equal the baseline build's up to floating-point contraction (FMA), which the
//! tests' tolerances cover.

/// A hot loop to compile per SIMD level. Implementations must mark `run` `#[inline(always)]`.
pub trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// The best SIMD level of this CPU (detected once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Baseline,
    V3,
    V4,
}

pub fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    if std::env::var_os("QF_NO_SIMD").is_some() {
        return Level::Baseline;
    }
    let v3 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    let v4 = v3
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl");
    if v4 {
        Level::V4
    } else if v3 {
        Level::V3
    } else {
        Level::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Baseline
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn run_v4<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn run_v3<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// Run `k` compiled for the best available SIMD level.
#[inline(always)]
pub fn dispatch<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    // Safety: each variant is only called when `level()` detected its features.
    unsafe {
        match level() {
            Level::V4 => return run_v4(k),
            Level::V3 => return run_v3(k),
            Level::Baseline => {}
        }
    }
    k.run()
}

/// Lanes of the reductions below: independent partial results the compiler keeps in one
/// vector register. The combination order is fixed, so results are deterministic.
const LANES: usize = 16;

/// `Σ xs` with [`LANES`] partial sums (a plain `fold` is a serial float chain that does not
/// vectorise).
#[inline(always)]
pub fn sum<T: super::Real>(xs: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut s = T::zero();
    for (i, &r) in rest.iter().enumerate() {
        acc[i] += r;
    }
    for a in acc {
        s += a;
    }
    s
}

/// `Σ aᵢ·bᵢ` with [`LANES`] partial sums.
#[inline(always)]
pub fn dot<T: super::Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); LANES];
    let split = n - n % LANES;
    for (ca, cb) in a[..split].chunks_exact(LANES).zip(b[..split].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    for (i, (&x, &y)) in a[split..].iter().zip(&b[split..]).enumerate() {
        acc[i] += x * y;
    }
    let mut s = T::zero();
    for v in acc {
        s += v;
    }
    s
}

/// `max xs` (−∞ for an empty slice) with [`LANES`] partial maxima.
#[inline(always)]
pub fn max<T: super::Real>(xs: &[T]) -> T {
    let mut acc = [T::neg_infinity(); LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    for (i, &r) in rest.iter().enumerate() {
        acc[i] = acc[i].max(r);
    }
    acc.into_iter().fold(T::neg_infinity(), |m, a| m.max(a))
}

/// `Σ f(aᵢ, bᵢ, cᵢ)` with [`LANES`] partial sums (for reductions over several rows of data).
#[inline(always)]
pub fn sum_map3<T: super::Real>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) -> T {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [T::zero(); LANES];
    // Whole chunks as fixed-size arrays: no bounds checks, so the lanes vectorise.
    let chunks = a.chunks_exact(LANES).zip(b.chunks_exact(LANES)).zip(c.chunks_exact(LANES));
    for ((ca, cb), cc) in chunks {
        for l in 0..LANES {
            acc[l] += f(ca[l], cb[l], cc[l]);
        }
    }
    let split = n - n % LANES;
    for j in split..n {
        acc[j - split] += f(a[j], b[j], c[j]);
    }
    let mut s = T::zero();
    for v in acc {
        s += v;
    }
    s
}

/// `xᵢ ← exp(xᵢ − m)` in place, returning `Σ exp(xᵢ − m)`: one pass, [`LANES`] partial sums.
#[inline(always)]
pub fn exp_shifted_sum<T: super::Real>(xs: &mut [T], m: T) -> T {
    let mut acc = [T::zero(); LANES];
    let split = xs.len() - xs.len() % LANES;
    let (head, tail) = xs.split_at_mut(split);
    for c in head.chunks_exact_mut(LANES) {
        for i in 0..LANES {
            let e = (c[i] - m).exp_fast();
            c[i] = e;
            acc[i] += e;
        }
    }
    for (i, x) in tail.iter_mut().enumerate() {
        let e = (*x - m).exp_fast();
        *x = e;
        acc[i] += e;
    }
    let mut s = T::zero();
    for v in acc {
        s += v;
    }
    s
}
