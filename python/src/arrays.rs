//! numpy arrays in and out. Audio in: float32, float64 or int16 (scaled by 1/32768, as the library reads 16-bit
//! files), shape (T,) or (C, T) averaged to mono as the library's reader downmixes. Codes in: any integer dtype,
//! shape (n_q, F) or (1, n_q, F). Out: codes int32 (n_q, F), audio float32 (T,), each array owning the vector the
//! library returned (no copy). Anything else that numpy can turn into an array (a list) goes through
//! `numpy.asarray` first.

use codec::Codes;
use numpy::ndarray::{Array2, ArrayViewD, Axis};
use numpy::prelude::*;
use numpy::{Element, PyArray1, PyArray2, PyReadonlyArrayDyn, PyUntypedArray};
use pyo3::prelude::*;

use crate::errors::{invalid, CodecError};

/// A shape as Python prints it: `(100, 2)`, `(100,)`.
fn shape(dims: &[usize]) -> String {
    match dims {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// `obj` as a numpy array: itself if it is one (no copy), else `numpy.asarray(obj)`.
fn as_array<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyUntypedArray>> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        return Ok(array.clone());
    }
    let array = obj.py().import("numpy")?.call_method1("asarray", (obj,))?;
    Ok(array.cast_into::<PyUntypedArray>()?)
}

/// Mono samples of the audio array `obj` (`what` names it in errors). A contiguous float32 array is copied once
/// (a memcpy, no conversion), with the GIL held: the copy is what the library's `Audio` owns, and it keeps the input
/// the model sees fixed while other Python threads run (and may write to the array).
pub fn mono_samples(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f32>> {
    let array = as_array(obj)?;
    if let Ok(a) = array.extract::<PyReadonlyArrayDyn<f32>>() {
        return mono(a.as_array(), |x| x, what);
    }
    if let Ok(a) = array.extract::<PyReadonlyArrayDyn<f64>>() {
        return mono(a.as_array(), |x| x as f32, what);
    }
    if let Ok(a) = array.extract::<PyReadonlyArrayDyn<i16>>() {
        return mono(a.as_array(), |x| x as f32 / 32768.0, what);
    }
    Err(invalid(format!("{what} must be a float32, float64 or int16 array, not {}", array.dtype())))
}

/// (T,) as it is, or (C, T) averaged over C (the sum in channel order times 1/C, as the library downmixes files).
fn mono<T: Copy>(a: ArrayViewD<'_, T>, to_f32: impl Fn(T) -> f32, what: &str) -> PyResult<Vec<f32>> {
    match *a.shape() {
        [_] => Ok(match a.as_slice() {
            Some(samples) => samples.iter().map(|&x| to_f32(x)).collect(),
            None => a.iter().map(|&x| to_f32(x)).collect(),
        }),
        [0, _] => Err(invalid(format!("{what} has no channels (shape {})", shape(a.shape())))),
        // A clip shorter than its channel count is a (T, C) array given the wrong way round.
        [channels, samples] if samples > 0 && channels > samples => Err(invalid(format!(
            "{what} of shape {} has more channels than samples: pass (channels, samples), e.g. audio.T",
            shape(a.shape())
        ))),
        [1, _] => Ok(a.iter().map(|&x| to_f32(x)).collect()),
        [channels, samples] => {
            let scale = 1.0 / channels as f32;
            let rows: Vec<_> = a.axis_iter(Axis(0)).collect();
            Ok((0..samples).map(|t| rows.iter().map(|row| to_f32(row[t])).sum::<f32>() * scale).collect())
        }
        _ => Err(invalid(format!(
            "{what} must be 1-D (samples,) or 2-D (channels, samples), not shape {}",
            shape(a.shape())
        ))),
    }
}

/// The codes array `obj` (`what` names it in errors), checked against a model with `max_n_q` codebooks of
/// `codebook_size` entries: the right shape, no more codebooks than the model has, every code in range.
pub fn codes_from_array(obj: &Bound<'_, PyAny>, max_n_q: usize, codebook_size: usize, what: &str) -> PyResult<Codes> {
    let array = as_array(obj)?;
    let (n_q, n_frames) = match *array.shape() {
        [n_q, n_frames] | [1, n_q, n_frames] => (n_q, n_frames),
        _ => {
            return Err(invalid(format!(
                "{what} must have shape (n_q, frames) or (1, n_q, frames), not {}",
                shape(array.shape())
            )))
        }
    };
    if n_q == 0 || n_q > max_n_q {
        return Err(invalid(format!("{what} have {n_q} codebooks; the model takes 1 to {max_n_q}")));
    }
    let readers: [CodesReader; 8] = [
        read_codes::<i64>,
        read_codes::<i32>,
        read_codes::<i16>,
        read_codes::<i8>,
        read_codes::<u64>,
        read_codes::<u32>,
        read_codes::<u16>,
        read_codes::<u8>,
    ];
    let data = readers.iter().find_map(|read| read(&array, n_frames, codebook_size, what)).ok_or_else(|| {
        invalid(format!("{what} must be an array of a (native-endian) integer dtype, not {}", array.dtype()))
    })??;
    Ok(Codes { n_q, n_frames, data })
}

type CodesReader = fn(&Bound<'_, PyUntypedArray>, usize, usize, &str) -> Option<PyResult<Vec<u32>>>;

/// The codes of `array` row-major if its dtype is `T` (`None` if not); a negative or out-of-range code is an
/// error naming its codebook and frame.
fn read_codes<T: Element + Copy + Into<i128>>(
    array: &Bound<'_, PyUntypedArray>,
    n_frames: usize,
    codebook_size: usize,
    what: &str,
) -> Option<PyResult<Vec<u32>>> {
    let a = array.extract::<PyReadonlyArrayDyn<T>>().ok()?;
    let checked = a.as_array().into_iter().enumerate().map(|(i, &code)| {
        let code: i128 = code.into();
        u32::try_from(code).ok().filter(|&c| (c as usize) < codebook_size).ok_or_else(|| {
            let problem = if code < 0 {
                "is negative".to_string()
            } else {
                format!("is out of range (codebook size {codebook_size})")
            };
            // `i` indexes a non-empty array, so `n_frames` > 0.
            invalid(format!("{what}: code {code} at codebook {}, frame {} {problem}", i / n_frames, i % n_frames))
        })
    });
    Some(checked.collect())
}

/// Codes as an int32 (n_q, frames) array.
pub fn codes_array(py: Python<'_>, codes: Codes) -> PyResult<Bound<'_, PyArray2<i32>>> {
    let data = codes
        .data
        .into_iter()
        .map(i32::try_from)
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|e| CodecError::new_err(format!("the model returned a code beyond int32: {e}")))?;
    let array = Array2::from_shape_vec((codes.n_q, codes.n_frames), data)
        .map_err(|e| CodecError::new_err(format!("the model returned codes of the wrong size: {e}")))?;
    Ok(array.into_pyarray(py))
}

/// Samples as a float32 (T,) array.
pub fn audio_array(py: Python<'_>, samples: Vec<f32>) -> Bound<'_, PyArray1<f32>> {
    samples.into_pyarray(py)
}
