use super::*;

fn random(len: usize, seed: u64) -> Vec<f32> {
    super::super::test_values(len, seed).into_iter().map(|v| v as f32).collect()
}

/// Odd shapes: partial tiles, partial panels, an odd K and more than one K block.
#[test]
fn matches_the_scalar_twin_on_ragged_shapes() {
    if !supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    for &(n, k, m) in &[
        (1, 1, 1),
        (13, 7, 33),
        (25, 320, 320),
        (37, 301, 95),
        (50, 1280, 64),
        (61, 40, 16),
        (47, 24, 24),
        (26, 8, 16),
        (2, 8, 16),
    ] {
        let (x, w, b) = (random(n * k, 1), random(m * k, 2), random(m, 3));
        for bias in [&b[..], &[]] {
            let y = linear(&x, &PackedBf16::pack(&w, m, k), bias, n);
            let want = reference(&x, &w, bias, n, k, m);
            let scale = (k as f32).sqrt();
            for (i, (g, r)) in y.iter().zip(&want).enumerate() {
                // fp32 sums of at most k terms against f64 ones.
                assert!((g - r).abs() <= 1e-6 * scale * (1.0 + r.abs()), "{n}x{k}x{m} [{i}]: {g} vs {r}");
            }
        }
    }
}

/// The two backward products against their scalar twins, accumulating onto gradients
/// that already hold values; ragged shapes, odd K (an odd token count for `dW`) and
/// more than one K block.
#[test]
fn backward_products_match_their_scalar_twins() {
    if !supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    for &(n, out, inp) in
        &[(1, 1, 1), (13, 7, 33), (37, 95, 301), (301, 64, 40), (600, 33, 17), (59, 16, 16), (45, 40, 24)]
    {
        let (dy, w, x) = (random(n * out, 4), random(out * inp, 5), random(n * inp, 6));
        let (dx0, dw0) = (random(n * inp, 7), random(out * inp, 8));
        let close = |got: &[f32], want: &[f32], what: &str, k: usize| {
            for (i, (g, r)) in got.iter().zip(want).enumerate() {
                let tol = 1e-6 * (k as f32).sqrt() * (1.0 + r.abs());
                assert!((g - r).abs() <= tol, "{what} {n}x{out}x{inp} [{i}]: {g} vs {r}");
            }
        };
        let mut dx = dx0.clone();
        linear_backward_input(&mut dx, &dy, &w, n, out, inp);
        close(&dx, &reference_backward_input(&dx0, &dy, &w, n, out, inp), "dx", out);
        let mut dw = dw0.clone();
        linear_backward_weight(&mut dw, &dy, &x, n, out, inp);
        close(&dw, &reference_backward_weight(&dw0, &dy, &x, n, out, inp), "dW", n);
    }
}

/// The fresh-buffer products (written once, never zero-filled) equal the accumulating
/// ones onto zeros bit for bit: one and several K blocks (`dW` at 600 tokens), odd K.
#[test]
fn fresh_gradients_equal_accumulating_onto_zeros() {
    if !supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    for &(n, out, inp) in &[(1, 1, 1), (13, 7, 33), (600, 33, 17), (45, 40, 24), (0, 5, 3)] {
        let (dy, w, x) = (random(n * out, 14), random(out * inp, 15), random(n * inp, 16));
        if n > 0 {
            let mut dx = vec![0f32; n * inp];
            linear_backward_input(&mut dx, &dy, &w, n, out, inp);
            assert_eq!(linear_input_grad(&dy, &w, n, out, inp), dx, "dx {n}x{out}x{inp}");
        }
        let mut dw = vec![0f32; out * inp];
        linear_backward_weight(&mut dw, &dy, &x, n, out, inp);
        assert_eq!(linear_weight_grad(&dy, &x, n, out, inp), dw, "dW {n}x{out}x{inp}");
    }
}

