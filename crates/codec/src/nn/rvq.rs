//! Residual vector quantisation: Euclidean codebooks (Mimi, EnCodec, WavTokenizer) and DAC's factorised
//! cosine-similarity codebooks.
//!
//! Euclidean tensor names: `input_proj.weight` / `output_proj.weight` as `[out, in]` matrices (1x1 convs squeezed by the
//! converter), `layers.{i}.codebook.embed` `[bins, dim]` (already `embed_sum / cluster_usage` where the source kept
//! running sums).

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::linear::Linear;
use super::weight::Matrix;
use super::{dot, f32_slice, get_or_try_init, sum_all, wide_simd, Weights};

/// One codebook: nearest entry by Euclidean distance.
#[derive(Debug, Clone)]
pub struct EuclideanCodebook {
    /// The entries (bins, dim): in place in a mapped model file, or a tensor.
    embed: Matrix,
    /// The entries as a linear layer: `x · embedᵀ` gives every dot product at once.
    dots: Linear,
    /// ‖e‖² per entry, (1, bins): a cache of `embed`, not a weight transform.
    embed_sq: OnceLock<Tensor>,
}

impl EuclideanCodebook {
    /// A codebook of `bins` entries of width `dim`, read from `embed`.
    pub fn new(bins: usize, dim: usize, vb: Weights) -> Result<Self> {
        let embed = vb.matrix((bins, dim), "embed")?;
        Ok(Self { dots: Linear::exact(embed.clone(), None)?, embed, embed_sq: OnceLock::new() })
    }

    /// ‖e‖² per entry, computed on first use: codebooks beyond the `n_q` a run asks for are never read.
    fn embed_sq(&self) -> Result<&Tensor> {
        get_or_try_init(&self.embed_sq, || match &self.embed {
            Matrix::Tensor(t) => t.sqr()?.sum_keepdim(1)?.t()?.contiguous(),
            Matrix::Q8_0(..) => self.embed.clone().into_tensor()?.sqr()?.sum_keepdim(1)?.t()?.contiguous(),
            Matrix::Mapped(data, shape) => {
                let (bins, dim) = shape.dims2()?;
                let sq = wide_simd(|| data.as_slice().chunks_exact(dim.max(1)).map(|e| dot(e, e)).collect());
                Tensor::from_vec(sq, (1, bins), &candle_core::Device::Cpu)
            }
        })
    }

    /// (N, dim) → (N,) u32 indices of the nearest entries.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        // argmin ‖x − e‖² = argmin (‖e‖² − 2 x·e): ‖x‖² is the same for every entry.
        let dots = self.dots.forward(x)?;
        if dots.device().is_cpu() && dots.dtype() == DType::F32 {
            return dots.contiguous()?.apply_op2_no_bwd(self.embed_sq()?, &NearestEntry);
        }
        let dist = self.embed_sq()?.broadcast_sub(&(dots * 2.0)?)?;
        dist.argmin(D::Minus1)
    }

    /// (N,) indices → (N, dim) vectors.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        self.embed.rows(codes)
    }
}

/// Per row of dot products (N, bins) and the entries' ‖e‖² (1, bins): the index of the least `‖e‖² − 2·dot`, the
/// first of equal ones — what candle's `broadcast_sub` then `argmin` give, bit for bit, in one pass with rows across
/// threads. Those were three single-threaded passes per codebook, and in a stream (one row per push) three ops'
/// overhead for each of 32 codebooks.
struct NearestEntry;

impl CustomOp2 for NearestEntry {
    fn name(&self) -> &'static str {
        "codec-nearest-entry"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dots, sq) = (f32_slice(s1, l1, "codebook dot products")?, f32_slice(s2, l2, "codebook norms")?);
        let (n, bins) = l1.shape().dims2()?;
        if bins == 0 || sq.len() != bins {
            candle_core::bail!("nearest entry: {bins} dot products per row for {} entries", sq.len());
        }
        let mut out = vec![0u32; n];
        out.par_iter_mut().zip(dots.par_chunks(bins)).for_each(|(index, row)| {
            let (mut best, mut least) = (0, sq[0] - row[0] * 2.0);
            for (j, (&e, &d)) in sq.iter().zip(row).enumerate() {
                let dist = e - d * 2.0;
                // As candle's argmin: replaced only by a strictly smaller value.
                if least > dist {
                    (best, least) = (j, dist);
                }
            }
            *index = best as u32;
        });
        Ok((CpuStorage::U32(out), Shape::from(n)))
    }
}

