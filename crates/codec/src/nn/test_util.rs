//! Helpers the `nn` tests share: how far a fast kernel is from its reference.

use candle_core::Tensor;

/// The largest |a − b| over two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// The largest absolute and relative errors of `fast` against `exact` at `n + 1` evenly spaced points from `lo` to
/// `hi`.
pub fn worst_errors(lo: f32, hi: f32, n: usize, fast: impl Fn(f32) -> f32, exact: impl Fn(f64) -> f64) -> (f64, f64) {
    let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
    for i in 0..=n {
        let x = lo + (hi - lo) * i as f32 / n as f32;
        let (got, want) = (fast(x) as f64, exact(x as f64));
        worst_abs = worst_abs.max((got - want).abs());
        worst_rel = worst_rel.max(((got - want) / want).abs());
    }
    (worst_abs, worst_rel)
}

/// Values in [−0.5, 0.5) from a seeded LCG (the GEMM, int8 and dot product tests' operands).
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}
