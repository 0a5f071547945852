//! `codec_rs._codec_rs`: the native half of the Python package `codec_rs` (`codec_rs/__init__.py` re-exports it;
//! `codec_rs/_codec_rs.pyi` types it). A thin layer over the library: numpy arrays in and out (`arrays`), the
//! library's errors as Python exceptions (`errors`), all model work with the GIL released, so threads sharing one
//! model run in parallel.

mod arrays;
mod errors;
mod streams;

use std::ffi::CString;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use codec::convert::ConvertOptions;
use codec::{audio, Audio, Codec, Codes, DeviceKind};
use numpy::{PyArray1, PyArray2};
use pyo3::exceptions::{PyRuntimeWarning, PyUserWarning};
use pyo3::prelude::*;

use arrays::{audio_array, codes_array, codes_from_array, mono_samples};
use errors::{detached, invalid, to_py, CodecError};
use streams::{StreamDecoder, StreamEncoder};

/// More threads than this per logical CPU only add contention (the CLI's limit).
const MAX_THREADS_PER_CPU: usize = 4;

/// `value` as a `usize` if it lies in `range`, else a `ValueError` naming the argument `name`.
fn in_range(name: &str, value: i64, range: RangeInclusive<usize>) -> PyResult<usize> {
    usize::try_from(value)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| invalid(format!("{name} must be between {} and {}, not {value}", range.start(), range.end())))
}

/// An input sample rate: within the range the library reads files at (far outside it, resampling would make far
/// more samples, or do far more work, than the input's size suggests).
fn sample_rate(name: &str, rate: i64) -> PyResult<u32> {
    let hz = in_range(name, rate, audio::MIN_INPUT_RATE as usize..=audio::MAX_INPUT_RATE as usize)?;
    u32::try_from(hz).map_err(|_| invalid(format!("{name} {rate} is too large")))
}

/// Sizes the process-wide pool the library computes on (rayon's global pool; candle sizes its kernels by
/// `RAYON_NUM_THREADS`, set to match) on the first call that may compute (loading a model, `convert`,
/// `load_audio`), before the pool would start at rayon's default: `threads`, else `$RAYON_NUM_THREADS`, else the
/// physical cores (as the CLI: SMT siblings share one core's FMA units). The pool lives as long as the process: a
/// later model asking for another count gets the pool as it is, with a `RuntimeWarning`.
fn init_threads(py: Python<'_>, threads: Option<i64>) -> PyResult<()> {
    let cpus = num_cpus::get();
    let wanted = threads.map(|n| in_range("threads", n, 1..=MAX_THREADS_PER_CPU * cpus)).transpose()?;
    let from_env = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0);
    let n = wanted.or(from_env).unwrap_or_else(|| num_cpus::get_physical().clamp(1, cpus));
    if codec::nn::init_thread_pool(n).is_ok() {
        return Ok(());
    }
    match wanted {
        Some(n) if n != rayon::current_num_threads() => {
            let msg = format!(
                "threads={n} ignored: this process computes on one pool of threads, already started with {}",
                rayon::current_num_threads()
            );
            let msg = CString::new(msg).map_err(|e| CodecError::new_err(e.to_string()))?;
            PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &msg, 1)
        }
        _ => Ok(()),
    }
}

/// Loads `spec` (a GGUF, a checkpoint or a hub id; see `Codec::open`), with progress bars for downloads.
fn load(spec: &Path, device: DeviceKind) -> codec::Result<Codec> {
    Codec::open(spec, device, true)
}

/// A neural audio codec model: audio -> discrete codes -> audio.
///
/// ``model`` is a ``.gguf`` file, a checkpoint ``codec convert`` reads (a hub-style directory, a ``.safetensors``,
/// descript's ``.pth``, a WavTokenizer ``.ckpt``), or a Hugging Face hub id such as ``"kyutai/mimi"`` (downloaded
/// and converted once, cached). ``device``: ``"cpu"``, ``"cuda"``, ``"metal"`` or ``"auto"``. ``threads``: the
/// size of the process-wide pool of compute threads, which the first call that computes sets (default: the
/// physical cores, or ``$RAYON_NUM_THREADS``); asking another size later is a ``RuntimeWarning``.
///
/// One model may be used from several Python threads at once: every call releases the GIL while it computes.
///
/// Raises FileNotFoundError for a missing path, ValueError for a bad argument, CodecError for a bad model file.
#[pyclass(frozen, module = "codec_rs", name = "Codec")]
struct PyCodec {
    codec: Codec,
    // The model's fixed figures, as read-only properties (copied from `codec` when loaded).
    /// The architecture: ``"mimi"``, ``"dac"`` or ``"wavtokenizer"``.
    #[pyo3(get)]
    arch: String,
    /// Audio samples per second the model works at.
    #[pyo3(get)]
    sample_rate: u32,
    /// Audio samples per code frame.
    #[pyo3(get)]
    hop: usize,
    /// Code frames per second (``sample_rate / hop``).
    #[pyo3(get)]
    frame_rate: f64,
    /// The most codebooks (code rows per frame) the model has.
    #[pyo3(get)]
    max_n_q: usize,
    /// Entries per codebook: codes lie in ``range(codebook_size)``.
    #[pyo3(get)]
    codebook_size: usize,
}

