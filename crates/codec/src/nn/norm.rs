//! LayerNorm over the last dim, `(x − mean) / sqrt(var + eps) · weight + bias`, with the mean and the variance
//! taken in two passes as torch does. On CPU one fused op, rows across threads; the same ops as candle tensors
//! elsewhere (eight passes over the activations, a measurable share of WavTokenizer's backbone).

use super::Weights;
use candle_core::{DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{F32Kernel3, F32Op3};

/// A LayerNorm layer: tensors `weight`, `bias` `[dim]`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm over `dim` channels with epsilon `eps`.
    pub fn new(dim: usize, eps: f64, vb: Weights) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps })
    }
    /// (…, dim) → (…, dim), normalised over the last dim.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// LayerNorm of `x` over its last dim, then `· weight + bias` (`[dim]` each); one fused op for f32 on the CPU.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op3_no_bwd(weight, bias, &F32Op3(LayerNormOp(eps as f32)));
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_sub(&mean)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    x.broadcast_mul(weight)?.broadcast_add(bias)
}

struct LayerNormOp(f32);

impl F32Kernel3 for LayerNormOp {
    const NAME: &'static str = "codec-layer-norm";
    const INPUTS: [&'static str; 3] = ["layer norm input", "layer norm weight", "layer norm bias"];

    fn run(&self, [(x, l1), (w, _), (b, _)]: [(&[f32], &Layout); 3]) -> Result<(Vec<f32>, Shape)> {
        let dim = l1.shape().dims().last().copied().unwrap_or(0);
        if dim == 0 || w.len() != dim || b.len() != dim {
            candle_core::bail!("layer norm: {} features, weight {}, bias {}", dim, w.len(), b.len());
        }
        let eps = self.0;
        let mut out = crate::mem::zeros_par(x.len());
        out.par_chunks_mut(dim).zip(x.par_chunks(dim)).for_each(|(y, x)| {
            super::wide_simd(
                #[inline(always)]
                || {
                    let mean = x.iter().sum::<f32>() / dim as f32;
                    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
                    let std = (var + eps).sqrt();
                    for (((y, &v), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                        *y = (v - mean) / std * w + b;
                    }
                },
            )
        });
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_tensor_ops() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 2.0, (3, 7, 96), &dev).unwrap() + 5.0).unwrap();
        let w = Tensor::randn(0f32, 1.0, 96, &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 96, &dev).unwrap();
        let got = layer_norm(&x, &w, &b, 1e-6).unwrap();
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let want = xc.broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap()).unwrap();
        let want = want.broadcast_mul(&w).unwrap().broadcast_add(&b).unwrap();
        let diff = super::super::test_util::max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "max diff {diff}");
    }
}
