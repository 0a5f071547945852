//! Pocket TTS (Kyutai, pip `pocket-tts` 4.0.1): text → speech with a Flow-LM over the continuous latents of a Mimi
//! variant. This file holds the hyper-parameters (all from GGUF metadata), the Mimi variant and the Flow-LM with its
//! flow head, and generation (text chunking, EOS, voice prompts, streaming decode). Bad input: a text with nothing to
//! speak, or none of whose letters the tokenizer knows, and a silent voice are errors
//! ([`PocketTts::text_chunks`], [`PocketTts::voice_state_from_audio`]); other unknown characters are reported by
//! [`PocketTts::unknown_characters`]; [`PocketTts::read_voice`] reads only the part of a voice file that is used.
//!
//! # The reference, read off pocket-tts 4.0.1 (`models/tts_model.py`, `models/flow_lm.py`, `models/mimi.py`)
//!
//! **Mimi variant** (`build_mimi`, config `mimi:`): 24 kHz mono. SEANet as Mimi's (causal convs, constant padding,
//! ELU, one residual block per stage with an identity skip, compress 2, kernels 7/3/3) but ratios `[6, 5, 4]` (hop
//! 120: 200 Hz) and `dimension` 512. `encoder_transformer` / `decoder_transformer`: `ProjectedTransformer` with 2
//! layers, d 512, 8 heads, FFN 2048, LayerScale, context 250 steps (at 200 Hz), RoPE (interleaved pairs, stacked
//! `in_proj.weight`), LayerNorm eps 1e-5 — and GELU's **tanh** approximation (moshi's Mimi uses exact GELU), no
//! biases. `downsample`: `ConvDownsample1d(stride 16)`: conv k 32, stride 16, no bias, replicate left padding, from
//! 512 straight to the 32-dim latent (`inner_dim`). `quantizer`: `DummyQuantizer`, only `output_proj` (1×1 conv 32 →
//! 512, no bias). `upsample`: `ConvTrUpsample1d(16)`: depthwise transposed conv k 32 stride 16, no bias (`outer_dim`
//! in, 512 out, groups 512).
//! - `encode_to_latent(x)`: zero-pad to whole 1920-sample frames → SEANet encoder → transformer → downsample →
//!   (B, F, 32), time first. No quantization.
//! - `decode_from_latent(z, state)`: `output_proj` → upsample → transformer → SEANet decoder, always with streaming
//!   state (the TTS decodes one frame per call; after each call `increment_steps(mimi, state, 16)` moves RoPE and the
//!   KV cache on). One call over all frames gives the same result: every stage is causal.
//!
//! **Flow-LM** (`FlowLMModel`, config `flow_lm:`): a `StreamingTransformer` (6 layers, d 1024, 16 heads, FFN
//! `d · hidden_scale` = 4096, RoPE max_period 10000, no LayerScale, no context limit, linear KV cache, GELU tanh,
//! LayerNorm eps 1e-5, no biases), `out_norm` LayerNorm(eps 1e-5), `out_eos` Linear(d → 1, bias). Inputs: latents
//! `(B, S, 32)` where NaN marks BOS (replaced by `bos_emb`), through `input_linear` (32 → d, no bias); text through
//! `conditioner` (`LUTConditioner`: `nn.Embedding(n_bins + 1, d)` over a `tokenizers` tokenizer.json); a voice through
//! `speaker_proj_weight` (d × 32). One call: `transformer(cat[text_emb, voice_cond, input_linear(latents)])`, then
//! `out_norm`, keep the latent positions, take the last one `h`; EOS = `out_eos(h) > eos_threshold`; the next latent
//! = `lsd_decode(flow_net(h, ·), noise, steps)` with noise ~ N(0, temperature) (`std = temp ** 0.5`; temperature 0
//! gives exact zeros). `lsd_decode`: for i in 0..n: `x += flow_net(h, s = i/n, t = (i+1)/n, x) / n`.
//! - `flow_net` = `SimpleMLPAdaLN(in 32, model 512, out 32, cond d, depth 6, 2 time conditions)`: `y =
//!   cond_embed(h) + (time_embed[0](s) + time_embed[1](t)) / 2`; `x = input_proj(x)`; `depth` × ResBlock (`x +
//!   gate · mlp(LN_1e-6(x) · (1 + scale) + shift)`, `(shift, scale, gate) = adaLN_modulation(silu(y))`, mlp =
//!   Linear–SiLU–Linear); FinalLayer (`linear(LN_1e-6 no affine(x) · (1 + scale) + shift)`, `(shift, scale) =
//!   adaLN(silu(y))`). `TimestepEmbedder`: `[cos(t·f), sin(t·f)]` with `f = exp(−ln(10000) · arange(128) / 128)`
//!   (the `freqs` buffer, 256 wide) → Linear–SiLU–Linear → RMSNorm (eps 1e-5, `x · α / sqrt(eps + var(x))`, var
//!   *unbiased*, not the mean square).
//!
//! **Generation** (`TTSModel.generate_audio_stream`): text → `prepare_text_prompt` (strip, replace characters,
//! capitalise the first letter, append a period, `frames_after_eos` = 3 for ≤ 4 words else 1, plus 2) →
//! `split_into_best_sentences` (chunks of ≤ 50 tokens at sentence ends). Per chunk: a copy of the voice state; prompt
//! the text tokens in one Flow-LM call (its sampled latent is discarded); then up to `max_gen_len = ceil((tokens / 3 +
//! 2) · 12.5)` steps, the first input NaN (BOS), each next input the previous latent; EOS is ignored before step 6;
//! stop at `eos_step + frames_after_eos` (that step's latent is not decoded). Each latent is decoded as
//! `latent · emb_std + emb_mean` by the Mimi decoder, one frame per call, state kept across the chunk; the first 120
//! samples (`sample_rate / 200`) of a chunk are faded in by `linspace(0, 1, 120)`.
//! - No voice: a fresh, empty Flow-LM state. Voice: audio → mono 24 kHz → `end_on_pause` (20 ms frames more than 35
//!   dB below the loudest cut from the end, the last 20 ms faded out, 80 ms of zeros appended) → Mimi
//!   `encode_to_latent` → `speaker_proj_weight` → `bos_before_voice` prepended (when `insert_bos_before_voice`) → one
//!   Flow-LM call as the prompt.
//!
//! Tensor names in the GGUF: the package's `TTSModel.state_dict()` names, with Mimi's parts renamed to the Mimi hub
//! names under `mimi.` (so `nn::seanet` and `nn::transformer` read them as they read Mimi's) and the transformers'
//! stacked q/k/v split and permuted to rotate-half RoPE (see `convert::pocket_tts`).

use candle_core::{DType, Module, Result, Tensor, D};

use crate::gguf::{keys, metadata_config, ModelFile};
use crate::nn::conv::{Conv1d, ConvConfig, ConvTranspose1d, ConvTransposeState, PadMode, Padding};
use crate::nn::linear::Linear;
use crate::nn::norm::{layer_norm, LayerNorm};
use crate::nn::seanet::{SeanetConfig, SeanetDecoder, SeanetEncoder, SeanetState};
use crate::nn::transformer::{MlpActivation, Transformer, TransformerConfig, TransformerState};
use crate::nn::Weights;
use crate::nn::{on_pool, pad_to_multiple};

/// `general.architecture` of a Pocket TTS model file.
pub const ARCH: &str = "pocket-tts";

/// The GGUF metadata key holding the whole `tokenizer.json` as one string (llama.cpp's key for a Hugging Face
/// tokenizer).
pub const TOKENIZER_JSON: &str = "tokenizer.huggingface.json";