impl PyCodec {
    /// `n_q` checked against the model: `None` means all codebooks.
    fn n_q(&self, n_q: Option<i64>) -> PyResult<Option<usize>> {
        n_q.map(|n| in_range("n_q", n, 1..=self.codec.max_n_q())).transpose()
    }

    /// The audio array `obj` at `rate` (`None`: the model's).
    fn audio(&self, obj: &Bound<'_, PyAny>, rate: Option<i64>, what: &str) -> PyResult<Audio> {
        let sample_rate = match rate {
            Some(rate) => sample_rate("sample_rate", rate)?,
            None => self.codec.sample_rate(),
        };
        Ok(Audio { sample_rate, samples: mono_samples(obj, what)? })
    }

    /// The codes array `obj`, checked against the model.
    fn codes(&self, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Codes> {
        codes_from_array(obj, self.codec.max_n_q(), self.codec.codebook_size(), what)
    }
}

#[pymethods]
impl PyCodec {
    #[new]
    #[pyo3(signature = (model, device = "cpu", threads = None))]
    fn new(py: Python<'_>, model: PathBuf, device: &str, threads: Option<i64>) -> PyResult<Self> {
        let device: DeviceKind = device.parse().map_err(to_py)?;
        init_threads(py, threads)?;
        let codec = detached(py, || load(&model, device))?;
        Ok(Self {
            arch: codec.arch().to_string(),
            sample_rate: codec.sample_rate(),
            hop: codec.hop(),
            frame_rate: codec.frame_rate(),
            max_n_q: codec.max_n_q(),
            codebook_size: codec.codebook_size(),
            codec,
        })
    }

