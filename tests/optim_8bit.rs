//! Tests for the dynamic 8-bit maps, block-wise quantisation, the fp32 AdamW step and the
//! block-wise 8-bit AdamW (Dettmers et al. 2021, as bitsandbytes implements it).

mod common;

use qf_engine::backend::cpu::adamw::{adamw_step_f32, adamw_update, AdamConsts, AdamHyper};
use qf_engine::backend::cpu::quant8::{
    block_absmax, create_dynamic_map, dequantize_blockwise, encode_block_sign_preserving, max_round_trip_error,
    nearest_code, quantize_blockwise, round_trip, signed_dynamic_map, unsigned_dynamic_map, zero_code, QuantMap,
    BLOCK_SIZE,
};
use qf_engine::optim::adam8bit::{self, state_bytes, Adam8bitState, MIN_8BIT_SIZE};

/// SplitMix64: a small deterministic generator (no `rand` dependency).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Standard Cauchy: tan(π(u − ½)).
    fn cauchy(&mut self) -> f64 {
        (std::f64::consts::PI * (self.uniform() - 0.5)).tan()
    }
    /// Student-t with 3 degrees of freedom: z / sqrt(χ²₃ / 3).
    fn student_t3(&mut self) -> f64 {
        let chi2: f64 = (0..3).map(|_| self.normal().powi(2)).sum();
        self.normal() / (chi2 / 3.0).sqrt()
    }
    fn vec(&mut self, n: usize, scale: f64, draw: fn(&mut Rng) -> f64) -> Vec<f32> {
        (0..n).map(|_| (scale * draw(self)) as f32).collect()
    }
}

fn assert_strictly_sorted(map: &QuantMap) {
    for w in map.windows(2) {
        assert!(w[0] < w[1], "map not strictly increasing at {} -> {}", w[0], w[1]);
    }
}

/// Entries of `map` with `lo ≤ x < hi`.
fn count_in(map: &QuantMap, lo: f32, hi: f32) -> usize {
    map.iter().filter(|&&x| x >= lo && x < hi).count()
}

/// The same construction in exact f64 arithmetic: decade `i` holds the midpoints of `k`
/// equal intervals of [0.1, 1] scaled by 10^(i-6).
fn reference_map_f64(signed: bool) -> Vec<f64> {
    let mut data = vec![0.0, 1.0];
    for i in 0..7 {
        let k = if signed { 1usize << i } else { 1usize << (i + 1) };
        for j in 0..k {
            let mid = 0.1 + 0.9 * (2 * j + 1) as f64 / (2 * k) as f64;
            let x = 10f64.powi(i - 6) * mid;
            data.push(x);
            if signed {
                data.push(-x);
            }
        }
    }
    data.sort_by(f64::total_cmp);
    data
}

#[test]
fn signed_map_has_bitsandbytes_layout() {
    let map = signed_dynamic_map();
    assert_eq!(map.len(), 256);
    assert_strictly_sorted(map);
    assert_eq!(map[127], 0.0, "zero sits at code 127");
    assert_eq!(zero_code(map), 127);
    assert_eq!(map[255], 1.0, "+1.0 is the last code");
    assert!(!map.contains(&-1.0), "bitsandbytes' signed map has no -1.0");
    // The most negative entry is -(1 - 0.9/128) in fp32 (bitsandbytes prints -0.992968738).
    assert_eq!(map[0], -0.992_968_74_f32);
    assert!((map[0] as f64 + 0.99296875).abs() < 1e-7);
    for j in 1..=127 {
        assert_eq!(map[127 - j], -map[127 + j], "negative half mirrors the positive half at {j}");
    }
    assert_eq!(map.iter().filter(|&&x| x > 0.0).count(), 128);
    assert_eq!(map.iter().filter(|&&x| x < 0.0).count(), 127);
    // 2^i positive entries in decade i, i.e. in [10^(i-7), 10^(i-6)).
    for i in 0..7 {
        let (lo, hi) = (10f32.powi(i - 7), 10f32.powi(i - 6));
        assert_eq!(count_in(map, lo, hi), 1 << i, "decade {i}");
    }
}

