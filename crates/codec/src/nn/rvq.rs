//! Residual vector quantisation with Euclidean codebooks (Mimi, EnCodec, WavTokenizer).
//!
//! Tensor names: `input_proj.weight` / `output_proj.weight` as `[out, in]` matrices (1x1 convs squeezed by the
//! converter), `layers.{i}.codebook.embed` `[bins, dim]` (already `embed_sum / cluster_usage` where the source kept
//! running sums).

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

/// One codebook: nearest entry by Euclidean distance.
#[derive(Debug, Clone)]
pub struct EuclideanCodebook {
    embed: Tensor,
    /// ‖e‖² per entry, (1, bins): a cache of `embed`, not a weight transform.
    embed_sq: Tensor,
}

impl EuclideanCodebook {
    pub fn new(bins: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        let embed = vb.get((bins, dim), "embed")?;
        let embed_sq = embed.sqr()?.sum_keepdim(1)?.t()?.contiguous()?;
        Ok(Self { embed, embed_sq })
    }

    /// (N, dim) → (N,) u32 indices of the nearest entries.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        // argmin ‖x − e‖² = argmin (‖e‖² − 2 x·e): ‖x‖² is the same for every entry.
        let dots = x.matmul(&self.embed.t()?)?;
        let dist = self.embed_sq.broadcast_sub(&(dots * 2.0)?)?;
        dist.argmin(D::Minus1)
    }

    /// (N,) indices → (N, dim) vectors.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        self.embed.index_select(codes, 0)
    }
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
    pub fn new(
        n_q: usize,
        dim: usize,
        codebook_dim: usize,
        bins: usize,
        projected: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
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
        let (b, n, t) = codes.dims3()?;
        let mut sum: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().take(n).enumerate() {
            let idx = codes.narrow(1, i, 1)?.flatten_all()?;
            let q = layer.decode(&idx)?;
            sum = Some(match sum {
                Some(s) => (s + q)?,
                None => q,
            });
        }
        let sum = sum.ok_or_else(|| candle_core::Error::Msg("decode needs at least one codebook".into()))?;
        let y = match &self.output_proj {
            Some(w) => sum.matmul(&w.t()?)?,
            None => sum,
        };
        y.reshape((b, t, ()))?.transpose(1, 2)?.contiguous()
    }
}
