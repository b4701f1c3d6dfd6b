//! The fp32 GELU forward on 16 lanes (AVX-512): the arithmetic of
//! [`super::super::real::normal_cdf_f32`], with its `exp` as [`vector_exp::exp`] (a power
//! of two by `vscalefps`, no clamps or selects) and its branches as lane masks.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::super::real::ERFC_CHEBYSHEV;
use super::super::vector_exp;

/// Vectors a step of [`forward_row`] takes through [`gelu`] together: the GELU is one
/// long dependency chain (≈ 110 cycles), so independent vectors interleaved step by step
/// keep the floating-point units busy where one vector at a time would leave them waiting
/// (criterion `esm2_35M_inference_passes/bias_gelu`, two Zen 4 cores: 2.6 Gelem/s one
/// vector at a time, 3.4 with four, 3.1 with eight, which spill).
const INTERLEAVED: usize = 4;

/// `y = gelu(x + bias)` for one row (`bias` empty: none): [`INTERLEAVED`] full vectors a
/// step, then single vectors, the last through masks.
///
/// # Safety
/// The CPU has AVX-512F; `x` (and a non-empty `bias`) hold at least `y.len()` floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn forward_row(y: &mut [MaybeUninit<f32>], x: &[f32], bias: &[f32]) {
    let n = y.len();
    assert!(x.len() >= n && (bias.is_empty() || bias.len() >= n), "gelu row: short input");
    let load = |i: usize, m: __mmask16| {
        let u = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
        if bias.is_empty() {
            u
        } else {
            _mm512_add_ps(u, _mm512_maskz_loadu_ps(m, bias.as_ptr().add(i)))
        }
    };
    let out = y.as_mut_ptr() as *mut f32;
    let mut i = 0;
    while i + INTERLEAVED * 16 <= n {
        let u: [__m512; INTERLEAVED] = std::array::from_fn(|k| load(i + 16 * k, 0xffff));
        for (k, g) in gelu(u).into_iter().enumerate() {
            _mm512_storeu_ps(out.add(i + 16 * k), g);
        }
        i += INTERLEAVED * 16;
    }
    while i < n {
        let m: __mmask16 = if n - i >= 16 { 0xffff } else { ((1u32 << (n - i)) - 1) as __mmask16 };
        let [g] = gelu([load(i, m)]);
        _mm512_mask_storeu_ps(out.add(i), m, g);
        i += 16;
    }
}

/// `u·Φ(u)` lane-wise for `N` vectors, every step over all `N` before the next:
/// `Φ(u) = ½·erfc(v)` with `v = −u/√2`, `erfc(|v|) = t·exp(−v² + Σ cᵢ·tⁱ)`,
/// `t = 1/(1 + |v|/2)`, and `erfc(v) = 2 − erfc(|v|)` where `v < 0` (`u > 0`).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn gelu<const N: usize>(u: [__m512; N]) -> [__m512; N] {
    let one = _mm512_set1_ps(1.0);
    let half = _mm512_set1_ps(0.5);
    let each = |f: &dyn Fn(usize) -> __m512| -> [__m512; N] { std::array::from_fn(f) };
    let z = each(&|k| _mm512_abs_ps(_mm512_mul_ps(u[k], _mm512_set1_ps(-std::f32::consts::FRAC_1_SQRT_2))));
    let t = each(&|k| _mm512_div_ps(one, _mm512_fmadd_ps(z[k], half, one)));
    let c = ERFC_CHEBYSHEV;
    let mut poly = [_mm512_set1_ps(c[9]); N];
    for &ci in c[..9].iter().rev() {
        poly = each(&|k| _mm512_fmadd_ps(poly[k], t[k], _mm512_set1_ps(ci)));
    }
    let e = vector_exp::exp_n(each(&|k| _mm512_fnmadd_ps(z[k], z[k], poly[k])));
    each(&|k| {
        let half_tail = _mm512_mul_ps(half, _mm512_mul_ps(t[k], e[k])); // ½·erfc(|v|)
        let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(u[k], _mm512_setzero_ps());
        // ½·erfc(v): ½·tail where v ≥ 0, 1 − ½·tail (= ½·(2 − tail), exactly) where v < 0.
        _mm512_mul_ps(u[k], _mm512_mask_sub_ps(half_tail, positive, one, half_tail))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 16-lane GELU against `u·Φ(u)` in f64 (libm's `erfc`) on a dense grid of
    /// `[−12, 12]`, through rows long enough for the interleaved steps, the single
    /// vectors and a masked tail, with and without a bias: the same bounds as the
    /// scalar `normal_cdf_f32`'s test (absolute at rounding level, relative growing only in
    /// the far tail), and within a few ulps of the scalar path where `|y| > 1e-30`.
    #[test]
    fn vector_gelu_matches_f64_and_the_scalar_path() {
        if !is_x86_feature_detected!("avx512f") {
            println!("skipped: no AVX-512F");
            return;
        }
        let n = 200_003; // 3,125 steps of 64 and a tail of 3
        let u: Vec<f32> = (0..n).map(|i| (-12.0 + 24.0 * i as f64 / (n - 1) as f64) as f32).collect();
        let bias: Vec<f32> = (0..n).map(|i| if i % 2 == 0 { 0.25 } else { -0.25 }).collect();
        for with_bias in [false, true] {
            let (x, b): (Vec<f32>, &[f32]) =
                if with_bias { (u.iter().zip(&bias).map(|(u, b)| u - b).collect(), &bias) } else { (u.clone(), &[]) };
            let mut y = vec![MaybeUninit::<f32>::uninit(); n];
            // Safety: AVX-512F was checked; `x` and `b` hold `n` floats.
            unsafe { forward_row(&mut y, &x, b) };
            let (mut worst_abs, mut worst_rel, mut worst_ulps) = (0f64, 0f64, 0f64);
            for (i, y) in y.iter().enumerate() {
                // Safety: `forward_row` wrote every element.
                let got = unsafe { y.assume_init() };
                let uu = if with_bias { (x[i] + b[i]) as f64 } else { x[i] as f64 };
                let want = uu * 0.5 * libm::erfc(-uu / std::f64::consts::SQRT_2);
                let d = (got as f64 - want).abs();
                worst_abs = worst_abs.max(d / uu.abs().max(1.0));
                if want.abs() > 1e-30 {
                    worst_rel = worst_rel.max(d / want.abs());
                    let scalar = uu as f32 * super::super::super::real::normal_cdf_f32(uu as f32);
                    let ulp = (scalar.abs().next_up() - scalar.abs()) as f64;
                    worst_ulps = worst_ulps.max((got - scalar).abs() as f64 / ulp);
                }
            }
            assert!(worst_abs < 2e-7, "bias {with_bias}: GELU absolute error {worst_abs:e} (per unit |u|)");
            assert!(worst_rel < 3e-5, "bias {with_bias}: GELU relative error {worst_rel:e}");
            // 4 on this grid: the two exps differ by up to about 1 and 2.5 ulps.
            assert!(worst_ulps <= 6.0, "bias {with_bias}: {worst_ulps} ulps from the scalar path");
        }
    }
}
