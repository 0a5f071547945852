//! Mimi (Kyutai): 24 kHz audio ↔ 12.5 Hz frames of up to 32 codes.
//!
//! Encode: SEANet encoder (causal convs, 25 Hz) → transformer → strided conv to 12.5 Hz → split RVQ (semantic codebooks
//! and acoustic codebooks, both quantising the same latent). Decode runs the mirror image: RVQ sums → depthwise
//! transposed conv to 25 Hz → transformer → SEANet decoder.
//!
//! Tensor names are the transformers (hub) layout's; the converter maps Kyutai's original checkpoint onto them.

use std::sync::Arc;

use crate::nn::Weights;
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::gguf::{keys, metadata_config, ModelFile};
use crate::nn::conv::{Conv1d, ConvConfig, ConvState, ConvTranspose1d, ConvTransposeState, PadMode, Padding};
use crate::nn::pad_to_multiple;
use crate::nn::rvq::ResidualVq;
use crate::nn::seanet::{SeanetConfig, SeanetDecoder, SeanetEncoder, SeanetState};
use crate::nn::transformer::{MlpActivation, Transformer, TransformerConfig, TransformerState};
use crate::stream::{self, FrameBuffer};

/// `general.architecture` of a Mimi model file.
pub const ARCH: &str = "mimi";

metadata_config! {
    /// Every hyper-parameter of a Mimi model, as stored in the GGUF metadata.
    #[derive(Debug, Clone, PartialEq)]
    pub struct MimiConfig {
        /// Audio sample rate in Hz.
        pub sample_rate: usize = rate(keys::SAMPLE_RATE),
        /// Audio channels: always 1 (no key holds it).
        pub channels: usize = fixed(1),
        /// Latent width (SEANet output, transformer d_model, quantizer input).
        pub hidden_size: usize = count(keys::LATENT_DIM),
        /// Channels after SEANet's first conv, doubled by each encoder stage.
        pub num_filters: usize = count(key::NUM_FILTERS = "codec.mimi.num_filters"),
        /// SEANet's upsampling ratio per decoder stage; the encoder downsamples by them in reverse order.
        pub upsampling_ratios: Vec<usize> = strides(key::UPSAMPLING_RATIOS = "codec.mimi.upsampling_ratios"),
        /// Kernel of SEANet's first conv.
        pub kernel_size: usize = count(key::KERNEL_SIZE = "codec.mimi.kernel_size"),
        /// Kernel of the first conv in each SEANet residual block.
        pub residual_kernel_size: usize = count(key::RESIDUAL_KERNEL_SIZE = "codec.mimi.residual_kernel_size"),
        /// Kernel of SEANet's last conv.
        pub last_kernel_size: usize = count(key::LAST_KERNEL_SIZE = "codec.mimi.last_kernel_size"),
        /// Residual block j of a SEANet stage has dilation `dilation_growth_rate^j`.
        pub dilation_growth_rate: usize = count(key::DILATION_GROWTH_RATE = "codec.mimi.dilation_growth_rate"),
        /// Residual blocks per SEANet stage.
        pub num_residual_layers: usize = count(key::NUM_RESIDUAL_LAYERS = "codec.mimi.num_residual_layers"),
        /// A SEANet residual block's hidden channels are its channels divided by this.
        pub compress: usize = count(key::COMPRESS = "codec.mimi.compress"),
        /// Convs pad on the left only (causal, streamable) rather than on both sides.
        pub use_causal_conv: bool = bool(key::USE_CAUSAL_CONV = "codec.mimi.use_causal_conv"),
        /// How SEANet convs pad: `constant` (zeros), `replicate` or `reflect`.
        pub pad_mode: String = text(key::PAD_MODE = "codec.mimi.pad_mode"),
        /// Stride of the conv from the SEANet rate to the frame rate (2: 25 Hz → 12.5 Hz).
        pub downsample_stride: usize = count(key::DOWNSAMPLE_STRIDE = "codec.mimi.downsample_stride"),
        /// Layers of each of the two transformers.
        pub num_hidden_layers: usize = usize(key::NUM_HIDDEN_LAYERS = "codec.mimi.num_hidden_layers"),
        /// Attention heads per transformer layer.
        pub num_attention_heads: usize = count(key::NUM_ATTENTION_HEADS = "codec.mimi.num_attention_heads"),
        /// Width of one attention head.
        pub head_dim: usize = count(key::HEAD_DIM = "codec.mimi.head_dim"),
        /// Hidden width of the transformer MLP.
        pub intermediate_size: usize = count(key::INTERMEDIATE_SIZE = "codec.mimi.intermediate_size"),
        /// Attention span in transformer steps (SEANet rate): a step sees itself and the `sliding_window - 1`
        /// before it.
        pub sliding_window: usize = count(key::SLIDING_WINDOW = "codec.mimi.sliding_window"),
        /// RoPE base period.
        pub rope_theta: f64 = positive_f64(key::ROPE_THETA = "codec.mimi.rope_theta"),
        /// LayerNorm epsilon.
        pub norm_eps: f64 = positive_f64(key::NORM_EPS = "codec.mimi.norm_eps"),
        /// Entries per codebook.
        pub codebook_size: usize = count(keys::CODEBOOK_SIZE),
        /// Width of a codebook entry; the quantizer projects the latent down to it and back.
        pub codebook_dim: usize = count(keys::CODEBOOK_DIM),
        /// Number of codebooks, semantic and acoustic together.
        pub num_quantizers: usize = count(keys::N_Q),
        /// How many of the codebooks, the first ones, are semantic; the rest are acoustic.
        pub num_semantic_quantizers: usize = count(key::NUM_SEMANTIC_QUANTIZERS = "codec.mimi.num_semantic_quantizers"),
    }
    /// `codec.mimi.*` metadata keys (names follow transformers' `MimiConfig`).
    pub mod key;
}

