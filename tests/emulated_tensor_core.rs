//! The tensor-core primitives of `kernels/mma.cuh` (mma.sync m16n8k16 and m16n8k8 in fp16
//! and bf16, ldmatrix with and without .trans, cp.async, fma2) through the test kernels of
//! `kernels/tensor_core_check.cu`, on the CPU emulation of `tests/kernel_emu`, where each
//! warp-collective instruction assembles its operands from the registers of all 32 lanes
//! by the PTX ISA's fragment layouts.
//!
//! * A 16×k by k×n product through ldmatrix fragments (variant 0) and through fragments
//!   read element by element at the documented coordinates (variant 1) matches an f64
//!   GEMM of the same (exactly representable) inputs.
//! * The same kernel with a deliberately permuted A fragment (variant 2: registers 1 and 2
//!   swapped) or B loaded without `.trans` (variant 3) gives wrong products: a wrong
//!   fragment layout in a kernel fails in CI, not only on a GPU.
//! * An mma that not every lane reaches fails the launch (variant 4).
//! * fma2 rounds a·b + c once, bit for bit against the f64 result rounded to the dtype.
//!
//! Inputs are fresh random values, outputs are poisoned with NaN before every launch.

mod common;
mod cuda_common;
mod kernel_emu;

use common::TestRng;
use half::{bf16, f16};
use kernel_emu::{emulator, ptr, ptr_mut, Aligned16, Element, Shape};
use qf_engine::backend::cuda::launch::Arg;
use qf_engine::DType;

fn dtype_of<T: Element>() -> DType {
    match T::SUFFIX {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        s => panic!("no tensor-core check in {s}"),
    }
}

/// `n` N(0, 1) values rounded to T.
fn random<T: Element>(rng: &mut TestRng, n: usize) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.normal() as f32)).collect()
}

/// Run tc_gemm_check_T for one shape and variant: C (16×n) as f32, or the launch error.
fn gemm_check<T: Element + bytemuck::Pod>(
    a: &[T],
    b: &[T],
    k: usize,
    n: usize,
    variant: i32,
) -> Result<Vec<f32>, String> {
    let emu = emulator("tensor core").expect("emulator");
    let (a, b) = (Aligned16::from_slice(a), Aligned16::from_slice(b));
    let mut c = vec![f32::NAN; 16 * n];
    let smem = ((16 * (k + 8) + k * (n + 8)) * 2) as u32;
    emu.launch(
        &format!("tc_gemm_check_{}", T::SUFFIX),
        Shape::flat(1, 32).with_smem(smem),
        &[
            ptr_mut(&mut c),
            ptr(a.as_slice()),
            ptr(b.as_slice()),
            Arg::I32(k as i32),
            Arg::I32(n as i32),
            Arg::I32(variant),
        ],
    )?;
    Ok(c)
}

/// C = A·B in f64 (A 16×k, B k×n, row-major).
fn gemm_f64<T: Element>(a: &[T], b: &[T], k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0f64; 16 * n];
    for i in 0..16 {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p].to_f32() as f64 * b[p * n + j].to_f32() as f64).sum();
        }
    }
    c
}

/// Relative L2 error (infinite on any non-finite value: the NaN poison never passes).
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    cuda_common::rel_err(got, want)
}

/// Shapes: k16 steps only, k16 steps plus the k8 step (24 and 56: ESM-2 35M's head dim
/// is 24), the k8 step alone; one, three and eight n-tiles.
const SHAPES: [(usize, usize); 6] = [(16, 8), (24, 24), (56, 24), (64, 64), (8, 16), (40, 8)];

/// The products through ldmatrix and through the documented element coordinates both
/// match the f64 GEMM. Measured worst relative error 4.1e-8 (f16), 3.9e-8 (bf16): the
/// products are exact and the fp32 accumulator rounds once per k-step — bound 1e-7.
fn correct_layouts_match_f64<T: Element + bytemuck::Pod>(seed: u64) {
    kernel_emu::schedules("correct_layouts_match_f64", |_| {
        let mut rng = TestRng::new(seed);
        let mut worst = 0f64;
        for (k, n) in SHAPES {
            let (a, b) = (random::<T>(&mut rng, 16 * k), random::<T>(&mut rng, k * n));
            let want = gemm_f64(&a, &b, k, n);
            for variant in [0, 1] {
                let got = gemm_check(&a, &b, k, n, variant).unwrap();
                let e = rel_err(&got, &want);
                println!("{} k={k} n={n} variant {variant}: rel err {e:.2e}", T::SUFFIX);
                assert!(e <= 1e-7, "{} k={k} n={n} variant {variant}: relative error {e:e}", T::SUFFIX);
                worst = worst.max(e);
            }
        }
        println!("{}: worst relative error {worst:.2e}", T::SUFFIX);
    });
}

