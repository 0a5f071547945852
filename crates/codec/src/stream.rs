//! Streaming encode and decode: audio or codes in pieces of any size, codes or audio out as soon as they are final.
//!
//! [`StreamEncoder`] and [`StreamDecoder`] are what users hold (made by [`crate::Codec::stream_encoder`] /
//! [`crate::Codec::stream_decoder`]); they check input, keep the flushed/reset protocol and turn tensors into plain
//! vectors. The work is done by a model's stream ([`EncoderStream`] / [`DecoderStream`], in the model's file), whose
//! layers carry their state (`nn::conv`, `nn::transformer`, `nn::lstm`): causal layers answer at once, centred ones
//! once the input their window reaches ahead to has come. [`crate::Codec`]'s offline passes over long inputs run
//! through the same streams. Concatenated outputs equal one offline pass: codes bit for bit, audio up to rounding.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::error::TensorContext;
use crate::models::Model;
use crate::{Codes, Error, Result};

/// A model's streaming encoder: samples at the model rate in, codes `(1, n_q, frames)` u32 of the frames completed.
pub trait EncoderStream: Send {
    /// Any number of samples (0 included) → the frames they complete (possibly none).
    fn push(&mut self, pcm: &[f32]) -> candle_core::Result<Tensor>;
    /// End of input: the remaining frames, the last partial one padded as offline encode pads it.
    fn flush(&mut self) -> candle_core::Result<Tensor>;
    /// `push(pcm)` then `flush()` in one pass of the model where it can (a short clip then runs the model once,
    /// and a one-shot run never packs its weights; see `nn::weight::GemmWeight`).
    fn finish(&mut self, pcm: &[f32]) -> candle_core::Result<Tensor> {
        let head = self.push(pcm)?;
        Tensor::cat(&[head, self.flush()?], 2)
    }
    /// Forgets everything pushed: the stream starts anew.
    fn reset(&mut self);
}

/// A model's streaming decoder: codes `(1, n_q, frames)` in, audio `(1, 1, samples)` at the model rate out.
pub trait DecoderStream: Send {
    /// Any number of frames → the samples that are final.
    fn push(&mut self, codes: &Tensor) -> candle_core::Result<Tensor>;
    /// End of input: the remaining samples.
    fn flush(&mut self) -> candle_core::Result<Tensor>;
    /// `push(codes)` then `flush()`, in one pass of the model where it can (see [`EncoderStream::finish`]).
    fn finish(&mut self, codes: &Tensor) -> candle_core::Result<Tensor> {
        let head = self.push(codes)?;
        Tensor::cat(&[head, self.flush()?], 2)
    }
    /// Forgets everything pushed: the stream starts anew.
    fn reset(&mut self);
}

/// Samples waiting for a whole frame (causal models run frame by frame; a partial frame waits for the rest).
#[derive(Debug, Default)]
pub(crate) struct FrameBuffer {
    pending: Vec<f32>,
}

impl FrameBuffer {
    /// `pcm` after what is pending, cut to whole frames of `hop`; the rest stays pending.
    pub fn whole_frames(&mut self, pcm: &[f32], hop: usize) -> Vec<f32> {
        self.pending.extend_from_slice(pcm);
        let whole = self.pending.len() / hop * hop;
        let rest = self.pending.split_off(whole);
        std::mem::replace(&mut self.pending, rest)
    }

    /// Adds `pcm` to what is pending.
    pub fn extend(&mut self, pcm: &[f32]) {
        self.pending.extend_from_slice(pcm);
    }