metadata_config! {
    /// Every hyper-parameter of a Pocket TTS model, as stored in the GGUF metadata.
    #[derive(Debug, Clone, PartialEq)]
    pub struct PocketTtsConfig {
        /// Audio sample rate in Hz.
        pub sample_rate: usize = rate(keys::SAMPLE_RATE),
        /// Width of the continuous latents the Flow-LM generates and Mimi decodes (`mimi.quantizer.dimension`).
        pub latent_dim: usize = count(keys::LATENT_DIM),
        /// Width of SEANet's output and of the Mimi transformers.
        pub mimi_dimension: usize = count(key::MIMI_DIMENSION = "codec.pocket_tts.mimi.dimension"),
        /// Input width of the upsampling conv (the quantizer's output); equals `mimi_dimension` (depthwise conv).
        pub mimi_outer_dim: usize = count(key::MIMI_OUTER_DIM = "codec.pocket_tts.mimi.outer_dim"),
        /// Channels after SEANet's first conv.
        pub mimi_n_filters: usize = count(key::MIMI_N_FILTERS = "codec.pocket_tts.mimi.n_filters"),
        /// SEANet's decoder ratios; the encoder applies them reversed.
        pub mimi_ratios: Vec<usize> = strides(key::MIMI_RATIOS = "codec.pocket_tts.mimi.ratios"),
        /// Kernel of SEANet's first conv.
        pub mimi_kernel_size: usize = count(key::MIMI_KERNEL_SIZE = "codec.pocket_tts.mimi.kernel_size"),
        /// Kernel of the first conv in each SEANet residual block.
        pub mimi_residual_kernel_size: usize = count(key::MIMI_RESIDUAL_KERNEL_SIZE = "codec.pocket_tts.mimi.residual_kernel_size"),
        /// Kernel of SEANet's last conv.
        pub mimi_last_kernel_size: usize = count(key::MIMI_LAST_KERNEL_SIZE = "codec.pocket_tts.mimi.last_kernel_size"),
        /// Residual block j of a SEANet stage has dilation `dilation_base^j`.
        pub mimi_dilation_base: usize = count(key::MIMI_DILATION_BASE = "codec.pocket_tts.mimi.dilation_base"),
        /// Residual blocks per SEANet stage.
        pub mimi_n_residual_layers: usize = usize(key::MIMI_N_RESIDUAL_LAYERS = "codec.pocket_tts.mimi.n_residual_layers"),
        /// A SEANet residual block's hidden channels are its channels divided by this.
        pub mimi_compress: usize = count(key::MIMI_COMPRESS = "codec.pocket_tts.mimi.compress"),
        /// How SEANet convs pad.
        pub mimi_pad_mode: String = text(key::MIMI_PAD_MODE = "codec.pocket_tts.mimi.pad_mode"),
        /// Stride of the resampling convs between the SEANet rate and the frame rate.
        pub mimi_downsample_stride: usize = count(key::MIMI_DOWNSAMPLE_STRIDE = "codec.pocket_tts.mimi.downsample_stride"),
        /// Layers of each Mimi transformer.
        pub mimi_num_layers: usize = usize(key::MIMI_NUM_LAYERS = "codec.pocket_tts.mimi.transformer.num_layers"),
        /// Attention heads of the Mimi transformers.
        pub mimi_num_heads: usize = count(key::MIMI_NUM_HEADS = "codec.pocket_tts.mimi.transformer.num_heads"),
        /// Hidden width of the Mimi transformers' MLP.
        pub mimi_dim_feedforward: usize = count(key::MIMI_DIM_FEEDFORWARD = "codec.pocket_tts.mimi.transformer.dim_feedforward"),
        /// Attention span of the Mimi transformers, in steps at the SEANet rate.
        pub mimi_context: usize = count(key::MIMI_CONTEXT = "codec.pocket_tts.mimi.transformer.context"),
        /// RoPE base period of the Mimi transformers.
        pub mimi_max_period: f64 = positive_f64(key::MIMI_MAX_PERIOD = "codec.pocket_tts.mimi.transformer.max_period"),
        /// Whether the Mimi transformers have LayerScale.
        pub mimi_layer_scale: bool = bool(key::MIMI_LAYER_SCALE = "codec.pocket_tts.mimi.transformer.layer_scale"),
        /// LayerNorm epsilon of every transformer.
        pub norm_eps: f64 = positive_f64(key::NORM_EPS = "codec.pocket_tts.norm_eps"),
        /// Width of the Flow-LM transformer.
        pub flow_lm_d_model: usize = count(key::FLOW_LM_D_MODEL = "codec.pocket_tts.flow_lm.d_model"),
        /// Attention heads of the Flow-LM transformer.
        pub flow_lm_num_heads: usize = count(key::FLOW_LM_NUM_HEADS = "codec.pocket_tts.flow_lm.num_heads"),
        /// Layers of the Flow-LM transformer.
        pub flow_lm_num_layers: usize = usize(key::FLOW_LM_NUM_LAYERS = "codec.pocket_tts.flow_lm.num_layers"),
        /// Hidden width of the Flow-LM MLP.
        pub flow_lm_dim_feedforward: usize = count(key::FLOW_LM_DIM_FEEDFORWARD = "codec.pocket_tts.flow_lm.dim_feedforward"),
        /// RoPE base period of the Flow-LM transformer.
        pub flow_lm_max_period: f64 = positive_f64(key::FLOW_LM_MAX_PERIOD = "codec.pocket_tts.flow_lm.max_period"),
        /// Text pieces of the lookup table.
        pub flow_lm_n_bins: usize = count(key::FLOW_LM_N_BINS = "codec.pocket_tts.flow_lm.n_bins"),
        /// Whether a voice prompt is preceded by `bos_before_voice`.
        pub flow_lm_insert_bos_before_voice: bool = bool(key::FLOW_LM_INSERT_BOS_BEFORE_VOICE = "codec.pocket_tts.flow_lm.insert_bos_before_voice"),
        /// The flow head's sampler (`lsd`).
        pub flow_type: String = text(key::FLOW_TYPE = "codec.pocket_tts.flow.type"),
        /// Width of the flow head.
        pub flow_dim: usize = count(key::FLOW_DIM = "codec.pocket_tts.flow.dim"),
        /// Residual blocks of the flow head.
        pub flow_depth: usize = usize(key::FLOW_DEPTH = "codec.pocket_tts.flow.depth"),
        /// Width of the flow head's sinusoidal time embedding.
        pub flow_frequency_embedding_size: usize = count(key::FLOW_FREQUENCY_EMBEDDING_SIZE = "codec.pocket_tts.flow.frequency_embedding_size"),
        /// LayerNorm epsilon inside the flow head.
        pub flow_norm_eps: f64 = positive_f64(key::FLOW_NORM_EPS = "codec.pocket_tts.flow.norm_eps"),
        /// RMSNorm epsilon of the time embedders.
        pub flow_rms_norm_eps: f64 = positive_f64(key::FLOW_RMS_NORM_EPS = "codec.pocket_tts.flow.rms_norm_eps"),
        /// Temperature when the caller gives none.
        pub default_temperature: f64 = f64(key::DEFAULT_TEMPERATURE = "codec.pocket_tts.default_temperature"),
        /// Generation stops once the EOS logit exceeds this.
        pub eos_threshold: f64 = f64(key::EOS_THRESHOLD = "codec.pocket_tts.eos_threshold"),
        /// Frames decoded after EOS; 0: from the text's word count.
        pub frames_after_eos: usize = usize(key::FRAMES_AFTER_EOS = "codec.pocket_tts.frames_after_eos"),
        /// EOS is ignored before this generation step.
        pub min_frames_before_eos: usize = usize(key::MIN_FRAMES_BEFORE_EOS = "codec.pocket_tts.min_frames_before_eos"),
        /// Text pieces per generated chunk at most.
        pub max_tokens_per_chunk: usize = count(key::MAX_TOKENS_PER_CHUNK = "codec.pocket_tts.max_tokens_per_chunk"),
        /// Tokens per second of speech the length limit assumes.
        pub tokens_per_second: f64 = positive_f64(key::TOKENS_PER_SECOND = "codec.pocket_tts.tokens_per_second"),
        /// Seconds the length limit adds.
        pub gen_seconds_padding: f64 = f64(key::GEN_SECONDS_PADDING = "codec.pocket_tts.gen_seconds_padding"),
        /// Samples faded in at the start of each chunk's audio.
        pub fade_in_samples: usize = usize(key::FADE_IN_SAMPLES = "codec.pocket_tts.fade_in_samples"),
        /// Short texts (< 5 words) get 8 leading spaces.
        pub pad_with_spaces_for_short_inputs: bool = bool(key::PAD_WITH_SPACES = "codec.pocket_tts.pad_with_spaces_for_short_inputs"),
        /// `;` becomes `,`.
        pub remove_semicolons: bool = bool(key::REMOVE_SEMICOLONS = "codec.pocket_tts.remove_semicolons"),
        /// A text not ending a sentence gets a period.
        pub append_terminal_punctuation: bool = bool(key::APPEND_TERMINAL_PUNCTUATION = "codec.pocket_tts.append_terminal_punctuation"),
        /// The first letter is upper-cased.
        pub capitalize_first_letter: bool = bool(key::CAPITALIZE_FIRST_LETTER = "codec.pocket_tts.capitalize_first_letter"),
        /// Per-character rewrites, a JSON object of strings.
        pub replace_characters: String = text(key::REPLACE_CHARACTERS = "codec.pocket_tts.replace_characters"),
        /// A voice prompt's frames this many dB below its loudest are silence.
        pub voice_floor_db: f64 = positive_f64(key::VOICE_FLOOR_DB = "codec.pocket_tts.voice.floor_db"),
        /// Seconds faded out at a voice prompt's end.
        pub voice_fade_seconds: f64 = f64(key::VOICE_FADE_SECONDS = "codec.pocket_tts.voice.fade_seconds"),
        /// Seconds of silence appended to a voice prompt.
        pub voice_pause_seconds: f64 = f64(key::VOICE_PAUSE_SECONDS = "codec.pocket_tts.voice.pause_seconds"),
        /// Seconds of a voice file used at most.
        pub voice_max_seconds: f64 = positive_f64(key::VOICE_MAX_SECONDS = "codec.pocket_tts.voice.max_seconds"),
    }
    /// `codec.pocket_tts.*` metadata keys (names follow the pocket-tts YAML: `mimi.*` and `flow_lm.*`).
    pub mod key;
}

