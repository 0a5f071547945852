//! Element-wise activations with a fast CPU path: ELU (α = 1, the SEANet stacks) and exact (erf) GELU (transformers,
//! ConvNeXt). candle maps libm's scalar `expf` / `erf` over the tensor on one thread; on full-size Mimi ELU alone was
//! 15 % of a CPU run (`perf`), GELU a quarter of WavTokenizer's backbone. The CPU paths here split the tensor across
//! threads and use branch-free `exp`/`erf` the compiler vectorises; other devices use candle's ops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::{f32_slice, with_fma};

/// An element-wise activation a GEMM layer applies as it writes its output (`gemm::Epilogue::activation`), rather
/// than in a pass of its own over the whole output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// [`gelu_erf`].
    GeluErf,
    /// [`elu`].
    Elu,
}

impl Activation {
    /// The function on a run of values, in place: the same per-element code as the separate op, so the same bits.
    pub(crate) fn in_place(self, values: &mut [f32]) {
        match self {
            Self::GeluErf => with_fma!(
                FMA,
                super::wide_simd(
                    #[inline(always)]
                    || values.iter_mut().for_each(|v| *v = gelu_f32::<FMA>(*v)),
                )
            ),
            Self::Elu => with_fma!(
                FMA,
                super::wide_simd(
                    #[inline(always)]
                    || values.iter_mut().for_each(|v| *v = elu_f32::<FMA>(*v)),
                )
            ),
        }
    }

    /// As an op of its own (other devices and layers).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::GeluErf => gelu_erf(x),
            Self::Elu => elu(x),
        }
    }
}

/// An element-wise function a conv applies to its output (B, C, T) as its products write it
/// (`Conv1d::forward_then`); it may depend on the output channel (Snake's α).
pub trait ChannelActivation: Sync + std::fmt::Debug {
    /// The function on values of output channel `channel`, in place: the same per-element code as
    /// [`ChannelActivation::apply`], so the same bits.
    fn on_channel(&self, channel: usize, values: &mut [f32]);

    /// The function as an op of its own on a (B, C, T) tensor (devices and convs without the fused path).
    fn apply(&self, x: &Tensor) -> Result<Tensor>;
}

impl ChannelActivation for Activation {
    fn on_channel(&self, _: usize, values: &mut [f32]) {
        self.in_place(values)
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Activation::apply(*self, x)
    }
}

/// `x` where `x > 0`, `exp(x) − 1` elsewhere.
pub fn elu(x: &Tensor) -> Result<Tensor> {
    with_fma!(FMA, map(x, "codec-elu", elu_f32::<FMA>, |x| x.elu(1.0)))
}

/// `x · Φ(x) = x/2 · (1 + erf(x/√2))`, torch's default (exact) GELU.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    with_fma!(FMA, map(x, "codec-gelu", gelu_f32::<FMA>, Tensor::gelu_erf))
}

/// `x · sigmoid(x)` (SiLU / swish), with libm's `expf` as candle computes it: the same bits, across threads.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    map(x, "codec-silu", |v| v / (1.0 + (-v).exp()), candle_nn::ops::silu)
}

/// `f` on every element of an f32 CPU tensor, in parallel chunks; `other` elsewhere.
fn map(
    x: &Tensor,
    name: &'static str,
    f: impl Fn(f32) -> f32 + Sync,
    other: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&Map(name, f))
    } else {
        other(x)
    }
}

/// GELU's tanh approximation `x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))` (torch's `approximate="tanh"`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}

#[inline(always)]
fn elu_f32<const FMA: bool>(v: f32) -> f32 {
    // Both branches computed, then a select: keeps the loop branch-free so it vectorises.
    let neg = exp_nonpositive::<FMA>(if v < 0.0 { v } else { 0.0 }) - 1.0;
    if v > 0.0 {
        v
    } else {
        neg
    }
}

