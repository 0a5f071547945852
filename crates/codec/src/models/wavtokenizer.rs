//! WavTokenizer: 24 kHz audio ↔ one code per frame from a single large codebook (75 or 40 frames/s).
//!
//! Encode: EnCodec's SEANet encoder (non-causal, reflect padding, 1x1-conv shortcuts, a 2-layer LSTM with skip) →
//! nearest codebook entry (Euclidean). Decode: codebook rows → Vocos backbone (conv embed, pos_net with a global
//! attention block, AdaLayerNorm row `bandwidth_id`, ConvNeXt blocks) → ISTFT head (inverse real DFT as a matmul,
//! overlap-add by shifted sums): F frames give exactly F · hop samples.
//!
//! Tensor names: `encoder.layers.*` (SEANet, see `nn::seanet`), `quantizer.layers.0.codebook.embed`, `backbone.*`,
//! `head.*` (see `nn::vocos`).

use std::sync::Arc;

use crate::nn::Weights;
use candle_core::{DType, Device, Result, Tensor};

use crate::gguf::{keys, metadata_config, ModelFile};
use crate::nn::compact;
use crate::nn::conv::PadMode;
use crate::nn::lstm::LstmState;
use crate::nn::rvq::ResidualVq;
use crate::nn::seanet::{SeanetConfig, SeanetEncoder};
use crate::nn::vocos::{Backbone, IstftHead, SpillPlan, VocosConfig};
use crate::stream::{self, window};

/// `general.architecture` of a WavTokenizer model file.
pub const ARCH: &str = "wavtokenizer";

metadata_config! {
    /// WavTokenizer hyper-parameters; read from and written to GGUF metadata.
    #[derive(Debug, Clone, PartialEq)]
    pub struct WavTokenizerConfig {
        /// Audio sample rate in Hz.
        pub sample_rate: usize = rate(keys::SAMPLE_RATE),
        /// Channels after the SEANet encoder's first conv, doubled by each stage.
        pub n_filters: usize = count(key::N_FILTERS = "codec.wavtokenizer.n_filters"),
        /// Downsampling factor per encoder stage, in the reference's order (applied reversed); the product is the hop.
        pub downsamples: Vec<usize> = strides(key::DOWNSAMPLES = "codec.wavtokenizer.downsamples"),
        /// LSTM layers (with skip) after the encoder's last stage.
        pub lstm_layers: usize = usize(key::LSTM_LAYERS = "codec.wavtokenizer.lstm_layers"),
        /// Latent width: encoder output, codebook dim, backbone input.
        pub dimension: usize = count(keys::LATENT_DIM),
        /// Entries in the codebook.
        pub codebook_size: usize = count(keys::CODEBOOK_SIZE),
        /// Number of codebooks (1 for the released models).
        pub n_q: usize = count(keys::N_Q),
        /// Channels of the Vocos backbone.
        pub backbone_dim: usize = count(key::BACKBONE_DIM = "codec.wavtokenizer.backbone_dim"),
        /// Hidden width of a ConvNeXt block's MLP.
        pub intermediate_dim: usize = count(key::INTERMEDIATE_DIM = "codec.wavtokenizer.intermediate_dim"),
        /// ConvNeXt blocks in the backbone.
        pub num_layers: usize = usize(key::NUM_LAYERS = "codec.wavtokenizer.num_layers"),
        /// Conditioning rows of each AdaLayerNorm (one per bandwidth the model was trained for).
        pub adanorm_num_embeddings: usize =
            count(key::ADANORM_NUM_EMBEDDINGS = "codec.wavtokenizer.adanorm_num_embeddings"),
        /// The AdaLayerNorm row decoding uses (below `adanorm_num_embeddings`).
        pub bandwidth_id: usize = usize(key::BANDWIDTH_ID = "codec.wavtokenizer.bandwidth_id"),
        /// ISTFT frame length in samples (a multiple of `istft_hop`).
        pub n_fft: usize = count(key::N_FFT = "codec.wavtokenizer.n_fft"),
        /// ISTFT hop in samples; must equal the encoder's hop.
        pub istft_hop: usize = count(key::ISTFT_HOP = "codec.wavtokenizer.istft_hop_length"),
    }
    /// `codec.wavtokenizer.*` metadata keys (names follow the reference's YAML where it has them).
    pub mod key;
}

