//! Pre-norm transformer with rotate-half RoPE, LayerScale and a causal sliding-window mask (Mimi's encoder and
//! decoder transformers). Works on the conv layout (B, C, T) at its boundary.
//!
//! Tensor names per layer `layers.{i}.`: `input_layernorm.{weight,bias}`, `self_attn.{q,k,v,o}_proj.weight`,
//! `self_attn_layer_scale.scale`, `post_attention_layernorm.*`, `mlp.fc1.weight`, `mlp.fc2.weight`,
//! `mlp_layer_scale.scale`. q/k rows are in rotate-half order (the converter permutes interleaved checkpoints).

use super::Weights;
use candle_core::{DType, Device, Module, Result, Tensor, D};

use super::activation::gelu_erf;
use super::linear::Linear;
use super::norm::LayerNorm;

#[derive(Debug, Clone)]
pub struct TransformerConfig {
    pub d_model: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub num_layers: usize,
    pub ffn_dim: usize,
    /// A query sees itself and the `context - 1` steps before it.
    pub context: usize,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

fn linear(c_in: usize, c_out: usize, vb: Weights) -> Result<Linear> {
    Linear::new(vb.matrix((c_out, c_in), "weight")?, None)
}

/// Rotation tables for positions `0..len`: (len, head_dim / 2) each.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(len: usize, head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half).map(|i| (theta.powf(-2.0 * i as f64 / head_dim as f64)) as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let pos = Tensor::arange(0u32, len as u32, device)?.to_dtype(DType::F32)?.reshape((len, 1))?;
        let angles = pos.broadcast_mul(&inv_freq)?;
        Ok(Self { cos: angles.cos()?, sin: angles.sin()? })
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    context: usize,
}

/// Queries are processed in blocks of this many steps so memory stays O(T · context), not O(T²).
const QUERY_BLOCK: usize = 256;

impl Attention {
    fn new(cfg: &TransformerConfig, vb: Weights) -> Result<Self> {
        let inner = cfg.num_heads * cfg.head_dim;
        Ok(Self {
            q_proj: linear(cfg.d_model, inner, vb.pp("q_proj"))?,
            k_proj: linear(cfg.d_model, inner, vb.pp("k_proj"))?,
            v_proj: linear(cfg.d_model, inner, vb.pp("v_proj"))?,
            o_proj: linear(inner, cfg.d_model, vb.pp("o_proj"))?,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim,
            context: cfg.context,
        })
    }

    fn heads(&self, x: Tensor, b: usize, t: usize) -> Result<Tensor> {
        x.reshape((b, t, self.num_heads, self.head_dim))?.transpose(1, 2)?.contiguous()
    }

    /// Additive mask for queries `q0..q0+nq` over keys `k0..k0+nk`: 0 where `0 <= q - k < context`, else -inf.
    fn mask(&self, q0: usize, nq: usize, k0: usize, nk: usize, device: &Device) -> Result<Tensor> {
        let mask: Vec<f32> = (q0..q0 + nq)
            .flat_map(|q| (k0..k0 + nk).map(move |k| (q, k)))
            .map(|(q, k)| if k <= q && q - k < self.context { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        Tensor::from_vec(mask, (nq, nk), device)
    }

    fn forward(&self, x: &Tensor, rope: &Rope) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let q = self.heads(self.q_proj.forward(x)?, b, t)?;
        let k = self.heads(self.k_proj.forward(x)?, b, t)?;
        let v = self.heads(self.v_proj.forward(x)?, b, t)?;
        let q = candle_nn::rotary_emb::rope(&q, &rope.cos, &rope.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &rope.cos, &rope.sin)?;
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?;
        let mut blocks = Vec::with_capacity(t.div_ceil(QUERY_BLOCK));
        for q0 in (0..t).step_by(QUERY_BLOCK) {
            let nq = QUERY_BLOCK.min(t - q0);
            let k0 = (q0 + 1).saturating_sub(self.context);
            let nk = q0 + nq - k0;
            let qb = q.narrow(2, q0, nq)?;
            let kb = k.narrow(2, k0, nk)?;
            let vb = v.narrow(2, k0, nk)?;
            let scores = qb.matmul(&kb.t()?)?.broadcast_add(&self.mask(q0, nq, k0, nk, x.device())?)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            blocks.push(probs.matmul(&vb.contiguous()?)?);
        }
        let y = Tensor::cat(&blocks, 2)?.transpose(1, 2)?.reshape((b, t, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&y)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: LayerNorm,
    self_attn: Attention,
    attn_scale: Tensor,
    post_attention_layernorm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    mlp_scale: Tensor,
}

impl Layer {
    fn new(cfg: &TransformerConfig, vb: Weights) -> Result<Self> {
        Ok(Self {
            input_layernorm: LayerNorm::new(cfg.d_model, cfg.norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            attn_scale: vb.get(cfg.d_model, "self_attn_layer_scale.scale")?,
            post_attention_layernorm: LayerNorm::new(cfg.d_model, cfg.norm_eps, vb.pp("post_attention_layernorm"))?,
            fc1: linear(cfg.d_model, cfg.ffn_dim, vb.pp("mlp.fc1"))?,
            fc2: linear(cfg.ffn_dim, cfg.d_model, vb.pp("mlp.fc2"))?,
            mlp_scale: vb.get(cfg.d_model, "mlp_layer_scale.scale")?,
        })
    }

    fn forward(&self, x: &Tensor, rope: &Rope) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.input_layernorm.forward(x)?, rope)?;
        let x = (x + h.broadcast_mul(&self.attn_scale)?)?;
        let h = gelu_erf(&self.fc1.forward(&self.post_attention_layernorm.forward(&x)?)?)?;
        let h = self.fc2.forward(&h)?;
        x + h.broadcast_mul(&self.mlp_scale)?
    }
}

#[derive(Debug, Clone)]
pub struct Transformer {
    layers: Vec<Layer>,
    cfg: TransformerConfig,
}

impl Transformer {
    pub fn new(cfg: &TransformerConfig, vb: Weights) -> Result<Self> {
        let layers =
            (0..cfg.num_layers).map(|i| Layer::new(cfg, vb.pp(format!("layers.{i}")))).collect::<Result<_>>()?;
        Ok(Self { layers, cfg: cfg.clone() })
    }

    /// (B, C, T) → (B, C, T).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(D::Minus1)?;
        let rope = Rope::new(t, self.cfg.head_dim, self.cfg.rope_theta, x.device())?;
        let mut h = x.transpose(1, 2)?.contiguous()?;
        for layer in &self.layers {
            h = layer.forward(&h, &rope)?;
        }
        h.transpose(1, 2)?.contiguous()
    }
}