/// Σ over codebooks of their entries for codes (B, n, T): codebook `i` (the `i`-th of `decoders`, each mapping
/// (B·T,) indices to (B·T, dim) vectors) reads row `i` of the codes; → (B·T, dim).
fn sum_of_entries<F: Fn(&Tensor) -> Result<Tensor>>(
    codes: &Tensor,
    decoders: impl Iterator<Item = F>,
) -> Result<Tensor> {
    let n = codes.dim(1)?;
    sum_all(decoders.take(n).enumerate().map(|(i, decode)| decode(&codes.narrow(1, i, 1)?.flatten_all()?)))
}

/// Projections around a stack of codebooks, each quantising what the previous ones left.
#[derive(Debug, Clone)]
pub struct ResidualVq {
    input_proj: Option<Tensor>,
    output_proj: Option<Tensor>,
    layers: Vec<EuclideanCodebook>,
}

impl ResidualVq {
    /// `dim`: the outside (latent) dimension; `codebook_dim`: inside the codebooks; `projected`: whether 1x1
    /// projections map between them.
    pub fn new(n_q: usize, dim: usize, codebook_dim: usize, bins: usize, projected: bool, vb: Weights) -> Result<Self> {
        let (input_proj, output_proj) = if projected {
            (
                Some(vb.get((codebook_dim, dim), "input_proj.weight")?),
                Some(vb.get((dim, codebook_dim), "output_proj.weight")?),
            )
        } else {
            (None, None)
        };
        let layers = (0..n_q)
            .map(|i| EuclideanCodebook::new(bins, codebook_dim, vb.pp(format!("layers.{i}.codebook"))))
            .collect::<Result<_>>()?;
        Ok(Self { input_proj, output_proj, layers })
    }

    /// Number of codebooks.
    pub fn n_q(&self) -> usize {
        self.layers.len()
    }

    /// Latent (B, dim, T) → codes (B, n_q, T) u32, using the first `n_q` codebooks.
    pub fn encode(&self, x: &Tensor, n_q: usize) -> Result<Tensor> {
        let (b, _, t) = x.dims3()?;
        let x = x.transpose(1, 2)?.flatten(0, 1)?; // (B*T, dim)
        let mut residual = match &self.input_proj {
            Some(w) => x.matmul(&w.t()?)?,
            None => x.contiguous()?,
        };
        let mut codes = Vec::with_capacity(n_q);
        for (i, layer) in self.layers.iter().take(n_q).enumerate() {
            let idx = layer.encode(&residual)?;
            if i + 1 < n_q {
                residual = (residual - layer.decode(&idx)?)?;
            }
            codes.push(idx.reshape((b, 1, t))?);
        }
        Tensor::cat(&codes, 1)
    }

    /// Codes (B, n, T), n ≤ n_q → latent (B, dim, T).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, _, t) = codes.dims3()?;
        let sum = sum_of_entries(codes, self.layers.iter().map(|l| move |idx: &Tensor| l.decode(idx)))?;
        let y = match &self.output_proj {
            Some(w) => sum.matmul(&w.t()?)?,
            None => sum,
        };
        y.reshape((b, t, ()))?.transpose(1, 2)?.contiguous()
    }
}

/// One layer of DAC's factorised quantiser: project the latent to a few dims, pick the entry of highest cosine
/// similarity (both sides L2-normalised), project the raw entry back. Tensor names: `in_proj.{weight,bias}`
/// `[dim, latent]`, `out_proj.{weight,bias}` `[latent, dim]`, `codebook.weight` `[bins, dim]` and
/// `codebook.normalized` (its rows L2-normalised by the converter).
#[derive(Debug, Clone)]
struct FactorizedCodebook {
    in_w: Tensor,
    in_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    codebook: Tensor,
    normalized: Tensor,
    /// ‖normalized row‖², (1, bins): a cache, kept because the reference adds it (≈ 1, not exactly).
    normalized_sq: Tensor,
}

impl FactorizedCodebook {
    fn new(latent: usize, dim: usize, bins: usize, vb: Weights) -> Result<Self> {
        let normalized = vb.get((bins, dim), "codebook.normalized")?;
        let normalized_sq = normalized.sqr()?.sum_keepdim(1)?.t()?.contiguous()?;
        Ok(Self {
            in_w: vb.get((dim, latent), "in_proj.weight")?,
            in_b: vb.get(dim, "in_proj.bias")?,
            out_w: vb.get((latent, dim), "out_proj.weight")?,
            out_b: vb.get(latent, "out_proj.bias")?,
            codebook: vb.get((bins, dim), "codebook.weight")?,
            normalized,
            normalized_sq,
        })
    }

