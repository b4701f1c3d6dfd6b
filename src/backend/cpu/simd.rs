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
