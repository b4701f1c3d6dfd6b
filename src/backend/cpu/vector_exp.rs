//! Exponentials on 16 fp32 lanes (x86, AVX-512) for the kernels that need one per element:
//! the bf16 attention softmax ([`exp2`]) and the GELU's `erfc` ([`exp_n`]).
//!
//! Both split the power of two as `2^t = 2ⁿ·2^f` with `n` the nearest integer and `f` in
//! `[−½, ½]`, evaluate `2^f` by one degree-6 polynomial, and scale by `2ⁿ` with
//! `vscalefps`, which needs no clamp: far below the normal range it gives 0 (just below
//! it, a subnormal, unless the thread flushes them as the CLI's threads do).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// `2^f` on `[−½, ½]`: a relative least-squares fit on Chebyshev nodes, Lawson-weighted
/// toward minimax (1.9e-9 relative, about 1.4 fp32 ulp after rounding); `C[i]` multiplies
/// `fⁱ`.
const POW2_FRACTION: [f32; 7] =
    [1.0, std::f32::consts::LN_2, 0.240_226_46, 0.055_503_286, 0.009_618_489, 0.001_339_993_1, 0.000_153_458_11];

/// `2^f·2ⁿ` for `f` in about `[−½, ½]` and integral `n`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn scaled_pow2(f: __m512, n: __m512) -> __m512 {
    let c = POW2_FRACTION;
    let mut p = _mm512_set1_ps(c[6]);
    for &ci in c[..6].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ci));
    }
    _mm512_scalef_ps(p, n)
}

/// `2^t` lane-wise.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn exp2(t: __m512) -> __m512 {
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    scaled_pow2(_mm512_sub_ps(t, n), n)
}

/// `log₂e` as the nearest f32 plus the rest.
const LOG2E_HI: f32 = std::f32::consts::LOG2_E;
const LOG2E_LO: f32 = 1.925_963e-8;

/// `e^a` lane-wise for `N` vectors, as `2^(a·log₂e)`. The fraction is formed as
/// `a·hi − n + a·lo` with fused multiply-adds, so it carries no rounding of `a·log₂e`
/// (whose absolute error would grow with `|a|`): within about 1 ulp for every `a` whose
/// result is a normal float. Every step runs over all `N` before the next: independent
/// chains interleaved, for callers whose own work is one long chain.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn exp_n<const N: usize>(a: [__m512; N]) -> [__m512; N] {
    let each = |f: &dyn Fn(usize) -> __m512| -> [__m512; N] { std::array::from_fn(f) };
    let n = each(&|k| {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            a[k],
            _mm512_set1_ps(LOG2E_HI),
        ))
    });
    let f = each(&|k| {
        _mm512_fmadd_ps(a[k], _mm512_set1_ps(LOG2E_LO), _mm512_fmsub_ps(a[k], _mm512_set1_ps(LOG2E_HI), n[k]))
    });
    let c = POW2_FRACTION;
    let mut p = [_mm512_set1_ps(c[6]); N];
    for &ci in c[..6].iter().rev() {
        p = each(&|k| _mm512_fmadd_ps(p[k], f[k], _mm512_set1_ps(ci)));
    }
    each(&|k| _mm512_scalef_ps(p[k], n[k]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 16 lanes of `f` applied to `xs` (a multiple of 16 long).
    fn lanes(xs: &[f32], f: unsafe fn(__m512) -> __m512) -> Vec<f32> {
        let mut out = vec![0f32; xs.len()];
        for (o, x) in out.chunks_mut(16).zip(xs.chunks(16)) {
            // Safety: the callers check AVX-512F first.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), f(_mm512_loadu_ps(x.as_ptr()))) };
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn exp1(a: __m512) -> __m512 {
        exp_n([a])[0]
    }

    /// `exp_n` and `exp2` against f64 over the whole normal range of their results, in ulps
    /// of the f32 result.
    #[test]
    fn exponentials_are_within_two_ulps_of_f64() {
        if !is_x86_feature_detected!("avx512f") {
            println!("skipped: no AVX-512F");
            return;
        }
        let xs: Vec<f32> = (0..160_000).map(|i| -87.0 + 175.0 * i as f32 / 160_000.0).collect();
        // The error over the spacing of f32 at the true result.
        let ulps = |got: f32, want: f64| {
            let w = (want as f32).abs();
            ((got as f64 - want) / (w.next_up() - w) as f64).abs()
        };
        for (name, f, want) in [
            ("exp", exp1 as unsafe fn(__m512) -> __m512, (|x: f64| x.exp()) as fn(f64) -> f64),
            ("exp2", exp2, |x: f64| (x * std::f64::consts::LN_2).exp()),
        ] {
            let xs: Vec<f32> =
                if name == "exp2" { xs.iter().map(|x| x * std::f32::consts::LOG2_E).collect() } else { xs.clone() };
            let got = lanes(&xs, f);
            let worst = xs.iter().zip(&got).map(|(&x, &g)| ulps(g, want(x as f64))).fold(0.0, f64::max);
            println!("{name}: worst {worst:.2} ulp");
            assert!(worst <= 2.0, "{name}: {worst} ulp");
        }
    }
}
