//! Vocos decoder (WavTokenizer's variant): a ConvNeXt backbone with a `pos_net` (ResNet blocks with GroupNorm and one
//! single-head attention block over the whole sequence) and AdaLayerNorm, then an ISTFT head that predicts log-magnitude
//! and phase and turns them into audio: on the CPU by FFT ([`InverseStft`]), elsewhere as a matmul with the DFT basis.
//!
//! Tensor names (after `backbone.` / `head.`): `embed.*`, `pos_net.{0,1,3,4}.{norm1,conv1,norm2,conv2}.*`,
//! `pos_net.2.{norm,q,k,v,proj_out}.*`, `pos_net.5.*` (GroupNorm), `norm.{scale,shift}.weight` (AdaLayerNorm rows),
//! `convnext.{i}.{dwconv,norm.scale,norm.shift,pwconv1,pwconv2,gamma}`, `final_layer_norm.*`; head `out.*`,
//! `istft.basis_real` / `istft.basis_imag` (inverse real DFT × window, made by the converter) and `istft.window_sq`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor, D};
use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner};

use super::weight::Matrix;
use super::{cpu_f32, f32_slice, f32_vec, Weights};

use super::activation::{silu, Activation};
use super::conv::{Conv1d, ConvConfig};
use super::linear::Linear;
use super::norm::{layer_norm, GroupMoments, GroupNorm, LayerNorm};
use super::sum_all;
use crate::mem::SpillRows;

/// Vocos hyper-parameters (see `WavTokenizerConfig` for how WavTokenizer's metadata fills them).
#[derive(Debug, Clone)]
pub struct VocosConfig {
    /// Channels of the latent the backbone takes.
    pub input_channels: usize,
    /// Channels of the backbone.
    pub dim: usize,
    /// Hidden width of a ConvNeXt block's MLP.
    pub intermediate_dim: usize,
    /// ConvNeXt blocks.
    pub num_layers: usize,
    /// Conditioning rows of each AdaLayerNorm.
    pub adanorm_num_embeddings: usize,
    /// Which AdaLayerNorm row to use (WavTokenizer decodes with 0).
    pub bandwidth_id: usize,
    /// ISTFT frame length in samples (a multiple of `hop_length`, `n_fft - hop_length` even).
    pub n_fft: usize,
    /// ISTFT hop in samples: audio samples per frame.
    pub hop_length: usize,
}

const GROUPS: usize = 32;
const EPS: f64 = 1e-6;

fn group_norm(channels: usize, vb: Weights) -> Result<GroupNorm> {
    GroupNorm::new(channels, GROUPS.min(channels), EPS, vb)
}

/// GroupNorm → swish → conv k3, twice, plus the input.
#[derive(Debug, Clone)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv1d,
    norm2: GroupNorm,
    conv2: Conv1d,
}

