//! DAC (Descript Audio Codec): 16 / 24 / 44.1 kHz audio ↔ frames of up to `n_q` codes.
//!
//! Encode: the input is right-padded to a hop multiple, then a conv and one encoder block per rate (three residual
//! units with dilations 1/3/9, Snake, strided conv doubling the channels), Snake, conv to the latent → factorised
//! RVQ (cosine-similarity codebooks). Decode: codes → sum of projected entries → conv, one decoder block per rate
//! (Snake, transposed conv halving the channels, three residual units), Snake, conv to one channel, tanh.
//! Every conv is non-causal with torch's `padding=` (weight norm folded by the converter).
//!
//! Tensor names are the transformers (hub) layout's (`encoder.block.0.res_unit1.conv1.weight`, …); the converter maps
//! descript's `.pth` names onto them.

use std::sync::Arc;

use crate::nn::Weights;
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::gguf::{keys, metadata_config, ModelFile};
use crate::nn::conv::{Conv1d, ConvConfig, ConvState, ConvTranspose1d, ConvTransposeState, PadMode, Padding};
use crate::nn::rvq::FactorizedRvq;
use crate::nn::snake::Snake;
use crate::nn::{compact, mask_to, pad_to_multiple, ValidLengths};
use crate::stream;

/// `general.architecture` of a DAC model file.
pub const ARCH: &str = "dac";

metadata_config! {
    /// DAC hyper-parameters, as descript's `DAC(...)` arguments (in its order); read from and written to GGUF metadata.
    #[derive(Debug, Clone, PartialEq)]
    pub struct DacConfig {
        /// Channels after the encoder's first conv, doubled by each encoder block.
        pub encoder_dim: usize = count(key::ENCODER_DIM = "codec.dac.encoder_dim"),
        /// Stride of each encoder block; their product is the hop.
        pub encoder_rates: Vec<usize> = strides(key::ENCODER_RATES = "codec.dac.encoder_rates"),
        /// Channels of the latent the quantizer codes.
        pub latent_dim: usize = count(keys::LATENT_DIM),
        /// Channels after the decoder's first conv, halved by each decoder block.
        pub decoder_dim: usize = count(key::DECODER_DIM = "codec.dac.decoder_dim"),
        /// Upsampling factor of each decoder block (transposed-conv stride).
        pub decoder_rates: Vec<usize> = strides(key::DECODER_RATES = "codec.dac.decoder_rates"),
        /// Number of codebooks (RVQ levels).
        pub n_codebooks: usize = count(keys::N_Q),
        /// Entries per codebook.
        pub codebook_size: usize = count(keys::CODEBOOK_SIZE),
        /// Width of a codebook entry (the latent is projected down to it).
        pub codebook_dim: usize = count(keys::CODEBOOK_DIM),
        /// Audio sample rate in Hz.
        pub sample_rate: usize = rate(keys::SAMPLE_RATE),
    }
    /// `codec.dac.*` metadata keys (names follow descript's `DAC(...)` arguments).
    pub mod key;
}

impl DacConfig {
    /// descript's released 44.1 kHz model (`weights_44khz_8kbps_0.0.1.pth`), for `bench --random`.
    pub fn published_44khz() -> Self {
        Self {
            encoder_dim: 64,
            encoder_rates: vec![2, 4, 8, 8],
            latent_dim: 1024,
            decoder_dim: 1536,
            decoder_rates: vec![8, 8, 4, 2],
            n_codebooks: 9,
            codebook_size: 1024,
            codebook_dim: 8,
            sample_rate: 44100,
        }
    }

    /// Reads and checks every key: sizes at least 1, strides with a bounded hop.
    pub fn from_gguf(f: &ModelFile) -> crate::Result<Self> {
        Self::read_metadata(f)
    }

    /// Writes this config, with the hop and the both-halves keys, as GGUF metadata.
    pub fn to_gguf(&self, w: &mut crate::gguf::Writer) {
        crate::gguf::write_shared_keys(w, self.hop());
        self.write_metadata(w);
    }

