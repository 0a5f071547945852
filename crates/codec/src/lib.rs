//! codec-rs: neural audio codecs (Mimi, DAC, WavTokenizer) on candle.
//!
//! Audio → codes: [`Codec::encode`]; codes → audio: [`Codec::decode`]. A model is one GGUF file made by
//! [`convert::convert`] from the checkpoint layouts users have; [`hub::resolve_model`] turns a model id into one.

#![warn(missing_docs)]

pub mod audio;
mod codec;
pub mod convert;
pub mod error;
pub mod gguf;
pub mod hub;
mod mem;
pub mod models;
pub mod nn;
pub mod npy;
pub mod stream;

pub use audio::Audio;
pub use codec::{Codec, Codes, DeviceKind, CHUNK_SECONDS, PIECE_MEMORY};
pub use error::{Error, Result};
pub use mem::keep_freed_memory;
pub use models::{Model, Parts};
pub use nn::gemm::{set_precision, Precision};
pub use stream::{StreamDecoder, StreamEncoder};