    /// What is pending, zero-padded to a whole frame (empty if nothing is).
    pub fn padded_rest(&mut self, hop: usize) -> Vec<f32> {
        let mut rest = std::mem::take(&mut self.pending);
        rest.resize(rest.len().next_multiple_of(hop), 0.0);
        rest
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// Where a stream is in its life: errors after `flush` until `reset`, and after a failure inside the model (whose
/// state may then be half updated) until `reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    Flushed,
    Failed,
}

impl Phase {
    fn check(self, what: &str) -> Result<()> {
        match self {
            Phase::Open => Ok(()),
            Phase::Flushed => {
                Err(Error::InvalidArgument(format!("{what}: the stream was flushed; reset() it to start a new one")))
            }
            Phase::Failed => {
                Err(Error::InvalidArgument(format!("{what}: the stream failed earlier; reset() it to start a new one")))
            }
        }
    }
}

/// The memory limit a stream checks each push against (see [`crate::Codec::set_memory_limit`]).
#[derive(Clone)]
pub(crate) struct MemoryGuard {
    pub model: Arc<dyn Model>,
    pub limit: Option<u64>,
}

impl MemoryGuard {
    /// An error if one pass over `frames` frames would need more memory than the limit.
    pub fn check(&self, frames: usize, what: &str) -> Result<()> {
        let (Some(limit), need) = (self.limit, self.model.peak_bytes(frames)) else { return Ok(()) };
        if need <= limit {
            return Ok(());
        }
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let seconds = frames as f64 * self.model.hop() as f64 / self.model.sample_rate() as f64;
        Err(Error::InvalidArgument(format!(
            "{what} {seconds:.0} s of audio in one pass needs about {:.1} GiB, more than the {:.1} GiB limit \
             (available memory, or $CODEC_MEMORY_LIMIT); split the input into shorter pieces",
            gib(need),
            gib(limit)
        )))
    }
}

/// Runs a step of the model's stream, marking the stream failed if it errs.
fn guarded<T: Send>(phase: &mut Phase, what: &str, step: impl FnOnce() -> candle_core::Result<T> + Send) -> Result<T> {
    crate::nn::on_pool(step).ctx(what).inspect_err(|_| *phase = Phase::Failed)
}

/// Audio → codes in pieces. `Send`; made by [`crate::Codec::stream_encoder`].
pub struct StreamEncoder {
    inner: Box<dyn EncoderStream>,
    n_q: usize,
    memory: MemoryGuard,
    phase: Phase,
}

impl StreamEncoder {
    pub(crate) fn new(inner: Box<dyn EncoderStream>, n_q: usize, memory: MemoryGuard) -> Self {
        Self { inner, n_q, memory, phase: Phase::Open }
    }

    /// Codebooks per frame.
    pub fn n_q(&self) -> usize {
        self.n_q
    }

    /// Mono samples at the model's rate (any number, 0 included) → the frames they complete, possibly none.
    /// Non-finite samples are an error that leaves the stream as it was.
    pub fn push(&mut self, pcm: &[f32]) -> Result<Codes> {
        self.phase.check("stream encode")?;
        check_finite(pcm)?;
        self.memory.check(pcm.len().div_ceil(self.memory.model.hop()) + 1, "encoding")?;
        let codes = guarded(&mut self.phase, "stream encode", || self.inner.push(pcm))?;
        to_codes(&codes, self.n_q)
    }

    /// Ends the input: the remaining frames (the last partial frame padded as offline `encode` pads it). The
    /// stream then takes no more input until [`StreamEncoder::reset`].
    pub fn flush(&mut self) -> Result<Codes> {
        self.phase.check("stream flush")?;
        let codes = guarded(&mut self.phase, "stream flush", || self.inner.flush())?;
        self.phase = Phase::Flushed;
        to_codes(&codes, self.n_q)
    }

    /// [`StreamEncoder::push`] of the input's last samples, then [`StreamEncoder::flush`]: one pass of the model
    /// where the architecture allows, so a whole clip given at once costs one pass.
    pub fn finish(&mut self, pcm: &[f32]) -> Result<Codes> {
        self.phase.check("stream encode")?;
        check_finite(pcm)?;
        self.memory.check(pcm.len().div_ceil(self.memory.model.hop()) + 1, "encoding")?;
        let codes = guarded(&mut self.phase, "stream encode", || self.inner.finish(pcm))?;
        self.phase = Phase::Flushed;
        to_codes(&codes, self.n_q)
    }

    /// Starts a new stream (after `flush`, an error, or to drop what was pushed).
    pub fn reset(&mut self) {
        self.inner.reset();
        self.phase = Phase::Open;
    }
}

/// An error naming the first non-finite sample, if any.
fn check_finite(pcm: &[f32]) -> Result<()> {
    match pcm.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((i, v)) => Err(Error::InvalidArgument(format!("pushed sample {i} is {v}: samples must be finite"))),
        None => Ok(()),
    }
}

/// Codes → audio in pieces. `Send`; made by [`crate::Codec::stream_decoder`].
pub struct StreamDecoder {
    inner: Box<dyn DecoderStream>,
    device: Device,
    /// The codebook count of the first push; later pushes must match it.
    n_q: Option<usize>,
    memory: MemoryGuard,
    phase: Phase,
}

impl StreamDecoder {
    pub(crate) fn new(inner: Box<dyn DecoderStream>, device: Device, memory: MemoryGuard) -> Self {
        Self { inner, device, n_q: None, memory, phase: Phase::Open }
    }

    /// Frames of codes (any number) → the audio samples that are final, at the model's rate. Codes out of range,
    /// more codebooks than the model has, or a codebook count other than the first push's are an error that leaves
    /// the stream as it was.
    pub fn push(&mut self, codes: &Codes) -> Result<Vec<f32>> {
        self.step(codes, false)
    }