impl PocketTtsConfig {
    /// Samples per latent frame: SEANet hop × resampling stride (1920 for the released models).
    pub fn hop(&self) -> usize {
        self.mimi_ratios.iter().product::<usize>() * self.mimi_downsample_stride
    }

    /// Reads and checks every key.
    pub fn from_gguf(f: &ModelFile) -> crate::Result<Self> {
        let cfg = Self::read_metadata(f)?;
        cfg.check().map_err(|msg| crate::Error::model_file(&f.path, msg))?;
        Ok(cfg)
    }

    /// What the runtime needs beyond each key's own range: a bounded hop, widths the blocks can be built with, a
    /// sampler this build runs.
    pub fn check(&self) -> std::result::Result<(), String> {
        let seanet_hop: usize = self.mimi_ratios.iter().product();
        if seanet_hop.checked_mul(self.mimi_downsample_stride).is_none_or(|hop| hop > crate::gguf::MAX_HOP) {
            return Err(format!(
                "the hop (ratios × '{}') exceeds {}",
                key::MIMI_DOWNSAMPLE_STRIDE,
                crate::gguf::MAX_HOP
            ));
        }
        if PadMode::parse(&self.mimi_pad_mode).is_none() {
            return Err(format!("'{}' is '{}' (not a padding mode)", key::MIMI_PAD_MODE, self.mimi_pad_mode));
        }
        if self.mimi_outer_dim != self.mimi_dimension {
            return Err(format!(
                "'{}' ({}) differs from '{}' ({}): the depthwise upsampling conv needs them equal",
                key::MIMI_OUTER_DIM,
                self.mimi_outer_dim,
                key::MIMI_DIMENSION,
                self.mimi_dimension
            ));
        }
        for (what, d, h) in [
            ("mimi", self.mimi_dimension, self.mimi_num_heads),
            ("flow_lm", self.flow_lm_d_model, self.flow_lm_num_heads),
        ] {
            if d % h != 0 || (d / h) % 2 != 0 {
                return Err(format!("{what}: width {d} is not {h} heads of an even width"));
            }
        }
        if self.flow_type != "lsd" {
            return Err(format!("'{}' is '{}'; this build samples only 'lsd'", key::FLOW_TYPE, self.flow_type));
        }
        if serde_json::from_str::<std::collections::BTreeMap<String, String>>(&self.replace_characters).is_err() {
            return Err(format!("'{}' is not a JSON object of strings", key::REPLACE_CHARACTERS));
        }
        Ok(())
    }

    /// Writes every key `from_gguf` reads.
    pub fn to_gguf(&self, w: &mut crate::gguf::Writer) {
        crate::gguf::write_shared_keys(w, self.hop());
        self.write_metadata(w);
    }

    fn seanet(&self) -> Result<SeanetConfig> {
        let pad_mode = PadMode::parse(&self.mimi_pad_mode)
            .ok_or_else(|| candle_core::Error::Msg(format!("unknown pad_mode '{}'", self.mimi_pad_mode)))?;
        Ok(SeanetConfig {
            channels: 1,
            dimension: self.mimi_dimension,
            n_filters: self.mimi_n_filters,
            ratios: self.mimi_ratios.clone(),
            kernel_size: self.mimi_kernel_size,
            residual_kernel_size: self.mimi_residual_kernel_size,
            last_kernel_size: self.mimi_last_kernel_size,
            dilation_base: self.mimi_dilation_base,
            n_residual_layers: self.mimi_n_residual_layers,
            compress: self.mimi_compress,
            causal: true,
            pad_mode,
            true_skip: true,
            lstm_layers: 0,
        })
    }

    fn mimi_transformer(&self) -> TransformerConfig {
        let shape = (self.mimi_dimension, self.mimi_num_heads, self.mimi_num_layers, self.mimi_dim_feedforward);
        self.transformer(shape, self.mimi_context, self.mimi_max_period, self.mimi_layer_scale)
    }
}

impl PocketTtsConfig {
    fn flow_lm_transformer(&self) -> TransformerConfig {
        let shape =
            (self.flow_lm_d_model, self.flow_lm_num_heads, self.flow_lm_num_layers, self.flow_lm_dim_feedforward);
        // No sliding window: every step sees the whole prompt and generation so far.
        self.transformer(shape, usize::MAX, self.flow_lm_max_period, false)
    }

    /// One of the package's transformers (GELU tanh, the shared LayerNorm epsilon): `shape` is (width, heads,
    /// layers, MLP width).
    fn transformer(
        &self,
        (d_model, num_heads, num_layers, ffn_dim): (usize, usize, usize, usize),
        context: usize,
        rope_theta: f64,
        layer_scale: bool,
    ) -> TransformerConfig {
        TransformerConfig {
            d_model,
            num_heads,
            head_dim: d_model / num_heads,
            num_layers,
            ffn_dim,
            context,
            rope_theta,
            norm_eps: self.norm_eps,
            activation: MlpActivation::GeluTanh,
            layer_scale,
        }
    }
}

/// Pocket TTS's Mimi: audio ↔ continuous latents (no quantizer). Stages are public so tests can compare each
/// against the reference's intermediates.
#[derive(Debug, Clone)]
pub struct PocketMimi {
    /// Samples per latent frame.
    pub hop: usize,
    /// SEANet encoder: audio → SEANet rate.
    pub encoder: SeanetEncoder,
    /// Transformer over the encoder's output.
    pub encoder_transformer: Transformer,
    /// Strided conv to the frame rate, straight to the latent width.
    pub downsample: Conv1d,
    /// The `DummyQuantizer`'s 1×1 conv from the latent width back to the decoder's.
    pub output_proj: Conv1d,
    /// Depthwise transposed conv from the frame rate back to the SEANet rate.
    pub upsample: ConvTranspose1d,
    /// Transformer before the decoder.
    pub decoder_transformer: Transformer,
    /// SEANet decoder: SEANet rate → audio.
    pub decoder: SeanetDecoder,
}

impl PocketMimi {
    /// Builds the Mimi part of `cfg` from weights under the Mimi hub names (`encoder.layers.…`, `downsample.conv`,
    /// `quantizer.output_proj`, …) in `vb`.
    pub fn new(cfg: &PocketTtsConfig, vb: Weights) -> Result<Self> {
        let seanet = cfg.seanet()?;
        let transformer = cfg.mimi_transformer();
        let (d, latent, s) = (cfg.mimi_dimension, cfg.latent_dim, cfg.mimi_downsample_stride);
        // The frame-rate convs pad by repeating the edge sample (`pad_mode="replicate"` in `ConvDownsample1d`).
        let resample = ConvConfig::new(2 * s, Padding::Causal, PadMode::Replicate).stride(s).bias(false);
        let pointwise = ConvConfig::new(1, Padding::Causal, PadMode::Constant).bias(false);
        Ok(Self {
            hop: cfg.hop(),
            encoder: SeanetEncoder::new(&seanet, vb.pp("encoder.layers"))?,
            encoder_transformer: Transformer::new(&transformer, vb.pp("encoder_transformer"))?,
            downsample: Conv1d::new(d, latent, resample, vb.pp("downsample.conv"))?,
            output_proj: Conv1d::new(latent, cfg.mimi_outer_dim, pointwise, vb.pp("quantizer.output_proj"))?,
            upsample: ConvTranspose1d::new(cfg.mimi_outer_dim, d, resample.groups(d), vb.pp("upsample.conv"))?,
            decoder_transformer: Transformer::new(&transformer, vb.pp("decoder_transformer"))?,
            decoder: SeanetDecoder::new(&seanet, vb.pp("decoder.layers"))?,
        })
    }

