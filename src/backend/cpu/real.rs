//! `Real`: the float types the CPU backend computes in (f32 for training, f64 for
//! reference checks), with the handful of math functions the ops need.

use crate::tensor::Element;

pub trait Real:
    Element
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::iter::Sum
    + Default
{
    fn zero() -> Self;
    fn one() -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn abs(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn sin_cos(self) -> (Self, Self);
    fn is_finite(self) -> bool;
    /// Most negative finite value (the start of a running max).
    fn neg_infinity() -> Self;
    /// `self·a + b` with one rounding: one FMA instruction inside [`super::simd::dispatch`]
    /// on CPUs with FMA (a libm call elsewhere, so only for dispatched kernels).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// `exp(x)`; f32 uses a branch-free polynomial that vectorises (≈ 1 ulp, see
    /// [`exp_f32`]), f64 the exact function.
    fn exp_fast(self) -> Self {
        self.exp()
    }
    /// The standard normal CDF `Φ(x) = ½(1 + erf(x/√2))`; f32 uses [`normal_cdf_f32`].
    fn normal_cdf(self) -> Self {
        Self::from_f64(0.5) * (Self::one() + (self * Self::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
    }
}

/// `exp(x)` for f32 without branches (Cephes `expf`): `x = n·ln2 + r` with `|r| ≤ ln2/2`
/// (Cody–Waite two-part ln2), a degree-6 polynomial for `exp(r)`, then `2ⁿ` by building
/// the exponent bits, every step a fused multiply-add (`mul_add`: one instruction in the
/// SIMD kernels, which are compiled with FMA; a libm call elsewhere). Relative error
/// ≈ 1e-7. Arguments below −87 (where `exp` nears `f32::MIN_POSITIVE`) give exactly 0, so
/// no subnormal is produced.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let underflows = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
        p = p.mul_add(r, c);
    }
    let y = (p * r).mul_add(r, r + 1.0);
    // 2ⁿ without a float→int conversion (which does not vectorise): n is integral in
    // [−126, 127], so n + 127 + 2²³ is exact and carries n + 127 in its low mantissa bits;
    // shifting those bits into the exponent field gives the float 2ⁿ.
    let k = (n + (127.0 + 8_388_608.0)).to_bits() << 23;
    if underflows {
        0.0
    } else {
        y * f32::from_bits(k)
    }
}

/// The coefficients of [`normal_cdf_f32`]'s `erfc(z) = t·exp(−z² + Σ cᵢ·tⁱ)`,
/// `t = 1/(1 + z/2)` (Numerical Recipes' `erfcc`), `cᵢ` multiplying `tⁱ`.
pub(crate) const ERFC_CHEBYSHEV: [f32; 10] = [
    -1.265_512_2,
    1.000_023_7,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_203_98,
    1.488_515_87,
    -0.822_152_23,
    0.170_872_77,
];

/// `Φ(x)` for f32 without branches: `Φ(x) = ½·erfc(−x/√2)` with the Chebyshev-fitted
/// `erfc` of Numerical Recipes (`erfcc`, fractional error < 1.2e-7 for all arguments),
/// so small tail probabilities keep their relative accuracy. Horner steps are fused
/// multiply-adds, as in [`exp_f32`].
#[inline(always)]
pub fn normal_cdf_f32(x: f32) -> f32 {
    let v = -x * std::f32::consts::FRAC_1_SQRT_2;
    let z = v.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let c = ERFC_CHEBYSHEV;
    let mut poly = c[9];
    for c in c[..9].iter().rev() {
        poly = poly.mul_add(t, *c);
    }
    let tail = t * exp_f32((-z).mul_add(z, poly)); // erfc(|v|)
    let erfc_v = if v >= 0.0 { tail } else { 2.0 - tail };
    0.5 * erfc_v
}

macro_rules! impl_real {
    ($t:ty, $erf:path, $mode:ident) => {
        impl Real for $t {
            #[inline]
            fn zero() -> Self {
                0.0
            }
            #[inline]
            fn one() -> Self {
                1.0
            }
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline]
            fn sin_cos(self) -> (Self, Self) {
                <$t>::sin_cos(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline]
            fn neg_infinity() -> Self {
                <$t>::NEG_INFINITY
            }
            impl_real!(@fast $mode);
        }
    };
    (@fast exact) => {};
    (@fast fast) => {
        #[inline(always)]
        fn exp_fast(self) -> Self {
            exp_f32(self)
        }
        #[inline(always)]
        fn normal_cdf(self) -> Self {
            normal_cdf_f32(self)
        }
    };
}
impl_real!(f32, libm::erff, fast);
impl_real!(f64, libm::erf, exact);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_normal_cdf_match_the_exact_functions() {
        let mut worst_exp = 0f64;
        let mut worst_cdf = 0f64;
        let mut worst_cdf_abs = 0f64;
        for i in 0..200_001 {
            // Compare at the f32 argument itself (rounding 80.0 to f32 alone moves exp by 5e-6).
            let x = (-80.0 + 160.0 * i as f64 / 200_000.0) as f32 as f64;
            let e = (exp_f32(x as f32) as f64 - x.exp()).abs() / x.exp();
            worst_exp = worst_exp.max(e);
            let u = (-12.0 + 24.0 * i as f64 / 200_000.0) as f32 as f64;
            let want = 0.5 * libm::erfc(-u / std::f64::consts::SQRT_2);
            let d = (normal_cdf_f32(u as f32) as f64 - want).abs();
            worst_cdf = worst_cdf.max(d / want);
            worst_cdf_abs = worst_cdf_abs.max(d);
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp:e}");
        assert_eq!(exp_f32(-87.5), 0.0);
        assert_eq!(exp_f32(-1e4), 0.0);
        assert!(exp_f32(-87.0) >= f32::MIN_POSITIVE);
        // Relative error grows only in the far tail (Φ(−12) ≈ 2e-33, where f32 rounding of
        // the exponent −z² dominates); GELU needs the absolute error, which is at rounding level.
        assert!(worst_cdf_abs < 2e-7, "Φ absolute error {worst_cdf_abs:e}");
        assert!(worst_cdf < 3e-5, "Φ relative error {worst_cdf:e}");
    }
}
