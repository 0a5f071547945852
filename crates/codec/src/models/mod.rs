//! One file per architecture; each implements [`Model`], the one seam between the generic runtime and a codec.

pub mod dac;
pub mod mimi;
pub mod pocket_tts;
pub mod wavtokenizer;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use std::sync::Arc;

use crate::gguf::ModelFile;
use crate::nn::Weights;
use crate::stream::{DecoderStream, EncoderStream};

/// What the runtime needs from an architecture. Tensors are batched: audio (B, 1, T) at `sample_rate()`, codes
/// (B, n_q, F) u32 with F = ceil(T / hop()). Each model pads its input as its reference does.
pub trait Model: Send + Sync {
    /// Audio samples per second, in Hz.
    fn sample_rate(&self) -> u32;
    /// Audio samples per code frame.
    fn hop(&self) -> usize;
    /// Maximum number of codebooks.
    fn n_q(&self) -> usize;
    /// Entries per codebook.
    fn codebook_size(&self) -> usize;
    /// Audio (B, 1, T) → codes (B, n_q, F), using the first `n_q` codebooks.
    fn encode(&self, pcm: &Tensor, n_q: usize) -> Result<Tensor>;
    /// Codes (B, n, F), n ≤ n_q → audio (B, 1, F * hop) — a few samples fewer where the reference does so too
    /// (DAC with odd strides).
    fn decode(&self, codes: &Tensor) -> Result<Tensor>;
    /// About the most memory one encode or decode of `n_frames` frames in one piece allocates, in bytes: what
    /// [`crate::Codec`] checks against the memory limit before it runs (measured peak RSS growth per audio sample,
    /// plus attention's matrix where attention spans the whole input). Saturates instead of overflowing.
    fn peak_bytes(&self, n_frames: usize) -> u64;
    /// About the memory one pass over a whole clip of `n_frames` frames allocates (no stream pieces, whose carried
    /// state can cost more per sample): what decides whether a short clip runs in one pass ([`crate::Codec::pieces`]).
    fn pass_bytes(&self, n_frames: usize) -> u64 {
        self.peak_bytes(n_frames)
    }

    /// Whether [`Model::encode_padded`] / [`Model::decode_padded`] give every item of a right-padded batch of
    /// unequal lengths its single run's result. Causal models do without more (padding after an input cannot reach
    /// its outputs); models that look ahead mask it (DAC); WavTokenizer's reflect padding and whole-clip attention
    /// cannot be masked, so only its clips of equal length share a pass.
    fn pads_exactly(&self) -> bool {
        false
    }
    /// Audio (B, 1, T) right-padded with zeros, item b holding `lengths[b]` samples → codes (B, n_q, F), item b's
    /// first `⌈lengths[b] / hop⌉` frames those of its single run (exactly where [`Model::pads_exactly`], or where all
    /// lengths are equal). As given: `encode` (a causal model's padding reaches no output before it).
    fn encode_padded(&self, pcm: &Tensor, _lengths: &[usize], n_q: usize) -> Result<Tensor> {
        self.encode(pcm, n_q)
    }
    /// Codes (B, n, F) right-padded with code 0, item b holding `frames[b]` frames → audio (B, 1, S) and each
    /// item's audio length, its first samples those of its single run (as [`Model::encode_padded`]). As given:
    /// `decode`, and `hop` samples per frame.
    fn decode_padded(&self, codes: &Tensor, frames: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let pcm = self.decode(codes)?;
        let (most, samples) = (codes.dim(2)?, pcm.dim(2)?);
        let lengths = frames.iter().map(|&f| if f == most { samples } else { f * self.hop() }).collect();
        Ok((pcm, lengths))
    }
    /// Codes (1, n, F) → the audio of [`Model::decode`] handed to `sink` in order, in the working memory of about
    /// `piece_frames` frames whatever F: what a decoder that cannot stream but can cut its pass does for a long
    /// input (WavTokenizer's spans the clip: it keeps its activations in temporary files). `progress(done, F)` as it
    /// goes. As given: one `decode`.
    fn decode_in_pieces(
        &self,
        codes: &Tensor,
        _piece_frames: usize,
        sink: &mut dyn FnMut(&[f32]) -> Result<()>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        decode_whole(self, codes, sink, progress)
    }
    /// A streaming encoder with `n_q` codebooks (see [`crate::stream`]); `None` where the architecture cannot
    /// stream.
    fn stream_encoder(self: Arc<Self>, _n_q: usize, _device: &Device) -> Option<Box<dyn EncoderStream>> {
        None
    }
    /// A streaming decoder, as [`Model::stream_encoder`]; `None` where the architecture cannot stream.
    fn stream_decoder(self: Arc<Self>, _device: &Device) -> Option<Box<dyn DecoderStream>> {
        None
    }
    /// Wall time of each stage of one encode and decode of `pcm` (for `codec bench`); empty if not broken down.
    fn stage_times(&self, _pcm: &Tensor, _n_q: usize) -> Result<Vec<StageTime>> {
        Ok(vec![])
    }
}