    /// Audio samples per code frame: the product of the encoder rates.
    pub fn hop(&self) -> usize {
        self.encoder_rates.iter().product()
    }
}

/// Snake → conv k7 (dilation d, "same" padding) → Snake → conv k1, plus the input (centre-cropped if shorter).
#[derive(Debug, Clone)]
struct ResidualUnit {
    snake1: Snake,
    conv1: Conv1d,
    snake2: Snake,
    conv2: Conv1d,
}

impl ResidualUnit {
    fn new(dim: usize, dilation: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            snake1: Snake::new(dim, vb.pp("snake1"))?,
            conv1: Conv1d::new(dim, dim, ConvConfig::torch(7, 3 * dilation).dilation(dilation), vb.pp("conv1"))?,
            snake2: Snake::new(dim, vb.pp("snake2"))?,
            conv2: Conv1d::new(dim, dim, ConvConfig::torch(1, 0), vb.pp("conv2"))?,
        })
    }

    /// The unit on `x`, its output through `after` if given (the next layer's Snake, when nothing else reads the
    /// unit's output). Each activation runs inside the conv that writes its input.
    fn forward(&self, x: &Tensor, after: Option<&Snake>) -> Result<Tensor> {
        let y = self.conv1.forward_then(&self.snake1.forward(x)?, Some(&self.snake2))?;
        // conv2 keeps y's length (k1); the skip is x centre-cropped to it, added inside the conv.
        let crop = (x.dim(2)? - y.dim(2)?) / 2;
        self.conv2.forward_add_then(&y, &x.narrow(2, crop, y.dim(2)?)?, after.map(|s| s as _))
    }
}

/// Three residual units on `x`, the last one's output through `after` (masked to `valid` after each).
fn run_units(units: &[ResidualUnit; 3], x: Tensor, after: &Snake, valid: Option<&ValidLengths>) -> Result<Tensor> {
    // Masking after an activation that keeps zeros (Snake(0) = 0) is masking before it.
    let x = mask_to(units[0].forward(&x, None)?, valid)?;
    let x = mask_to(units[1].forward(&x, None)?, valid)?;
    mask_to(units[2].forward(&x, Some(after))?, valid)
}

impl ResidualUnit {
    /// [`ResidualUnit::forward`] on the next samples of a stream: conv1 answers `3·dilation` samples late, so
    /// the skip waits in `state` for the samples it is added to.
    fn step(&self, x: &Tensor, state: &mut ResidualState, after: Option<&Snake>) -> Result<Tensor> {
        let y = if x.dim(2)? == 0 { x.clone() } else { self.snake1.forward(x)? };
        let y = self.conv1.step_then(&y, &mut state.conv1, Some(&self.snake2))?;
        self.join(x, &y, state, after)
    }

    fn flush(&self, state: &mut ResidualState, after: Option<&Snake>) -> Result<Tensor> {
        let y = snake(&self.snake2, &self.conv1.flush(&mut state.conv1)?)?;
        let none = y.narrow(2, 0, 0)?;
        self.join(&none, &y, state, after)
    }

    /// conv2 over the stream's next `y` samples (conv1's output, through snake2) plus as many skip samples: the
    /// skip is the waiting samples, then `x`; its first `y`-many are added now, the rest wait. Each skip sample is
    /// copied once (the residual of a long piece is most of `x`).
    fn join(&self, x: &Tensor, y: &Tensor, state: &mut ResidualState, after: Option<&Snake>) -> Result<Tensor> {
        let (n, len) = (y.dim(2)?, x.dim(2)?);
        let (now, rest) = match state.skip.take() {
            Some(waiting) => {
                let w = waiting.dim(2)?;
                if n <= w {
                    (waiting.narrow(2, 0, n)?, Tensor::cat(&[&waiting.narrow(2, n, w - n)?, x], 2)?)
                } else {
                    (Tensor::cat(&[&waiting, &x.narrow(2, 0, n - w)?], 2)?, x.narrow(2, n - w, len + w - n)?)
                }
            }
            None => (x.narrow(2, 0, n)?, x.narrow(2, n, len - n)?),
        };
        state.skip = Some(compact(&rest)?);
        if n == 0 {
            return Ok(y.clone());
        }
        self.conv2.forward_add_then(y, &now, after.map(|s| s as _))
    }
}