impl ResnetBlock {
    fn new(dim: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(dim, vb.pp("norm1"))?,
            conv1: Conv1d::new(dim, dim, ConvConfig::torch(3, 1).winograd(), vb.pp("conv1"))?,
            norm2: group_norm(dim, vb.pp("norm2"))?,
            conv2: Conv1d::new(dim, dim, ConvConfig::torch(3, 1).winograd(), vb.pp("conv2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&silu(&self.norm1.forward(x)?)?)?;
        self.conv2.forward_add(&silu(&self.norm2.forward(&h)?)?, x)
    }

    /// [`ResnetBlock::forward`] of the sequence in `x` (`frames` rows; `moments` its norm1 statistics), in place,
    /// `piece` frames at a time, through `h` for the inner activation → the output's statistics for `next`.
    fn forward_spilled(
        &self,
        x: &SpillRows,
        h: &SpillRows,
        moments: &GroupMoments,
        next: &GroupNorm,
        frames: usize,
        piece: usize,
    ) -> Result<GroupMoments> {
        let dim = x.width();
        let mut inner = GroupMoments::default();
        for (own, with) in pieces(frames, piece, reach(&self.conv1)) {
            let xw = channels_first(x.read(with.clone())?, dim)?;
            let y = own_part(&self.conv1.forward(&silu(&self.norm1.forward_with(&xw, moments)?)?)?, &own, &with)?;
            self.norm2.add_moments(&y, &mut inner)?;
            h.write(own.start, &time_major(&y)?)?;
        }
        // x's rows are read only where they are written (the residual): overwriting them in place is safe.
        let mut out = GroupMoments::default();
        for (own, with) in pieces(frames, piece, reach(&self.conv2)) {
            let hw = channels_first(h.read(with.clone())?, dim)?;
            let y = own_part(&self.conv2.forward(&silu(&self.norm2.forward_with(&hw, &inner)?)?)?, &own, &with)?;
            let y = (y + channels_first(x.read(own.clone())?, dim)?)?;
            next.add_moments(&y, &mut out)?;
            x.write(own.start, &time_major(&y)?)?;
        }
        Ok(out)
    }
}

/// Attention scores held at once (16 MiB of f32): clips up to 2048 frames (27 s at 75 Hz) are one block.
const SCORES_PER_BLOCK: usize = 1 << 22;

/// Single-head self-attention over the whole sequence, 1x1 conv projections, plus the input.
#[derive(Debug, Clone)]
struct AttnBlock {
    norm: GroupNorm,
    q: Conv1d,
    k: Conv1d,
    v: Conv1d,
    proj_out: Conv1d,
}

impl AttnBlock {
    fn new(dim: usize, vb: Weights) -> Result<Self> {
        let pw = |name| Conv1d::new(dim, dim, ConvConfig::torch(1, 0), vb.pp(name));
        Ok(Self {
            norm: group_norm(dim, vb.pp("norm"))?,
            q: pw("q")?,
            k: pw("k")?,
            v: pw("v")?,
            proj_out: pw("proj_out")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_in_blocks(x, SCORES_PER_BLOCK)
    }

    /// Queries in blocks of as many rows as keep a block's scores under `scores_per_block`: memory O(T), not
    /// O(T²). Clips up to √`scores_per_block` frames run as one block.
    fn forward_in_blocks(&self, x: &Tensor, scores_per_block: usize) -> Result<Tensor> {
        let h = self.norm.forward(x)?;
        let (q, k, v) = (self.q.forward(&h)?, self.k.forward(&h)?, self.v.forward(&h)?); // (B, C, T) each
        let h = if h.device().is_cpu() && h.dtype() == candle_core::DType::F32 {
            attend_cpu(&q, &k, &v, scores_per_block)?
        } else {
            attend_with_tensor_ops(&q, &k, &v, scores_per_block)?
        };
        self.proj_out.forward_add(&h, x)
    }

    /// [`AttnBlock::forward`] of the sequence in `x` (`frames` rows; `moments` its norm's statistics), in place:
    /// keys and values of every frame into `k` and `v`, then blocks of queries against tiles of them
    /// ([`attend_spilled`]) → the output's statistics for `next`. `done(n)` after each block of n queries.
    #[allow(clippy::too_many_arguments)]
    fn forward_spilled(
        &self,
        x: &SpillRows,
        [k, v]: [&SpillRows; 2],
        moments: &GroupMoments,
        next: &GroupNorm,
        frames: usize,
        plan: SpillPlan,
        done: &mut dyn FnMut(usize),
    ) -> Result<GroupMoments> {
        let dim = x.width();
        let normed = |rows| self.norm.forward_with(&channels_first(x.read(rows)?, dim)?, moments);
        for (own, _) in pieces(frames, plan.piece, 0) {
            let h = normed(own.clone())?;
            k.write(own.start, &time_major(&self.k.forward(&h)?)?)?;
            v.write(own.start, &time_major(&self.v.forward(&h)?)?)?;
        }
        // Every frame's keys and values are made: the blocks may overwrite x's rows as they go.
        let mut out = GroupMoments::default();
        for (own, _) in pieces(frames, plan.queries, 0) {
            let q = self.q.forward(&normed(own.clone())?)?;
            let attended = attend_spilled(&q, k, v, frames, plan.keys)?;
            let y = self.proj_out.forward_add(&attended, &channels_first(x.read(own.clone())?, dim)?)?;
            next.add_moments(&y, &mut out)?;
            x.write(own.start, &time_major(&y)?)?;
            done(own.len());
        }
        Ok(out)
    }
}

/// Single-head attention of the queries `q` (1, C, n) over `frames` keys and values kept in `k` and `v` (rows of
/// C), `tile` keys at a time → (1, C, n): per tile the scores `qᵀk · C^−½`, each query's running maximum and sum
/// of `exp(score − max)` (earlier tiles' sums and outputs rescaled when the maximum grows), and `p · vᵀ` added to
/// its output; divided by the sums at the end. The same as [`attend_cpu`] up to rounding, in O(n · tile) memory.
fn attend_spilled(q: &Tensor, k: &SpillRows, v: &SpillRows, frames: usize, tile: usize) -> Result<Tensor> {
    use super::gemm::{gemm, Epilogue, Output, Strided};
    let (_, c, n) = q.dims3()?;
    let q = f32_vec(q)?;
    let tile = tile.clamp(1, frames.max(1));
    let scale = vec![(c as f64).powf(-0.5) as f32; tile];
    let epi = Epilogue { col_scale: Some(&scale), ..Default::default() };
    // Query j is column j of q: qᵀ's row, read down the channels.
    let queries = Strided::new(&q, (n, c), 1, n).expect("sized");
    let (mut out, mut added) = (vec![0f32; n * c], vec![0f32; n * c]);
    let mut max_sum = vec![(f32::NEG_INFINITY, 0f32); n];
    // Buffers of one tile, reused by every tile.
    let (mut scores, mut keys, mut values, mut rescale) = (vec![0f32; n * tile], vec![], vec![], vec![]);
    for from in (0..frames).step_by(tile) {
        let t = tile.min(frames - from);
        k.read_into(from..from + t, &mut keys)?;
        v.read_into(from..from + t, &mut values)?;
        let scores = &mut scores[..n * t];
        let keys = Strided::transposed(&keys, t, c).expect("sized");
        gemm(n, t, c, &queries, &keys, &mut Output::row_major(scores, n, t).expect("sized"), &epi);
        scores
            .par_chunks_mut(t)
            .zip(max_sum.par_iter_mut())
            .map(|(row, (max, sum))| {
                let (new_max, tile_sum) = exp_below_max(row, *max);
                let rescale = (*max - new_max).exp();
                (*max, *sum) = (new_max, *sum * rescale + tile_sum);
                rescale
            })
            .collect_into_vec(&mut rescale);
        let values = Strided::row_major(&values, t, c).expect("sized");
        let probabilities = Strided::row_major(scores, n, t).expect("sized");
        gemm(
            n,
            c,
            t,
            &probabilities,
            &values,
            &mut Output::row_major(&mut added, n, c).expect("sized"),
            &Epilogue::default(),
        );
        out.par_chunks_mut(c).zip(added.par_chunks(c)).zip(&rescale).for_each(|((o, a), &r)| {
            o.iter_mut().zip(a).for_each(|(o, a)| *o = *o * r + a);
        });
    }
    out.par_chunks_mut(c).zip(&max_sum).for_each(|(o, &(_, sum))| o.iter_mut().for_each(|o| *o /= sum));
    Tensor::from_vec(out, (1, n, c), &candle_core::Device::Cpu)?.transpose(1, 2)?.contiguous()
}

/// Single-head attention of q, k, v (B, C, T each) with candle's ops (other devices), queries in blocks as
/// [`attend_cpu`] takes them.
fn attend_with_tensor_ops(q: &Tensor, k: &Tensor, v: &Tensor, scores_per_block: usize) -> Result<Tensor> {
    let (_, c, t) = q.dims3()?;
    let q = q.transpose(1, 2)?.contiguous()?; // (B, T, C)
    let block = (scores_per_block / t.max(1)).clamp(1, t.max(1));
    let mut blocks = Vec::with_capacity(t.div_ceil(block));
    for q0 in (0..t).step_by(block) {
        let qb = q.narrow(1, q0, block.min(t - q0))?;
        let w = (qb.matmul(k)? * (c as f64).powf(-0.5))?; // (B, block, Tk)
        let w = candle_nn::ops::softmax_last_dim(&w)?;
        blocks.push(v.matmul(&w.transpose(1, 2)?.contiguous()?)?); // (B, C, block)
    }
    Tensor::cat(&blocks, 2)
}

/// Single-head attention of q, k, v (B, C, T each, channels first) on the CPU → (B, C, T): per block of queries
/// (as many as keep the block's scores under `scores_per_block`) the scores `qᵀk · C^−½` and, after each row's
/// softmax, `v · wᵀ` — two f32 products of our GEMM straight from the channels-first layouts (candle's matmuls
/// needed q and w transposed into copies first), the softmax in one vectorised pass per row.
fn attend_cpu(q: &Tensor, k: &Tensor, v: &Tensor, scores_per_block: usize) -> Result<Tensor> {
    use super::gemm::{gemm, Epilogue, Output, Strided};
    let (b, c, t) = q.dims3()?;
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let ((qs, ql), (ks, kl), (vs, vl)) = (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
    let (q, k, v) = (cpu_f32(&qs, ql, "queries")?, cpu_f32(&ks, kl, "keys")?, cpu_f32(&vs, vl, "values")?);
    let block = (scores_per_block / t.max(1)).clamp(1, t.max(1));
    // candle's `w * C^−½`: each score rounded, then scaled.
    let scale = vec![(c as f64).powf(-0.5) as f32; t];
    let mut out = crate::mem::zeros_par(b * c * t);
    let mut scores = Vec::new();
    let len = c * t;
    for i in 0..b {
        let (qi, ki, vi) = (&q[i * len..(i + 1) * len], &k[i * len..(i + 1) * len], &v[i * len..(i + 1) * len]);
        let y = &mut out[i * c * t..(i + 1) * c * t];
        let keys = Strided::row_major(ki, c, t).expect("sized");
        let values = Strided::row_major(vi, c, t).expect("sized");
        let epi = Epilogue { col_scale: Some(&scale), ..Default::default() };
        for q0 in (0..t).step_by(block) {
            let n = block.min(t - q0);
            scores.resize(n * t, 0.0);
            // Query j of the block is column q0 + j of q: qᵀ's row, read down the channels.
            let queries = Strided::new(&qi[q0..], (n, c), 1, t).expect("inside q");
            gemm(n, t, c, &queries, &keys, &mut Output::row_major(&mut scores, n, t).expect("sized"), &epi);
            scores.par_chunks_mut(t).for_each(|row| {
                let (_, sum) = exp_below_max(row, f32::NEG_INFINITY);
                row.iter_mut().for_each(|s| *s /= sum);
            });
            // y[:, q0 .. q0 + n] = v · wᵀ, w the block's (n × T) probabilities.
            let weights = Strided::transposed(&scores, n, t).expect("sized");
            let mut block_out = Output::new(&mut y[q0..], (c, n), t, 1).expect("inside y");
            gemm(c, n, t, &values, &weights, &mut block_out, &Epilogue::default());
        }
    }
    Tensor::from_vec(out, (b, c, t), &candle_core::Device::Cpu)
}

/// Each score of `row` → `exp(score − max)`, `max` the larger of the row's own maximum and `floor`; returns that
/// maximum and the sum of the new values. One vectorised pass.
fn exp_below_max(row: &mut [f32], floor: f32) -> (f32, f32) {
    use super::activation::exp_nonpositive;
    let max = row.iter().copied().fold(floor, f32::max);
    super::with_fma!(
        FMA,
        super::wide_simd(
            #[inline(always)]
            || row.iter_mut().for_each(|s| *s = exp_nonpositive::<FMA>(*s - max))
        )
    );
    (max, row.iter().sum())
}

/// LayerNorm without affine, then one learnt (scale, shift) row per condition.
#[derive(Debug, Clone)]
struct AdaLayerNorm {
    scale: Tensor,
    shift: Tensor,
}

impl AdaLayerNorm {
    fn new(cfg: &VocosConfig, vb: Weights) -> Result<Self> {
        let row = |name: &str| -> Result<Tensor> {
            vb.get((cfg.adanorm_num_embeddings, cfg.dim), &format!("{name}.weight"))?.get(cfg.bandwidth_id)
        };
        Ok(Self { scale: row("scale")?, shift: row("shift")? })
    }

    /// (B, T, C) → (B, T, C).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.scale, &self.shift, EPS)
    }
}

/// Depthwise conv k7 → AdaLayerNorm → Linear → GELU → Linear → γ, plus the input.
#[derive(Debug, Clone)]
struct ConvNextBlock {
    dwconv: Conv1d,
    norm: AdaLayerNorm,
    pwconv1: Linear,
    pwconv2: Linear,
    gamma: Tensor,
}

impl ConvNextBlock {
    fn new(cfg: &VocosConfig, vb: Weights) -> Result<Self> {
        let d = cfg.dim;
        Ok(Self {
            dwconv: Conv1d::new(d, d, ConvConfig::torch(7, 3).groups(d), vb.pp("dwconv"))?,
            norm: AdaLayerNorm::new(cfg, vb.pp("norm"))?,
            pwconv1: Linear::load(d, cfg.intermediate_dim, true, vb.pp("pwconv1"))?,
            pwconv2: Linear::load(cfg.intermediate_dim, d, true, vb.pp("pwconv2"))?,
            gamma: vb.get(d, "gamma")?,
        })
    }

    /// (B, T, C) → (B, T, C): channels last throughout, γ and the residual add inside pwconv2.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.dwconv.forward_channels_last(x)?;
        let h = self.pwconv1.forward_activated(&self.norm.forward(&h)?, Activation::GeluErf)?;
        self.pwconv2.forward_scale_add(&h, Some(&self.gamma), x)
    }
}

/// Latent (B, input_channels, F) → features (B, F, dim).
#[derive(Debug, Clone)]
pub struct Backbone {
    dim: usize,
    intermediate_dim: usize,
    embed: Conv1d,
    pos_resnets: [ResnetBlock; 4],
    pos_attn: AttnBlock,
    pos_norm: GroupNorm,
    norm: AdaLayerNorm,
    convnext: Vec<ConvNextBlock>,
    final_layer_norm: LayerNorm,
}

impl Backbone {
    /// The backbone from `embed.*`, `pos_net.*`, `norm.*`, `convnext.{i}.*` and `final_layer_norm.*` under `vb`.
    pub fn new(cfg: &VocosConfig, vb: Weights) -> Result<Self> {
        let d = cfg.dim;
        let pos = vb.pp("pos_net");
        Ok(Self {
            dim: d,
            intermediate_dim: cfg.intermediate_dim,
            embed: Conv1d::new(cfg.input_channels, d, ConvConfig::torch(7, 3), vb.pp("embed"))?,
            pos_resnets: [
                ResnetBlock::new(d, pos.pp("0"))?,
                ResnetBlock::new(d, pos.pp("1"))?,
                ResnetBlock::new(d, pos.pp("3"))?,
                ResnetBlock::new(d, pos.pp("4"))?,
            ],
            pos_attn: AttnBlock::new(d, pos.pp("2"))?,
            pos_norm: group_norm(d, pos.pp("5"))?,
            norm: AdaLayerNorm::new(cfg, vb.pp("norm"))?,
            convnext: (0..cfg.num_layers)
                .map(|i| ConvNextBlock::new(cfg, vb.pp(format!("convnext.{i}"))))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::new(d, EPS, vb.pp("final_layer_norm"))?,
        })
    }

    /// Latent (B, input_channels, F) → features (B, F, dim).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.embed.forward(x)?;
        let x = self.pos_resnets[0].forward(&x)?;
        let x = self.pos_resnets[1].forward(&x)?;
        let x = self.pos_attn.forward(&x)?;
        let x = self.pos_resnets[2].forward(&x)?;
        let x = self.pos_resnets[3].forward(&x)?;
        self.frame_layers(&self.pos_norm.forward(&x)?)
    }

    /// The layers after the pos_net, (B, dim, F) → features (B, F, dim): each output frame from the frames within
    /// [`Backbone::frame_layers_reach`] of it.
    fn frame_layers(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.norm.forward(&x.transpose(1, 2)?.contiguous()?)?;
        let x = self.convnext.iter().try_fold(x, |x, block| block.forward(&x))?;
        self.final_layer_norm.forward(&x)
    }

    /// How many frames on each side an output frame of [`Backbone::frame_layers`] depends on.
    fn frame_layers_reach(&self) -> usize {
        self.convnext.iter().map(|block| reach(&block.dwconv)).sum()
    }
}

/// Frames on each side an output frame of a centred conv (stride 1) reads.
fn reach(conv: &Conv1d) -> usize {
    (conv.span_and_stride().0 - 1) / 2
}

/// How [`decode_spilled`] cuts a sequence: frames per piece of the layers that look at a few frames around each
/// (convs, norms, the ConvNeXt blocks and the head), queries per block and keys per tile of the attention.
#[derive(Debug, Clone, Copy)]
pub struct SpillPlan {
    /// Frames per piece of the layers that see nearby frames only.
    pub piece: usize,
    /// Queries per block of the attention.
    pub queries: usize,
    /// Keys per tile of the attention.
    pub keys: usize,
}

impl SpillPlan {
    /// Pieces of `piece` frames; blocks of 4096 queries (the keys and values, read back from the temporary file for
    /// each block, then cost a few % of the attention's products: 1.7 GB a block for 1 h) against tiles of 1024 keys
    /// (16 MiB of scores).
    pub fn new(piece: usize) -> Self {
        Self { piece: piece.max(1), queries: 4096, keys: 1024 }
    }
}

/// Latent (1, input_channels, F), given a range of frames at a time by `latent`, → audio handed to `sink` in order
/// (F · hop samples): [`Backbone::forward`] then [`IstftHead::forward`] in memory bounded by `plan`, whatever F,
/// on the CPU, the same up to rounding. The pos_net spans the clip (its GroupNorms' statistics, its attention), so its
/// activations go to temporary files ([`crate::mem::SpillRows`], 3 KB per frame each, three files) and come back a
/// piece at a time: each GroupNorm's statistics are gathered over all pieces first, the attention runs on blocks of
/// queries against tiles of keys with a running softmax (never the F × F scores). The layers after the pos_net
/// and the head see only nearby frames: they run on pieces with that many frames more on each side.
/// `progress(done, F)` reports about the share of the work done, in frames.
pub fn decode_spilled(
    backbone: &Backbone,
    head: &IstftHead,
    frames: usize,
    latent: &dyn Fn(std::ops::Range<usize>) -> Result<Tensor>,
    plan: SpillPlan,
    sink: &mut dyn FnMut(&[f32]) -> Result<()>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let dim = backbone.dim;
    let mut work = SpillWork::new(backbone, head, frames);
    let (x, h, v) = (SpillRows::new(dim)?, SpillRows::new(dim)?, SpillRows::new(dim)?);
    let mut moments = GroupMoments::default();
    for (own, with) in pieces(frames, plan.piece, reach(&backbone.embed)) {
        let y = own_part(&backbone.embed.forward(&latent(with.clone())?)?, &own, &with)?;
        backbone.pos_resnets[0].norm1.add_moments(&y, &mut moments)?;
        x.write(own.start, &time_major(&y)?)?;
    }
    let [r0, r1, r2, r3] = &backbone.pos_resnets;
    moments = r0.forward_spilled(&x, &h, &moments, &r1.norm1, frames, plan.piece)?;
    moments = r1.forward_spilled(&x, &h, &moments, &backbone.pos_attn.norm, frames, plan.piece)?;
    work.done(frames * 4 * work.conv_per_frame, progress);
    moments = backbone.pos_attn.forward_spilled(&x, [&h, &v], &moments, &r2.norm1, frames, plan, &mut |n| {
        work.done(n * work.attention_per_frame, progress)
    })?;
    moments = r2.forward_spilled(&x, &h, &moments, &r3.norm1, frames, plan.piece)?;
    moments = r3.forward_spilled(&x, &h, &moments, &backbone.pos_norm, frames, plan.piece)?;
    work.done(frames * 4 * work.conv_per_frame, progress);
    let reach = backbone.frame_layers_reach() + head.n_fft / head.hop;
    for (own, with) in pieces(frames, plan.piece, reach) {
        let x = backbone.pos_norm.forward_with(&channels_first(x.read(with.clone())?, dim)?, &moments)?;
        let audio = head.forward(&backbone.frame_layers(&x)?)?;
        let audio = audio.narrow(2, (own.start - with.start) * head.hop, own.len() * head.hop)?;
        sink(&f32_vec(&audio)?)?;
        work.done(own.len() * work.frame_layers_per_frame, progress);
    }
    Ok(())
}

/// [`decode_spilled`]'s progress: the work of its stages, in multiply-adds, turned into frames.
struct SpillWork {
    frames: usize,
    total: f64,
    done: f64,
    conv_per_frame: usize,
    attention_per_frame: usize,
    frame_layers_per_frame: usize,
}

impl SpillWork {
    fn new(backbone: &Backbone, head: &IstftHead, frames: usize) -> Self {
        let (dim, intermediate) = (backbone.dim, backbone.intermediate_dim);
        let conv_per_frame = 3 * dim * dim;
        let attention_per_frame = 2 * frames * dim + 4 * dim * dim;
        let frame_layers_per_frame = backbone.convnext.len() * 2 * dim * intermediate + dim * (head.n_fft + 2);
        let per_frame = 8 * conv_per_frame + attention_per_frame + frame_layers_per_frame;
        let total = frames as f64 * per_frame as f64;
        Self { frames, total, done: 0.0, conv_per_frame, attention_per_frame, frame_layers_per_frame }
    }

    fn done(&mut self, work: usize, progress: &mut dyn FnMut(usize, usize)) {
        self.done += work as f64;
        progress(((self.done / self.total).min(1.0) * self.frames as f64) as usize, self.frames);
    }
}

/// The pieces of `frames` frames, `piece` long: each as (its own frames, those with `reach` more on each side
/// within the sequence).
fn pieces(
    frames: usize,
    piece: usize,
    reach: usize,
) -> impl Iterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>)> {
    let piece = piece.max(1);
    (0..frames).step_by(piece).map(move |from| {
        let to = (from + piece).min(frames);
        (from..to, from.saturating_sub(reach)..(to + reach).min(frames))
    })
}

/// Of `x` (1, C, frames `with`), the frames `own`.
fn own_part(x: &Tensor, own: &std::ops::Range<usize>, with: &std::ops::Range<usize>) -> Result<Tensor> {
    x.narrow(2, own.start - with.start, own.len())
}

/// Frames of `width` values each, one after another (a temporary file's rows) → (1, width, frames).
fn channels_first(rows: Vec<f32>, width: usize) -> Result<Tensor> {
    let n = rows.len() / width.max(1);
    Tensor::from_vec(rows, (1, n, width), &candle_core::Device::Cpu)?.transpose(1, 2)?.contiguous()
}

/// (1, C, frames) → the frames' values one frame after another.
fn time_major(x: &Tensor) -> Result<Vec<f32>> {
    f32_vec(&x.transpose(1, 2)?.contiguous()?)
}

/// Features (B, F, dim) → audio (B, 1, F · hop): log-magnitude and phase → inverse real DFT of each frame, times
/// the window → overlap-add of the `n_fft / hop` shifted frames → division by the summed squared window → "same" trim
/// of `(n_fft − hop) / 2` on each side. On the CPU the inverse DFT is an FFT ([`InverseStft`]); on other devices a
/// matmul with the converter's windowed DFT basis.
#[derive(Debug, Clone)]
pub struct IstftHead {
    out: Linear,
    basis_real: Linear,
    basis_imag: Linear,
    window_sq: Tensor,
    /// The whole ISTFT on the CPU, made from the weights when built.
    cpu: Option<Arc<InverseStft>>,
    n_fft: usize,
    hop: usize,
}

impl IstftHead {
    /// The head from `out.*` and the converter's `istft.*` tables under `vb`; an error unless `n_fft` is a multiple
    /// of the hop and `n_fft - hop` is even.
    pub fn new(cfg: &VocosConfig, vb: Weights) -> Result<Self> {
        let (n, hop) = (cfg.n_fft, cfg.hop_length);
        if hop == 0 || n < hop || n % hop != 0 || (n - hop) % 2 != 0 {
            candle_core::bail!("ISTFT head needs n_fft ({n}) a multiple of hop ({hop}) and an even n_fft - hop");
        }
        let bins = n / 2 + 1;
        let basis_real = vb.matrix((bins, n), "istft.basis_real")?;
        let window_sq = vb.get(n, "istft.window_sq")?;
        // On the CPU, unless this is the placeholder of a decoder that was not loaded (an encode-only model).
        let loaded = match &basis_real {
            Matrix::Tensor(t) => super::pack_at_build(t),
            Matrix::Mapped(..) | Matrix::Q8_0(..) => true,
        };
        let cpu = if loaded && vb.device().is_cpu() {
            // Row 0 of the real basis is the window over n (the DC term), as the converter writes it.
            let row = basis_real.rows(&Tensor::new(&[0u32], vb.device())?)?;
            let window = f32_vec(&(row * n as f64)?)?;
            Some(Arc::new(InverseStft::new(window, f32_vec(&window_sq)?, hop)))
        } else {
            None
        };
        Ok(Self {
            out: Linear::load(cfg.dim, n + 2, true, vb.pp("out"))?,
            basis_real: Linear::right_factor(basis_real, None)?,
            basis_imag: Linear::right_factor(vb.matrix((bins, n), "istft.basis_imag")?, None)?,
            window_sq,
            cpu,
            n_fft: n,
            hop,
        })
    }

