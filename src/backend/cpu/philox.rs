//! Philox4x32-10 counter-based RNG and the dropout mask derived from it — the CPU
//! twin of `kernels/dropout.cu`, bit for bit.
//!
//! Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as
//! 1, 2, 3", SC 2011; Random123's `philox4x32_10`, cuRAND's `Philox4_32_10`):
//!
//! ```text
//! round((c0, c1, c2, c3), (k0, k1)):
//!     (hi0, lo0) = M0 · c0   (64-bit product, high and low 32 bits)
//!     (hi1, lo1) = M1 · c2
//!     return (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
//! philox4x32_10(c, k): 10 × { c = round(c, k); k0 += W0; k1 += W1 }   (wrapping)
//! M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85
//! ```
//!
//! Dropout element `i` of a call with `(p, seed, offset)`:
//!
//! ```text
//! key     = (seed as u32, (seed >> 32) as u32)
//! counter = ((i >> 2) as u32, ((i >> 2) >> 32) as u32, offset as u32, (offset >> 32) as u32)
//! r       = philox4x32_10(counter, key)[i & 3]
//! u       = (r >> 8) as f32 · 2^-24            (exact, in [0, 1))
//! keep    = u >= p
//! y       = if keep { x · (1.0f32 / (1.0f32 - p)) } else { 0 }
//! ```

/// Philox multipliers and Weyl key increments.
pub const PHILOX_M0: u32 = 0xD251_1F53;
pub const PHILOX_M1: u32 = 0xCD9E_8D57;
pub const PHILOX_W0: u32 = 0x9E37_79B9;
pub const PHILOX_W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

#[inline(always)]
fn philox_round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(PHILOX_M0, c[0]);
    let (hi1, lo1) = mulhilo(PHILOX_M1, c[2]);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// The Philox4x32 block function with 10 rounds.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for _ in 0..10 {
        c = philox_round(c, k);
        k[0] = k[0].wrapping_add(PHILOX_W0);
        k[1] = k[1].wrapping_add(PHILOX_W1);
    }
    c
}

/// The four random words shared by dropout elements `4g .. 4g+3`.
#[inline]
pub fn dropout_bits(group: u64, seed: u64, offset: u64) -> [u32; 4] {
    let counter = [group as u32, (group >> 32) as u32, offset as u32, (offset >> 32) as u32];
    let key = [seed as u32, (seed >> 32) as u32];
    philox4x32_10(counter, key)
}

/// The uniform `u ∈ [0, 1)` on a 2^-24 grid made from one random word.
#[inline(always)]
pub fn word_to_uniform(r: u32) -> f32 {
    (r >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Uniform number of dropout element `i`.
#[inline]
pub fn dropout_uniform(i: u64, seed: u64, offset: u64) -> f32 {
    word_to_uniform(dropout_bits(i >> 2, seed, offset)[(i & 3) as usize])
}

/// Whether dropout element `i` is kept (`u >= p`), exactly as `kernels/dropout.cu`.
#[inline]
pub fn dropout_keep(i: u64, p: f32, seed: u64, offset: u64) -> bool {
    dropout_uniform(i, seed, offset) >= p
}

/// Scale applied to kept elements: `1 / (1 - p)` in fp32, as the kernel computes it.
#[inline]
pub fn dropout_scale(p: f32) -> f32 {
    1.0f32 / (1.0f32 - p)
}

/// Keep mask of elements `0 .. mask.len()`; one Philox call per 4 elements.
pub fn fill_keep_mask(mask: &mut [bool], p: f32, seed: u64, offset: u64) {
    for (g, chunk) in mask.chunks_mut(4).enumerate() {
        let r = dropout_bits(g as u64, seed, offset);
        for (k, m) in chunk.iter_mut().enumerate() {
            *m = word_to_uniform(r[k]) >= p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors of philox4x32 with 10 rounds from Random123's
    // tests/kat_vectors (D. E. Shaw Research), columns: counter[4] key[2] → output[4]:
    //   philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000  6627e8d5 e169c58d bc57ac4c 9b00dbd8
    //   philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff  408f276d 41c83b0e a20bc7c6 6d5451fd
    //   philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0  d16cfe09 94fdcceb 5001e420 24126ea1
    // (the last one uses the hex digits of pi as inputs).
    const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0, 0, 0, 0], [0, 0], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]),
        (
            [0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff],
            [0xffff_ffff, 0xffff_ffff],
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
        ),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];

    #[test]
    fn philox4x32_10_known_answers() {
        for (counter, key, expected) in KAT {
            assert_eq!(philox4x32_10(counter, key), expected, "counter {counter:08x?} key {key:08x?}");
        }
    }

    #[test]
    fn dropout_words_map_to_counter_and_key() {
        let seed = 0x0123_4567_89ab_cdef_u64;
        let offset = 0xfedc_ba98_7654_3210_u64;
        let i = (5u64 << 34) | 0b10; // group 5·2^32, word 2
        let r = philox4x32_10([0, 5, 0x7654_3210, 0xfedc_ba98], [0x89ab_cdef, 0x0123_4567]);
        assert_eq!(dropout_uniform(i, seed, offset), (r[2] >> 8) as f32 / 16_777_216.0);
    }

    #[test]
    fn keep_mask_matches_elementwise_and_rate() {
        let (p, seed, offset) = (0.1f32, 42u64, 7u64);
        let n = 100_003; // not a multiple of 4
        let mut mask = vec![false; n];
        fill_keep_mask(&mut mask, p, seed, offset);
        for (i, &m) in mask.iter().enumerate() {
            assert_eq!(m, dropout_keep(i as u64, p, seed, offset), "element {i}");
        }
        let kept = mask.iter().filter(|&&m| m).count() as f64 / n as f64;
        // Binomial std ≈ 0.00095; 6 sigma.
        assert!((kept - 0.9).abs() < 0.006, "keep rate {kept}");
        // A different offset gives a different mask.
        let mut other = vec![false; n];
        fill_keep_mask(&mut other, p, seed, offset + 1);
        assert_ne!(mask, other);
    }

    #[test]
    fn extreme_probabilities() {
        for i in 0..64 {
            assert!(dropout_keep(i, 0.0, 1, 2));
            assert!(!dropout_keep(i, 1.0, 1, 2));
            let u = dropout_uniform(i, 1, 2);
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(dropout_scale(0.0), 1.0);
        assert_eq!(dropout_scale(0.5), 2.0);
    }
}