#[test]
fn mma_and_ldmatrix_fragments_match_an_f64_gemm_f16() {
    correct_layouts_match_f64::<f16>(0x7c01);
}

#[test]
fn mma_and_ldmatrix_fragments_match_an_f64_gemm_bf16() {
    correct_layouts_match_f64::<bf16>(0x7c02);
}

/// A permuted A fragment and a B fragment loaded without `.trans` give products far from
/// the GEMM (measured relative errors 0.78 to 1.5, against ≤ 1e-7 for the right layouts).
fn permuted_layouts_fail<T: Element + bytemuck::Pod>(seed: u64) {
    kernel_emu::schedules("permuted_layouts_fail", |_| {
        let mut rng = TestRng::new(seed);
        for (k, n) in SHAPES {
            let (a, b) = (random::<T>(&mut rng, 16 * k), random::<T>(&mut rng, k * n));
            let want = gemm_f64(&a, &b, k, n);
            for variant in [2, 3] {
                if variant == 2 && k < 16 {
                    continue; // the swapped registers are those of the k16 fragment
                }
                let e = rel_err(&gemm_check(&a, &b, k, n, variant).unwrap(), &want);
                println!("{} k={k} n={n} deliberately wrong variant {variant}: rel err {e:.2e}", T::SUFFIX);
                assert!(
                    e > 0.3,
                    "{} k={k} n={n}: the wrong layout of variant {variant} was not caught ({e:e})",
                    T::SUFFIX
                );
            }
        }
    });
}

#[test]
fn a_permuted_fragment_gives_wrong_products_f16() {
    permuted_layouts_fail::<f16>(0x7c03);
}

#[test]
fn a_permuted_fragment_gives_wrong_products_bf16() {
    permuted_layouts_fail::<bf16>(0x7c04);
}

#[test]
fn an_mma_that_not_every_lane_reaches_fails_the_launch() {
    kernel_emu::schedules("an_mma_that_not_every_lane_reaches_fails_the_launch", |_| {
        let mut rng = TestRng::new(0x7c05);
        let (a, b) = (random::<f16>(&mut rng, 16 * 16), random::<f16>(&mut rng, 16 * 8));
        let err = gemm_check(&a, &b, 16, 8, 4).unwrap_err();
        // The mma's own check, or (whichever the schedule meets first) the __syncwarp's
        // mask check naming the exited lane.
        assert!(err.contains("fewer than 32 active lanes") || err.contains("lane 31, which is inactive"), "{err}");
    });
}

/// fma2 on random pairs, bit for bit against a·b + c computed in f64 and rounded once.
fn fma2_rounds_once<T: Element + bytemuck::Pod>(seed: u64) {
    kernel_emu::schedules("fma2_rounds_once", |emu| {
        let mut rng = TestRng::new(seed);
        let n = 1002;
        let (a, b, c) = (random::<T>(&mut rng, n), random::<T>(&mut rng, n), random::<T>(&mut rng, n));
        let mut out = vec![T::from_f32(f32::NAN); n];
        emu.run(
            &format!("tc_fma2_check_{}", T::SUFFIX),
            Shape::flat(2, 64),
            &[ptr_mut(&mut out), ptr(&a), ptr(&b), ptr(&c), Arg::I32(n as i32)],
        );
        let dt = dtype_of::<T>();
        for i in 0..n {
            let exact = a[i].to_f32() as f64 * b[i].to_f32() as f64 + c[i].to_f32() as f64;
            let want = cuda_common::round_to(dt, exact);
            assert_eq!(out[i].to_f32() as f64, want, "{} element {i}: {exact}", T::SUFFIX);
        }
    });
}

#[test]
fn fma2_rounds_once_f16() {
    fma2_rounds_once::<f16>(0x7c06);
}

#[test]
fn fma2_rounds_once_bf16() {
    fma2_rounds_once::<bf16>(0x7c07);
}

#[test]
fn every_tensor_core_check_kernel_is_covered_here() {
    kernel_emu::schedules("every_tensor_core_check_kernel_is_covered_here", |emu| {
        let mut names: Vec<String> =
            emu.kernels().into_iter().filter(|(m, _)| m == "tensor_core_check").map(|(_, n)| n).collect();
        names.sort();
        assert_eq!(names, ["tc_fma2_check_bf16", "tc_fma2_check_f16", "tc_gemm_check_bf16", "tc_gemm_check_f16"]);
    });
}