/// One stage of a model run, as `codec bench` reports it.
#[derive(Debug, Clone)]
pub struct StageTime {
    /// The stage, as `codec bench` prints it.
    pub name: &'static str,
    /// Wall time the stage took.
    pub time: std::time::Duration,
    /// Floating-point operations of the stage's matrix products (the GEMM counts them; element-wise work excluded).
    pub gemm_flops: u64,
}

/// `bytes_per_sample` bytes for each audio sample of `n_frames` frames of `hop` samples, saturating.
pub(crate) fn bytes_per_sample(n_frames: usize, hop: usize, bytes_per_sample: u64) -> u64 {
    (n_frames as u64).saturating_mul(hop as u64).saturating_mul(bytes_per_sample)
}

/// [`Model::decode_in_pieces`] as one `decode`.
pub(crate) fn decode_whole(
    model: &(impl Model + ?Sized),
    codes: &Tensor,
    sink: &mut dyn FnMut(&[f32]) -> Result<()>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    sink(&crate::nn::f32_vec(&model.decode(codes)?)?)?;
    let frames = codes.dim(2)?;
    progress(frames, frames);
    Ok(())
}

/// Collects named stage timings for [`Model::stage_times`].
#[derive(Default)]
pub(crate) struct StageTimer {
    pub times: Vec<StageTime>,
}

impl StageTimer {
    pub fn time(&mut self, name: &'static str, f: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        let (start, flops) = (std::time::Instant::now(), crate::nn::gemm::flops_done());
        let y = f()?;
        let time = start.elapsed();
        self.times.push(StageTime { name, time, gemm_flops: crate::nn::gemm::flops_done() - flops });
        Ok(y)
    }
}

/// Which half of a codec a run needs. Loading only that half reads (and packs) only its weights: about half of a
/// full-size model's start-up for `codec encode` or `codec decode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parts {
    /// Both halves: encoding and decoding.
    #[default]
    All,
    /// The encoder side (encoder and quantizer): encoding only.
    Encoder,
    /// The decoder side (quantizer and decoder): decoding only.
    Decoder,
}

/// Weights from `file` for `parts`, read one tensor at a time as the model asks for them: tensors under
/// `encoder_only` prefixes are read only for the encoder, under `decoder_only` only for the decoder. The others stand
/// in as zero-cost placeholders of the right shape (a broadcast zero) so the model builds unchanged;
/// [`crate::Codec`] refuses to run the half they belong to.
pub(crate) fn weights<'a>(
    file: &'a ModelFile,
    device: &Device,
    parts: Parts,
    (encoder_only, decoder_only): (&'static [&'static str], &'static [&'static str]),
) -> Weights<'a> {
    let skipped: &'static [&'static str] = match parts {
        Parts::All => &[],
        Parts::Encoder => decoder_only,
        Parts::Decoder => encoder_only,
    };
    let vb = VarBuilder::from_backend(Box::new(FileWeights { file, skipped }), DType::F32, device.clone());
    Weights::from_file(vb, file, skipped)
}