#[test]
fn unsigned_map_has_bitsandbytes_layout() {
    let map = unsigned_dynamic_map();
    assert_strictly_sorted(map);
    assert_eq!(map[0], 0.0);
    assert_eq!(zero_code(map), 0);
    assert_eq!(map[255], 1.0);
    assert!(map.iter().all(|&x| x >= 0.0));
    assert!((map[254] as f64 - (1.0 - 0.9 / 256.0)).abs() < 1e-7);
    for i in 0..7 {
        let (lo, hi) = (10f32.powi(i - 7), 10f32.powi(i - 6));
        assert_eq!(count_in(map, lo, hi), 2 << i, "decade {i}");
    }
}

#[test]
fn maps_match_exact_construction_to_fp32_rounding() {
    for (signed, map) in [(true, signed_dynamic_map()), (false, unsigned_dynamic_map())] {
        let reference = reference_map_f64(signed);
        assert_eq!(reference.len(), 256);
        for (k, (&got, &want)) in map.iter().zip(&reference).enumerate() {
            let tol = 1e-6 * want.abs();
            assert!((got as f64 - want).abs() <= tol, "signed={signed} code {k}: {got} vs exact {want}");
        }
    }
}

#[test]
fn dynamic_map_rejects_what_bitsandbytes_rejects() {
    assert!(create_dynamic_map(false, 6).is_err(), "unsigned needs 7 exponent bits");
    assert!(create_dynamic_map(true, 0).is_err());
    assert!(create_dynamic_map(true, 8).is_err());
    for bits in 1..=7 {
        let map = create_dynamic_map(true, bits).unwrap();
        assert_strictly_sorted(&map);
        assert!(map.contains(&0.0) && map[255] == 1.0, "bits {bits}");
    }
}

#[test]
fn documented_error_bounds_match_the_map_spacing() {
    // Widest gap = top decade spacing: 0.9/64 (signed), 0.9/128 (unsigned); bound = half.
    let s = max_round_trip_error(signed_dynamic_map()) as f64;
    let u = max_round_trip_error(unsigned_dynamic_map()) as f64;
    assert!((s - 0.9 / 128.0).abs() < 1e-6, "signed bound {s}");
    assert!((u - 0.9 / 256.0).abs() < 1e-6, "unsigned bound {u}");
}

#[test]
fn nearest_code_is_the_nearest_entry_and_ties_go_to_the_even_code() {
    let mut rng = Rng(7);
    for map in [signed_dynamic_map(), unsigned_dynamic_map()] {
        for _ in 0..20_000 {
            // Log-uniform magnitudes so every decade is exercised.
            let mag = 10f64.powf(-7.5 + 7.6 * rng.uniform());
            let u = if map[0] < 0.0 && rng.uniform() < 0.5 { -mag } else { mag } as f32;
            let c = nearest_code(map, u) as usize;
            let best = map.iter().map(|&x| (x as f64 - u as f64).abs()).fold(f64::MAX, f64::min);
            assert!((map[c] as f64 - u as f64).abs() <= best + 1e-9, "u={u} got code {c}");
        }
        for k in 0..255 {
            let mid = (map[k] + map[k + 1]) * 0.5;
            if mid > map[k] && mid < map[k + 1] {
                let even = if k % 2 == 0 { k } else { k + 1 };
                assert_eq!(nearest_code(map, mid) as usize, even, "tie between {k} and {}", k + 1);
            }
        }
        assert_eq!(nearest_code(map, 2.0), 255);
        assert_eq!(nearest_code(map, -2.0), 0);
    }
}

