//! Snake activation (DAC, BigVGAN): `x + sin²(α·x) / (α + 1e-9)`, one learnt α per channel.
//!
//! Tensor name: `alpha`, shape `[C]` (the converter drops the reference's `[1, C, 1]` broadcast dims).
//! On CPU one fused pass (threads over channels, a `sin²` the compiler vectorises) replaces the five passes of
//! candle ops — with candle's single-threaded scalar `sin` those made Snake most of DAC's non-GEMM time.

use super::Weights;
use candle_core::{DType, Layout, Result, Shape, Tensor};

use super::activation::{mul_add, ChannelActivation};
use super::{with_fma, F32Kernel3, F32Op3};

/// Snake activation with one learnt α per channel (tensor `alpha`).
#[derive(Debug, Clone)]
pub struct Snake {
    /// α as `[C]`.
    alpha: Tensor,
    /// 1 / (α + 1e-9), as the reference computes it: a cache of `alpha`.
    inv_alpha: Tensor,
    /// Both on the host, per channel, for a conv that applies Snake to its output ([`ChannelActivation`]).
    per_channel: Vec<(f32, f32)>,
}

impl Snake {
    /// Snake over `channels` channels.
    pub fn new(channels: usize, vb: Weights) -> Result<Self> {
        let alpha = vb.get(channels, "alpha")?;
        let inv_alpha = (&alpha + 1e-9)?.recip()?;
        let per_channel = alpha.to_vec1::<f32>()?.into_iter().zip(inv_alpha.to_vec1::<f32>()?).collect();
        Ok(Self { alpha, inv_alpha, per_channel })
    }

    /// (B, C, T) → (B, C, T).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return x.contiguous()?.apply_op3_no_bwd(&self.alpha, &self.inv_alpha, &F32Op3(SnakeOp));
        }
        let c = self.alpha.dim(0)?;
        let s = x.broadcast_mul(&self.alpha.reshape((1, c, 1))?)?.sin()?.sqr()?;
        x + s.broadcast_mul(&self.inv_alpha.reshape((1, c, 1))?)?
    }
}

/// One channel's Snake on one value: the op and the conv epilogue share it, so they give the same bits.
#[inline(always)]
fn snake<const FMA: bool>(v: f32, alpha: f32, inv_alpha: f32) -> f32 {
    v + inv_alpha * sin_squared::<FMA>(alpha * v)
}

impl ChannelActivation for Snake {
    fn on_channel(&self, channel: usize, values: &mut [f32]) {
        let (a, inv) = self.per_channel[channel];
        with_fma!(
            FMA,
            super::wide_simd(
                #[inline(always)]
                || values.iter_mut().for_each(|v| *v = snake::<FMA>(*v, a, inv)),
            )
        )
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)
    }
}

struct SnakeOp;

impl F32Kernel3 for SnakeOp {
    const NAME: &'static str = "codec-snake";
    const INPUTS: [&'static str; 3] = ["snake input", "snake alpha", "snake alpha"];

    fn run(&self, [(x, l1), (alpha, _), (inv, _)]: [(&[f32], &Layout); 3]) -> Result<(Vec<f32>, Shape)> {
        let (_, c, t) = l1.shape().dims3()?;
        let out = with_fma!(
            FMA,
            crate::mem::collect_par(x.len(), t, |row| {
                let (a, inv) = (alpha[row % c], inv[row % c]);
                x[row * t..(row + 1) * t].iter().map(move |&v| snake::<FMA>(v, a, inv))
            })
        );
        Ok((out, l1.shape().clone()))
    }
}

/// `sin²(x)`: x = k·π + r with |r| ≤ π/2 (Cody–Waite, π in three parts; sin² has period π so k's parity does not
/// matter), then the Taylor series of sin to r¹³ (error < 1e-9 on the interval). Branch- and cast-free so loops over
/// it vectorise; accurate to a few ulp for |x| < 1e5. Fused multiply-adds where they are instructions (`FMA`), the
/// series in independent pairs (Estrin's scheme), as `activation::exp_nonpositive` and for the same reason: a short
/// dependency chain.
#[inline(always)]
fn sin_squared<const FMA: bool>(x: f32) -> f32 {
    let fma = mul_add::<FMA>;
    const PI_A: f32 = 3.140625;
    const PI_B: f32 = 9.675_026e-4;
    const PI_C: f32 = 1.509_958e-7;
    // Round to nearest by adding and removing 1.5·2^23 (`f32::round` is a libm call on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    let k = fma(x, std::f32::consts::FRAC_1_PI, ROUND) - ROUND;
    let r = fma(-k, PI_C, fma(-k, PI_B, fma(-k, PI_A, x)));
    // sin r = r + r³·(c3 + c5·r² + r⁴·(c7 + c9·r² + r⁴·(c11 + c13·r²))).
    let r2 = r * r;
    let c35 = fma(r2, 1.0 / 120.0, -1.0 / 6.0);
    let c79 = fma(r2, 1.0 / 362_880.0, -1.0 / 5_040.0);
    let c1113 = fma(r2, 1.0 / 6_227_020_800.0, -1.0 / 39_916_800.0);
    let r4 = r2 * r2;
    let p = fma(r4, fma(r4, c1113, c79), c35);
    let s = fma(r * r2, p, r);
    s * s
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{max_abs_diff, worst_errors};
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    #[test]
    fn sin_squared_matches_std() {
        for (sin_squared, fused) in [(sin_squared::<true> as fn(f32) -> f32, true), (sin_squared::<false>, false)] {
            let (worst, _) = worst_errors(-2000.0, 2000.0, 400_000, sin_squared, |x| x.sin().powi(2));
            assert!(worst < 2e-6, "max abs error {worst} (fused {fused})");
        }
    }

    #[test]
    fn fused_matches_candle_ops() {
        let dev = Device::Cpu;
        let alpha = (Tensor::rand(0.2f32, 3.0, 5, &dev).unwrap()).to_dtype(DType::F32).unwrap();
        let vb = candle_nn::VarBuilder::from_tensors(
            HashMap::from([("alpha".to_string(), alpha.clone())]),
            DType::F32,
            &dev,
        );
        let snake = Snake::new(5, vb.into()).unwrap();
        let x = Tensor::randn(0f32, 2.0, (2, 5, 1000), &dev).unwrap();
        let got = snake.forward(&x).unwrap();
        let a = alpha.reshape((1, 5, 1)).unwrap();
        let want = (&x
            + x.broadcast_mul(&a).unwrap().sin().unwrap().sqr().unwrap().broadcast_div(&(&a + 1e-9).unwrap()).unwrap())
        .unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "max diff {diff}");
    }
}