impl WavTokenizerConfig {
    /// Audio samples per code frame: the product of the downsampling factors.
    pub fn hop(&self) -> usize {
        self.downsamples.iter().product()
    }

    /// The released 75 tokens/s model (`wavtokenizer_*_frame75_*`), for `bench --random`.
    pub fn published_frame75() -> Self {
        Self {
            sample_rate: 24000,
            n_filters: 32,
            downsamples: vec![8, 5, 4, 2],
            lstm_layers: 2,
            dimension: 512,
            codebook_size: 4096,
            n_q: 1,
            backbone_dim: 768,
            intermediate_dim: 2304,
            num_layers: 12,
            adanorm_num_embeddings: 4,
            bandwidth_id: 0,
            n_fft: 1280,
            istft_hop: 320,
        }
    }

    /// Reads and checks every key: sizes at least 1, strides with a bounded hop, the bandwidth id among the
    /// AdaLayerNorm embeddings.
    pub fn from_gguf(f: &ModelFile) -> crate::Result<Self> {
        let cfg = Self::read_metadata(f)?;
        if cfg.bandwidth_id >= cfg.adanorm_num_embeddings {
            return Err(crate::Error::model_file(
                &f.path,
                format!(
                    "metadata key '{}' is {}, not below the {} embeddings of '{}'",
                    key::BANDWIDTH_ID,
                    cfg.bandwidth_id,
                    cfg.adanorm_num_embeddings,
                    key::ADANORM_NUM_EMBEDDINGS
                ),
            ));
        }
        Ok(cfg)
    }

    /// Writes this config, with the hop, the codebook width and the both-halves keys, as GGUF metadata.
    pub fn to_gguf(&self, w: &mut crate::gguf::Writer) {
        crate::gguf::write_shared_keys(w, self.hop());
        // The shared codebook width is the latent's (WavTokenizer's VQ works at the latent width).
        w.u32(keys::CODEBOOK_DIM, self.dimension);
        self.write_metadata(w);
    }

    /// EnCodec's SEANet as WavTokenizer builds it (`EncodecFeatures`: kernels 7/3/7, one residual layer, compress 2).
    fn seanet(&self) -> SeanetConfig {
        SeanetConfig {
            channels: 1,
            dimension: self.dimension,
            n_filters: self.n_filters,
            ratios: self.downsamples.clone(),
            kernel_size: 7,
            residual_kernel_size: 3,
            last_kernel_size: 7,
            dilation_base: 2,
            n_residual_layers: 1,
            compress: 2,
            causal: false,
            pad_mode: PadMode::Reflect,
            true_skip: false,
            lstm_layers: self.lstm_layers,
        }
    }

    fn vocos(&self) -> VocosConfig {
        VocosConfig {
            input_channels: self.dimension,
            dim: self.backbone_dim,
            intermediate_dim: self.intermediate_dim,
            num_layers: self.num_layers,
            adanorm_num_embeddings: self.adanorm_num_embeddings,
            bandwidth_id: self.bandwidth_id,
            n_fft: self.n_fft,
            hop_length: self.istft_hop,
        }
    }
}

/// The whole model. Stages are public so tests can compare each against the reference's intermediates.
#[derive(Debug, Clone)]
pub struct WavTokenizer {
    /// Hyper-parameters.
    pub config: WavTokenizerConfig,
    /// SEANet encoder (EnCodec's, with LSTM): audio → latent.
    pub encoder: SeanetEncoder,
    /// Latent ↔ codes: nearest entry of the codebook, no projections.
    pub quantizer: ResidualVq,
    /// Vocos backbone: latent → features.
    pub backbone: Backbone,
    /// ISTFT head: features → audio.
    pub head: IstftHead,
}

impl WavTokenizer {
    /// Loads the model a WavTokenizer GGUF file describes, only `parts`' weights read (see [`super::Parts`]).
    pub fn load(file: &ModelFile, device: &candle_core::Device, parts: super::Parts) -> crate::Result<Self> {
        let cfg = WavTokenizerConfig::from_gguf(file)?;
        let vb = super::weights(file, device, parts, (&["encoder."], &["backbone.", "head."]));
        Self::new(cfg, vb).map_err(|e| crate::Error::model_file(&file.path, format!("invalid wavtokenizer model: {e}")))
    }

