//! The library's [`codec::Error`] as Python exceptions: a missing file is `FileNotFoundError` (permission denied
//! `PermissionError`), a bad argument or bad codes `ValueError`, everything else [`CodecError`]. Model work runs
//! through [`detached`]: the GIL released, and a panic turned into a `CodecError` instead of unwinding into Python.

use std::io::ErrorKind;
use std::panic::{catch_unwind, AssertUnwindSafe};

use codec::Error;
use pyo3::exceptions::{PyFileNotFoundError, PyPermissionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    codec_rs,
    CodecError,
    PyRuntimeError,
    "A model file, checkpoint, audio file or model run failed (what and where are in the message)."
);

/// The Python exception for a library error.
pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::Io { ref path, ref source }
            if matches!(source.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) =>
        {
            let not_found = source.kind() == ErrorKind::NotFound;
            let Some(errno) = source.raw_os_error() else {
                let msg = e.to_string();
                return if not_found { PyFileNotFoundError::new_err(msg) } else { PyPermissionError::new_err(msg) };
            };
            // `OSError(errno, strerror, filename)`: Python fills `.errno` and `.filename` and words the message.
            let strerror = source.to_string();
            let strerror = strerror.strip_suffix(&format!(" (os error {errno})")).unwrap_or(&strerror).to_string();
            let args = (errno, strerror, path.display().to_string());
            if not_found {
                PyFileNotFoundError::new_err(args)
            } else {
                PyPermissionError::new_err(args)
            }
        }
        Error::InvalidArgument(_) | Error::Codes { .. } => PyValueError::new_err(e.to_string()),
        e => CodecError::new_err(e.to_string()),
    }
}

/// A `ValueError` with `msg`.
pub fn invalid(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// Runs `f` with the GIL released (other Python threads run meanwhile, this model included); its error becomes a
/// Python exception, and so does a panic (as a `CodecError`), which would otherwise surface as pyo3's
/// `PanicException`, a `BaseException` that `except Exception` does not catch.
pub fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> codec::Result<T> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(to_py),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(CodecError::new_err(format!("internal error (please report): {what}")))
        }
    }
}