impl MimiConfig {
    /// The published kyutai/mimi architecture (moshi's `loaders.py` / the hub's config.json), with `n_q` codebooks.
    pub fn published(n_q: usize) -> Self {
        Self {
            sample_rate: 24000,
            channels: 1,
            hidden_size: 512,
            num_filters: 64,
            upsampling_ratios: vec![8, 6, 5, 4],
            kernel_size: 7,
            residual_kernel_size: 3,
            last_kernel_size: 3,
            dilation_growth_rate: 2,
            num_residual_layers: 1,
            compress: 2,
            use_causal_conv: true,
            pad_mode: "constant".into(),
            downsample_stride: 2,
            num_hidden_layers: 8,
            num_attention_heads: 8,
            head_dim: 64,
            intermediate_size: 2048,
            sliding_window: 250,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            codebook_size: 2048,
            codebook_dim: 256,
            num_quantizers: n_q,
            num_semantic_quantizers: 1,
        }
    }

    /// Samples per output frame: SEANet hop × downsample stride.
    pub fn hop(&self) -> usize {
        self.upsampling_ratios.iter().product::<usize>() * self.downsample_stride
    }

    /// Reads and checks every key: sizes at least 1, strides with a bounded hop, positive floats, and the
    /// semantic codebooks among all codebooks.
    pub fn from_gguf(f: &ModelFile) -> crate::Result<Self> {
        let cfg = Self::read_metadata(f)?;
        let bad = |msg: String| Err(crate::Error::model_file(&f.path, msg));
        if cfg.num_semantic_quantizers > cfg.num_quantizers {
            return bad(format!(
                "metadata key '{}' is {}, more than the {} codebooks of '{}'",
                key::NUM_SEMANTIC_QUANTIZERS,
                cfg.num_semantic_quantizers,
                cfg.num_quantizers,
                keys::N_Q
            ));
        }
        let seanet_hop: usize = cfg.upsampling_ratios.iter().product();
        if seanet_hop.checked_mul(cfg.downsample_stride).is_none_or(|hop| hop > crate::gguf::MAX_HOP) {
            return bad(format!(
                "metadata key '{}' is {}: the hop (× the upsampling ratios) exceeds {}",
                key::DOWNSAMPLE_STRIDE,
                cfg.downsample_stride,
                crate::gguf::MAX_HOP
            ));
        }
        Ok(cfg)
    }

    /// Writes every key `from_gguf` reads.
    pub fn to_gguf(&self, w: &mut crate::gguf::Writer) {
        crate::gguf::write_shared_keys(w, self.hop());
        self.write_metadata(w);
    }