    /// Audio (B, 1, T) → latents (B, latent_dim, ceil(T / hop)): `encode_to_latent`, channels first.
    pub fn encode(&self, pcm: &Tensor) -> Result<Tensor> {
        let pcm = pad_to_multiple(pcm, self.hop)?;
        let x = self.encoder.forward(&pcm)?;
        let x = self.encoder_transformer.forward(&x)?;
        self.downsample.forward(&x)
    }

    /// Latents (B, latent_dim, F) → audio (B, 1, F · hop): `decode_from_latent` from a fresh state.
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        self.decode_step(latent, &mut MimiDecodeState::default())
    }

    /// A decoding stream's state on `device`, its transformer's key/value buffers made now rather than while it
    /// decodes (see [`Transformer::stream_state`]).
    pub fn decode_state(&self, device: &candle_core::Device) -> MimiDecodeState {
        MimiDecodeState { transformer: self.decoder_transformer.stream_state(1, device), ..Default::default() }
    }

    /// The next frames (B, latent_dim, F) of a stream whose earlier frames `state` remembers → their audio (B, 1,
    /// F · hop), final when returned: `decode_from_latent` with the package's streaming state.
    pub fn decode_step(&self, latent: &Tensor, state: &mut MimiDecodeState) -> Result<Tensor> {
        let x = self.output_proj.forward(latent)?;
        let x = self.upsample.step(&x, &mut state.upsample)?;
        let x = self.decoder_transformer.step(&x, &mut state.transformer)?;
        self.decoder.step(&x, &mut state.seanet)
    }
}

/// The Mimi decoder's streaming state: each stage's carried samples and the transformer's KV cache.
#[derive(Debug, Clone, Default)]
pub struct MimiDecodeState {
    upsample: ConvTransposeState,
    transformer: TransformerState,
    seanet: SeanetState,
}

impl MimiDecodeState {
    /// Back to a stream's start, keeping the transformer's key/value buffers (see [`Transformer::stream_state`]).
    fn restart(&mut self) {
        (self.upsample, self.seanet) = Default::default();
        self.transformer.restart();
    }
}

fn candle_err(source: candle_core::Error) -> crate::Error {
    crate::Error::Tensor { context: "pocket-tts".into(), source }
}

/// `x · (1 + scale) + shift` (DiT's AdaLN modulation).
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// A scalar time in [0, 1] → a conditioning vector: `[cos(t·f), sin(t·f)]` → Linear → SiLU → Linear → RMSNorm.
#[derive(Debug, Clone)]
struct TimestepEmbedder {
    /// (1, frequency_embedding_size / 2)
    freqs: Tensor,
    fc1: Linear,
    fc2: Linear,
    alpha: Tensor,
    rms_eps: f64,
}

impl TimestepEmbedder {
    fn new(cfg: &PocketTtsConfig, vb: Weights) -> Result<Self> {
        let (dim, freq) = (cfg.flow_dim, cfg.flow_frequency_embedding_size);
        Ok(Self {
            freqs: vb.get(freq / 2, "freqs")?.reshape((1, freq / 2))?,
            fc1: Linear::load(freq, dim, true, vb.pp("mlp.0"))?,
            fc2: Linear::load(dim, dim, true, vb.pp("mlp.2"))?,
            alpha: vb.get(dim, "mlp.3.alpha")?,
            rms_eps: cfg.flow_rms_norm_eps,
        })
    }

    /// t (B, 1) → (B, dim).
    fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let args = t.broadcast_mul(&self.freqs)?;
        let x = Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?;
        let x = self.fc2.forward(&self.fc1.forward(&x)?.silu()?)?;
        // The package's RMSNorm divides by the *unbiased variance* (mean removed), not by the mean square.
        let n = x.dim(D::Minus1)? as f64;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / (n - 1.0))?;
        x.broadcast_mul(&self.alpha)?.broadcast_div(&(var + self.rms_eps)?.sqrt()?)
    }
}

/// `x + gate · mlp(modulate(LN(x), shift, scale))`, `(shift, scale, gate)` from the conditioning.
#[derive(Debug, Clone)]
struct ResBlock {
    /// Normalises the input before `modulate` shifts and scales it.
    in_ln: LayerNorm,
    /// The MLP, `fc2(silu(fc1(·)))`.
    fc1: Linear,
    fc2: Linear,
    /// The conditioning (after SiLU) → shift, scale and gate, `flow_dim` each.
    modulation: Linear,
}

impl ResBlock {
    /// A block `dim` wide whose LayerNorm has epsilon `eps`.
    fn new(dim: usize, eps: f64, vb: Weights) -> Result<Self> {
        Ok(Self {
            in_ln: LayerNorm::new(dim, eps, vb.pp("in_ln"))?,
            fc1: Linear::load(dim, dim, true, vb.pp("mlp.0"))?,
            fc2: Linear::load(dim, dim, true, vb.pp("mlp.2"))?,
            modulation: Linear::load(dim, 3 * dim, true, vb.pp("adaLN_modulation.1"))?,
        })
    }

    fn forward(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let m = self.modulation.forward(&y.silu()?)?.chunk(3, D::Minus1)?;
        let h = modulate(&self.in_ln.forward(x)?, &m[0], &m[1])?;
        let h = self.fc2.forward(&self.fc1.forward(&h)?.silu()?)?;
        x + m[2].broadcast_mul(&h)?
    }
}

/// The flow head (`SimpleMLPAdaLN` with two time conditions): (condition, s, t, x) → the flow at x.
#[derive(Debug, Clone)]
pub struct FlowNet {
    time_embed: [TimestepEmbedder; 2],
    cond_embed: Linear,
    input_proj: Linear,
    res_blocks: Vec<ResBlock>,
    final_norm_weight: Tensor,
    final_norm_bias: Tensor,
    final_modulation: Linear,
    final_linear: Linear,
    norm_eps: f64,
}

impl FlowNet {
    fn new(cfg: &PocketTtsConfig, vb: Weights) -> Result<Self> {
        let (dim, d, ldim) = (cfg.flow_dim, cfg.flow_lm_d_model, cfg.latent_dim);
        let device = vb.device().clone();
        Ok(Self {
            time_embed: [
                TimestepEmbedder::new(cfg, vb.pp("time_embed.0"))?,
                TimestepEmbedder::new(cfg, vb.pp("time_embed.1"))?,
            ],
            cond_embed: Linear::load(d, dim, true, vb.pp("cond_embed"))?,
            input_proj: Linear::load(ldim, dim, true, vb.pp("input_proj"))?,
            res_blocks: (0..cfg.flow_depth)
                .map(|i| ResBlock::new(cfg.flow_dim, cfg.flow_norm_eps, vb.pp(format!("res_blocks.{i}"))))
                .collect::<Result<_>>()?,
            // `FinalLayer.norm_final` has no affine parameters.
            final_norm_weight: Tensor::ones(dim, DType::F32, &device)?,
            final_norm_bias: Tensor::zeros(dim, DType::F32, &device)?,
            final_modulation: Linear::load(dim, 2 * dim, true, vb.pp("final_layer.adaLN_modulation.1"))?,
            final_linear: Linear::load(dim, ldim, true, vb.pp("final_layer.linear"))?,
            norm_eps: cfg.flow_norm_eps,
        })
    }

    /// The flow at `x` (B, latent_dim) from time `s` to time `t` (each (B, 1)), conditioned on `c` (B, d_model).
    pub fn forward(&self, c: &Tensor, s: &Tensor, t: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.flow(c, &self.time_condition(s, t)?, x)
    }

    /// The time part of the conditioning for a jump from `s` to `t` (each (B, 1)) → (B, flow_dim).
    fn time_condition(&self, s: &Tensor, t: &Tensor) -> Result<Tensor> {
        (self.time_embed[0].forward(s)? + self.time_embed[1].forward(t)?)? / 2.0
    }

    /// The time conditions of [`FlowNet::lsd_decode`]'s `steps` jumps, (1, flow_dim) each: the same for every
    /// frame, so a generation makes them once.
    pub fn lsd_times(&self, steps: usize, device: &candle_core::Device) -> Result<Vec<Tensor>> {
        (0..steps)
            .map(|i| {
                // Times as the package makes them: a Python float (f64) rounded to f32.
                let s = Tensor::full((i as f64 / steps as f64) as f32, (1, 1), device)?;
                let t = Tensor::full(((i + 1) as f64 / steps as f64) as f32, (1, 1), device)?;
                self.time_condition(&s, &t)
            })
            .collect()
    }

