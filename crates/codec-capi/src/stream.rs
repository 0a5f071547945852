//! `codec_stream`: a streaming encoder or decoder at the model's rate. Output buffers are checked against the most
//! a call can produce *before* it pushes anything, so a buffer too small costs nothing: the stream is left as it
//! was, the needed count is set, and the caller retries the same call with a larger buffer.

use std::ptr::null_mut;

use codec_rs::{Codes, StreamDecoder, StreamEncoder};

use crate::buffers::{deliver, deref, deref_mut, input, output, reserve};
use crate::status::{guard, status, Failure, Outcome, Status};
use crate::{codes_len, Model};

/// `codec_stream`. `taken` counts what went in (samples for an encoder, frames for a decoder) and `given` what
/// came out (frames, samples): with the hop they bound what the next call can produce.
pub struct Stream {
    direction: Direction,
    hop: u64,
    taken: u64,
    given: u64,
}

enum Direction {
    Encoder(StreamEncoder),
    Decoder(StreamDecoder),
}

impl Stream {
    fn new(model: &Model, direction: Direction) -> Stream {
        Stream { direction, hop: model.hop() as u64, taken: 0, given: 0 }
    }

    fn wrong_direction(&self, call: &str) -> Failure {
        let is = if matches!(self.direction, Direction::Encoder(_)) { "an encoder" } else { "a decoder" };
        Failure::invalid(format!("{call}: this stream is {is}"))
    }

    /// Frames an encoder can give once `more` samples are in: a push gives only whole frames, a flush also the
    /// padded last one.
    fn frames_ahead(&self, more: usize, last: bool) -> Outcome<usize> {
        let samples = self.taken.checked_add(more as u64).ok_or_else(|| Failure::invalid("n_samples overflows"))?;
        let frames = if last { samples.div_ceil(self.hop) } else { samples / self.hop };
        as_usize(frames.saturating_sub(self.given))
    }

    /// Samples a decoder can give once `more` frames are in: a frame decodes to at most a hop of samples.
    fn samples_ahead(&self, more: usize) -> Outcome<usize> {
        let frames = self.taken.checked_add(more as u64).ok_or_else(|| Failure::invalid("n_frames overflows"))?;
        let samples = frames.checked_mul(self.hop).ok_or_else(|| Failure::invalid("n_frames × hop overflows"))?;
        as_usize(samples.saturating_sub(self.given))
    }

    /// Runs an encoder step that may give `bound` frames at most, into `codes`.
    fn encoder_step(
        &mut self,
        taken: usize,
        bound: usize,
        codes: &mut [u32],
        n_frames: &mut usize,
        step: impl FnOnce(&mut StreamEncoder) -> codec_rs::Result<Codes>,
    ) -> Outcome<()> {
        let Direction::Encoder(encoder) = &mut self.direction else { return Err(self.wrong_direction("encode")) };
        *n_frames = bound;
        reserve(codes, codes_len(encoder.n_q() as u32, bound, "codes")?, "codes")?;
        let got = step(encoder)?;
        self.taken += taken as u64;
        self.given += got.n_frames as u64;
        *n_frames = got.n_frames;
        deliver(&got.data, codes, "codes")
    }

    /// Runs a decoder step that may give `bound` samples at most, into `pcm`.
    fn decoder_step(
        &mut self,
        taken: usize,
        bound: usize,
        pcm: &mut [f32],
        n_samples: &mut usize,
        step: impl FnOnce(&mut StreamDecoder) -> codec_rs::Result<Vec<f32>>,
    ) -> Outcome<()> {
        let Direction::Decoder(decoder) = &mut self.direction else { return Err(self.wrong_direction("decode")) };
        *n_samples = bound;
        reserve(pcm, bound, "pcm")?;
        let got = step(decoder)?;
        self.taken += taken as u64;
        self.given += got.len() as u64;
        *n_samples = got.len();
        deliver(&got, pcm, "pcm")
    }
}

/// A call on `stream`: `run` on the checked stream, its outcome as a status.
unsafe fn with_stream(stream: *mut Stream, run: impl FnOnce(&mut Stream) -> Outcome<()>) -> Status {
    status(|| run(deref_mut(stream, "stream")?))
}