    /// Log-magnitude and phase (B, F, n_fft/2 + 1) each, as the head predicts them.
    pub fn spectrum(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let y = self.out.forward(x)?;
        let bins = self.n_fft / 2 + 1;
        Ok((y.narrow(D::Minus1, 0, bins)?, y.narrow(D::Minus1, bins, bins)?))
    }

    /// Sums `frames` (B, F, n_fft) into (B, (F − 1)·hop + n_fft): slice j of every frame lands j·hop later.
    fn overlap_add(&self, frames: &Tensor) -> Result<Tensor> {
        let (b, f, n) = frames.dims3()?;
        let m = n / self.hop;
        let total = (f - 1 + m) * self.hop;
        sum_all((0..m).map(|j| {
            let slice = frames.narrow(2, j * self.hop, self.hop)?.reshape((b, f * self.hop))?;
            slice.pad_with_zeros(1, j * self.hop, total - f * self.hop - j * self.hop)
        }))
    }

    /// Features (B, F, dim) → audio (B, 1, F · hop).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(cpu), true) = (&self.cpu, x.device().is_cpu()) {
            return self.out.forward(x)?.contiguous()?.apply_op1_no_bwd(cpu.as_ref());
        }
        self.forward_with_basis(x)
    }

    /// [`IstftHead::forward`] with the inverse DFT as a matmul with the basis (every device).
    fn forward_with_basis(&self, x: &Tensor) -> Result<Tensor> {
        let (log_mag, phase) = self.spectrum(x)?;
        let mag = log_mag.exp()?.clamp(f64::NEG_INFINITY, 1e2)?;
        let real = (&mag * phase.cos()?)?;
        let imag = (&mag * phase.sin()?)?;
        let frames = (self.basis_real.forward(&real)? + self.basis_imag.forward(&imag)?)?;
        let (b, f, _) = frames.dims3()?;
        let audio = self.overlap_add(&frames)?;
        let envelope = self.overlap_add(&self.window_sq.reshape((1, 1, self.n_fft))?.repeat((1, f, 1))?)?;
        let pad = (self.n_fft - self.hop) / 2;
        let len = f * self.hop;
        let audio = audio.narrow(1, pad, len)?.broadcast_div(&envelope.narrow(1, pad, len)?)?;
        audio.reshape((b, 1, len))
    }
}