    /// Encodes audio into codes.
    ///
    /// ``audio``: float32, float64 or int16 (scaled by 1/32768), shape (samples,) or (channels, samples) (averaged
    /// to mono). ``sample_rate``: the audio's rate, resampled to the model's when it differs (default: the
    /// model's). ``n_q``: codebooks to use (default: all). Returns int32 codes of shape (n_q, frames), frames =
    /// ceil(samples at the model rate / hop).
    #[pyo3(signature = (audio, sample_rate = None, n_q = None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        audio: &Bound<'py, PyAny>,
        sample_rate: Option<i64>,
        n_q: Option<i64>,
    ) -> PyResult<Bound<'py, PyArray2<i32>>> {
        let n_q = self.n_q(n_q)?;
        let audio = self.audio(audio, sample_rate, "audio")?;
        let codes = detached(py, || self.codec.encode(&audio, n_q))?;
        codes_array(py, codes)
    }

    /// Decodes codes into audio.
    ///
    /// ``codes``: any integer dtype, shape (n_q, frames) or (1, n_q, frames), every code in
    /// ``range(codebook_size)``. Returns float32 mono audio at the model's sample rate, about frames * hop samples.
    fn decode<'py>(&self, py: Python<'py>, codes: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let codes = self.codes(codes, "codes")?;
        let audio = detached(py, || self.codec.decode(&codes))?;
        Ok(audio_array(py, audio.samples))
    }

    /// Encodes several clips in one call (as ``encode`` each, same ``sample_rate`` and ``n_q`` for all); returns a
    /// list of int32 (n_q, frames) arrays in order.
    #[pyo3(signature = (audio, sample_rate = None, n_q = None))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        audio: Vec<Bound<'py, PyAny>>,
        sample_rate: Option<i64>,
        n_q: Option<i64>,
    ) -> PyResult<Vec<Bound<'py, PyArray2<i32>>>> {
        let n_q = self.n_q(n_q)?;
        let audio = audio
            .iter()
            .enumerate()
            .map(|(i, a)| self.audio(a, sample_rate, &format!("audio[{i}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let codes = detached(py, || self.codec.encode_batch(&audio, n_q))?;
        codes.into_iter().map(|c| codes_array(py, c)).collect()
    }

    /// Decodes several code arrays in one call (as ``decode`` each); returns a list of float32 arrays in order.
    fn decode_batch<'py>(
        &self,
        py: Python<'py>,
        codes: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyArray1<f32>>>> {
        let codes = codes
            .iter()
            .enumerate()
            .map(|(i, c)| self.codes(c, &format!("codes[{i}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let audio = detached(py, || self.codec.decode_batch(&codes))?;
        Ok(audio.into_iter().map(|a| audio_array(py, a.samples)).collect())
    }

    /// A streaming encoder with ``n_q`` codebooks (default: all): push audio at the model's sample rate in pieces
    /// of any size, get codes as frames complete.
    #[pyo3(signature = (n_q = None))]
    fn stream_encoder(&self, py: Python<'_>, n_q: Option<i64>) -> PyResult<StreamEncoder> {
        let n_q = self.n_q(n_q)?;
        Ok(StreamEncoder::new(detached(py, || self.codec.stream_encoder(n_q))?))
    }

    /// A streaming decoder: push codes in pieces of any number of frames, get audio as it becomes final. Raises
    /// ``CodecError`` for a model whose decoder cannot stream (WavTokenizer: its attention spans the whole clip).
    fn stream_decoder(&self, py: Python<'_>) -> PyResult<StreamDecoder> {
        let stream = detached(py, || self.codec.stream_decoder())?;
        Ok(StreamDecoder::new(stream, self.codec.max_n_q(), self.codec.codebook_size()))
    }

    fn __repr__(&self) -> String {
        format!(
            "Codec(arch='{}', sample_rate={}, hop={}, max_n_q={}, codebook_size={})",
            self.codec.arch(),
            self.codec.sample_rate(),
            self.codec.hop(),
            self.codec.max_n_q(),
            self.codec.codebook_size()
        )
    }
}

/// Converts a checkpoint into a GGUF model file, as ``codec convert``: ``src`` is a hub-style directory
/// (config.json + *.safetensors), a ``.safetensors`` file, descript's DAC ``.pth`` or a WavTokenizer ``.ckpt``;
/// ``arch`` (``"mimi"``, ``"dac"``, ``"wavtokenizer"``) is detected when omitted; ``config`` is a config file for
/// sources without one beside them; ``dtype``: ``"f32"``, ``"f16"`` or ``"q8_0"`` weight storage. What a user
/// should know about choices made on the way is issued as ``UserWarning``.
#[pyfunction]
#[pyo3(signature = (src, out, arch = None, config = None, dtype = "f32"))]
fn convert(
    py: Python<'_>,
    src: PathBuf,
    out: PathBuf,
    arch: Option<String>,
    config: Option<PathBuf>,
    dtype: &str,
) -> PyResult<()> {
    let opts = ConvertOptions { arch, config, dtype: dtype.parse().map_err(to_py)?, name: None };
    init_threads(py, None)?;
    let notes = detached(py, || {
        let mut notes = Vec::new();
        codec::convert::convert_with_notes(&src, &out, &opts, &mut notes).map(|()| notes)
    })?;
    for note in notes {
        let note = CString::new(note).map_err(|e| CodecError::new_err(e.to_string()))?;
        PyErr::warn(py, &py.get_type::<PyUserWarning>(), &note, 1)?;
    }
    Ok(())
}

/// Reads an audio file (wav, flac, mp3, ogg; any rate and channel count) as float32 mono samples at
/// ``sample_rate`` Hz, with the library's own reader, downmix and resampler (what ``codec encode`` reads).
#[pyfunction]
fn load_audio(py: Python<'_>, path: PathBuf, sample_rate: i64) -> PyResult<Bound<'_, PyArray1<f32>>> {
    let rate = self::sample_rate("sample_rate", sample_rate)?;
    init_threads(py, None)?;
    let audio = detached(py, || audio::read_mono_at(&path, rate))?;
    Ok(audio_array(py, audio.samples))
}

/// Reads an audio file as ``load_audio`` does but at its own rate: ``(samples, sample_rate)``, float32 mono
/// samples and the file's rate in Hz (what a dataset's row records of the original).
#[pyfunction]
fn read_audio(py: Python<'_>, path: PathBuf) -> PyResult<(Bound<'_, PyArray1<f32>>, u32)> {
    init_threads(py, None)?;
    let audio = detached(py, || audio::read(&path))?;
    Ok((audio_array(py, audio.samples), audio.sample_rate))
}

/// Native module of codec_rs; import ``codec_rs`` instead.
#[pymodule]
fn _codec_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Per 10 s encode of the WavTokenizer fixture 7 600 page faults without it, 0 with (`codec::keep_freed_memory`).
    codec::keep_freed_memory();
    m.add_class::<PyCodec>()?;
    m.add_class::<StreamEncoder>()?;
    m.add_class::<StreamDecoder>()?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(load_audio, m)?)?;
    m.add_function(wrap_pyfunction!(read_audio, m)?)?;
    m.add("CodecError", m.py().get_type::<CodecError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