    /// Builds the model from `config` and weights; an error if the ISTFT hop differs from the encoder's.
    pub fn new(config: WavTokenizerConfig, vb: Weights) -> Result<Self> {
        if config.istft_hop != config.hop() {
            candle_core::bail!("ISTFT hop {} differs from the encoder hop {}", config.istft_hop, config.hop());
        }
        let vocos = config.vocos();
        Ok(Self {
            encoder: SeanetEncoder::new(&config.seanet(), vb.pp("encoder.layers"))?,
            quantizer: ResidualVq::new(
                config.n_q,
                config.dimension,
                config.dimension,
                config.codebook_size,
                false,
                vb.pp("quantizer"),
            )?,
            backbone: Backbone::new(&vocos, vb.pp("backbone"))?,
            head: IstftHead::new(&vocos, vb.pp("head"))?,
            config,
        })
    }
}

/// WavTokenizer's streaming encoder. The SEANet layers before and after the LSTM see a finite context (reflect
/// padded, not causal): they run over windows that reach their receptive field beyond the frames kept, the first
/// and last windows touching the input's ends as one pass does. The LSTM between them carries its state. Latency:
/// the two parts' receptive fields.
struct EncoderStream {
    model: Arc<WavTokenizer>,
    device: Device,
    n_q: usize,
    /// Context frames of the parts before and after the LSTM.
    context: (usize, usize),
    /// Samples from frame `pcm_base` on, and all pushed so far.
    pcm: Vec<f32>,
    pcm_base: usize,
    total: usize,
    /// LSTM state after frames `..lstm_done`.
    lstm: LstmState,
    lstm_done: usize,
    /// LSTM outputs (1, C, F) from frame `latent_base` on.
    latent: Option<Tensor>,
    latent_base: usize,
    codes_done: usize,
}

impl EncoderStream {
    /// The frames the first part finalises, through the LSTM into `latent`.
    fn lstm_frames(&mut self, last: bool) -> Result<()> {
        let hop = self.model.config.hop();
        let avail = if last { self.total.div_ceil(hop) } else { self.total / hop };
        let ctx = self.context.0;
        let Some(w) = window(self.lstm_done, avail, (ctx, ctx), last) else { return Ok(()) };
        let Some((before, lstm, _)) = self.model.encoder.around_lstm() else { candle_core::bail!("no LSTM") };
        let s0 = (w.from - self.pcm_base) * hop;
        let s1 = (w.to * hop).min(self.total) - self.pcm_base * hop;
        let pcm = Tensor::from_slice(&self.pcm[s0..s1], (1, 1, s1 - s0), &self.device)?;
        let x = before.forward(&pcm)?.narrow(2, w.keep_from - w.from, w.keep_to - w.keep_from)?;
        let y = lstm.step_with_skip(&x, &mut self.lstm)?;
        self.latent = Some(match self.latent.take() {
            Some(held) => Tensor::cat(&[&held, &y], 2)?,
            None => y,
        });
        self.lstm_done = w.keep_to;
        let next_from = self.lstm_done.saturating_sub(ctx).max(self.pcm_base);
        self.pcm.drain(..(next_from - self.pcm_base) * hop);
        self.pcm_base = next_from;
        Ok(())
    }

    /// The codes of the frames the second part finalises.
    fn codes(&mut self, last: bool) -> Result<Tensor> {
        let ctx = self.context.1;
        let w = window(self.codes_done, self.lstm_done, (ctx, ctx), last);
        let (Some(w), Some(latent)) = (w, self.latent.clone()) else {
            return Tensor::zeros((1, self.n_q, 0), DType::U32, &self.device);
        };
        let Some((_, _, after)) = self.model.encoder.around_lstm() else { candle_core::bail!("no LSTM") };
        let z = after.forward(&latent.narrow(2, w.from - self.latent_base, w.to - w.from)?)?;
        let z = z.narrow(2, w.keep_from - w.from, w.keep_to - w.keep_from)?;
        self.codes_done = w.keep_to;
        let next_from = self.codes_done.saturating_sub(ctx).max(self.latent_base);
        self.latent = Some(compact(&latent.narrow(2, next_from - self.latent_base, self.lstm_done - next_from)?)?);
        self.latent_base = next_from;
        self.model.quantizer.encode(&z, self.n_q)
    }
}

