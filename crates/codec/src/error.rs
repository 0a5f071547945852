//! The one error type of the library. Every variant says *what* failed and *where* (a file, a tensor, an argument),
//! so the CLI can print it as a single line.

use std::path::{Path, PathBuf};

/// Every failure of the library: what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed at the OS level.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// A model file (GGUF) is missing pieces, truncated, corrupt or of another architecture.
    #[error("{path}: {msg}")]
    ModelFile {
        /// The model file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A source checkpoint could not be converted.
    #[error("{path}: cannot convert: {msg}")]
    Convert {
        /// The checkpoint (file or directory).
        path: PathBuf,
        /// Why it cannot be converted.
        msg: String,
    },

    /// An audio file could not be read or written, or holds no samples.
    #[error("{path}: {msg}")]
    Audio {
        /// The audio file.
        path: PathBuf,
        /// What failed.
        msg: String,
    },

    /// A codes array has the wrong dtype, shape or values.
    #[error("{path}: {msg}")]
    Codes {
        /// The file the codes come from or go to.
        path: PathBuf,
        /// What is wrong with them.
        msg: String,
    },

    /// A caller's argument is out of range (n_q, architecture name, device, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// The model cannot do what was asked (WavTokenizer's decoder cannot stream: its attention spans the clip).
    #[error("{0}")]
    Unsupported(String),

    /// Fetching a model by id from the hub failed.
    #[error("{0}")]
    Hub(String),

    /// A tensor operation failed inside a model; `context` names the stage.
    #[error("{context}: {source}")]
    Tensor {
        /// The stage or tensor the operation belonged to.
        context: String,
        /// candle's error.
        source: candle_core::Error,
    },
}

/// `Result` with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// [`Error::Io`] on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    /// [`Error::ModelFile`] on `path`.
    pub fn model_file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::ModelFile { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    /// [`Error::Convert`] on `path`.
    pub fn convert(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Convert { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    /// [`Error::Audio`] on `path`.
    pub fn audio(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Audio { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    /// [`Error::Codes`] on `path`.
    pub fn codes(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Codes { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }

    /// This error as that of item `index` of a batch (the same variant, its message prefixed).
    pub fn item(self, index: usize) -> Self {
        let prefix = |msg: String| format!("batch item {index}: {msg}");
        match self {
            Error::InvalidArgument(msg) => Error::InvalidArgument(prefix(msg)),
            Error::Unsupported(msg) => Error::Unsupported(prefix(msg)),
            Error::Tensor { context, source } => Error::Tensor { context: prefix(context), source },
            Error::Audio { path, msg } => Error::Audio { path, msg: prefix(msg) },
            Error::Codes { path, msg } => Error::Codes { path, msg: prefix(msg) },
            other => other,
        }
    }
}

/// The value `s` names among `choices` (name, value), else [`Error::InvalidArgument`] naming `what` and the choices:
/// `unknown device 'x' (expected cpu, cuda, metal or auto)`. For the small enums users pick by name.
pub(crate) fn parse_choice<T: Copy>(what: &str, s: &str, choices: &[(&str, T)]) -> Result<T> {
    if let Some((_, value)) = choices.iter().find(|(name, _)| *name == s) {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let expected = match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(Error::InvalidArgument(format!("unknown {what} '{s}' (expected {expected})")))
}

/// Tensor errors inside forward passes carry no file: `?` on them names the stage generically.
impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Self {
        Error::Tensor { context: "tensor op".into(), source }
    }
}

/// Adds a stage name to a candle result: `conv.forward(&x).ctx("encoder.layers.3")?`.
pub trait TensorContext<T> {
    /// The error, if any, as [`Error::Tensor`] with `context`.
    fn ctx(self, context: impl Into<String>) -> Result<T>;
}

impl<T> TensorContext<T> for std::result::Result<T, candle_core::Error> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Tensor { context: context.into(), source })
    }
}