/// A residual unit's streaming state: its dilated conv's context and the skip samples waiting for it.
#[derive(Debug, Default)]
struct ResidualState {
    conv1: ConvState,
    skip: Option<Tensor>,
}

/// A layer's output on the next samples of a stream, and, at the end (`last`), its flush after them.
fn streamed(step: Result<Tensor>, last: bool, flush: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    let y = step?;
    if !last {
        return Ok(y);
    }
    Tensor::cat(&[y, flush()?], 2)
}

/// Snake on a stream's piece (which may be empty).
fn snake(s: &Snake, x: &Tensor) -> Result<Tensor> {
    if x.dim(2)? == 0 {
        Ok(x.clone())
    } else {
        s.forward(x)
    }
}

/// [`snake`] if there is one.
fn snake_then(s: Option<&Snake>, x: &Tensor) -> Result<Tensor> {
    s.map_or(Ok(x.clone()), |s| snake(s, x))
}

fn residual_units(dim: usize, vb: &Weights) -> Result<[ResidualUnit; 3]> {
    Ok([
        ResidualUnit::new(dim, 1, vb.pp("res_unit1"))?,
        ResidualUnit::new(dim, 3, vb.pp("res_unit2"))?,
        ResidualUnit::new(dim, 9, vb.pp("res_unit3"))?,
    ])
}

/// One block per rate, in order, block i from `vb.pp("block.i")`: `block(dim, rate, vb)` builds one with `dim`
/// channels in, and `next_dim(dim)` is its channels out, the next block's in. Also gives the channels after the
/// last block.
fn blocks<B>(
    rates: &[usize],
    mut dim: usize,
    next_dim: impl Fn(usize) -> usize,
    vb: &Weights,
    block: impl Fn(usize, usize, Weights) -> Result<B>,
) -> Result<(Vec<B>, usize)> {
    let mut blocks = Vec::with_capacity(rates.len());
    for (i, &rate) in rates.iter().enumerate() {
        blocks.push(block(dim, rate, vb.pp(format!("block.{i}")))?);
        dim = next_dim(dim);
    }
    Ok((blocks, dim))
}

#[derive(Debug, Clone)]
struct EncoderBlock {
    res: [ResidualUnit; 3],
    snake1: Snake,
    conv1: Conv1d,
}

impl EncoderBlock {
    /// Residual units at `dim` channels, then Snake and the strided conv (kernel 2s, stride s, padding ⌈s/2⌉)
    /// doubling them.
    fn new(dim: usize, stride: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            res: residual_units(dim, &vb)?,
            snake1: Snake::new(dim, vb.pp("snake1"))?,
            conv1: Conv1d::new(
                dim,
                2 * dim,
                ConvConfig::torch(2 * stride, stride.div_ceil(2)).stride(stride),
                vb.pp("conv1"),
            )?,
        })
    }

    /// The block on `x`, its output through `after` if given; on a padded batch (`valid` given) each output that
    /// a later conv reads ahead into is masked, and `valid` becomes the lengths after the strided conv.
    fn forward(&self, x: &Tensor, valid: &mut Option<ValidLengths>, after: Option<&Snake>) -> Result<Tensor> {
        let x = run_units(&self.res, x.clone(), &self.snake1, valid.as_ref())?;
        let x = self.conv1.forward_then(&x, after.map(|s| s as _))?;
        *valid = valid.take().map(|v| v.map(|len| self.conv1.output_len(len)));
        mask_to(x, valid.as_ref())
    }
}

/// Audio (B, 1, T) → continuous latent (B, latent_dim, T / hop).
#[derive(Debug, Clone)]
pub struct Encoder {
    conv1: Conv1d,
    blocks: Vec<EncoderBlock>,
    snake1: Snake,
    conv2: Conv1d,
}

