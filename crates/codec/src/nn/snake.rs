//! Snake activation (DAC, BigVGAN): `x + sin²(α·x) / (α + 1e-9)`, one learnt α per channel.
//!
//! Tensor name: `alpha`, shape `[C]` (the converter drops the reference's `[1, C, 1]` broadcast dims).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct Snake {
    /// α as (1, C, 1), ready to broadcast over (B, C, T).
    alpha: Tensor,
    /// 1 / (α + 1e-9), as the reference computes it: a cache of `alpha`.
    inv_alpha: Tensor,
}

impl Snake {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let alpha = vb.get(channels, "alpha")?.reshape((1, channels, 1))?;
        let inv_alpha = (&alpha + 1e-9)?.recip()?;
        Ok(Self { alpha, inv_alpha })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.broadcast_mul(&self.alpha)?.sin()?.sqr()?;
        x + s.broadcast_mul(&self.inv_alpha)?
    }
}
