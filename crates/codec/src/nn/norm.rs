//! LayerNorm over the last dim and GroupNorm over groups of channels, `(x − mean) / sqrt(var + eps) · weight + bias`,
//! with the mean and the variance taken in two passes as torch does. On CPU each is one fused op, rows or groups
//! across threads; the same ops as candle tensors elsewhere (eight passes over the activations on one thread: a
//! measurable share of WavTokenizer's backbone, and the pos_net's GroupNorms 5 % of its whole decode).

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
        let out = crate::mem::collect_par(x.len(), dim, |row| {
            let x = &x[row * dim..(row + 1) * dim];
            let mean = x.iter().sum::<f32>() / dim as f32;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
            let std = (var + eps).sqrt();
            x.iter().zip(w).zip(b).map(move |((&v, &w), &b)| (v - mean) / std * w + b)
        });
        Ok((out, l1.shape().clone()))
    }
}

/// A GroupNorm layer over (B, C, T): tensors `weight`, `bias` `[C]`; each of `groups` groups of C / groups channels
/// normalised over its channels and all time steps.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// A GroupNorm over `channels` in `groups` groups (which must divide them), epsilon `eps`.
    pub fn new(channels: usize, groups: usize, eps: f64, vb: Weights) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("group norm: {groups} groups do not divide {channels} channels");
        }
        Ok(Self { weight: vb.get(channels, "weight")?, bias: vb.get(channels, "bias")?, groups, eps })
    }

    /// (B, C, T) → (B, C, T).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let op = GroupNormOp { groups: self.groups, eps: self.eps as f32, moments: None };
            return x.contiguous()?.apply_op3_no_bwd(&self.weight, &self.bias, &F32Op3(op));
        }
        use candle_core::Module;
        let channels = self.weight.dim(0)?;
        candle_nn::GroupNorm::new(self.weight.clone(), self.bias.clone(), channels, self.groups, self.eps)?.forward(x)
    }

    /// Adds the groups' values in `x` (1, C, T), f32 on the CPU, to `moments`: a sequence too long to hold
    /// is normalised piece by piece, with the statistics of all its pieces ([`GroupNorm::forward_with`]).
    pub fn add_moments(&self, x: &Tensor, moments: &mut GroupMoments) -> Result<()> {
        let (_, c, _) = x.dims3()?;
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let values = super::cpu_f32(&storage, layout, "group norm input")?;
        if moments.groups.is_empty() {
            moments.groups = vec![Moments::default(); self.groups];
        }
        if x.dim(0)? != 1 || c % self.groups != 0 || moments.groups.len() != self.groups {
            candle_core::bail!("group norm moments: {:?} for {} groups", x.dims(), self.groups);
        }
        if values.is_empty() {
            return Ok(());
        }
        let parts: Vec<Moments> = values.par_chunks(values.len() / self.groups).map(Moments::of).collect();
        moments.groups.iter_mut().zip(parts).for_each(|(m, part)| m.merge(part));
        Ok(())
    }

    /// [`GroupNorm::forward`] of a piece (1, C, T), f32 on the CPU, of a sequence whose groups' statistics are
    /// `moments` (of every piece: [`GroupNorm::add_moments`]).
    pub fn forward_with(&self, x: &Tensor, moments: &GroupMoments) -> Result<Tensor> {
        let op = GroupNormOp { groups: self.groups, eps: self.eps as f32, moments: Some(moments.groups.clone()) };
        x.contiguous()?.apply_op3_no_bwd(&self.weight, &self.bias, &F32Op3(op))
    }
}

/// Count, mean and summed squared deviation of a group's values, in f64 (a long clip's group holds hundreds of
/// millions of values); pieces merge exactly as Chan et al.'s parallel variance.
#[derive(Debug, Clone, Copy, Default)]
struct Moments {
    count: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    /// Two passes, as torch: the mean, then the squared deviations from it.
    fn of(x: &[f32]) -> Self {
        let count = x.len() as f64;
        if x.is_empty() {
            return Self::default();
        }
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / count;
        let m2 = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
        Self { count, mean, m2 }
    }

