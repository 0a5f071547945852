//! `codec_rs.StreamEncoder` / `codec_rs.StreamDecoder`: the library's streams behind a mutex (a stream is `Send`,
//! not `Sync`; a Python object may be reached from several threads), every call with the GIL released.

use std::sync::{Mutex, MutexGuard, PoisonError};

use numpy::{PyArray1, PyArray2};
use pyo3::prelude::*;

use crate::arrays::{audio_array, codes_array, codes_from_array, mono_samples};
use crate::errors::detached;

/// Locks a stream for a push or flush: after a panic inside an earlier call (the mutex is then poisoned) the
/// stream's state is unknown, so it refuses work until `reset()`.
fn lock<T>(stream: &Mutex<T>) -> codec::Result<MutexGuard<'_, T>> {
    stream.lock().map_err(|_| {
        codec::Error::InvalidArgument("an earlier call on this stream failed internally; reset() it".into())
    })
}

/// Locks a stream for `reset()`, which clears a poisoned state (see [`lock`]).
fn lock_for_reset<T>(stream: &Mutex<T>) -> MutexGuard<'_, T> {
    let guard = stream.lock().unwrap_or_else(PoisonError::into_inner);
    stream.clear_poison();
    guard
}

/// Streaming encoder: mono audio at the model's sample rate in pieces of any size, codes out as frames complete.
/// Concatenated along frames, the codes of all pushes and the flush equal ``Codec.encode`` of the whole input.
/// Made by ``Codec.stream_encoder``.
#[pyclass(frozen, module = "codec_rs")]
pub struct StreamEncoder {
    inner: Mutex<codec::StreamEncoder>,
    n_q: usize,
}

impl StreamEncoder {
    pub fn new(inner: codec::StreamEncoder) -> Self {
        let n_q = inner.n_q();
        Self { inner: Mutex::new(inner), n_q }
    }
}

#[pymethods]
impl StreamEncoder {
    /// Codebooks per frame.
    #[getter]
    fn n_q(&self) -> usize {
        self.n_q
    }

    /// Pushes audio (float32 / float64 / int16; (T,) or (C, T), averaged to mono) at the model's sample rate;
    /// returns the codes of the frames it completes, int32 (n_q, k), k possibly 0.
    fn push<'py>(&self, py: Python<'py>, audio: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<i32>>> {
        let samples = mono_samples(audio, "audio")?;
        let codes = detached(py, || lock(&self.inner)?.push(&samples))?;
        codes_array(py, codes)
    }

    /// Ends the input: the codes of the remaining frames (the last partial frame padded as ``Codec.encode`` pads
    /// it). The stream then takes no more input until ``reset()``.
    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i32>>> {
        let codes = detached(py, || lock(&self.inner)?.flush())?;
        codes_array(py, codes)
    }

    /// Forgets everything pushed: the stream starts anew (also after ``flush()`` or an error).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || {
            lock_for_reset(&self.inner).reset();
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        format!("StreamEncoder(n_q={})", self.n_q)
    }
}

/// Streaming decoder: codes in pieces of any number of frames, audio out as it becomes final. Concatenated, the
/// audio of all pushes and the flush equals ``Codec.decode`` of all the codes (up to float rounding). Made by
/// ``Codec.stream_decoder``.
#[pyclass(frozen, module = "codec_rs")]
pub struct StreamDecoder {
    inner: Mutex<codec::StreamDecoder>,
    max_n_q: usize,
    codebook_size: usize,
}

impl StreamDecoder {
    pub fn new(inner: codec::StreamDecoder, max_n_q: usize, codebook_size: usize) -> Self {
        Self { inner: Mutex::new(inner), max_n_q, codebook_size }
    }
}

#[pymethods]
impl StreamDecoder {
    /// Pushes codes, any integer dtype, (n_q, k) or (1, n_q, k) with the same n_q on every push; returns the
    /// float32 samples that are final (about k * hop, at the model's sample rate).
    fn push<'py>(&self, py: Python<'py>, codes: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let codes = codes_from_array(codes, self.max_n_q, self.codebook_size, "codes")?;
        let samples = detached(py, || lock(&self.inner)?.push(&codes))?;
        Ok(audio_array(py, samples))
    }

    /// Ends the input: the remaining samples. The stream then takes no more input until ``reset()``.
    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let samples = detached(py, || lock(&self.inner)?.flush())?;
        Ok(audio_array(py, samples))
    }

    /// Forgets everything pushed: the stream starts anew (also after ``flush()`` or an error).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || {
            lock_for_reset(&self.inner).reset();
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        "StreamDecoder()".to_string()
    }
}