/// A product into a wider matrix (`ldc` past its columns, a row below it) writes its
/// own `n × cols` and nothing else, for every row count a tile can end on, narrow
/// (≤ 16 columns) and full panels, row-major and pair-major left operands.
#[test]
fn products_write_only_their_rows_and_columns() {
    if !supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let k = 10;
    for cols in [8usize, 16, 24, 40] {
        for n in 1..=27 {
            let (a, b) = (random(n * k, 11), random(k * cols, 12));
            let packed = PackedBf16::pack_columns(&b, k, cols);
            let ldc = cols + 3;
            let want = reference(&a, &transpose(&b, k, cols), &[], n, k, cols);
            let words = pack_rows(&a, k, n, k, k / 2);
            let columns = pair_major(&transpose(&a, n, k), k, n);
            for left in [PairedLeft::row_major(&words, n, k / 2), PairedLeft::pair_major(&columns, n, k / 2)] {
                let mut c = vec![f32::NAN; (n + 1) * ldc];
                // Safety: `c` holds n + 1 rows of ldc ≥ cols floats.
                unsafe { paired_product_at(c.as_mut_ptr(), ldc, left, &packed, false) };
                for (i, row) in c.chunks(ldc).enumerate() {
                    for (j, &got) in row.iter().enumerate() {
                        if i < n && j < cols {
                            let r = want[i * cols + j];
                            assert!((got - r).abs() <= 1e-5 * (1.0 + r.abs()), "{n}x{cols} [{i}, {j}]");
                        } else {
                            assert!(got.is_nan(), "{n}x{cols}: wrote [{i}, {j}] outside the product");
                        }
                    }
                }
            }
        }
    }
}

/// `m: [rows, cols]` transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows).map(|t| m[(t % rows) * cols + t / rows]).collect()
}

/// The vectorised pairing rounds exactly as the scalar one, bit for bit.
#[test]
fn vector_pairing_equals_scalar_pairing() {
    let (lo, hi) = (random(53, 9), random(53, 10));
    for h in [Some(&hi[..]), None] {
        let mut got = vec![0u32; 53];
        // Safety: `pair_rows` stores only words.
        pair_rows(&lo, h, unsafe { crate::backend::cpu::as_slots(&mut got) });
        for (l, g) in got.iter().enumerate() {
            assert_eq!(*g, pair(lo[l], h.map_or(0.0, |h| h[l])), "word {l}");
        }
    }
}

/// The vectorised panel packing of `scale·src` (strided, odd K, a partial last panel)
/// equals the scalar twin's, bit for bit, and `scale` 1 equals `pack_columns`.
#[test]
fn scaled_column_packing_equals_the_scalar_twin() {
    let (k, cols, ld) = (37usize, 45usize, 50usize);
    let src = random(k * ld, 13);
    for scale in [1.0f32, 0.3] {
        let packed = PackedBf16::pack_scaled_columns(&src, ld, k, cols, scale);
        for (p, panel) in packed.data.chunks(packed.pairs * NR).enumerate() {
            let (c0, width) = (p * NR, NR.min(cols - p * NR));
            let view = PanelSource { src: &src[c0..], ld, k, width, scale };
            let mut want = vec![std::mem::MaybeUninit::new(0u32); panel.len()];
            view.pack_scalar(&mut want);
            for (i, (g, w)) in panel.iter().zip(&want).enumerate() {
                // Safety: `pack_scalar` wrote every word.
                assert_eq!(*g, unsafe { w.assume_init() }, "scale {scale} panel {p} word {i}");
            }
        }
    }
    let contiguous: Vec<f32> = (0..k).flat_map(|r| src[r * ld..][..cols].to_vec()).collect();
    assert_eq!(
        PackedBf16::pack_scaled_columns(&src, ld, k, cols, 1.0).data,
        PackedBf16::pack_columns(&contiguous, k, cols).data
    );
}

/// Bits PyTorch gives (torch 2.15: `torch.tensor(xs).bfloat16().view(torch.int16)`),
/// two of them ties (1 + 2⁻⁸ rounds down to even, 1 + 3·2⁻⁸ up), through the scalar
/// rounding and through the AVX-512 packing of a 32-wide row.
#[test]
fn rounds_to_nearest_even_as_pytorch() {
    let xs = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.0, 0.1, 3.3, 1e-30, 65504.0];
    let torch_bits = [0x3f80u32, 0x3f82, 0xc000, 0x3dcd, 0x4053, 0x0da2, 0x4780];
    for (x, want) in xs.iter().zip(torch_bits) {
        assert_eq!(to_bf16_bits(*x), want, "{x}");
    }
    if supported() {
        let row: Vec<f32> = (0..32).map(|i| xs[i % xs.len()]).collect();
        let packed = pack_rows(&row, 32, 1, 32, 16);
        for (q, word) in packed.iter().enumerate() {
            let (lo, hi) = (torch_bits[(2 * q) % xs.len()], torch_bits[(2 * q + 1) % xs.len()]);
            assert_eq!(*word, lo | (hi << 16), "pair {q}");
        }
    }
}