    /// [`FlowNet::forward`] with the time condition made ([`FlowNet::time_condition`]).
    fn flow(&self, c: &Tensor, times: &Tensor, x: &Tensor) -> Result<Tensor> {
        let x = self.input_proj.forward(x)?;
        let y = self.cond_embed.forward(c)?.broadcast_add(times)?;
        let mut x = x;
        for block in &self.res_blocks {
            x = block.forward(&x, &y)?;
        }
        let m = self.final_modulation.forward(&y.silu()?)?.chunk(2, D::Minus1)?;
        let h = layer_norm(&x, &self.final_norm_weight, &self.final_norm_bias, self.norm_eps)?;
        self.final_linear.forward(&modulate(&h, &m[0], &m[1])?)
    }

    /// Lagrangian self-distillation sampling (`lsd_decode`): `steps` Euler-like jumps from `noise` (B, latent_dim),
    /// jump i from time i/steps to (i+1)/steps.
    pub fn lsd_decode(&self, c: &Tensor, noise: &Tensor, steps: usize) -> Result<Tensor> {
        self.lsd_decode_with(c, noise, &self.lsd_times(steps, noise.device())?)
    }

    /// [`FlowNet::lsd_decode`] with its jumps' time conditions made ([`FlowNet::lsd_times`]).
    pub fn lsd_decode_with(&self, c: &Tensor, noise: &Tensor, times: &[Tensor]) -> Result<Tensor> {
        let mut x = noise.clone();
        for time in times {
            let flow = self.flow(c, time, &x)?;
            x = (x + (flow / times.len() as f64)?)?;
        }
        Ok(x)
    }
}

/// The Flow-LM's streaming state: the transformer's KV cache and position.
#[derive(Debug, Clone, Default)]
pub struct FlowLmState {
    transformer: TransformerState,
}

/// The Flow-LM: a causal transformer over [text | voice | latents] whose last output conditions the flow head and
/// the EOS head.
#[derive(Debug, Clone)]
pub struct FlowLm {
    /// Lookup table (n_bins + 1, d_model).
    embed: Tensor,
    input_linear: Linear,
    /// Stands in for the latent before the first frame (the reference's NaN input), (latent_dim).
    bos_emb: Tensor,
    /// Precedes a voice prompt (when the config inserts it), (d_model).
    bos_before_voice: Option<Tensor>,
    speaker_proj: Linear,
    transformer: Transformer,
    out_norm: LayerNorm,
    out_eos: Linear,
    /// The flow head.
    pub flow: FlowNet,
    /// Latent statistics: the Mimi decoder takes `latent · emb_std + emb_mean` (latent_dim each).
    pub emb_std: Tensor,
    /// See `emb_std`.
    pub emb_mean: Tensor,
    d_model: usize,
}

impl FlowLm {
    fn new(cfg: &PocketTtsConfig, vb: Weights) -> Result<Self> {
        let (d, ldim) = (cfg.flow_lm_d_model, cfg.latent_dim);
        Ok(Self {
            embed: vb.get((cfg.flow_lm_n_bins + 1, d), "conditioner.embed.weight")?,
            input_linear: Linear::load(ldim, d, false, vb.pp("input_linear"))?,
            bos_emb: vb.get(ldim, "bos_emb")?,
            bos_before_voice: cfg.flow_lm_insert_bos_before_voice.then(|| vb.get(d, "bos_before_voice")).transpose()?,
            speaker_proj: Linear::new(vb.matrix((d, ldim), "speaker_proj_weight")?, None)?,
            transformer: {
                // One run per generated frame: its weights packed (in the precision's form) with the loading, not
                // over the first frames.
                let transformer = Transformer::new(&cfg.flow_lm_transformer(), vb.pp("transformer"))?;
                transformer.prepare();
                transformer
            },
            out_norm: LayerNorm::new(d, cfg.norm_eps, vb.pp("out_norm"))?,
            out_eos: Linear::load(d, 1, true, vb.pp("out_eos"))?,
            flow: FlowNet::new(cfg, vb.pp("flow_net"))?,
            emb_std: vb.get(ldim, "emb_std")?,
            emb_mean: vb.get(ldim, "emb_mean")?,
            d_model: d,
        })
    }

    /// Token ids → their embeddings (1, n, d_model).
    pub fn text_embeddings(&self, tokens: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(tokens, tokens.len(), self.embed.device())?;
        self.embed.index_select(&ids, 0)?.unsqueeze(0)
    }

    /// Mimi latents of a voice (1, F, latent_dim) → the voice prompt (1, [1 +] F, d_model): `speaker_proj_weight`,
    /// `bos_before_voice` in front when the model has it.
    pub fn voice_prompt(&self, latents: &Tensor) -> Result<Tensor> {
        let voice = self.speaker_proj.forward(latents)?;
        match &self.bos_before_voice {
            Some(bos) => Tensor::cat(&[&bos.reshape((1, 1, self.d_model))?, &voice], 1),
            None => Ok(voice),
        }
    }

    /// Runs `inputs` (1, S, d_model) through the transformer after what `state` holds; returns the normed output of
    /// the last position (1, d_model).
    fn backbone(&self, inputs: &Tensor, state: &mut FlowLmState) -> Result<Tensor> {
        let y = self.transformer_step(inputs, state)?;
        let last = y.narrow(2, y.dim(2)? - 1, 1)?.squeeze(2)?;
        self.out_norm.forward(&last)
    }

    /// Feeds a prompt (text embeddings or a voice prompt, (1, S, d_model)) into `state`; its output is not used.
    pub fn prompt(&self, inputs: &Tensor, state: &mut FlowLmState) -> Result<()> {
        self.transformer_step(inputs, state).map(drop)
    }

    /// `inputs` (1, S, d_model) through the transformer after what `state` holds → (1, d_model, S).
    fn transformer_step(&self, inputs: &Tensor, state: &mut FlowLmState) -> Result<Tensor> {
        self.transformer.step(&inputs.transpose(1, 2)?.contiguous()?, &mut state.transformer)
    }

    /// One generation step: the previous latent (1, latent_dim), or `None` for the first (BOS) → the backbone's
    /// output for it (1, d_model), which conditions [`FlowLm::eos_logit`] and the flow head.
    pub fn step(&self, previous: Option<&Tensor>, state: &mut FlowLmState) -> Result<Tensor> {
        let latent = match previous {
            Some(l) => l.clone(),
            None => self.bos_emb.unsqueeze(0)?,
        };
        let input = self.input_linear.forward(&latent)?.unsqueeze(1)?;
        self.backbone(&input, state)
    }

    /// The EOS logit (1, 1) of a step's output.
    pub fn eos_logit(&self, hidden: &Tensor) -> Result<Tensor> {
        self.out_eos.forward(hidden)
    }
}

/// Loudest 20 ms of a voice prompt below which it counts as silent, in dB below full scale: quieter than the noise
/// floor of any microphone recording, well above the rounding noise of 16-bit silence (−101 dBFS).
pub const SILENT_VOICE_DBFS: f64 = -60.0;

/// A voice prompt as [`PocketTts::read_voice`] reads it.
#[derive(Debug, Clone)]
pub struct VoiceAudio {
    /// Mono samples at the model rate, at most `voice_max_seconds` of them.
    pub samples: Vec<f32>,
    /// The file holds more than that.
    pub truncated: bool,
    /// The file's length in seconds when its header records it.
    pub file_seconds: Option<f64>,
}

/// One piece of text the model generates in one go (`split_into_best_sentences` then `prepare_text_prompt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextChunk {
    /// The prepared text.
    pub text: String,
    /// Its text pieces.
    pub tokens: Vec<u32>,
    /// Frames decoded after EOS: the config's, else 3 for texts of at most 4 words, 1 for longer ones, plus 2.
    pub frames_after_eos: usize,
}

/// Sentence-final punctuation (`_TERMINAL_PUNCTUATION`).
const TERMINAL_PUNCTUATION: &str = ".!?\u{2026}";
/// Punctuation a text may end on that becomes a period (`_WEAK_PUNCTUATION`).
const WEAK_PUNCTUATION: &str = ",;:-\u{2013}\u{2014}";
/// Closing quotes and brackets kept after the final punctuation (`_CLOSERS`).
const CLOSERS: &str = "\"'\u{201d}\u{2019})]\u{00bb}";