impl stream::EncoderStream for EncoderStream {
    fn push(&mut self, pcm: &[f32]) -> Result<Tensor> {
        self.pcm.extend_from_slice(pcm);
        self.total += pcm.len();
        self.lstm_frames(false)?;
        self.codes(false)
    }
    fn flush(&mut self) -> Result<Tensor> {
        self.lstm_frames(true)?;
        self.codes(true)
    }
    fn finish(&mut self, pcm: &[f32]) -> Result<Tensor> {
        self.pcm.extend_from_slice(pcm);
        self.total += pcm.len();
        self.flush()
    }
    fn reset(&mut self) {
        (self.pcm, self.pcm_base, self.total) = (Vec::new(), 0, 0);
        (self.lstm, self.lstm_done) = (LstmState::default(), 0);
        (self.latent, self.latent_base, self.codes_done) = (None, 0, 0);
    }
}

impl super::Model for WavTokenizer {
    fn stream_encoder(self: Arc<Self>, n_q: usize, device: &Device) -> Option<Box<dyn stream::EncoderStream>> {
        let (before, _, after) = self.encoder.around_lstm()?;
        let hop = self.config.hop();
        // In frames: the first part's radius in samples, the second's already in frames; one more for rounding.
        let context = (before.radius().div_ceil(hop) + 1, after.radius() + 1);
        Some(Box::new(EncoderStream {
            model: self,
            device: device.clone(),
            n_q,
            context,
            pcm: Vec::new(),
            pcm_base: 0,
            total: 0,
            lstm: LstmState::default(),
            lstm_done: 0,
            latent: None,
            latent_base: 0,
            codes_done: 0,
        }))
    }
    fn sample_rate(&self) -> u32 {
        self.config.sample_rate as u32
    }
    fn hop(&self) -> usize {
        self.config.hop()
    }
    fn peak_bytes(&self, n_frames: usize) -> u64 {
        // Measured (75 Hz, 10 s vs 40 s): encode grows by about 500 bytes of peak RSS per sample; the decoder's
        // attention adds one block of scores (and their softmax) on top: frames², up to 4 Mi (see `nn::vocos`).
        let frames = n_frames as u64;
        let scores = frames.saturating_mul(frames).min(frames.max(1 << 22));
        super::bytes_per_sample(n_frames, self.hop(), 500).saturating_add(scores.saturating_mul(12))
    }
    fn n_q(&self) -> usize {
        self.config.n_q
    }
    fn codebook_size(&self) -> usize {
        self.config.codebook_size
    }
    fn encode(&self, pcm: &Tensor, n_q: usize) -> Result<Tensor> {
        self.quantizer.encode(&self.encoder.forward(pcm)?, n_q)
    }
    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let features = self.backbone.forward(&self.quantizer.decode(codes)?)?;
        self.head.forward(&features)
    }
    fn decode_in_pieces(
        &self,
        codes: &Tensor,
        piece_frames: usize,
        sink: &mut dyn FnMut(&[f32]) -> Result<()>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        let (items, _, frames) = codes.dims3()?;
        if items != 1 || frames <= piece_frames || !codes.device().is_cpu() {
            return super::decode_whole(self, codes, sink, progress);
        }
        let latent = |rows: std::ops::Range<usize>| self.quantizer.decode(&codes.narrow(2, rows.start, rows.len())?);
        // The codec sizes pieces by `peak_bytes`, the encoder's ~160 KB per frame; these pieces take ~40 KB (peak RSS
        // of a 10 min decode, pieces of 760 and 2300 frames: 374 and 435 MB). Three times the frames fit the same
        // memory, and a 40 s clip then runs in two pieces, with its weights read in place, not packed (3.50 → 3.06 s).
        let plan = SpillPlan::new(piece_frames.saturating_mul(3));
        crate::nn::vocos::decode_spilled(&self.backbone, &self.head, frames, &latent, plan, sink, progress)
    }
    fn stage_times(&self, pcm: &Tensor, n_q: usize) -> Result<Vec<super::StageTime>> {
        let mut t = super::StageTimer::default();
        let z = t.time("encoder (SEANet + LSTM)", || self.encoder.forward(pcm))?;
        let codes = t.time("quantizer encode", || self.quantizer.encode(&z, n_q))?;
        let z = t.time("quantizer decode", || self.quantizer.decode(&codes))?;
        let x = t.time("backbone", || self.backbone.forward(&z))?;
        t.time("ISTFT head", || self.head.forward(&x))?;
        Ok(t.times)
    }
}