struct FileWeights<'a> {
    file: &'a ModelFile,
    skipped: &'static [&'static str],
}

impl FileWeights<'_> {
    fn read(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.file.load_tensor(name, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        t.to_dtype(dtype)
    }
}

impl candle_nn::var_builder::SimpleBackend for FileWeights<'_> {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        match self.file.tensor_shape(name) {
            Some(dims) if dims != s.dims() => {
                candle_core::bail!("shape mismatch for {name}: the file has {dims:?}, the model expects {s:?}")
            }
            Some(_) if self.skipped.iter().any(|p| name.starts_with(p)) => {
                Tensor::zeros((), dtype, dev)?.broadcast_as(s)
            }
            Some(_) => self.read(name, dtype, dev),
            None => candle_core::bail!("cannot find tensor {name}"),
        }
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.read(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.file.tensor_shape(name).is_some()
    }
}

/// Architectures this build can run (`general.architecture` values).
pub const ARCHITECTURES: &[&str] = &[mimi::ARCH, dac::ARCH, wavtokenizer::ARCH];

/// Builds the model a GGUF file describes, weights on `device`; only `parts` can be run.
pub fn load(file: &ModelFile, device: &Device, parts: Parts) -> crate::Result<Box<dyn Model>> {
    match file.architecture()? {
        mimi::ARCH => Ok(Box::new(mimi::Mimi::load(file, device, parts)?)),
        dac::ARCH => Ok(Box::new(dac::Dac::load(file, device, parts)?)),
        wavtokenizer::ARCH => Ok(Box::new(wavtokenizer::WavTokenizer::load(file, device, parts)?)),
        pocket_tts::ARCH => Err(crate::Error::model_file(
            &file.path,
            "a pocket-tts model is a text-to-speech model, not a codec: it does not encode or decode codes",
        )),
        other => Err(crate::Error::model_file(
            &file.path,
            format!("architecture '{other}' is not supported (this build runs: {})", ARCHITECTURES.join(", ")),
        )),
    }
}

/// Random weights of whatever shape a model asks for: enough to time the real architecture
/// (`codec bench --random`), meaningless as a codec.
struct RandomWeights;

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: candle_core::Shape,
        _name: &str,
        _h: candle_nn::Init,
        dtype: candle_core::DType,
        dev: &Device,
    ) -> Result<Tensor> {
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _dtype: candle_core::DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights have no shape for '{name}'")
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// The published full-size architecture `arch` with random weights, for benchmarks.
pub fn random(arch: &str, device: &Device) -> crate::Result<Box<dyn Model>> {
    let vb: Weights = VarBuilder::from_backend(Box::new(RandomWeights), candle_core::DType::F32, device.clone()).into();
    let err = |e: candle_core::Error| crate::Error::InvalidArgument(format!("cannot build a random {arch}: {e}"));
    match arch {
        mimi::ARCH => Ok(Box::new(mimi::Mimi::new(mimi::MimiConfig::published(32), vb).map_err(err)?)),
        dac::ARCH => Ok(Box::new(dac::Dac::new(dac::DacConfig::published_44khz(), vb).map_err(err)?)),
        wavtokenizer::ARCH => {
            let cfg = wavtokenizer::WavTokenizerConfig::published_frame75();
            Ok(Box::new(wavtokenizer::WavTokenizer::new(cfg, vb).map_err(err)?))
        }
        other => Err(crate::Error::InvalidArgument(format!(
            "unknown architecture '{other}' (known: {})",
            ARCHITECTURES.join(", ")
        ))),
    }
}