    fn seanet(&self) -> candle_core::Result<SeanetConfig> {
        let pad_mode = PadMode::parse(&self.pad_mode)
            .ok_or_else(|| candle_core::Error::Msg(format!("unknown pad_mode '{}'", self.pad_mode)))?;
        Ok(SeanetConfig {
            channels: self.channels,
            dimension: self.hidden_size,
            n_filters: self.num_filters,
            ratios: self.upsampling_ratios.clone(),
            kernel_size: self.kernel_size,
            residual_kernel_size: self.residual_kernel_size,
            last_kernel_size: self.last_kernel_size,
            dilation_base: self.dilation_growth_rate,
            n_residual_layers: self.num_residual_layers,
            compress: self.compress,
            causal: self.use_causal_conv,
            pad_mode,
            true_skip: true,
            lstm_layers: 0,
        })
    }

    fn transformer(&self) -> TransformerConfig {
        TransformerConfig {
            d_model: self.hidden_size,
            num_heads: self.num_attention_heads,
            head_dim: self.head_dim,
            num_layers: self.num_hidden_layers,
            ffn_dim: self.intermediate_size,
            context: self.sliding_window,
            rope_theta: self.rope_theta,
            norm_eps: self.norm_eps,
            activation: MlpActivation::GeluErf,
            layer_scale: true,
        }
    }
}

/// Semantic codebooks and acoustic codebooks, each with its own projections; both quantise the same latent and their
/// decodings add up.
#[derive(Debug, Clone)]
pub struct SplitRvq {
    semantic: ResidualVq,
    acoustic: ResidualVq,
}

impl SplitRvq {
    fn new(cfg: &MimiConfig, vb: Weights) -> Result<Self> {
        let n_sem = cfg.num_semantic_quantizers;
        let rvq = |n, name| ResidualVq::new(n, cfg.hidden_size, cfg.codebook_dim, cfg.codebook_size, true, vb.pp(name));
        Ok(Self {
            semantic: rvq(n_sem, "semantic_residual_vector_quantizer")?,
            acoustic: rvq(cfg.num_quantizers - n_sem, "acoustic_residual_vector_quantizer")?,
        })
    }

    /// Latent (B, hidden, F) → codes (B, n_q, F).
    pub fn encode(&self, x: &Tensor, n_q: usize) -> Result<Tensor> {
        let n_sem = self.semantic.n_q().min(n_q);
        let semantic = self.semantic.encode(x, n_sem)?;
        if n_q <= n_sem {
            return Ok(semantic);
        }
        let acoustic = self.acoustic.encode(x, n_q - n_sem)?;
        Tensor::cat(&[semantic, acoustic], 1)
    }

    /// Codes (B, n_q, F) → latent (B, hidden, F).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let n_q = codes.dim(1)?;
        let n_sem = self.semantic.n_q().min(n_q);
        let semantic = self.semantic.decode(&codes.narrow(1, 0, n_sem)?)?;
        if n_q <= n_sem {
            return Ok(semantic);
        }
        semantic + self.acoustic.decode(&codes.narrow(1, n_sem, n_q - n_sem)?)?
    }
}

/// The whole model. Stages are public so tests can compare each against the reference's intermediates.
#[derive(Debug, Clone)]
pub struct Mimi {
    /// Hyper-parameters.
    pub config: MimiConfig,
    /// SEANet encoder: audio → latent at the SEANet rate.
    pub encoder: SeanetEncoder,
    /// Transformer over the encoder's latent.
    pub encoder_transformer: Transformer,
    /// Strided conv from the SEANet rate to the frame rate.
    pub downsample: Conv1d,
    /// Latent ↔ codes.
    pub quantizer: SplitRvq,
    /// Depthwise transposed conv from the frame rate back to the SEANet rate.
    pub upsample: ConvTranspose1d,
    /// Transformer before the decoder.
    pub decoder_transformer: Transformer,
    /// SEANet decoder: latent → audio.
    pub decoder: SeanetDecoder,
}