/// Quantise, check absmax exactness and the documented per-element bound, and return
/// the relative L2 error of the round trip.
fn check_round_trip(x: &[f32], map: &QuantMap) -> f64 {
    let q = quantize_blockwise(x, map).unwrap();
    assert_eq!(q.absmax.len(), x.len().div_ceil(BLOCK_SIZE));
    let y = dequantize_blockwise(&q, map).unwrap();
    let bound = max_round_trip_error(map) + 2f32.powi(-22);
    for (b, (xb, yb)) in x.chunks(BLOCK_SIZE).zip(y.chunks(BLOCK_SIZE)).enumerate() {
        let absmax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(q.absmax[b], absmax, "block {b}: absmax must be exactly max|x|");
        for (&xi, &yi) in xb.iter().zip(yb) {
            assert!((xi - yi).abs() <= absmax * bound, "block {b}: {xi} -> {yi}, bound {}", absmax * bound);
        }
    }
    common::rel_err(&y, x)
}

#[test]
fn round_trip_of_normal_data_is_within_the_bound() {
    let mut rng = Rng(1);
    let x = rng.vec(256 * 40 + 77, 1e-3, Rng::normal);
    let err = check_round_trip(&x, signed_dynamic_map());
    assert!(err < 0.02, "relative L2 error {err}");
    let sq: Vec<f32> = x.iter().map(|v| v * v).collect();
    let err = check_round_trip(&sq, unsigned_dynamic_map());
    assert!(err < 0.02, "relative L2 error {err}");
}

#[test]
fn round_trip_of_heavy_tailed_data_is_within_the_bound() {
    let mut rng = Rng(2);
    for draw in [Rng::cauchy as fn(&mut Rng) -> f64, Rng::student_t3] {
        let x = rng.vec(256 * 33 + 5, 1e-2, draw);
        check_round_trip(&x, signed_dynamic_map());
        let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        check_round_trip(&abs, unsigned_dynamic_map());
    }
}

#[test]
fn zero_blocks_and_bad_input() {
    let x = vec![0f32; 300];
    let q = quantize_blockwise(&x, signed_dynamic_map()).unwrap();
    assert_eq!(q.absmax, vec![0.0, 0.0]);
    assert!(q.codes.iter().all(|&c| c == 127));
    assert_eq!(round_trip(&x, signed_dynamic_map()).unwrap(), x);
    let mut bad = vec![1.0f32; 10];
    bad[3] = f32::NAN;
    let err = quantize_blockwise(&bad, signed_dynamic_map()).unwrap_err().to_string();
    assert!(err.contains("element 3"), "{err}");
    let mut q = quantize_blockwise(&[1.0; 300], signed_dynamic_map()).unwrap();
    q.absmax.pop();
    assert!(dequantize_blockwise(&q, signed_dynamic_map()).is_err());
}

#[test]
fn first_moment_keeps_its_sign_through_quantisation() {
    let map = signed_dynamic_map();
    let values = [1.0f32, -1e-9, 1e-9, 0.0, -0.5];
    let mut codes = [0u8; 5];
    encode_block_sign_preserving(&values, block_absmax(&values), map, &mut codes);
    assert!(map[codes[1] as usize] < 0.0, "tiny negative must stay negative");
    assert_eq!(codes[1], 126, "smallest negative entry");
    assert_eq!(map[codes[2] as usize], 0.0, "tiny positive rounds to zero");
    assert_eq!(map[codes[3] as usize], 0.0);
    assert_eq!(codes[0], 255);
}

#[test]
fn small_tensors_keep_fp32_state_and_byte_counts() {
    assert!(!Adam8bitState::new(MIN_8BIT_SIZE - 1).is_8bit());
    assert!(Adam8bitState::new(MIN_8BIT_SIZE).is_8bit());
    assert_eq!(state_bytes(4095), 8 * 4095);
    assert_eq!(state_bytes(4096), 2 * 4096 + 8 * 16);
    for n in [10, 4095, 4096, 5000, 1_000_003] {
        assert_eq!(Adam8bitState::new(n).bytes(), state_bytes(n), "n = {n}");
    }
    let per_param = state_bytes(1 << 20) as f64 / (1 << 20) as f64;
    assert!((per_param - (2.0 + 8.0 / 256.0)).abs() < 1e-12, "{per_param} bytes/param");
    let (m, v) = Adam8bitState::new(5000).moments_f32();
    assert!(m.iter().chain(&v).all(|&x| x == 0.0));
}