    fn merge(&mut self, other: Self) {
        let count = self.count + other.count;
        if count == 0.0 {
            return;
        }
        let delta = other.mean - self.mean;
        self.mean += delta * other.count / count;
        self.m2 += other.m2 + delta * delta * self.count * other.count / count;
        self.count = count;
    }

    /// Mean and standard deviation (with `eps`) in f32, as the normalisation uses them.
    fn mean_std(&self, eps: f32) -> (f32, f32) {
        let var = if self.count > 0.0 { self.m2 / self.count } else { 0.0 };
        (self.mean as f32, (var as f32 + eps).sqrt())
    }
}

/// The statistics of each group of a GroupNorm's input, gathered over the pieces of a sequence.
#[derive(Debug, Clone, Default)]
pub struct GroupMoments {
    groups: Vec<Moments>,
}

struct GroupNormOp {
    groups: usize,
    eps: f32,
    /// Each group's statistics, given (of a whole sequence, for one of its pieces) instead of taken from the input.
    moments: Option<Vec<Moments>>,
}

impl F32Kernel3 for GroupNormOp {
    const NAME: &'static str = "codec-group-norm";
    const INPUTS: [&'static str; 3] = ["group norm input", "group norm weight", "group norm bias"];

    fn run(&self, [(x, l1), (w, _), (b, _)]: [(&[f32], &Layout); 3]) -> Result<(Vec<f32>, Shape)> {
        let (_, c, t) = l1.shape().dims3()?;
        if w.len() != c || b.len() != c || !c.is_multiple_of(self.groups) {
            candle_core::bail!(
                "group norm: {c} channels, {} groups, weight {}, bias {}",
                self.groups,
                w.len(),
                b.len()
            );
        }
        let per_group = c / self.groups;
        let n = per_group * t;
        let mut out = crate::mem::zeros_par(x.len());
        if n == 0 {
            return Ok((out, l1.shape().clone()));
        }
        if self.moments.as_ref().is_some_and(|m| x.len() != n * m.len()) {
            candle_core::bail!("group norm: {} values of one item for {} groups", x.len(), self.groups);
        }
        // Groups are contiguous (channels × time) blocks of (B, C, T): one task each.
        out.par_chunks_mut(n).zip(x.par_chunks(n)).enumerate().for_each(|(i, (y, x))| {
            let first = i % self.groups * per_group;
            let (mean, std) = match &self.moments {
                Some(given) => given[i].mean_std(self.eps),
                None => Moments::of(x).mean_std(self.eps),
            };
            for (ch, (y, x)) in y.chunks_mut(t).zip(x.chunks(t)).enumerate() {
                let (w, b) = (w[first + ch], b[first + ch]);
                super::wide_simd(
                    #[inline(always)]
                    || {
                        for (y, &v) in y.iter_mut().zip(x) {
                            *y = (v - mean) / std * w + b;
                        }
                    },
                )
            }
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

    #[test]
    fn group_norm_matches_candle() {
        let dev = Device::Cpu;
        let (c, groups) = (96, 32);
        let x = (Tensor::randn(0f32, 2.0, (2, c, 301), &dev).unwrap() + 5.0).unwrap();
        let w = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let vb = candle_nn::VarBuilder::from_tensors(
            [("weight".to_string(), w.clone()), ("bias".to_string(), b.clone())].into(),
            DType::F32,
            &dev,
        );
        let got = GroupNorm::new(c, groups, 1e-6, vb.into()).unwrap().forward(&x).unwrap();
        let want =
            candle_core::Module::forward(&candle_nn::GroupNorm::new(w, b, c, groups, 1e-6).unwrap(), &x).unwrap();
        let diff = super::super::test_util::max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "max diff {diff}");
    }
}
