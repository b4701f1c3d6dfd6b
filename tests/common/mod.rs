//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod gradcheck;
pub mod quant;

use std::path::PathBuf;

/// `../shared` beside the checkout (or `$QF_SHARED_DIR`), if it is there.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("QF_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    dir.is_dir().then_some(dir)
}

/// A path under `../shared/data`, or `None` (after printing a visible SKIP line) when absent.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    match shared_dir().map(|d| d.join("data").join(rel)) {
        Some(p) if p.exists() => Some(p),
        _ => {
            eprintln!("SKIP: ../shared/data/{rel} is not present; this test needs it");
            None
        }
    }
}

/// A committed fixture under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// Relative L2 error ‖a − b‖ / ‖b‖ (0 when both are zero); NaN anywhere gives infinity.
/// The project's tolerances are norm-wise over a whole tensor (docs/ARCHITECTURE.md), which
/// `approx`'s element-wise asserts do not express; scalar and element-wise comparisons
/// in the tests use `approx`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Deterministic pseudo-random numbers for tests (SplitMix64 stream).
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        qf_engine::data::rng::splitmix64(&mut self.0)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize, std: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * std).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