    fn project_out(&self, q: &Tensor) -> Result<Tensor> {
        q.matmul(&self.out_w.t()?)?.broadcast_add(&self.out_b)
    }

    /// Residual (N, latent) → (indices (N,), the quantised residual (N, latent)).
    fn encode(&self, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        let z_e = residual.matmul(&self.in_w.t()?)?.broadcast_add(&self.in_b)?;
        // F.normalize: x / max(‖x‖, 1e-12); then the reference's squared distance, in its order of operations.
        let enc = z_e.broadcast_div(&z_e.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?)?;
        let dots = enc.matmul(&self.normalized.t()?)?;
        let dist = enc.sqr()?.sum_keepdim(1)?.broadcast_sub(&(dots * 2.0)?)?.broadcast_add(&self.normalized_sq)?;
        let idx = dist.argmin(D::Minus1)?;
        // The reference's straight-through `z_e + (z_q − z_e)`: equal to z_q up to rounding, which feeds the residual.
        let z_q = (&z_e + (self.codebook.index_select(&idx, 0)? - &z_e)?)?;
        Ok((idx, self.project_out(&z_q)?))
    }

    fn decode(&self, idx: &Tensor) -> Result<Tensor> {
        self.project_out(&self.codebook.index_select(idx, 0)?)
    }
}

/// DAC's residual stack of factorised codebooks.
#[derive(Debug, Clone)]
pub struct FactorizedRvq {
    layers: Vec<FactorizedCodebook>,
}

impl FactorizedRvq {
    /// `n_q` layers (tensors under `quantizers.{i}`) of `bins` entries of width `dim`, quantising a latent of
    /// `latent` channels.
    pub fn new(n_q: usize, latent: usize, dim: usize, bins: usize, vb: Weights) -> Result<Self> {
        let layers = (0..n_q)
            .map(|i| FactorizedCodebook::new(latent, dim, bins, vb.pp(format!("quantizers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Latent (B, latent, T) → (codes (B, n_q, T), the sum of the quantised residuals (B, latent, T)).
    pub fn encode(&self, x: &Tensor, n_q: usize) -> Result<(Tensor, Tensor)> {
        let (b, _, t) = x.dims3()?;
        let mut residual = x.transpose(1, 2)?.flatten(0, 1)?.contiguous()?;
        let mut codes = Vec::with_capacity(n_q);
        let mut quantized = Vec::with_capacity(n_q);
        for layer in self.layers.iter().take(n_q) {
            let (idx, q) = layer.encode(&residual)?;
            residual = (residual - &q)?;
            quantized.push(Ok(q));
            codes.push(idx.reshape((b, 1, t))?);
        }
        let sum = sum_all(quantized)?;
        Ok((Tensor::cat(&codes, 1)?, sum.reshape((b, t, ()))?.transpose(1, 2)?.contiguous()?))
    }

    /// Codes (B, n, T) → latent (B, latent, T).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, _, t) = codes.dims3()?;
        let sum = sum_of_entries(codes, self.layers.iter().map(|l| move |idx: &Tensor| l.decode(idx)))?;
        sum.reshape((b, t, ()))?.transpose(1, 2)?.contiguous()
    }

    /// Number of codebooks.
    pub fn n_q(&self) -> usize {
        self.layers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nearest_entry_is_candles_argmin() {
        let dev = Device::Cpu;
        // Rounded values, so many distances tie exactly: the first of equal minima must win, as in candle.
        let dots = (Tensor::randn(0f32, 4.0, (37, 300), &dev).unwrap().round().unwrap() * 0.5).unwrap();
        let sq = Tensor::randn(0f32, 4.0, (1, 300), &dev).unwrap().round().unwrap();
        let got = dots.apply_op2_no_bwd(&sq, &NearestEntry).unwrap().to_vec1::<u32>().unwrap();
        let want = sq.broadcast_sub(&(&dots * 2.0).unwrap()).unwrap().argmin(D::Minus1).unwrap();
        assert_eq!(got, want.to_vec1::<u32>().unwrap());
        assert!(got.iter().any(|&i| i > 0), "a degenerate draw");
    }
}
