//! The C API of codec-rs: `libcodec.so` / `libcodec.a`, declared in `include/codec.h`, where each function's
//! contract is written (ownership, buffer sizes, threads). Every entry point runs in [`status::guard`]: pointers are
//! checked, errors become a status plus a message kept per thread, and no panic crosses into C.
#![allow(clippy::missing_safety_doc)] // the safety contract of each function is in include/codec.h

mod buffers;
mod status;
mod stream;

use std::ffi::{c_char, c_int, CString};
use std::path::Path;
use std::ptr::null_mut;

use codec_rs::{audio, Audio, Codec, Codes, DeviceKind};

use buffers::{c_str, deliver, deref, deref_mut, input, input_mut, name, output, reserve};
use status::{guard, Failure, Outcome, Status};

/// `codec_model`: a loaded model and its architecture's name. Shared between threads (every method takes `&self`).
pub struct Model {
    codec: Codec,
    arch: CString,
}

/// `codec_params` of include/codec.h. `device` is a plain int: a C caller may pass any value in an enum.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Params {
    n_threads: i32,
    device: c_int,
}

#[no_mangle]
pub extern "C" fn codec_default_params() -> Params {
    Params { n_threads: 0, device: 0 }
}

#[no_mangle]
pub extern "C" fn codec_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn codec_last_error() -> *const c_char {
    status::last_error()
}

#[no_mangle]
pub extern "C" fn codec_last_status() -> Status {
    status::last_status()
}