    /// [`StreamDecoder::push`] of the last frames, then [`StreamDecoder::flush`]: one pass of the model where the
    /// architecture allows.
    pub fn finish(&mut self, codes: &Codes) -> Result<Vec<f32>> {
        self.step(codes, true)
    }

    fn step(&mut self, codes: &Codes, last: bool) -> Result<Vec<f32>> {
        self.phase.check("stream decode")?;
        let model = &self.memory.model;
        check_codes(codes, model.n_q(), model.codebook_size())?;
        if codes.n_frames == 0 {
            return if last { self.flush() } else { Ok(Vec::new()) };
        }
        match self.n_q {
            Some(n) if n != codes.n_q => {
                return Err(Error::InvalidArgument(format!(
                    "pushed codes have {} codebooks, earlier pushes had {n}",
                    codes.n_q
                )))
            }
            _ => {}
        }
        self.memory.check(codes.n_frames, "decoding")?;
        self.n_q = Some(codes.n_q);
        let codes =
            Tensor::from_slice(&codes.data, (1, codes.n_q, codes.n_frames), &self.device).ctx("stream codes")?;
        let inner = &mut self.inner;
        let pcm =
            guarded(&mut self.phase, "stream decode", || if last { inner.finish(&codes) } else { inner.push(&codes) })?;
        if last {
            self.phase = Phase::Flushed;
        }
        pcm.flatten_all().and_then(|p| p.to_vec1::<f32>()).ctx("stream decode output")
    }

    /// Ends the input: the remaining samples. The stream then takes no more input until [`StreamDecoder::reset`].
    pub fn flush(&mut self) -> Result<Vec<f32>> {
        self.phase.check("stream flush")?;
        let pcm = guarded(&mut self.phase, "stream flush", || self.inner.flush())?;
        self.phase = Phase::Flushed;
        pcm.flatten_all().and_then(|p| p.to_vec1::<f32>()).ctx("stream decode output")
    }

    /// Starts a new stream (after `flush`, an error, or to drop what was pushed).
    pub fn reset(&mut self) {
        self.inner.reset();
        self.n_q = None;
        self.phase = Phase::Open;
    }
}

/// An error unless `codes` is consistent and every code fits the codebooks.
pub(crate) fn check_codes(codes: &Codes, max_n_q: usize, codebook_size: usize) -> Result<()> {
    if codes.n_q == 0 || codes.n_q > max_n_q {
        return Err(Error::InvalidArgument(format!(
            "codes have {} codebooks; the model takes 1 to {max_n_q}",
            codes.n_q
        )));
    }
    if Some(codes.data.len()) != codes.n_q.checked_mul(codes.n_frames) {
        return Err(Error::InvalidArgument(format!(
            "codes hold {} values, expected n_q {} × n_frames {}",
            codes.data.len(),
            codes.n_q,
            codes.n_frames
        )));
    }
    if let Some(pos) = codes.data.iter().position(|&c| c as usize >= codebook_size) {
        return Err(Error::InvalidArgument(format!(
            "code {} at codebook {}, frame {} is out of range (codebook size {codebook_size})",
            codes.data[pos],
            pos / codes.n_frames,
            pos % codes.n_frames
        )));
    }
    Ok(())
}

/// Codes `(1, n_q, F)` u32 → [`Codes`].
fn to_codes(codes: &Tensor, n_q: usize) -> Result<Codes> {
    let n_frames = codes.dim(2).ctx("stream codes")?;
    let data = codes.flatten_all().and_then(|c| c.to_vec1::<u32>()).ctx("stream codes")?;
    Ok(Codes { n_q, n_frames, data })
}

/// Frames `from..to` go through a model part; `keep_from..keep_to` of the result are kept.
pub(crate) struct Window {
    pub from: usize,
    pub to: usize,
    pub keep_from: usize,
    pub keep_to: usize,
}

/// For a model part with a finite receptive field of `(before, after)` frames, run over windows (WavTokenizer's
/// encoder around its LSTM): the window that finalises frames `done..` given `avail` frames of input (`last`: no
/// more will come): the frames with `after` frames of input beyond them, plus `before` frames of context.
pub(crate) fn window(done: usize, avail: usize, (before, after): (usize, usize), last: bool) -> Option<Window> {
    let keep_to = if last { avail } else { avail.saturating_sub(after) };
    (keep_to > done).then(|| Window {
        from: done.saturating_sub(before),
        to: (keep_to + after).min(avail),
        keep_from: done,
        keep_to,
    })
}