#[test]
fn fp32_step_matches_two_hand_computed_steps() {
    // lr 0.1, wd 0.01, betas (0.9, 0.999), eps 1e-8, p0 = 1, g1 = 0.5, g2 = -0.25.
    // Step 1: p ← 1·(1 − 0.1·0.01) = 0.999; m = 0.1·0.5 = 0.05; v = 0.001·0.25 = 0.00025;
    //   m̂ = 0.05/(1−0.9) = 0.5; sqrt(v̂) = sqrt(0.00025/0.001) = 0.5;
    //   p ← 0.999 − 0.1·0.5/(0.5 + 1e-8) = 0.999 − 0.099999998 = 0.899000002.
    // Step 2: p ← 0.899000002·0.999 = 0.898101002; m = 0.9·0.05 + 0.1·(−0.25) = 0.02;
    //   v = 0.999·0.00025 + 0.001·0.0625 = 0.00031225; bc1 = 1 − 0.81 = 0.19,
    //   bc2 = 1 − 0.998001 = 0.001999; m̂ = 0.02/0.19 = 0.105263158;
    //   sqrt(v̂) = sqrt(0.00031225/0.001999) = 0.395225381; update = 0.266337033;
    //   p ← 0.898101002 − 0.1·0.266337033 = 0.871467299.
    let mut hp = AdamHyper { lr: 0.1, weight_decay: 0.01, ..AdamHyper::default() };
    let (mut p, mut m, mut v) = (vec![1.0f32], vec![0.0f32], vec![0.0f32]);
    adamw_step_f32(&mut p, &[0.5], &mut m, &mut v, &hp).unwrap();
    assert!((p[0] as f64 - 0.899_000_002).abs() < 1e-6, "step 1: {}", p[0]);
    assert!((m[0] - 0.05).abs() < 1e-8 && (v[0] - 0.00025).abs() < 1e-10);
    hp.step = 2;
    adamw_step_f32(&mut p, &[-0.25], &mut m, &mut v, &hp).unwrap();
    assert!((p[0] as f64 - 0.871_467_299).abs() < 1e-6, "step 2: {}", p[0]);
    assert!((m[0] - 0.02).abs() < 1e-8 && (v[0] - 0.000_312_25).abs() < 1e-10);
}

/// PyTorch's AdamW written out in f64 as an independent reference.
fn reference_adamw_f64(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], hp: &AdamHyper) {
    let t = hp.step as f64;
    let (bc1, bc2) = (1.0 - hp.beta1.powf(t), 1.0 - hp.beta2.powf(t));
    for i in 0..p.len() {
        let g = g[i] * hp.grad_scale;
        p[i] *= 1.0 - hp.lr * hp.weight_decay;
        m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * g;
        v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
        p[i] -= hp.lr / bc1 * m[i] / ((v[i] / bc2).sqrt() + hp.eps);
    }
}

#[test]
fn fp32_step_matches_an_f64_reference_with_grad_scale() {
    let mut rng = Rng(3);
    let n = 1000;
    let mut p = rng.vec(n, 1.0, Rng::normal);
    let mut p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let (mut m64, mut v64) = (vec![0f64; n], vec![0f64; n]);
    for step in 1..=5 {
        let g = rng.vec(n, 4.0, Rng::normal);
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        let hp = AdamHyper { lr: 1e-2, weight_decay: 0.1, step, grad_scale: 0.25, ..AdamHyper::default() };
        adamw_step_f32(&mut p, &g, &mut m, &mut v, &hp).unwrap();
        reference_adamw_f64(&mut p64, &g64, &mut m64, &mut v64, &hp);
    }
    let p64_f32: Vec<f32> = p64.iter().map(|&x| x as f32).collect();
    assert!(common::rel_err(&p, &p64_f32) < 1e-6, "{}", common::rel_err(&p, &p64_f32));
}