/// `_ensure_terminal_punctuation`: a text that does not end a sentence (before closing quotes or brackets) gets a
/// period; a trailing comma, colon or dash becomes one.
fn ensure_terminal_punctuation(text: &str) -> String {
    let core = text.trim_end_matches(|c| CLOSERS.contains(c) || c == ' ');
    let closers = text[core.len()..].trim();
    match core.chars().last() {
        None => text.to_string(),
        Some(c) if TERMINAL_PUNCTUATION.contains(c) => text.to_string(),
        Some(c) if WEAK_PUNCTUATION.contains(c) => {
            format!("{}.{closers}", core.trim_end_matches(|c| WEAK_PUNCTUATION.contains(c) || c == ' '))
        }
        Some(_) => format!("{text}."),
    }
}

/// `re.sub(r"([.!?…])\s*[,;:]", r"\1", text)`: a sentence mark followed by a comma, semicolon or colon keeps only
/// the mark.
fn drop_punctuation_after_sentence_end(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        out.push(chars[i]);
        if TERMINAL_PUNCTUATION.contains(chars[i]) {
            let mut j = i + 1;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if j < chars.len() && ",;:".contains(chars[j]) {
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out
}

impl PocketTtsConfig {
    /// `prepare_text_prompt`: the text as the model reads it, and the package's guess of frames after EOS (before
    /// its + 2). Empty text (after the rewrites) is an error.
    pub fn prepare_text(&self, text: &str) -> crate::Result<(String, usize)> {
        let mut text = text.trim().to_string();
        let replace: std::collections::BTreeMap<String, String> = serde_json::from_str(&self.replace_characters)
            .map_err(|e| crate::Error::InvalidArgument(format!("replace_characters: {e}")))?;
        if !replace.is_empty() {
            let mapped: String = text
                .chars()
                .map(|c| {
                    let mut buf = [0u8; 4];
                    replace.get(&*c.encode_utf8(&mut buf)).cloned().unwrap_or_else(|| c.to_string())
                })
                .collect();
            text = drop_punctuation_after_sentence_end(&mapped.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        if text.is_empty() {
            return Err(crate::Error::InvalidArgument("the text is empty".into()));
        }
        text = text.replace(['\n', '\r'], " ").replace("  ", " ");
        if self.remove_semicolons {
            text = text.replace(';', ",");
        }
        let guess = if text.split_whitespace().count() <= 4 { 3 } else { 1 };
        if self.capitalize_first_letter {
            let mut chars = text.chars();
            if let Some(first) = chars.next().filter(|c| !c.is_uppercase()) {
                text = first.to_uppercase().chain(chars).collect();
            }
        }
        if self.append_terminal_punctuation {
            text = ensure_terminal_punctuation(&text);
        }
        if self.pad_with_spaces_for_short_inputs && text.split_whitespace().count() < 5 {
            text = format!("        {text}");
        }
        Ok((text, guess))
    }
}

impl PocketTtsConfig {
    /// `end_on_pause`: a voice prompt (mono, model rate) ending on exactly `voice_pause_seconds` of silence. Its
    /// trailing 20 ms frames more than `voice_floor_db` below the loudest are cut, the last `voice_fade_seconds` of
    /// what remains faded out (`linspace(1, 0)`), then the zeros appended. Shorter than one frame: unchanged.
    pub fn end_on_pause(&self, samples: &[f32]) -> Vec<f32> {
        let sr = self.sample_rate as f64;
        let frame = ((0.02 * sr) as usize).max(1);
        let n = samples.len() / frame;
        if n == 0 {
            return samples.to_vec();
        }
        // In f32, as torch computes it.
        let db: Vec<f32> = samples[..n * frame]
            .chunks_exact(frame)
            .map(|f| 20.0 * ((f.iter().map(|x| x * x).sum::<f32>() / frame as f32).sqrt() + 1e-12).log10())
            .collect();
        let loudest = db.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let floor = loudest - self.voice_floor_db as f32;
        let last_loud = db.iter().rposition(|&d| d > floor).unwrap_or(0);
        let end = (last_loud + 1) * frame;
        let mut out = samples[..end].to_vec();
        // Rounded, not truncated as the package's `int()`: the seconds come through f32 metadata (0.08 → 0.07999…).
        let fade = ((self.voice_fade_seconds * sr).round() as usize).min(end);
        for (i, x) in out[end - fade..].iter_mut().enumerate() {
            *x *= if fade == 1 { 1.0 } else { 1.0 - i as f32 / (fade - 1) as f32 };
        }
        out.resize(end + (self.voice_pause_seconds * sr).round() as usize, 0.0);
        out
    }
}

/// `_find_boundary_indices`: segment starts after runs of `boundary` tokens (optionally not after a decimal point
/// between digits), with 0 first and the length last.
fn boundary_indices(
    tokens: &[u32],
    boundary: &[u32],
    skip_decimal: Option<&tokenizers::Tokenizer>,
) -> crate::Result<Vec<usize>> {
    let mut indices = vec![0];
    let mut previous_was_boundary = false;
    for (i, t) in tokens.iter().enumerate() {
        if boundary.contains(t) {
            previous_was_boundary = true;
            continue;
        }
        if previous_was_boundary {
            let decimal = match skip_decimal {
                Some(tok) => {
                    let prefix: Vec<char> = decode(tok, &tokens[..i])?.chars().collect();
                    let suffix = decode(tok, &tokens[i..])?;
                    prefix.len() >= 2
                        && prefix[prefix.len() - 1] == '.'
                        && prefix[prefix.len() - 2].is_ascii_digit()
                        && suffix.chars().next().is_some_and(|c| c.is_ascii_digit())
                }
                None => false,
            };
            if !decimal {
                indices.push(i);
            }
        }
        previous_was_boundary = false;
    }
    indices.push(tokens.len());
    Ok(indices)
}

/// The id of a tokenizer.json's unknown piece: the model's `unk_id` (Unigram) or `unk_token` (BPE, WordPiece,
/// WordLevel); `None` when it has none.
fn unknown_piece(tokenizer_json: &str, tokenizer: &tokenizers::Tokenizer) -> Option<u32> {
    let json: serde_json::Value = serde_json::from_str(tokenizer_json).ok()?;
    let model = json.get("model")?;
    if let Some(id) = model.get("unk_id").and_then(serde_json::Value::as_u64) {
        return u32::try_from(id).ok();
    }
    tokenizer.token_to_id(model.get("unk_token")?.as_str()?)
}

/// `'a', 'b'` for a message, at most 10 characters, escaped where not printable.
pub fn quote_characters(chars: &[char]) -> String {
    let mut list: Vec<String> = chars.iter().take(10).map(|c| format!("{:?}", c)).collect();
    if chars.len() > 10 {
        list.push(format!("and {} more", chars.len() - 10));
    }
    list.join(", ")
}

fn encode(tok: &tokenizers::Tokenizer, text: &str) -> crate::Result<Vec<u32>> {
    let enc = tok.encode(text, true).map_err(|e| crate::Error::InvalidArgument(format!("cannot tokenize: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

fn decode(tok: &tokenizers::Tokenizer, ids: &[u32]) -> crate::Result<String> {
    tok.decode(ids, true).map_err(|e| crate::Error::InvalidArgument(format!("cannot detokenize: {e}")))
}

/// A Pocket TTS model: its hyper-parameters, tokenizer, Mimi and Flow-LM.
#[derive(Debug, Clone)]
pub struct PocketTts {
    /// Hyper-parameters.
    pub config: PocketTtsConfig,
    /// That tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
    /// The piece the tokenizer gives for text outside its vocabulary, if it has one (a tokenizer with byte fallback
    /// has none: it can spell anything).
    unknown_id: Option<u32>,
    /// Audio ↔ latents.
    pub mimi: PocketMimi,
    /// Text (and a voice) → latents.
    pub flow_lm: FlowLm,
}

/// How [`PocketTts::synthesize`] samples: `temperature` sets the noise's variance (0: none), `steps` the LSD steps
/// per frame, `seed` the noise (the same seed gives the same speech; not the package's torch random stream).
#[derive(Debug, Clone, Copy)]
pub struct Speech {
    /// The noise's variance (0: deterministic).
    pub temperature: f64,
    /// LSD steps per frame.
    pub steps: usize,
    /// Seed of the noise.
    pub seed: u64,
}

/// How a chunk's latents are sampled ([`PocketTts::generate_latents`]).
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// Steps generated after the first EOS before generation stops.
    pub frames_after_eos: usize,
    /// The noise's variance (0: deterministic).
    pub temperature: f64,
    /// LSD steps per latent.
    pub steps: usize,
}

impl PocketTts {
    /// Builds the model a Pocket TTS GGUF file describes, weights on `device`.
    pub fn load(file: &ModelFile, device: &candle_core::Device) -> crate::Result<Self> {
        let config = PocketTtsConfig::from_gguf(file)?;
        let tokenizer_json = file.text(TOKENIZER_JSON)?;
        let vb = super::weights(file, device, super::Parts::All, (&[], &[]));
        Self::new(config, tokenizer_json, vb)
            .map_err(|e| crate::Error::model_file(&file.path, format!("invalid pocket-tts model: {e}")))
    }

    /// Builds the model from `config` and the GGUF tensor names (`mimi.…`, `flow_lm.…`).
    pub fn new(config: PocketTtsConfig, tokenizer_json: String, vb: Weights) -> Result<Self> {
        let mimi = PocketMimi::new(&config, vb.pp("mimi"))?;
        let flow_lm = FlowLm::new(&config, vb.pp("flow_lm"))?;
        let tokenizer = tokenizer_json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| candle_core::Error::Msg(format!("invalid embedded tokenizer.json: {e}")))?;
        let unknown_id = unknown_piece(&tokenizer_json, &tokenizer);
        Ok(Self { config, tokenizer, unknown_id, mimi, flow_lm })
    }

    /// The characters of `text` (after [`PocketTtsConfig::prepare_text`]) that the tokenizer has no piece for, each
    /// once, in order of appearance. The model reads them as its unknown piece, as the package does: at best a
    /// pause, at worst a wrong sound, so callers should tell the user.
    pub fn unknown_characters(&self, text: &str) -> crate::Result<Vec<char>> {
        self.unknown_in_prepared(&self.config.prepare_text(text)?.0)
    }

    /// [`PocketTts::unknown_characters`] of a prepared text.
    fn unknown_in_prepared(&self, text: &str) -> crate::Result<Vec<char>> {
        let Some(unknown) = self.unknown_id else { return Ok(vec![]) };
        let enc = self
            .tokenizer
            .encode_char_offsets(text, true)
            .map_err(|e| crate::Error::InvalidArgument(format!("cannot tokenize: {e}")))?;
        let chars: Vec<char> = text.chars().collect();
        let mut found = vec![];
        for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            if id != unknown {
                continue;
            }
            for &c in chars.get(start..end).unwrap_or(&[]) {
                if !c.is_whitespace() && !found.contains(&c) {
                    found.push(c);
                }
            }
        }
        Ok(found)
    }

    /// Checks that the prepared `text` has something to say: a letter or digit, and at least one the tokenizer
    /// knows. Punctuation alone, or a script the model was not trained on, would make it babble until the length
    /// limit.
    fn check_speakable(&self, text: &str) -> crate::Result<()> {
        if !text.chars().any(char::is_alphanumeric) {
            return Err(crate::Error::InvalidArgument("the text has nothing to speak (no letters or digits)".into()));
        }
        let unknown = self.unknown_in_prepared(text)?;
        if text.chars().filter(|c| c.is_alphanumeric()).all(|c| unknown.contains(&c)) {
            return Err(crate::Error::InvalidArgument(format!(
                "none of the text's letters are in the model's vocabulary ({})",
                quote_characters(&unknown)
            )));
        }
        Ok(())
    }

    /// `text` as the model generates it: split at sentence ends into chunks of at most `max_tokens_per_chunk` pieces
    /// (`split_into_best_sentences`, oversized sentences split at commas, semicolons and colons), each prepared and
    /// tokenized.
    pub fn text_chunks(&self, text: &str) -> crate::Result<Vec<TextChunk>> {
        let (tok, max) = (&self.tokenizer, self.config.max_tokens_per_chunk);
        let (text, _) = self.config.prepare_text(text)?;
        self.check_speakable(&text)?;
        let tokens = encode(tok, text.trim())?;
        // The first piece of each marker string is the word-start marker, not punctuation.
        let sentence_ends: Vec<u32> = encode(tok, ".!...?")?.into_iter().skip(1).collect();
        let clause_ends: Vec<u32> = encode(tok, ",;:")?.into_iter().skip(1).collect();
        let segments = |tokens: &[u32], bounds: &[usize]| -> crate::Result<Vec<(usize, String)>> {
            bounds.windows(2).map(|w| Ok((w[1] - w[0], decode(tok, &tokens[w[0]..w[1]])?))).collect()
        };
        let mut refined = vec![];
        for (n, sentence) in segments(&tokens, &boundary_indices(&tokens, &sentence_ends, Some(tok))?)? {
            if n <= max {
                refined.push((n, sentence));
                continue;
            }
            let sub = encode(tok, sentence.trim())?;
            let parts = segments(&sub, &boundary_indices(&sub, &clause_ends, None)?)?;
            if parts.len() > 1 {
                refined.extend(parts);
            } else {
                refined.push((n, sentence));
            }
        }
        let mut chunks: Vec<String> = vec![];
        let (mut current, mut count) = (String::new(), 0);
        for (n, sentence) in refined {
            if current.is_empty() {
                (current, count) = (sentence, n);
            } else if count + n > max {
                chunks.push(current.trim().to_string());
                (current, count) = (sentence, n);
            } else {
                current = format!("{current} {sentence}");
                count += n;
            }
        }
        if !current.is_empty() {
            chunks.push(current.trim().to_string());
        }
        chunks
            .into_iter()
            .map(|chunk| {
                let (text, guess) = self.config.prepare_text(&chunk)?;
                let frames_after_eos =
                    if self.config.frames_after_eos > 0 { self.config.frames_after_eos } else { guess + 2 };
                Ok(TextChunk { tokens: encode(tok, &text)?, text, frames_after_eos })
            })
            .collect()
    }

    /// The Flow-LM state after a voice prompt: `pcm` (1, 1, T) at the model rate (already cut as the package's
    /// `end_on_pause` does) → Mimi latents → the voice prompt, fed in one call.
    pub fn voice_state(&self, pcm: &Tensor) -> Result<FlowLmState> {
        let latents = self.mimi.encode(pcm)?.transpose(1, 2)?.contiguous()?;
        let mut state = FlowLmState::default();
        self.flow_lm.prompt(&self.flow_lm.voice_prompt(&latents)?, &mut state)?;
        Ok(state)
    }

    /// The most frames a chunk of `n_tokens` text pieces may generate: `ceil((n / tokens_per_second + padding) ·
    /// frame_rate)` (`TTSModel._estimate_max_gen_len`).
    pub fn max_frames(&self, n_tokens: usize) -> usize {
        let c = &self.config;
        let frame_rate = c.sample_rate as f64 / c.hop() as f64;
        ((n_tokens as f64 / c.tokens_per_second + c.gen_seconds_padding) * frame_rate).ceil() as usize
    }

    /// The latents of one text chunk (`_generate` + `_autoregressive_generation`): the `tokens` prompted into a copy
    /// of `state` (a fresh one without a voice), then one latent per step from BOS on, each the next step's input,
    /// until `frames_after_eos` steps after the first EOS (EOS ignored before `min_frames_before_eos`) or
    /// [`PocketTts::max_frames`]. Noise is N(0, temperature) drawn from `rng` (zeros at temperature 0: `rng` is not
    /// used); `steps` LSD steps per latent.
    /// Returns (1, F, latent_dim), before `emb_std` / `emb_mean`.
    pub fn generate_latents(
        &self,
        tokens: &[u32],
        state: &FlowLmState,
        sampling: Sampling,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Tensor> {
        let mut latents = vec![];
        self.generate_latents_with(tokens, state, sampling, rng, &mut |l| {
            latents.push(l.clone());
            Ok(())
        })?;
        if latents.is_empty() {
            return Tensor::zeros((1, 0, self.config.latent_dim), DType::F32, self.flow_lm.emb_std.device());
        }
        Tensor::stack(&latents, 1)?.squeeze(2)
    }

    /// [`PocketTts::generate_latents`], handing each latent (1, latent_dim) to `on_latent` as soon as it is sampled.
    pub fn generate_latents_with(
        &self,
        tokens: &[u32],
        state: &FlowLmState,
        sampling: Sampling,
        rng: &mut rand::rngs::StdRng,
        on_latent: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        let Sampling { frames_after_eos, temperature, steps } = sampling;
        let (lm, c) = (&self.flow_lm, &self.config);
        let mut state = state.clone();
        // Each step on the pool (`nn::on_pool`): a step is hundreds of small parallel products.
        on_pool(|| lm.prompt(&lm.text_embeddings(tokens)?, &mut state))?;
        let device = lm.emb_std.device();
        let times = lm.flow.lsd_times(steps, device)?;
        let normal = rand_distr::Normal::new(0f32, temperature.sqrt() as f32)
            .map_err(|e| candle_core::Error::Msg(format!("temperature {temperature}: {e}")))?;
        let mut previous: Option<Tensor> = None;
        let mut eos_step = None;
        for step in 0..self.max_frames(tokens.len()) {
            let (hidden, eos) = on_pool(|| {
                let hidden = lm.step(previous.as_ref(), &mut state)?;
                let eos = lm.eos_logit(&hidden)?.flatten_all()?.to_vec1::<f32>()?[0] as f64 > c.eos_threshold;
                Ok::<_, candle_core::Error>((hidden, eos))
            })?;
            if eos && eos_step.is_none() && step >= c.min_frames_before_eos {
                eos_step = Some(step);
            }
            if eos_step.is_some_and(|e| step >= e + frames_after_eos) {
                break;
            }
            let noise = if temperature > 0.0 {
                let values: Vec<f32> =
                    (0..c.latent_dim).map(|_| rand_distr::Distribution::sample(&normal, rng)).collect();
                Tensor::from_vec(values, (1, c.latent_dim), device)?
            } else {
                Tensor::zeros((1, c.latent_dim), DType::F32, device)?
            };
            let latent = on_pool(|| lm.flow.lsd_decode_with(&hidden, &noise, &times))?;
            on_latent(&latent)?;
            previous = Some(latent);
        }
        Ok(())
    }

    /// The Flow-LM state for a voice given as audio (mono, at the model rate): cut with
    /// [`PocketTtsConfig::end_on_pause`] after its first `voice_max_seconds`, then [`PocketTts::voice_state`].
    pub fn voice_state_from_audio(&self, samples: &[f32]) -> crate::Result<FlowLmState> {
        // The package's CLI and server keep the first 30 s of a voice (`truncate=True`): a longer prompt adds
        // nothing but attention cost to every generated frame.
        let max = (self.config.voice_max_seconds * self.config.sample_rate as f64).round() as usize;
        let used = &samples[..samples.len().min(max)];
        if used.is_empty() {
            return Err(crate::Error::InvalidArgument("the voice prompt has no audio".into()));
        }
        // A silent prompt is no voice to copy: the model would continue the silence, or babble. The package takes
        // it anyway; an error tells the user their recording is empty (a muted microphone, a wrong channel).
        let frame = ((0.02 * self.config.sample_rate as f64) as usize).clamp(1, used.len());
        let loudest = used
            .chunks(frame)
            .map(|f| (f.iter().map(|x| x * x).sum::<f32>() / f.len() as f32).sqrt())
            .fold(0f32, f32::max);
        if 20.0 * (loudest as f64).log10() < SILENT_VOICE_DBFS {
            return Err(crate::Error::InvalidArgument(format!(
                "the voice is silent (no 20 ms of it is louder than {SILENT_VOICE_DBFS} dBFS)"
            )));
        }
        let cut = self.config.end_on_pause(used);
        let device = self.flow_lm.emb_std.device();
        let pcm = Tensor::from_vec(cut, (1, 1, ()), device).map_err(candle_err)?;
        self.voice_state(&pcm).map_err(candle_err)
    }

    /// Reads a voice prompt from an audio file (any format, rate and channel count → mono at the model rate), only
    /// its first `voice_max_seconds`: a 10-minute file costs what 30 s cost. Errors name the file.
    pub fn read_voice(&self, path: &std::path::Path) -> crate::Result<VoiceAudio> {
        let rate = self.config.sample_rate as u32;
        let max = ((self.config.voice_max_seconds * rate as f64).round() as usize).max(1);
        let mut reader = crate::audio::Reader::open(path, rate)?;
        let file_seconds = reader.estimated_len().map(|n| n as f64 / rate as f64);
        reader.set_chunk_len(max)?;
        let samples = reader.next_chunk()?.unwrap_or_default();
        // Whether more follows; what is wrong past the part used (a bad packet at minute 9) does not matter here.
        reader.set_chunk_len(1)?;
        let truncated = !matches!(reader.next_chunk(), Ok(None));
        Ok(VoiceAudio { samples, truncated, file_seconds })
    }

    /// Speech for `text` (`generate_audio`): [`PocketTts::synthesize_stream`] collected.
    pub fn synthesize(&self, text: &str, voice: Option<&FlowLmState>, how: Speech) -> crate::Result<Vec<f32>> {
        let mut audio = vec![];
        self.synthesize_stream(text, voice, how, &mut |pcm| {
            audio.extend_from_slice(pcm);
            Ok(())
        })?;
        Ok(audio)
    }

    /// Speech for `text` as it is made (`generate_audio_stream`), one frame's audio (`hop` samples) at a time to
    /// `on_audio`: each chunk of [`PocketTts::text_chunks`] generated from a copy of `voice` (a fresh state without
    /// one), each latent decoded as soon as it is sampled (Mimi's streaming state kept through the chunk, a fresh one
    /// and a fade-in per chunk), sampled as `how` says.
    pub fn synthesize_stream(
        &self,
        text: &str,
        voice: Option<&FlowLmState>,
        how: Speech,
        on_audio: &mut dyn FnMut(&[f32]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        let Speech { temperature, steps, seed } = how;
        if !(temperature.is_finite() && temperature >= 0.0) || steps == 0 {
            return Err(crate::Error::InvalidArgument(format!(
                "temperature must be at least 0 (got {temperature}) and steps at least 1 (got {steps})"
            )));
        }
        let fresh = FlowLmState::default();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let lm = &self.flow_lm;
        // One decoder state for every chunk, restarted for each: its buffers are made once.
        let mut mimi = self.mimi.decode_state(self.flow_lm.emb_std.device());
        for chunk in self.text_chunks(text)? {
            mimi.restart();
            // Samples of the chunk's audio made so far (the fade-in covers its first ones).
            let mut done = 0usize;
            // The callback's own errors (a full disk) come back through candle's error type; keep the first one.
            let mut failure: Option<crate::Error> = None;
            let state = voice.unwrap_or(&fresh);
            let sampling = Sampling { frames_after_eos: chunk.frames_after_eos, temperature, steps };
            let run = self.generate_latents_with(&chunk.tokens, state, sampling, &mut rng, &mut |latent| {
                let z = latent.broadcast_mul(&lm.emb_std)?.broadcast_add(&lm.emb_mean)?.unsqueeze(2)?;
                let mut pcm = on_pool(|| self.mimi.decode_step(&z, &mut mimi)?.flatten_all()?.to_vec1::<f32>())?;
                fade_in(&mut pcm, done, self.config.fade_in_samples);
                done += pcm.len();
                on_audio(&pcm).map_err(|e| {
                    failure = Some(e);
                    candle_core::Error::Msg("stopped".into())
                })
            });
            if let Some(e) = failure {
                return Err(e);
            }
            run.map_err(candle_err)?;
        }
        Ok(())
    }

    /// Generated latents (1, F, latent_dim) → audio (1, 1, F · hop): `latent · emb_std + emb_mean` through the Mimi
    /// decoder, the first `fade_in_samples` faded in (`linspace(0, 1)`) as each chunk's are.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let lm = &self.flow_lm;
        if latents.dim(1)? == 0 {
            return Tensor::zeros((1, 1, 0), DType::F32, latents.device());
        }
        let z = latents.broadcast_mul(&lm.emb_std)?.broadcast_add(&lm.emb_mean)?;
        let audio = self.mimi.decode(&z.transpose(1, 2)?.contiguous()?)?;
        let mut pcm = audio.flatten_all()?.to_vec1::<f32>()?;
        fade_in(&mut pcm, 0, self.config.fade_in_samples);
        Tensor::from_vec(pcm, audio.shape(), audio.device())
    }
}

/// The fade-in of a chunk's first `n` samples (`linspace(0, 1, n)`) on `pcm`, the chunk's samples from position
/// `done` on (a stream fades its first frames as they come).
fn fade_in(pcm: &mut [f32], done: usize, n: usize) {
    for (i, x) in pcm.iter_mut().take(n.saturating_sub(done)).enumerate() {
        let k = done + i;
        *x *= if n == 1 { 0.0 } else { k as f32 / (n - 1) as f32 };
    }
}