/// The ISTFT on the CPU, from the head's output (B, F, n_fft + 2: log-magnitudes, then phases) to audio
/// (B, 1, F · hop): each frame's spectrum (magnitude `min(exp(·), 100)`, libm's exp / cos / sin as candle's) through
/// realfft's inverse FFT (O(n log n) where the basis matmul was O(n²): 2.5 GFLOP of a 10 s WavTokenizer-75 decode,
/// 4.6 of a -40 one), frames across threads; then every output sample sums its overlapping frames and divides by
/// their summed squared window, output chunks across threads.
pub struct InverseStft {
    fft: Arc<dyn ComplexToReal<f32>>,
    /// The window over `n_fft` (realfft's inverse is unnormalised), and the window squared.
    scaled_window: Vec<f32>,
    window_sq: Vec<f32>,
    hop: usize,
}

impl std::fmt::Debug for InverseStft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InverseStft(n_fft {}, hop {})", self.window_sq.len(), self.hop)
    }
}

impl InverseStft {
    fn new(window: Vec<f32>, window_sq: Vec<f32>, hop: usize) -> Self {
        let n = window.len();
        let fft = RealFftPlanner::<f32>::new().plan_fft_inverse(n);
        Self { fft, scaled_window: window.iter().map(|w| w / n as f32).collect(), window_sq, hop }
    }
}