impl Mimi {
    /// Builds the model a Mimi GGUF file describes, weights on `device`.
    pub fn load(file: &ModelFile, device: &candle_core::Device, parts: super::Parts) -> crate::Result<Self> {
        let cfg = MimiConfig::from_gguf(file)?;
        let halves = (
            &["encoder.", "encoder_transformer.", "downsample."][..],
            &["upsample.", "decoder_transformer.", "decoder."][..],
        );
        let vb = super::weights(file, device, parts, halves);
        Self::new(cfg, vb).map_err(|e| crate::Error::model_file(&file.path, format!("invalid mimi model: {e}")))
    }

    /// Builds the model from `config` and weights under the transformers (hub) tensor names.
    pub fn new(config: MimiConfig, vb: Weights) -> Result<Self> {
        let seanet = config.seanet()?;
        let transformer = config.transformer();
        let h = config.hidden_size;
        let s = config.downsample_stride;
        let padding = if config.use_causal_conv { Padding::Causal } else { Padding::Centered };
        // The frame-rate convs pad by repeating the edge sample (the references' `pad_mode="replicate"`).
        let resample_conv = ConvConfig::new(2 * s, padding, PadMode::Replicate).stride(s).bias(false);
        Ok(Self {
            encoder: SeanetEncoder::new(&seanet, vb.pp("encoder.layers"))?,
            encoder_transformer: Transformer::new(&transformer, vb.pp("encoder_transformer"))?,
            downsample: Conv1d::new(h, h, resample_conv, vb.pp("downsample.conv"))?,
            quantizer: SplitRvq::new(&config, vb.pp("quantizer"))?,
            upsample: ConvTranspose1d::new(h, h, resample_conv.groups(h), vb.pp("upsample.conv"))?,
            decoder_transformer: Transformer::new(&transformer, vb.pp("decoder_transformer"))?,
            decoder: SeanetDecoder::new(&seanet, vb.pp("decoder.layers"))?,
            config,
        })
    }

    /// Audio (B, 1, T) → latent (B, hidden, ceil(T / hop)), the quantizer's input.
    pub fn encode_latent(&self, pcm: &Tensor) -> Result<Tensor> {
        // moshi zero-pads to whole frames first (what streaming sees too); transformers instead lets each conv pad
        // its own last window, which changes the last frame's codes. We follow moshi, the original.
        let pcm = pad_to_multiple(pcm, self.config.hop())?;
        let x = self.encoder.forward(&pcm)?;
        let x = self.encoder_transformer.forward(&x)?;
        self.downsample.forward(&x)
    }

    /// Quantized latent (B, hidden, F) → audio (B, 1, F * hop).
    pub fn decode_latent(&self, latent: &Tensor) -> Result<Tensor> {
        let x = self.upsample.forward(latent)?;
        let x = self.decoder_transformer.forward(&x)?;
        self.decoder.forward(&x)
    }
}

/// Mimi's streaming encoder: whole frames through each stage with its carried state (conv context, the
/// transformer's KV cache, the downsample conv's context), then the RVQ per frame. One frame of latency.
struct EncoderStream {
    model: Arc<Mimi>,
    device: Device,
    n_q: usize,
    frames: FrameBuffer,
    seanet: SeanetState,
    transformer: TransformerState,
    downsample: ConvState,
}

impl EncoderStream {
    fn run(&mut self, samples: Vec<f32>) -> Result<Tensor> {
        let m = &self.model;
        if samples.is_empty() {
            return Tensor::zeros((1, self.n_q, 0), DType::U32, &self.device);
        }
        let pcm = Tensor::from_vec(samples, (1, 1, ()), &self.device)?;
        let x = m.encoder.step(&pcm, &mut self.seanet)?;
        let x = m.encoder_transformer.step(&x, &mut self.transformer)?;
        let x = m.downsample.step(&x, &mut self.downsample)?;
        m.quantizer.encode(&x, self.n_q)
    }
}

impl stream::EncoderStream for EncoderStream {
    fn push(&mut self, pcm: &[f32]) -> Result<Tensor> {
        let whole = self.frames.whole_frames(pcm, self.model.config.hop());
        self.run(whole)
    }
    fn flush(&mut self) -> Result<Tensor> {
        // Zero-padded to a whole frame, as offline encode pads.
        let rest = self.frames.padded_rest(self.model.config.hop());
        self.run(rest)
    }
    fn finish(&mut self, pcm: &[f32]) -> Result<Tensor> {
        self.frames.extend(pcm);
        self.flush()
    }
    fn reset(&mut self) {
        self.frames.clear();
        self.seanet = SeanetState::default();
        self.transformer.restart();
        self.downsample = ConvState::default();
    }
}