#[test]
fn first_8bit_step_equals_the_fp32_step_bit_for_bit() {
    // From zero state both dequantised moments are exactly zero, and the parameter update
    // happens before requantisation, so the parameters must agree exactly.
    let mut rng = Rng(4);
    let n = 5000;
    let p0 = rng.vec(n, 0.1, Rng::normal);
    let g = rng.vec(n, 1e-3, Rng::cauchy);
    let hp = AdamHyper { lr: 1e-3, weight_decay: 0.01, grad_scale: 0.5, ..AdamHyper::default() };
    let (mut p32, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
    adamw_step_f32(&mut p32, &g, &mut m, &mut v, &hp).unwrap();
    let mut p8 = p0.clone();
    let mut state = Adam8bitState::new(n);
    adam8bit::step(&mut p8, &g, &mut state, &hp).unwrap();
    assert_eq!(p8, p32);
    // The stored moments are the fp32 ones within the quantisation bound.
    let (m8, v8) = state.moments_f32();
    let (sb, ub) = (
        max_round_trip_error(signed_dynamic_map()) + 2f32.powi(-22),
        max_round_trip_error(unsigned_dynamic_map()) + 2f32.powi(-22),
    );
    for b in 0..n.div_ceil(BLOCK_SIZE) {
        let r = b * BLOCK_SIZE..((b + 1) * BLOCK_SIZE).min(n);
        let (ma, va) = (block_absmax(&m[r.clone()]), block_absmax(&v[r.clone()]));
        for i in r {
            assert!((m8[i] - m[i]).abs() <= ma * sb, "m[{i}]: {} vs {}", m8[i], m[i]);
            assert!((v8[i] - v[i]).abs() <= va * ub, "v[{i}]: {} vs {}", v8[i], v[i]);
        }
    }
}

#[test]
fn step_requantises_with_the_new_block_absmax() {
    let mut rng = Rng(5);
    let n = 256 * 20 + 100;
    let mut p = rng.vec(n, 0.1, Rng::normal);
    let mut state = Adam8bitState::new(n);
    for step in 1..=3 {
        let g = rng.vec(n, 1e-2, Rng::student_t3);
        let hp = AdamHyper { lr: 1e-3, step, ..AdamHyper::default() };
        let (m_old, v_old) = state.moments_f32();
        let c = AdamConsts::new(&hp).unwrap();
        let mut expect_p = p.clone();
        let (mut expect_m, mut expect_v) = (m_old.clone(), v_old.clone());
        for i in 0..n {
            (expect_p[i], expect_m[i], expect_v[i]) = adamw_update(p[i], g[i], m_old[i], v_old[i], &c);
        }
        adam8bit::step(&mut p, &g, &mut state, &hp).unwrap();
        assert_eq!(p, expect_p, "step {step}: parameters use the dequantised moments exactly");
        let Adam8bitState::Blockwise8bit(q) = &state else { panic!("expected 8-bit state") };
        for b in 0..q.m_absmax.len() {
            let r = b * BLOCK_SIZE..((b + 1) * BLOCK_SIZE).min(n);
            assert_eq!(q.m_absmax[b], block_absmax(&expect_m[r.clone()]));
            assert_eq!(q.v_absmax[b], block_absmax(&expect_v[r]));
        }
    }
}

#[test]
fn non_finite_gradients_reset_the_element_and_spare_its_block() {
    let mut rng = Rng(6);
    let n = 4096;
    let p0 = rng.vec(n, 0.1, Rng::normal);
    let mut g = rng.vec(n, 1e-3, Rng::normal);
    g[10] = f32::NAN;
    g[300] = f32::INFINITY;
    let hp = AdamHyper::default();
    let mut p = p0.clone();
    let mut state = Adam8bitState::new(n);
    adam8bit::step(&mut p, &g, &mut state, &hp).unwrap();
    assert_eq!(p[10], p0[10]);
    assert_eq!(p[300], p0[300]);
    let (m, v) = state.moments_f32();
    assert_eq!((m[10], v[10], m[300], v[300]), (0.0, 0.0, 0.0, 0.0));
    assert!(p.iter().chain(&m).chain(&v).all(|x| x.is_finite()));
    let (mut p32, mut m32, mut v32) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
    adamw_step_f32(&mut p32, &g, &mut m32, &mut v32, &hp).unwrap();
    for i in (0..n).filter(|&i| i != 10 && i != 300) {
        assert_eq!(p[i], p32[i], "element {i}");
    }
}

#[test]
fn invalid_calls_are_errors_and_leave_parameters_untouched() {
    let mut p = vec![1.0f32; 5000];
    let mut state = Adam8bitState::new(5000);
    assert!(adam8bit::step(&mut p, &[0.0; 4999], &mut state, &AdamHyper::default()).is_err());
    let bad = [
        AdamHyper { step: 0, ..AdamHyper::default() },
        AdamHyper { beta1: 1.0, ..AdamHyper::default() },
        AdamHyper { lr: -1.0, ..AdamHyper::default() },
        AdamHyper { grad_scale: f64::NAN, ..AdamHyper::default() },
    ];
    for hp in bad {
        assert!(adam8bit::step(&mut p, &[0.5; 5000], &mut state, &hp).is_err(), "{hp:?}");
    }
    assert!(p.iter().all(|&x| x == 1.0));
    let mut small = Adam8bitState::new(3);
    assert!(adam8bit::step(&mut p[..4], &[0.0; 4], &mut small, &AdamHyper::default()).is_err());
}

/// Run the given steps with random gradients.
fn run_steps(p: &mut [f32], state: &mut Adam8bitState, rng: &mut Rng, steps: std::ops::RangeInclusive<u64>) {
    for step in steps {
        let g = rng.vec(p.len(), 1e-2, Rng::normal);
        let hp = AdamHyper { lr: 1e-3, step, ..AdamHyper::default() };
        adam8bit::step(p, &g, state, &hp).unwrap();
    }
}

#[test]
fn state_save_restore_gives_an_identical_next_step() {
    for n in [1000usize, 256 * 30 + 9] {
        let mut rng = Rng(8);
        let mut p = rng.vec(n, 0.1, Rng::normal);
        let mut state = Adam8bitState::new(n);
        run_steps(&mut p, &mut state, &mut rng, 1..=3);

        let tensors = state.to_tensors("layer.0.weight");
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        if state.is_8bit() {
            assert_eq!(
                names,
                ["layer.0.weight.state1", "layer.0.weight.absmax1", "layer.0.weight.state2", "layer.0.weight.absmax2"]
            );
        } else {
            assert_eq!(names, ["layer.0.weight.state1", "layer.0.weight.state2"]);
        }
        let bytes = safetensors::serialize(tensors.iter().map(|t| (t.name.clone(), t)), None).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut restored = Adam8bitState::from_safetensors("layer.0.weight", n, &file).unwrap();
        assert_eq!(restored, state);
        assert_eq!(Adam8bitState::from_tensors("layer.0.weight", n, &tensors).unwrap(), state);

        let mut p2 = p.clone();
        run_steps(&mut p, &mut state, &mut Rng(99), 4..=4);
        run_steps(&mut p2, &mut restored, &mut Rng(99), 4..=4);
        assert_eq!(p, p2, "n = {n}");
        assert_eq!(state, restored, "n = {n}");
    }
}

#[test]
fn restoring_bad_state_names_the_tensor() {
    let state = Adam8bitState::new(5000);
    let tensors = state.to_tensors("w");
    let err = Adam8bitState::from_tensors("w", 5001, &tensors).unwrap_err().to_string();
    assert!(err.contains("w.state1") && err.contains("shape"), "{err}");
    let err = Adam8bitState::from_tensors("x", 5000, &tensors).unwrap_err().to_string();
    assert!(err.contains("x.state1") && err.contains("missing"), "{err}");
    let partial: Vec<_> = tensors.iter().filter(|t| t.name != "w.absmax2").cloned().collect();
    let err = Adam8bitState::from_tensors("w", 5000, &partial).unwrap_err().to_string();
    assert!(err.contains("w.absmax2"), "{err}");
    let mut negative = tensors.clone();
    negative[1].data[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
    assert!(Adam8bitState::from_tensors("w", 5000, &negative).is_err());
}

/// Multi-output least squares `L(W, b) = ½·mean_rows ‖X W + b − Y‖²` with a 100×100
/// weight (10,000 parameters, 8-bit state) and a 100-element bias (fp32 state).
struct LeastSquares {
    x: Vec<f32>,
    y: Vec<f32>,
    rows: usize,
    d: usize,
}

impl LeastSquares {
    fn new(rng: &mut Rng, rows: usize, d: usize) -> Self {
        let x = rng.vec(rows * d, 1.0, Rng::normal);
        let w_true = rng.vec(d * d, (1.0 / d as f64).sqrt(), Rng::normal);
        let mut y = vec![0f32; rows * d];
        for r in 0..rows {
            for k in 0..d {
                let xr = x[r * d + k];
                for j in 0..d {
                    y[r * d + j] += xr * w_true[k * d + j];
                }
            }
            for j in 0..d {
                y[r * d + j] += 0.3 * rng.normal() as f32 + 0.5;
            }
        }
        Self { x, y, rows, d }
    }

    /// Loss and gradients at (w, b).
    fn loss_and_grad(&self, w: &[f32], b: &[f32]) -> (f64, Vec<f32>, Vec<f32>) {
        let (d, rows) = (self.d, self.rows);
        let (mut gw, mut gb) = (vec![0f32; d * d], vec![0f32; d]);
        let mut loss = 0f64;
        let mut resid = vec![0f32; d];
        for r in 0..rows {
            let xr = &self.x[r * d..(r + 1) * d];
            resid.copy_from_slice(b);
            for k in 0..d {
                for j in 0..d {
                    resid[j] += xr[k] * w[k * d + j];
                }
            }
            for j in 0..d {
                resid[j] -= self.y[r * d + j];
                loss += 0.5 * (resid[j] as f64).powi(2);
                gb[j] += resid[j] / rows as f32;
            }
            for k in 0..d {
                let s = xr[k] / rows as f32;
                for j in 0..d {
                    gw[k * d + j] += s * resid[j];
                }
            }
        }
        (loss / rows as f64, gw, gb)
    }
}

/// Loss curve of 300 AdamW steps; `eight_bit` picks 8-bit or fp32 state for the weight.
fn train(problem: &LeastSquares, eight_bit: bool) -> Vec<f64> {
    let d = problem.d;
    let (mut w, mut b) = (vec![0f32; d * d], vec![0f32; d]);
    let min_size = if eight_bit { MIN_8BIT_SIZE } else { usize::MAX };
    let mut w_state = Adam8bitState::with_min_8bit_size(d * d, min_size);
    let mut b_state = Adam8bitState::new(d);
    assert_eq!(w_state.is_8bit(), eight_bit);
    assert!(!b_state.is_8bit());
    let mut losses = Vec::new();
    for step in 1..=300u64 {
        let (loss, gw, gb) = problem.loss_and_grad(&w, &b);
        losses.push(loss);
        let hp = AdamHyper { lr: 1e-2, weight_decay: 1e-2, step, ..AdamHyper::default() };
        adam8bit::step(&mut w, &gw, &mut w_state, &hp).unwrap();
        adam8bit::step(&mut b, &gb, &mut b_state, &hp).unwrap();
    }
    losses.push(problem.loss_and_grad(&w, &b).0);
    losses
}

#[test]
fn eight_bit_and_fp32_adamw_loss_curves_agree() {
    let problem = LeastSquares::new(&mut Rng(11), 256, 100);
    let fp32 = train(&problem, false);
    let int8 = train(&problem, true);
    let worst = fp32.iter().zip(&int8).map(|(a, b)| (a - b).abs() / a).fold(0f64, f64::max);
    let (first, last) = (fp32[0], *fp32.last().unwrap());
    eprintln!("loss fp32 {first:.4} -> {last:.4}, 8-bit -> {:.4}; worst relative gap {worst:.4}", int8.last().unwrap());
    assert!(last < 0.2 * first, "the problem must actually be optimised");
    assert!(worst < 0.03, "8-bit and fp32 loss curves differ by {worst:.4}");
}