#[inline(always)]
fn gelu_f32<const FMA: bool>(v: f32) -> f32 {
    0.5 * v * (1.0 + erf::<FMA>(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), odd-extended; branch-free.
#[inline(always)]
fn erf<const FMA: bool>(x: f32) -> f32 {
    let a = if x < 0.0 { -x } else { x };
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    // Horner in fused multiply-adds where they are instructions (see `exp_nonpositive`).
    let poly = mul_add::<FMA>(t, 1.061_405_4, -1.453_152_1);
    let poly = mul_add::<FMA>(t, poly, 1.421_413_7);
    let poly = mul_add::<FMA>(t, poly, -0.284_496_74);
    let poly = mul_add::<FMA>(t, poly, 0.254_829_6) * t;
    let y = 1.0 - poly * exp_nonpositive::<FMA>(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// An element-wise map as a CPU custom op, run in parallel chunks. Generic over the function (a fn item, not a
/// pointer) so it is inlined into the loop and vectorised; through a fn pointer the same op ran 25 % slower end to end.
struct Map<F>(&'static str, F);

/// Elements per parallel task: large enough to amortise scheduling, small enough to spread over threads.
const CHUNK: usize = 1 << 15;

impl<F: Fn(f32) -> f32 + Sync> CustomOp1 for Map<F> {
    fn name(&self) -> &'static str {
        self.0
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.0)?;
        let f = &self.1;
        let out = crate::mem::collect_par(src.len(), CHUNK, |i| src[i * CHUNK..].iter().take(CHUNK).map(|&v| f(v)));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `1 / (1 + e^−x)`, branch-free so loops over it vectorise: `e^−|x|` by [`exp_nonpositive`], then `1 / (1 + e)` or
/// `e / (1 + e)`, both dividing by a number in [1, 2]; within 3 ulp.
#[inline(always)]
pub(crate) fn sigmoid_f32<const FMA: bool>(x: f32) -> f32 {
    let e = exp_nonpositive::<FMA>(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

/// `tanh(x)`, branch-free so loops over it vectorise (Cephes' `tanhf`): an odd polynomial below |x| = 0.625, where
/// `1 − e^−2|x|` would cancel, `(1 − e)/(1 + e)` with `e = e^−2|x|` above; within 3 ulp.
#[inline(always)]
pub(crate) fn tanh_f32<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let p = mul_add::<FMA>(z, -5.704_988_7e-3, 2.063_909e-2);
    let p = mul_add::<FMA>(p, z, -5.373_971_6e-2);
    let p = mul_add::<FMA>(p, z, 1.333_144_2e-1);
    let p = mul_add::<FMA>(p, z, -3.333_328e-1);
    let small = mul_add::<FMA>(p * z, x, x);
    let e = exp_nonpositive::<FMA>(-2.0 * a);
    let large = (1.0 - e) / (1.0 + e);
    let large = if x < 0.0 { -large } else { large };
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// `a·b + c` in one rounding where `FMA` (an instruction there, see [`super::with_fma!`]), else two.
#[inline(always)]
pub(crate) fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `exp(x)` for `x ≤ 0` (Cephes' `expf` scheme: x = n·ln2 + r, |r| ≤ ln2/2, degree-6 polynomial for e^r, 2^n from
/// the exponent bits), about 1 ulp; branch-free so loops over it vectorise. Results below 2^-126 flush to 0.
///
/// Fused multiply-adds (`FMA`: where they are instructions, see [`super::with_fma!`]), the polynomial in three
/// independent pairs (Estrin's scheme): Horner's twelve dependent multiplies and adds were a latency chain the
/// out-of-order window could not cover, 12 cycles per AVX2 vector of ELU (a third of a SEANet residual block's
/// time); this is 7. Without FMA the same scheme in separate multiplies and adds (Horner's speed there).
#[inline(always)]
pub(crate) fn exp_nonpositive<const FMA: bool>(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x > -87.0 { x } else { -87.0 };
    // Round to nearest by adding and removing 1.5·2^23 (`f32::round` is a libm call on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    let fma = mul_add::<FMA>;
    let n = fma(x, std::f32::consts::LOG2_E, ROUND) - ROUND;
    let r = fma(-n, LN2_LO, fma(-n, LN2_HI, x));
    // e^r = 1 + r + r²·(c2 + c3·r + r²·(c4 + c5·r + r²·(c6 + c7·r))).
    let r2 = r * r;
    let c67 = fma(r, 1.987_569_1e-4, 1.398_199_9e-3);
    let c45 = fma(r, 8.333_452e-3, 4.166_579_6e-2);
    let c23 = fma(r, 1.666_666_5e-1, 0.5);
    let p = fma(r2, fma(r2, c67, c45), c23);
    let e_r = fma(p, r2, r) + 1.0;
    // 2^n without a float→int cast (Rust's saturating `as` does not vectorise): the low bits of 2^23 + 127 + n are
    // the biased exponent; shifting by 23 moves them into the exponent field and the rest out of the word.
    let two_n = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    e_r * two_n
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{max_abs_diff, worst_errors};
    use super::*;
    use candle_core::Device;

    /// The LSTM's gates: sigmoid and tanh against f64 over the range where they are not yet ±1 or 0, relative error.
    #[test]
    fn sigmoid_and_tanh_match_f64() {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        type Pair = (fn(f32) -> f32, fn(f32) -> f32);
        let forms: [(Pair, bool); 2] =
            [((sigmoid_f32::<true>, tanh_f32::<true>), true), ((sigmoid_f32::<false>, tanh_f32::<false>), false)];
        for ((sigmoid_f32, tanh_f32), fused) in forms {
            let (_, worst) = worst_errors(-30.0, 30.0, 400_001, sigmoid_f32, sigmoid);
            assert!(worst < 4e-7, "sigmoid max relative error {worst} (fused {fused})");
            let (_, worst) = worst_errors(-9.0, 9.0, 400_001, tanh_f32, f64::tanh);
            assert!(worst < 4e-7, "tanh max relative error {worst} (fused {fused})");
            let (_, worst) = worst_errors(-0.7, 0.7, 400_000, tanh_f32, f64::tanh);
            assert!(worst < 4e-7, "tanh max relative error near 0: {worst} (fused {fused})");
        }
    }

    #[test]
    fn exp_matches_std() {
        for (exp, fused) in [(exp_nonpositive::<true> as fn(f32) -> f32, true), (exp_nonpositive::<false>, false)] {
            let (_, worst) = worst_errors(0.0, -87.0, 200_000, exp, f64::exp);
            assert!(worst < 3e-7, "max relative error {worst} (fused {fused})");
        }
    }

    #[test]
    fn gelu_matches_candle() {
        let x = Tensor::randn(0f32, 3.0, (2, 3, 50_000), &Device::Cpu).unwrap();
        let diff = max_abs_diff(&gelu_erf(&x).unwrap(), &x.gelu_erf().unwrap());
        assert!(diff < 1e-6, "max diff {diff}");
    }

    #[test]
    fn elu_matches_candle() {
        let x = Tensor::randn(0f32, 3.0, (2, 3, 50_000), &Device::Cpu).unwrap();
        let diff = max_abs_diff(&elu(&x).unwrap(), &x.elu(1.0).unwrap());
        assert!(diff < 1e-6, "max diff {diff}");
    }
}