impl Encoder {
    fn new(cfg: &DacConfig, vb: Weights) -> Result<Self> {
        let conv1 = Conv1d::new(1, cfg.encoder_dim, ConvConfig::torch(7, 3), vb.pp("conv1"))?;
        let (blocks, dim) = blocks(&cfg.encoder_rates, cfg.encoder_dim, |dim| 2 * dim, &vb, EncoderBlock::new)?;
        Ok(Self {
            conv1,
            blocks,
            snake1: Snake::new(dim, vb.pp("snake1"))?,
            conv2: Conv1d::new(dim, cfg.latent_dim, ConvConfig::torch(3, 1), vb.pp("conv2"))?,
        })
    }

    /// Audio (B, 1, T), T a hop multiple (as [`Dac::encode_latent`] pads it) → latent (B, latent_dim, T / hop).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_valid(x, None)
    }

    /// [`Encoder::forward`] on a right-padded batch whose items hold `valid` samples: each conv that looks ahead
    /// gets its input masked to zeros past each item's end, as a single run pads (see [`ValidLengths`]).
    fn forward_valid(&self, x: &Tensor, valid: Option<&ValidLengths>) -> Result<Tensor> {
        let mut valid = valid.cloned();
        let mut x = mask_to(self.conv1.forward(x)?, valid.as_ref())?;
        // The last block's output goes through the final Snake as it is written.
        for (i, block) in self.blocks.iter().enumerate() {
            let last = i + 1 == self.blocks.len();
            x = block.forward(&x, &mut valid, last.then_some(&self.snake1))?;
        }
        let x = if self.blocks.is_empty() { self.snake1.forward(&x)? } else { x };
        self.conv2.forward(&x)
    }
}

#[derive(Debug, Clone)]
struct DecoderBlock {
    snake1: Snake,
    conv_t1: ConvTranspose1d,
    res: [ResidualUnit; 3],
}

impl DecoderBlock {
    /// Snake and the transposed conv (kernel 2s, stride s, padding ⌈s/2⌉) halving `dim`, then residual units.
    fn new(dim: usize, stride: usize, vb: Weights) -> Result<Self> {
        // The reference sets no output_padding: an odd stride s yields s·T − 1 samples.
        let up = ConvConfig::new(
            2 * stride,
            Padding::Torch { padding: stride.div_ceil(2), output_padding: 0 },
            PadMode::Constant,
        )
        .stride(stride);
        Ok(Self {
            snake1: Snake::new(dim, vb.pp("snake1"))?,
            conv_t1: ConvTranspose1d::new(dim, dim / 2, up, vb.pp("conv_t1"))?,
            res: residual_units(dim / 2, &vb)?,
        })
    }

    /// The block on `x` already through its `snake1` (the layer before applied it), its output through `after`
    /// (the next block's Snake, or the decoder's last), masked on a padded batch as [`EncoderBlock::forward`] is.
    fn forward(&self, activated: &Tensor, valid: &mut Option<ValidLengths>, after: &Snake) -> Result<Tensor> {
        let x = self.conv_t1.forward(activated)?;
        *valid = valid.take().map(|v| v.map(|len| self.conv_t1.output_len(len)));
        let x = mask_to(x, valid.as_ref())?;
        run_units(&self.res, x, after, valid.as_ref())
    }
}

/// Latent (B, latent_dim, F) → audio (B, 1, ≈ F · hop) in [-1, 1].
#[derive(Debug, Clone)]
pub struct Decoder {
    conv1: Conv1d,
    blocks: Vec<DecoderBlock>,
    snake1: Snake,
    conv2: Conv1d,
}

impl Decoder {
    fn new(cfg: &DacConfig, vb: Weights) -> Result<Self> {
        let conv1 = Conv1d::new(cfg.latent_dim, cfg.decoder_dim, ConvConfig::torch(7, 3), vb.pp("conv1"))?;
        let (blocks, dim) = blocks(&cfg.decoder_rates, cfg.decoder_dim, |dim| dim / 2, &vb, DecoderBlock::new)?;
        Ok(Self {
            conv1,
            blocks,
            snake1: Snake::new(dim, vb.pp("snake1"))?,
            conv2: Conv1d::new(dim, 1, ConvConfig::torch(7, 3), vb.pp("conv2"))?,
        })
    }