fn as_usize(n: u64) -> Outcome<usize> {
    usize::try_from(n).map_err(|_| Failure::invalid(format!("{n} values are more than memory can hold")))
}

#[no_mangle]
pub unsafe extern "C" fn codec_stream_encoder(model: *const Model, n_q: u32) -> *mut Stream {
    guard(
        |_| null_mut(),
        || {
            let model = deref(model, "model")?;
            let encoder = model.codec.stream_encoder(Some(model.codebooks(n_q)?))?;
            Ok(Box::into_raw(Box::new(Stream::new(model, Direction::Encoder(encoder)))))
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn codec_stream_decoder(model: *const Model) -> *mut Stream {
    guard(
        |_| null_mut(),
        || {
            let model = deref(model, "model")?;
            let decoder = model.codec.stream_decoder()?;
            Ok(Box::into_raw(Box::new(Stream::new(model, Direction::Decoder(decoder)))))
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn codec_stream_encode(
    stream: *mut Stream,
    pcm: *const f32,
    n_samples: usize,
    codes: *mut u32,
    codes_capacity: usize,
    n_frames: *mut usize,
) -> Status {
    with_stream(stream, |stream| {
        let pcm = input(pcm, n_samples, "pcm")?;
        let codes = output(codes, codes_capacity, "codes")?;
        let n_frames = deref_mut(n_frames, "n_frames")?;
        let bound = stream.frames_ahead(n_samples, false)?;
        stream.encoder_step(n_samples, bound, codes, n_frames, |encoder| encoder.push(pcm))
    })
}

#[no_mangle]
pub unsafe extern "C" fn codec_stream_decode(
    stream: *mut Stream,
    codes: *const u32,
    n_q: u32,
    n_frames: usize,
    pcm: *mut f32,
    pcm_capacity: usize,
    n_samples: *mut usize,
) -> Status {
    with_stream(stream, |stream| {
        let codes = input(codes, codes_len(n_q, n_frames, "codes")?, "codes")?;
        let pcm = output(pcm, pcm_capacity, "pcm")?;
        let n_samples = deref_mut(n_samples, "n_samples")?;
        let bound = stream.samples_ahead(n_frames)?;
        let codes = Codes { n_q: n_q as usize, n_frames, data: codes.to_vec() };
        stream.decoder_step(n_frames, bound, pcm, n_samples, |decoder| decoder.push(&codes))
    })
}

#[no_mangle]
pub unsafe extern "C" fn codec_stream_flush(
    stream: *mut Stream,
    codes: *mut u32,
    codes_capacity: usize,
    n_frames: *mut usize,
    pcm: *mut f32,
    pcm_capacity: usize,
    n_samples: *mut usize,
) -> Status {
    with_stream(stream, |stream| {
        if matches!(stream.direction, Direction::Encoder(_)) {
            let (codes, n_frames) = (output(codes, codes_capacity, "codes")?, deref_mut(n_frames, "n_frames")?);
            let bound = stream.frames_ahead(0, true)?;
            stream.encoder_step(0, bound, codes, n_frames, StreamEncoder::flush)
        } else {
            let (pcm, n_samples) = (output(pcm, pcm_capacity, "pcm")?, deref_mut(n_samples, "n_samples")?);
            let bound = stream.samples_ahead(0)?;
            stream.decoder_step(0, bound, pcm, n_samples, StreamDecoder::flush)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn codec_stream_reset(stream: *mut Stream) -> Status {
    with_stream(stream, |stream| {
        match &mut stream.direction {
            Direction::Encoder(encoder) => encoder.reset(),
            Direction::Decoder(decoder) => decoder.reset(),
        }
        (stream.taken, stream.given) = (0, 0);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn codec_stream_free(stream: *mut Stream) {
    crate::free_boxed(stream)
}

/// A `codec_stream` moves between threads (used by one at a time).
const _: () = {
    const fn movable<T: Send>() {}
    movable::<Stream>()
};