/// Mimi's streaming decoder: each frame's codes through the mirror image, every stage carrying its state; a
/// frame's `hop` samples are final when it arrives.
struct DecoderStream {
    model: Arc<Mimi>,
    device: Device,
    upsample: ConvTransposeState,
    transformer: TransformerState,
    seanet: SeanetState,
}

impl stream::DecoderStream for DecoderStream {
    fn push(&mut self, codes: &Tensor) -> Result<Tensor> {
        let m = &self.model;
        let x = m.quantizer.decode(codes)?;
        let x = m.upsample.step(&x, &mut self.upsample)?;
        let x = m.decoder_transformer.step(&x, &mut self.transformer)?;
        m.decoder.step(&x, &mut self.seanet)
    }
    fn flush(&mut self) -> Result<Tensor> {
        // Offline decode trims what the last frames would add beyond them: nothing is left.
        Tensor::zeros((1, 1, 0), DType::F32, &self.device)
    }
    fn reset(&mut self) {
        self.upsample = ConvTransposeState::default();
        self.transformer.restart();
        self.seanet = SeanetState::default();
    }
}

impl super::Model for Mimi {
    fn stream_encoder(self: Arc<Self>, n_q: usize, device: &Device) -> Option<Box<dyn stream::EncoderStream>> {
        self.config.use_causal_conv.then(|| {
            let transformer = self.encoder_transformer.stream_state(1, device);
            Box::new(EncoderStream {
                model: self,
                device: device.clone(),
                n_q,
                frames: FrameBuffer::default(),
                seanet: SeanetState::default(),
                transformer,
                downsample: ConvState::default(),
            }) as Box<dyn stream::EncoderStream>
        })
    }
    fn stream_decoder(self: Arc<Self>, device: &Device) -> Option<Box<dyn stream::DecoderStream>> {
        self.config.use_causal_conv.then(|| {
            let transformer = self.decoder_transformer.stream_state(1, device);
            Box::new(DecoderStream {
                model: self,
                device: device.clone(),
                upsample: ConvTransposeState::default(),
                transformer,
                seanet: SeanetState::default(),
            }) as Box<dyn stream::DecoderStream>
        })
    }
    fn sample_rate(&self) -> u32 {
        self.config.sample_rate as u32
    }
    fn hop(&self) -> usize {
        self.config.hop()
    }
    /// Causal end to end: the default padded passes are exact.
    fn pads_exactly(&self) -> bool {
        true
    }

    fn peak_bytes(&self, n_frames: usize) -> u64 {
        // Measured (f32, 10 s vs 40 s, and a stream's pieces): peak RSS grows by about 1 KB per sample.
        super::bytes_per_sample(n_frames, self.hop(), 1000)
    }
    fn n_q(&self) -> usize {
        self.config.num_quantizers
    }
    fn codebook_size(&self) -> usize {
        self.config.codebook_size
    }
    fn encode(&self, pcm: &Tensor, n_q: usize) -> Result<Tensor> {
        self.quantizer.encode(&self.encode_latent(pcm)?, n_q)
    }
    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        self.decode_latent(&self.quantizer.decode(codes)?)
    }
    fn stage_times(&self, pcm: &Tensor, n_q: usize) -> Result<Vec<super::StageTime>> {
        let mut t = super::StageTimer::default();
        let pcm = pad_to_multiple(pcm, self.config.hop())?;
        let x = t.time("encoder (SEANet)", || self.encoder.forward(&pcm))?;
        let x = t.time("encoder transformer", || self.encoder_transformer.forward(&x))?;
        let x = t.time("downsample", || self.downsample.forward(&x))?;
        let codes = t.time("quantizer encode", || self.quantizer.encode(&x, n_q))?;
        let x = t.time("quantizer decode", || self.quantizer.decode(&codes))?;
        let x = t.time("upsample", || self.upsample.forward(&x))?;
        let x = t.time("decoder transformer", || self.decoder_transformer.forward(&x))?;
        t.time("decoder (SEANet)", || self.decoder.forward(&x))?;
        Ok(t.times)
    }
}