    /// Latent (B, latent_dim, F) → audio (B, 1, ≈ F · hop).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_valid(x, None)?.0)
    }

    /// The Snake that opens stage `i`: block i's, or the final one after the last block.
    fn snake_opening(&self, i: usize) -> &Snake {
        self.blocks.get(i).map_or(&self.snake1, |b| &b.snake1)
    }

    /// [`Decoder::forward`] on a right-padded batch of latents whose items hold `valid` frames, masked as
    /// [`Encoder::forward_valid`] is; also each item's audio length.
    fn forward_valid(&self, x: &Tensor, valid: Option<&ValidLengths>) -> Result<(Tensor, Option<ValidLengths>)> {
        let mut valid = valid.cloned();
        let x = mask_to(x.clone(), valid.as_ref())?;
        // Each Snake runs inside the conv that writes its input: block i's own inside the layer before it, the
        // last one inside the last block.
        let mut x = mask_to(self.conv1.forward_then(&x, Some(self.snake_opening(0)))?, valid.as_ref())?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, &mut valid, self.snake_opening(i + 1))?;
        }
        Ok((self.conv2.forward(&x)?.tanh()?, valid))
    }
}

/// DAC's streaming encoder: every conv carries its context and answers once the samples its window reaches ahead
/// to have come (its share of the receptive field), so codes equal one pass bit for bit with no re-run.
struct EncoderStream {
    model: Arc<Dac>,
    device: Device,
    n_q: usize,
    /// Samples pushed so far (the end is zero-padded to a whole frame, as one pass pads).
    total: usize,
    conv1: ConvState,
    blocks: Vec<([ResidualState; 3], ConvState)>,
    conv2: ConvState,
}

impl EncoderStream {
    fn new(model: Arc<Dac>, device: Device, n_q: usize) -> Self {
        let blocks = model.encoder.blocks.iter().map(|_| Default::default()).collect();
        Self { model, device, n_q, total: 0, conv1: ConvState::default(), blocks, conv2: ConvState::default() }
    }

    fn run(&mut self, pcm: &[f32], last: bool) -> Result<Tensor> {
        self.total += pcm.len();
        let mut pcm = pcm.to_vec();
        if last {
            pcm.resize(pcm.len() + self.total.next_multiple_of(self.model.config.hop()) - self.total, 0.0);
        }
        let enc = &self.model.encoder;
        let x = Tensor::from_vec(pcm, (1, 1, ()), &self.device)?;
        let mut x = streamed(enc.conv1.step(&x, &mut self.conv1), last, || enc.conv1.flush(&mut self.conv1))?;
        // The Snakes where the one pass (`Encoder::forward_valid`) has them: inside the layer before.
        let blocks = enc.blocks.len();
        for (i, (block, (res, conv))) in enc.blocks.iter().zip(&mut self.blocks).enumerate() {
            for (j, (unit, state)) in block.res.iter().zip(res.iter_mut()).enumerate() {
                let after = (j == 2).then_some(&block.snake1);
                x = streamed(unit.step(&x, state, after), last, || unit.flush(state, after))?;
            }
            let after = (i + 1 == blocks).then_some(&enc.snake1);
            let flush = |conv: &mut ConvState| snake_then(after, &block.conv1.flush(conv)?);
            x = streamed(block.conv1.step_then(&x, conv, after.map(|s| s as _)), last, || flush(conv))?;
        }
        let x = if blocks == 0 { snake(&enc.snake1, &x)? } else { x };
        let z = streamed(enc.conv2.step(&x, &mut self.conv2), last, || enc.conv2.flush(&mut self.conv2))?;
        if z.dim(2)? == 0 {
            return Tensor::zeros((1, self.n_q, 0), DType::U32, &self.device);
        }
        Ok(self.model.quantizer.encode(&z, self.n_q)?.0)
    }
}

