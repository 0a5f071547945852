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
use super::norm::{layer_norm, GroupNorm, LayerNorm};
use super::sum_all;

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
    use super::activation::exp_nonpositive;
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
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                super::with_fma!(
                    FMA,
                    super::wide_simd(
                        #[inline(always)]
                        || row.iter_mut().for_each(|s| *s = exp_nonpositive::<FMA>(*s - max))
                    )
                );
                let sum: f32 = row.iter().sum();
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
        let x = self.pos_norm.forward(&x)?;
        let x = self.norm.forward(&x.transpose(1, 2)?.contiguous()?)?;
        let x = self.convnext.iter().try_fold(x, |x, block| block.forward(&x))?;
        self.final_layer_norm.forward(&x)
    }
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