#[no_mangle]
pub unsafe extern "C" fn codec_load(model: *const c_char, params: *const Params) -> *mut Model {
    guard(
        |_| null_mut(),
        || {
            let spec = c_str(model, "model")?;
            let params = deref(params, "params")?;
            let device = device_kind(params.device)?;
            codec_rs::keep_freed_memory();
            set_threads(params.n_threads)?;
            Ok(Box::into_raw(Box::new(Model::load(spec, device)?)))
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn codec_free(model: *mut Model) {
    free_boxed(model)
}

/// Drops what `Box::into_raw` gave out (NULL is fine), never unwinding into C.
///
/// # Safety
/// `ptr` is NULL or came from `Box::into_raw` and is not used again.
pub(crate) unsafe fn free_boxed<T>(ptr: *mut T) {
    guard(
        |_| (),
        || {
            if !ptr.is_null() {
                drop(Box::from_raw(ptr));
            }
            Ok(())
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn codec_arch(model: *const Model) -> *const c_char {
    guard(|_| c"".as_ptr(), || Ok(deref(model, "model")?.arch.as_ptr()))
}

#[no_mangle]
pub unsafe extern "C" fn codec_sample_rate(model: *const Model) -> u32 {
    guard(|_| 0, || Ok(deref(model, "model")?.codec.sample_rate()))
}

#[no_mangle]
pub unsafe extern "C" fn codec_hop(model: *const Model) -> u32 {
    guard(|_| 0, || as_u32(deref(model, "model")?.hop(), "the hop"))
}

#[no_mangle]
pub unsafe extern "C" fn codec_max_n_q(model: *const Model) -> u32 {
    guard(|_| 0, || as_u32(deref(model, "model")?.codec.max_n_q(), "the codebook count"))
}

#[no_mangle]
pub unsafe extern "C" fn codec_codebook_size(model: *const Model) -> u32 {
    guard(|_| 0, || as_u32(deref(model, "model")?.codec.codebook_size(), "the codebook size"))
}

/// A model's size as the header's `uint32_t` (model files keep theirs far below; checked all the same).
fn as_u32(n: usize, what: &str) -> Outcome<u32> {
    n.try_into().map_err(|_| Failure::new(Status::Model, format!("{what} {n} exceeds 32 bits")))
}

#[no_mangle]
pub unsafe extern "C" fn codec_n_frames(model: *const Model, n_samples: usize) -> usize {
    guard(|_| 0, || Ok(n_samples.div_ceil(deref(model, "model")?.hop())))
}

#[no_mangle]
pub unsafe extern "C" fn codec_encode(
    model: *const Model,
    pcm: *const f32,
    n_samples: usize,
    sample_rate: u32,
    n_q: u32,
    codes: *mut u32,
    codes_capacity: usize,
    n_frames: *mut usize,
) -> Status {
    with_model(model, |model| {
        let pcm = input(pcm, n_samples, "pcm")?;
        let codes = output(codes, codes_capacity, "codes")?;
        let n_frames = deref_mut(n_frames, "n_frames")?;
        model.encode(&[pcm], sample_rate, n_q, &mut [codes], std::slice::from_mut(n_frames))
    })
}

#[no_mangle]
pub unsafe extern "C" fn codec_decode(
    model: *const Model,
    codes: *const u32,
    n_q: u32,
    n_frames: usize,
    pcm: *mut f32,
    pcm_capacity: usize,
    n_samples: *mut usize,
) -> Status {
    with_model(model, |model| {
        let codes = input(codes, codes_len(n_q, n_frames, "codes")?, "codes")?;
        let pcm = output(pcm, pcm_capacity, "pcm")?;
        let n_samples = deref_mut(n_samples, "n_samples")?;
        model.decode(&[codes], n_q, &[n_frames], &mut [pcm], std::slice::from_mut(n_samples))
    })
}

#[no_mangle]
pub unsafe extern "C" fn codec_encode_batch(
    model: *const Model,
    batch: usize,
    pcm: *const *const f32,
    n_samples: *const usize,
    sample_rate: u32,
    n_q: u32,
    codes: *const *mut u32,
    codes_capacity: *const usize,
    n_frames: *mut usize,
) -> Status {
    with_batch(model, batch, |model| {
        let pcm = items(pcm, input(n_samples, batch, "n_samples")?, "pcm", |ptr, len, what| input(ptr, len, what))?;
        let capacities = input(codes_capacity, batch, "codes_capacity")?;
        let mut codes = items(codes, capacities, "codes", |ptr, capacity, what| output(ptr, capacity, what))?;
        model.encode(&pcm, sample_rate, n_q, &mut codes, input_mut(n_frames, batch, "n_frames")?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn codec_decode_batch(
    model: *const Model,
    batch: usize,
    codes: *const *const u32,
    n_q: u32,
    n_frames: *const usize,
    pcm: *const *mut f32,
    pcm_capacity: *const usize,
    n_samples: *mut usize,
) -> Status {
    with_batch(model, batch, |model| {
        let n_frames = input(n_frames, batch, "n_frames")?;
        let codes =
            items(codes, n_frames, "codes", |ptr, frames, what| input(ptr, codes_len(n_q, frames, what)?, what))?;
        let capacities = input(pcm_capacity, batch, "pcm_capacity")?;
        let mut pcm = items(pcm, capacities, "pcm", |ptr, capacity, what| output(ptr, capacity, what))?;
        model.decode(&codes, n_q, n_frames, &mut pcm, input_mut(n_samples, batch, "n_samples")?)
    })
}

/// A call on `model`: `run` on the checked model, its outcome as a status.
unsafe fn with_model(model: *const Model, run: impl FnOnce(&Model) -> Outcome<()>) -> Status {
    status::status(|| run(deref(model, "model")?))
}

/// A batched call on `model`, as [`with_model`]; a batch of 0 does nothing and reads none of its arrays (they may
/// be NULL).
unsafe fn with_batch(model: *const Model, batch: usize, run: impl FnOnce(&Model) -> Outcome<()>) -> Status {
    with_model(model, |model| if batch == 0 { Ok(()) } else { run(model) })
}

/// The buffers of a batch of `sizes.len()` items: the array of their pointers at `ptrs` (named `what`), then item i
/// as `buffer(ptrs[i], sizes[i], "what[i]")` (the size a length, capacity or frame count, as `buffer` takes it).
unsafe fn items<P: Copy, B>(
    ptrs: *const P,
    sizes: &[usize],
    what: &str,
    buffer: impl Fn(P, usize, &str) -> Outcome<B>,
) -> Outcome<Vec<B>> {
    let batch = sizes.len();
    let ptrs = input(ptrs, batch, what)?;
    ptrs.iter().zip(sizes).enumerate().map(|(i, (&ptr, &size))| buffer(ptr, size, &name(what, i, batch))).collect()
}

/// `n_q × n_frames`, the values a codes array holds, or an error naming `what` if that overflows.
fn codes_len(n_q: u32, n_frames: usize, what: &str) -> Outcome<usize> {
    (n_q as usize).checked_mul(n_frames).ok_or_else(|| Failure::invalid(format!("{what}: n_q × n_frames overflows")))
}

fn device_kind(device: c_int) -> Outcome<DeviceKind> {
    let kind = match device {
        0 => DeviceKind::Cpu,
        1 => DeviceKind::Cuda,
        2 => DeviceKind::Metal,
        3 => DeviceKind::Auto,
        other => return Err(Failure::invalid(format!("params.device {other} is not a codec_device"))),
    };
    // A device this build or machine lacks is one the library does not support here, not a caller's mistake.
    kind.device().map_err(|e| Failure::new(Status::Unsupported, e.to_string()))?;
    Ok(kind)
}

/// More threads than this per logical CPU only add contention (the CLI clamps `--threads` the same way).
const MAX_THREADS_PER_CPU: usize = 4;

/// Sizes the process's compute pool to `n_threads`, clamped to [`MAX_THREADS_PER_CPU`] per logical CPU; 0 leaves
/// the defaults (`RAYON_NUM_THREADS`, else every logical CPU; candle's element-wise kernels: `CANDLE_NUM_THREADS`,
/// else `RAYON_NUM_THREADS`, else the physical cores). The pool is built once per process, by the first load that
/// sizes it or else by the first model run: a later count is ignored (documented in codec.h). Built here as the
/// CLI's `--threads` builds it (`codec::nn::init_thread_pool`) — once, before any model ran.
fn set_threads(n_threads: i32) -> Outcome<()> {
    let n = usize::try_from(n_threads)
        .map_err(|_| Failure::invalid(format!("params.n_threads must be 0 (all cores) or more, not {n_threads}")))?;
    if n > 0 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = n.min(MAX_THREADS_PER_CPU * cpus);
        // Err: the pool exists already, and keeps its size.
        codec_rs::nn::init_thread_pool(n).ok();
    }
    Ok(())
}

impl Model {
    /// Loads `spec`: a GGUF file, a checkpoint `codec convert` reads (converted into a temporary GGUF, removed
    /// once loaded: the model keeps the file's pages mapped), or a hub id (downloaded and converted once, cached).
    /// `spec`: a GGUF, a checkpoint or a hub id (see `Codec::open`); nothing on stderr.
    fn load(spec: &str, device: DeviceKind) -> Outcome<Model> {
        let codec = Codec::open(Path::new(spec), device, false)?;
        let arch =
            CString::new(codec.arch()).map_err(|_| Failure::new(Status::Model, "the architecture name holds a NUL"))?;
        Ok(Model { codec, arch })
    }

    fn hop(&self) -> usize {
        self.codec.hop()
    }

    /// The codebooks a call asks for: 0 is all of them.
    fn codebooks(&self, n_q: u32) -> Outcome<usize> {
        let max = self.codec.max_n_q();
        match n_q as usize {
            0 => Ok(max),
            n if n > max => Err(Failure::invalid(format!("n_q {n} exceeds the model's maximum of {max} codebooks"))),
            n => Ok(n),
        }
    }

    /// Encodes each `pcm[i]` (mono at `sample_rate`) into `codes[i]`, setting `n_frames[i]`. Every buffer is
    /// checked before any work: one too small reports what each item needs and writes nothing.
    fn encode(
        &self,
        pcm: &[&[f32]],
        sample_rate: u32,
        n_q: u32,
        codes: &mut [&mut [u32]],
        n_frames: &mut [usize],
    ) -> Outcome<()> {
        let n_q = self.codebooks(n_q)?;
        let audio = pcm.iter().map(|pcm| self.at_model_rate(pcm, sample_rate)).collect::<Outcome<Vec<_>>>()?;
        for (frames, audio) in n_frames.iter_mut().zip(&audio) {
            *frames = audio.samples.len().div_ceil(self.hop());
        }
        for (i, (frames, out)) in n_frames.iter().zip(codes.iter()).enumerate() {
            reserve(out, codes_len(n_q as u32, *frames, "codes")?, &name("codes", i, pcm.len()))?;
        }
        for (i, (got, out)) in self.codec.encode_batch(&audio, Some(n_q))?.iter().zip(codes.iter_mut()).enumerate() {
            n_frames[i] = got.n_frames;
            deliver(&got.data, out, &name("codes", i, pcm.len()))?;
        }
        Ok(())
    }

    /// Decodes each `codes[i]` (`n_q × n_frames[i]`) into `pcm[i]`, setting `n_samples[i]`. A buffer must hold
    /// `n_frames × hop` samples, the most a decode gives; one too small reports that for each item and writes nothing.
    fn decode(
        &self,
        codes: &[&[u32]],
        n_q: u32,
        n_frames: &[usize],
        pcm: &mut [&mut [f32]],
        n_samples: &mut [usize],
    ) -> Outcome<()> {
        if n_q == 0 {
            return Err(Failure::invalid("n_q must be at least 1: codes have one row per codebook"));
        }
        let n_q = self.codebooks(n_q)?;
        for (samples, &frames) in n_samples.iter_mut().zip(n_frames) {
            *samples = frames.checked_mul(self.hop()).ok_or_else(|| Failure::invalid("n_frames × hop overflows"))?;
        }
        for (i, (samples, out)) in n_samples.iter().zip(pcm.iter()).enumerate() {
            reserve(out, *samples, &name("pcm", i, codes.len()))?;
        }
        let codes: Vec<Codes> =
            codes.iter().zip(n_frames).map(|(data, &n_frames)| Codes { n_q, n_frames, data: data.to_vec() }).collect();
        for (i, (audio, out)) in self.codec.decode_batch(&codes)?.iter().zip(pcm.iter_mut()).enumerate() {
            n_samples[i] = audio.samples.len();
            deliver(&audio.samples, out, &name("pcm", i, codes.len()))?;
        }
        Ok(())
    }

    /// `pcm` at `sample_rate` as audio at the model's rate (resampled when the rates differ).
    fn at_model_rate(&self, pcm: &[f32], sample_rate: u32) -> Outcome<Audio> {
        let rate = self.codec.sample_rate();
        if sample_rate == rate {
            return Ok(Audio { sample_rate, samples: pcm.to_vec() });
        }
        let (min, max) = (audio::MIN_INPUT_RATE, audio::MAX_INPUT_RATE);
        if !(min..=max).contains(&sample_rate) {
            return Err(Failure::invalid(format!(
                "sample_rate {sample_rate} Hz is outside the supported {min}–{max} Hz"
            )));
        }
        Ok(Audio { sample_rate: rate, samples: audio::resample(pcm, sample_rate, rate)? })
    }
}

/// `codec_model` is shared between the host's threads.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Model>()
};