impl stream::EncoderStream for EncoderStream {
    fn push(&mut self, pcm: &[f32]) -> Result<Tensor> {
        self.run(pcm, false)
    }
    fn flush(&mut self) -> Result<Tensor> {
        self.run(&[], true)
    }
    fn finish(&mut self, pcm: &[f32]) -> Result<Tensor> {
        self.run(pcm, true)
    }
    fn reset(&mut self) {
        *self = Self::new(self.model.clone(), self.device.clone(), self.n_q);
    }
}

/// DAC's streaming decoder, the mirror image: transposed convs carry their overlap and trim the stream's ends.
struct DecoderStream {
    model: Arc<Dac>,
    device: Device,
    conv1: ConvState,
    blocks: Vec<(ConvTransposeState, [ResidualState; 3])>,
    conv2: ConvState,
}

impl DecoderStream {
    fn new(model: Arc<Dac>, device: Device) -> Self {
        let blocks = model.decoder.blocks.iter().map(|_| Default::default()).collect();
        Self { model, device, conv1: ConvState::default(), blocks, conv2: ConvState::default() }
    }

    fn run(&mut self, codes: Option<&Tensor>, last: bool) -> Result<Tensor> {
        let dec = &self.model.decoder;
        let x = match codes {
            Some(codes) => self.model.quantizer.decode(codes)?,
            None => Tensor::zeros((1, self.model.config.latent_dim, 0), DType::F32, &self.device)?,
        };
        // The Snakes where the one pass (`Decoder::forward_valid`) has them: inside the layer before.
        let first = dec.snake_opening(0);
        let step = dec.conv1.step_then(&x, &mut self.conv1, Some(first));
        let mut x = streamed(step, last, || snake(first, &dec.conv1.flush(&mut self.conv1)?))?;
        for (i, (block, (up, res))) in dec.blocks.iter().zip(&mut self.blocks).enumerate() {
            x = streamed(block.conv_t1.step(&x, up), last, || block.conv_t1.flush(up))?;
            for (j, (unit, state)) in block.res.iter().zip(res.iter_mut()).enumerate() {
                let after = (j == 2).then_some(dec.snake_opening(i + 1));
                x = streamed(unit.step(&x, state, after), last, || unit.flush(state, after))?;
            }
        }
        streamed(dec.conv2.step(&x, &mut self.conv2), last, || dec.conv2.flush(&mut self.conv2))?.tanh()
    }
}

impl stream::DecoderStream for DecoderStream {
    fn push(&mut self, codes: &Tensor) -> Result<Tensor> {
        self.run(Some(codes), false)
    }
    fn flush(&mut self) -> Result<Tensor> {
        self.run(None, true)
    }
    fn finish(&mut self, codes: &Tensor) -> Result<Tensor> {
        self.run(Some(codes), true)
    }
    fn reset(&mut self) {
        *self = Self::new(self.model.clone(), self.device.clone());
    }
}

/// The whole model. Stages are public so tests can compare each against the reference's intermediates.
#[derive(Debug, Clone)]
pub struct Dac {
    /// Hyper-parameters.
    pub config: DacConfig,
    /// Audio → latent.
    pub encoder: Encoder,
    /// Latent ↔ codes (factorised RVQ).
    pub quantizer: FactorizedRvq,
    /// Latent → audio.
    pub decoder: Decoder,
}

impl Dac {
    /// Loads the model a DAC GGUF file describes, only `parts`' weights read (see [`super::Parts`]).
    pub fn load(file: &ModelFile, device: &candle_core::Device, parts: super::Parts) -> crate::Result<Self> {
        let cfg = DacConfig::from_gguf(file)?;
        let vb = super::weights(file, device, parts, (&["encoder."], &["decoder."]));
        Self::new(cfg, vb).map_err(|e| crate::Error::model_file(&file.path, format!("invalid dac model: {e}")))
    }