impl CustomOp1 for InverseStft {
    fn name(&self) -> &'static str {
        "codec-istft"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(storage, layout, "ISTFT input")?;
        let (b, f, width) = layout.shape().dims3()?;
        let (n, hop) = (self.window_sq.len(), self.hop);
        let bins = n / 2 + 1;
        if width != 2 * bins {
            candle_core::bail!("ISTFT: frames of {width} values, expected {}", 2 * bins);
        }
        // Windowed frames, (B·F, n).
        let mut frames = crate::mem::zeros_par(b * f * n);
        let scratch = || (self.fft.make_input_vec(), self.fft.make_scratch_vec());
        frames.par_chunks_mut(n).zip(y.par_chunks(width)).try_for_each_init(
            scratch,
            |(spectrum, work), (frame, y)| {
                let (log_mag, phase) = y.split_at(bins);
                for ((s, &lm), &p) in spectrum.iter_mut().zip(log_mag).zip(phase) {
                    let mag = lm.exp().min(1e2);
                    *s = Complex::new(mag * p.cos(), mag * p.sin());
                }
                // The inverse of a real signal's spectrum ignores the imaginary parts at DC and Nyquist (as torch's).
                spectrum[0].im = 0.0;
                spectrum[bins - 1].im = 0.0;
                self.fft
                    .process_with_scratch(spectrum, frame, work)
                    .map_err(|e| candle_core::Error::Msg(format!("ISTFT: {e}")))?;
                for (v, &w) in frame.iter_mut().zip(&self.scaled_window) {
                    *v *= w;
                }
                Ok::<(), candle_core::Error>(())
            },
        )?;
        // Output sample u of an item is sample s = u + pad of the overlap-added signal: frame q covers
        // s ∈ [q·hop, q·hop + n).
        let (pad, len) = ((n - hop) / 2, f * hop);
        let mut audio = crate::mem::zeros_par(b * len);
        const CHUNK: usize = 4096;
        audio.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, out)| {
            for (i, v) in out.iter_mut().enumerate() {
                let (item, u) = ((chunk * CHUNK + i) / len, (chunk * CHUNK + i) % len);
                let s = u + pad;
                let (mut sum, mut envelope) = (0.0f32, 0.0f32);
                for q in (s + 1).saturating_sub(n).div_ceil(hop)..=(s / hop).min(f - 1) {
                    let at = s - q * hop;
                    sum += frames[(item * f + q) * n + at];
                    envelope += self.window_sq[at];
                }
                *v = sum / envelope;
            }
        });
        Ok((CpuStorage::F32(audio), Shape::from((b, 1, len))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;

    /// The CPU's FFT ISTFT gives what the windowed-basis matmul (the other devices' path) gives, on a head with the
    /// converter's tables for a Hann window (n_fft 40, hop 10), log-magnitudes up to the clamp.
    #[test]
    fn fft_istft_matches_the_basis_matmul() {
        let dev = Device::Cpu;
        let (n, hop, dim) = (40usize, 10usize, 16usize);
        let window: Vec<f32> =
            (0..n).map(|t| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * t as f64 / n as f64).cos()) as f32).collect();
        let (basis_real, basis_imag) = crate::convert::wavtokenizer::irfft_basis(&window).unwrap();
        let window_sq = Tensor::from_vec(window.iter().map(|w| w * w).collect::<Vec<f32>>(), n, &dev).unwrap();
        let tensors = [
            ("out.weight", Tensor::randn(0f32, 0.5, (n + 2, dim), &dev).unwrap()),
            ("out.bias", Tensor::randn(0f32, 1.0, n + 2, &dev).unwrap()),
            ("istft.basis_real", basis_real),
            ("istft.basis_imag", basis_imag),
            ("istft.window_sq", window_sq),
        ]
        .map(|(k, v)| (k.to_string(), v));
        let vb = VarBuilder::from_tensors(tensors.into(), DType::F32, &dev);
        let cfg = VocosConfig {
            input_channels: dim,
            dim,
            intermediate_dim: dim,
            num_layers: 0,
            adanorm_num_embeddings: 1,
            bandwidth_id: 0,
            n_fft: n,
            hop_length: hop,
        };
        let head = IstftHead::new(&cfg, vb.into()).unwrap();
        assert!(head.cpu.is_some());
        let x = Tensor::randn(0f32, 1.0, (2, 37, dim), &dev).unwrap();
        let fft = head.forward(&x).unwrap();
        let basis = head.forward_with_basis(&x).unwrap();
        assert_eq!(fft.dims(), &[2, 1, 37 * hop]);
        assert_eq!(fft.dims(), basis.dims());
        let scale = basis.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let diff = super::super::test_util::max_abs_diff(&fft, &basis);
        assert!(diff <= 1e-5 * scale, "max diff {diff} at scale {scale}");
    }

    /// The CPU attention (our GEMM, one softmax pass) gives what candle's ops give, whole and in blocks.
    #[test]
    fn cpu_attention_matches_tensor_ops() {
        let dev = Device::Cpu;
        let (c, t) = (48, 70);
        let [q, k, v] = [1u64, 2, 3].map(|seed| {
            let values = super::super::test_util::pseudo_random(2 * c * t, seed);
            Tensor::from_vec(values, (2, c, t), &dev).unwrap()
        });
        for scores_per_block in [usize::MAX, 9 * t] {
            let ours = attend_cpu(&q, &k, &v, scores_per_block).unwrap();
            let theirs = attend_with_tensor_ops(&q, &k, &v, scores_per_block).unwrap();
            assert_eq!(ours.dims(), &[2, c, t]);
            let scale = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let diff = super::super::test_util::max_abs_diff(&ours, &theirs);
            assert!(diff <= 1e-5 * scale, "blocks of {scores_per_block} scores: max diff {diff} at scale {scale}");
        }
    }

    /// Attention over keys and values read back from temporary files in tiles, with a running softmax, gives what
    /// the one-pass attention gives: tiles of 1, 7 and more keys than there are.
    #[test]
    fn spilled_attention_matches_one_pass() {
        let dev = Device::Cpu;
        let (c, t) = (48, 70);
        let [q, k, v] = [4u64, 5, 6].map(|seed| {
            let values = super::super::test_util::pseudo_random(c * t, seed);
            (Tensor::from_vec(values, (1, c, t), &dev).unwrap() * 3.0).unwrap()
        });
        let want = attend_cpu(&q, &k, &v, usize::MAX).unwrap();
        let spill = |x: &Tensor| {
            let rows = SpillRows::new(c).unwrap();
            rows.write(0, &time_major(x).unwrap()).unwrap();
            rows
        };
        let (keys, values) = (spill(&k), spill(&v));
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        for tile in [1, 7, 1000] {
            // Queries 10..30 only: a block of them.
            let got = attend_spilled(&q.narrow(2, 10, 20).unwrap(), &keys, &values, t, tile).unwrap();
            let diff = super::super::test_util::max_abs_diff(&got, &want.narrow(2, 10, 20).unwrap());
            assert!(diff <= 1e-5 * scale, "tiles of {tile}: max diff {diff} at scale {scale}");
        }
    }

    /// Attention in blocks of a few queries gives what one block gives (a long input's memory stays O(T)).
    #[test]
    fn blocked_attention_equals_one_block() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let dim = 64;
        let build = || AttnBlock::new(dim, VarBuilder::from_varmap(&varmap, DType::F32, &dev).into()).unwrap();
        // Register the weights, give them random values, then build the layer from those.
        build();
        for var in varmap.all_vars() {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), &dev).unwrap()).unwrap();
        }
        let block = build();
        let x = Tensor::randn(0f32, 1.0, (1, dim, 300), &dev).unwrap();
        let whole = block.forward_in_blocks(&x, usize::MAX).unwrap();
        let blocked = block.forward_in_blocks(&x, 300 * 7).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a, b) = (flat(&whole), flat(&blocked));
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (norm(&a) * norm(&b));
        assert!(cos >= 0.99999, "cos {cos}");
        // The attention contributes: the output is not just the input.
        assert!(a.iter().zip(flat(&x)).any(|(y, x)| (y - x).abs() > 1e-3));
    }
}
