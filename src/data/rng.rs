//! A small, seeded, deterministic random number generator for the data pipeline.
//!
//! The generator is xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom
//! number generators", 2018; reference code at <https://prng.di.unimi.it/>), seeded by
//! expanding a 64-bit seed with SplitMix64 (Steele, Lea & Flood 2014), exactly as the
//! reference recommends. Bounded integers use Lemire's multiply-and-reject method
//! ("Fast random integer generation in an interval", 2019), so they are unbiased.
//!
//! Streams are derived from several words (seed, epoch, row, ...) with [`Rng::from_words`],
//! so that e.g. the crop of one row in one epoch does not depend on the order in which
//! rows are visited. Everything here is platform independent: the same seed gives the
//! same numbers on every machine.

/// One step of SplitMix64: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a hash of a byte string: a stable (cross-platform, cross-version) way to
/// turn a name such as a family id into a stream word.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// FNV-1a as a [`std::hash::Hasher`]: a fast hash for maps keyed by short byte strings
/// (family ids, looked up once per row while reading). Not DoS-resistant; the keys come
/// from the user's own files.
#[derive(Debug, Clone, Copy)]
pub struct FnvHasher(u64);

impl Default for FnvHasher {
    fn default() -> Self {
        FnvHasher(0xCBF2_9CE4_8422_2325)
    }
}

impl std::hash::Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `HashMap<K, V, FnvBuildHasher>` uses [`FnvHasher`].
pub type FnvBuildHasher = std::hash::BuildHasherDefault<FnvHasher>;

/// xoshiro256** generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose state is the SplitMix64 expansion of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        Rng { s }
    }

    /// A generator for the stream named by several words, e.g. `[seed, epoch, row]`.
    /// Different word lists give independent-looking streams; the same list, the same stream.
    pub fn from_words(words: &[u64]) -> Self {
        let mut acc: u64 = 0x6A09_E667_F3BC_C908;
        for &w in words {
            let mut st = acc ^ w;
            acc = splitmix64(&mut st);
        }
        Rng::new(acc)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform integer in `0..n` (unbiased). Returns 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut m = (self.next_u64() as u128) * (n as u128);
        let mut low = m as u64;
        if low < n {
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                m = (self.next_u64() as u128) * (n as u128);
                low = m as u64;
            }
        }
        (m >> 64) as u64
    }

    /// Uniform `usize` in `0..n` (unbiased). Returns 0 when `n == 0`.
    pub fn below_usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below_usize(i + 1);
            xs.swap(i, j);
        }
    }

    /// `k` distinct elements of `xs` chosen uniformly (partial Fisher–Yates), in the
    /// order drawn. All of `xs` (shuffled) when `k >= xs.len()`.
    pub fn sample<T: Clone>(&mut self, xs: &[T], k: usize) -> Vec<T> {
        let mut pool = xs.to_vec();
        let k = k.min(pool.len());
        for i in 0..k {
            let j = i + self.below_usize(pool.len() - i);
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (reference implementation by Vigna).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn same_words_same_stream_different_words_different_stream() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::from_words(&[7, 1]);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::from_words(&[7, 1]);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::from_words(&[7, 2]);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = Rng::new(42);
        let mut hist = [0usize; 7];
        for _ in 0..70_000 {
            let x = r.below(7) as usize;
            hist[x] += 1;
        }
        for &h in &hist {
            assert!((9_000..11_000).contains(&h), "{hist:?}");
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn shuffle_is_a_permutation_and_sample_is_distinct() {
        let mut r = Rng::new(3);
        let mut xs: Vec<u32> = (0..100).collect();
        r.shuffle(&mut xs);
        assert_ne!(xs, (0..100).collect::<Vec<_>>());
        let mut sorted = xs.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let mut s = r.sample(&xs, 10);
        assert_eq!(s.len(), 10);
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 10);
        assert_eq!(r.sample(&xs, 1000).len(), 100);
    }

    #[test]
    fn fnv_hasher_agrees_with_fnv1a64() {
        use std::hash::Hasher;
        let mut h = FnvHasher::default();
        h.write(b"Pkinase");
        assert_eq!(h.finish(), fnv1a64(b"Pkinase"));
        // Reference value of FNV-1a 64 for "a".
        assert_eq!(fnv1a64(b"a"), 0xAF63_DC4C_8601_EC8C);
    }

    #[test]
    fn next_f64_is_in_unit_interval() {
        let mut r = Rng::new(9);
        for _ in 0..1000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