    /// Builds the model from `config` and weights under the transformers (hub) tensor names.
    pub fn new(config: DacConfig, vb: Weights) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(&config, vb.pp("encoder"))?,
            quantizer: FactorizedRvq::new(
                config.n_codebooks,
                config.latent_dim,
                config.codebook_dim,
                config.codebook_size,
                vb.pp("quantizer"),
            )?,
            decoder: Decoder::new(&config, vb.pp("decoder"))?,
            config,
        })
    }

    /// Audio (B, 1, T) → latent (B, latent, ceil(T / hop)), after the reference's right-padding to a hop multiple.
    pub fn encode_latent(&self, pcm: &Tensor) -> Result<Tensor> {
        let pcm = pad_to_multiple(pcm, self.config.hop())?;
        self.encoder.forward(&pcm)
    }
}

impl super::Model for Dac {
    fn sample_rate(&self) -> u32 {
        self.config.sample_rate as u32
    }
    fn hop(&self) -> usize {
        self.config.hop()
    }
    fn n_q(&self) -> usize {
        self.config.n_codebooks
    }
    fn codebook_size(&self) -> usize {
        self.config.codebook_size
    }
    fn encode(&self, pcm: &Tensor, n_q: usize) -> Result<Tensor> {
        Ok(self.quantizer.encode(&self.encode_latent(pcm)?, n_q)?.0)
    }
    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&self.quantizer.decode(codes)?)
    }
    fn peak_bytes(&self, n_frames: usize) -> u64 {
        // Measured: one pass grows peak RSS by about 2 KB per sample (16 kHz, 10 s vs 20 s); a stream's pieces
        // at 44.1 kHz by up to 8 KB (decode; all layers' carried samples and skips on top).
        super::bytes_per_sample(n_frames, self.hop(), 8000)
    }
    fn pass_bytes(&self, n_frames: usize) -> u64 {
        // Measured: one pass over 10 s at 16 kHz peaks at 682 MB RSS, ~300 MB of it the mapped weights: 2.4 KB per
        // sample (a stream's pieces cost more: carried samples, skips, and weights packed from the third piece on).
        super::bytes_per_sample(n_frames, self.hop(), 2500)
    }
    fn stage_times(&self, pcm: &Tensor, n_q: usize) -> Result<Vec<super::StageTime>> {
        let mut t = super::StageTimer::default();
        let z = t.time("encoder", || self.encode_latent(pcm))?;
        let codes = t.time("quantizer encode", || Ok(self.quantizer.encode(&z, n_q)?.0))?;
        let z = t.time("quantizer decode", || self.quantizer.decode(&codes))?;
        t.time("decoder", || self.decoder.forward(&z))?;
        Ok(t.times)
    }
    fn stream_encoder(self: Arc<Self>, n_q: usize, device: &Device) -> Option<Box<dyn stream::EncoderStream>> {
        Some(Box::new(EncoderStream::new(self, device.clone(), n_q)))
    }
    fn stream_decoder(self: Arc<Self>, device: &Device) -> Option<Box<dyn stream::DecoderStream>> {
        Some(Box::new(DecoderStream::new(self, device.clone())))
    }
    fn pads_exactly(&self) -> bool {
        true
    }
    fn encode_padded(&self, pcm: &Tensor, lengths: &[usize], n_q: usize) -> Result<Tensor> {
        let hop = self.config.hop();
        let pcm = pad_to_multiple(pcm, hop)?;
        // A single run pads its input to whole frames first: those zeros are its input, not padding.
        let valid = ValidLengths(lengths.iter().map(|len| len.next_multiple_of(hop)).collect());
        let latent = self.encoder.forward_valid(&pcm, Some(&valid))?;
        Ok(self.quantizer.encode(&latent, n_q)?.0)
    }
    fn decode_padded(&self, codes: &Tensor, frames: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let latent = self.quantizer.decode(codes)?;
        let (pcm, valid) = self.decoder.forward_valid(&latent, Some(&ValidLengths(frames.to_vec())))?;
        let lengths = valid.map(|v| v.0).unwrap_or_default();
        Ok((pcm, lengths))
    }
}
