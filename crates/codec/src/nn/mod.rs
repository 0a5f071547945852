//! Building blocks shared by the architectures.

pub mod activation;
pub mod conv;
mod conv_cpu;
pub mod gemm;
pub mod linear;
pub mod lstm;
pub mod norm;
pub mod rvq;
pub mod seanet;
pub mod snake;
pub mod transformer;
pub mod vocos;
pub mod weight;

pub use weight::Weights;

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

/// The f32 data of a contiguous CPU tensor, from its storage and layout.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// Whether a CPU layer packs its weights for our kernels when it is built and frees the f32 tensor: on CPU, for f32
/// weights that are real (not the zero-cost placeholders of a model half that was not loaded; see `models::Parts`).
/// Packing at build time lets the next layer's weights reuse the memory of this one's f32 copy (start-up is mostly
/// page faults). Layers that pack keep their weight as `None`.
pub(crate) fn pack_at_build(w: &Tensor) -> bool {
    w.device().is_cpu() && w.dtype() == DType::F32 && !w.stride().iter().all(|&s| s == 0)
}

/// The weight tensor of a layer that kept it (an error for one whose weights live only packed).
pub(crate) fn kept(weight: &Option<Tensor>) -> Result<&Tensor> {
    weight.as_ref().ok_or_else(|| candle_core::Error::Msg("weights are packed for the CPU kernels only".into()))
}

/// `cell`'s value, made by `init` on first use (a fallible `OnceLock::get_or_init`).
pub(crate) fn get_or_try_init<T>(cell: &OnceLock<T>, init: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = init()?;
    Ok(cell.get_or_init(|| v))
}

/// A tensor's values as one f32 vector (any device, dtype and layout).
pub(crate) fn f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Runs `body` compiled for AVX-512 where the CPU has it, so element-wise loops vectorise 16 wide instead of
/// baseline x86-64's 4 (ELU, GELU, Snake, depthwise taps). Results are bit-identical: Rust never contracts
/// `a * b + c` into an FMA, whatever the target features.
#[inline(always)]
pub(crate) fn wide_simd<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if gemm::isa() == gemm::Isa::Avx512 {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        // SAFETY: `isa()` detected AVX-512F.
        return unsafe { avx512(body) };
    }
    body()
}

/// The sum of a non-empty sequence of same-shaped tensors (codebook contributions, overlap-add slices).
pub(crate) fn sum_all(tensors: impl IntoIterator<Item = Result<Tensor>>) -> Result<Tensor> {
    let mut tensors = tensors.into_iter();
    let first = tensors.next().ok_or_else(|| candle_core::Error::Msg("nothing to sum".into()))??;
    tensors.try_fold(first, |acc, t| acc + t?)
}

/// Right-pads the last dim of `x` with zeros to a multiple of `multiple` (whole frames, as the references do).
pub fn pad_to_multiple(x: &Tensor, multiple: usize) -> Result<Tensor> {
    let len = x.dim(candle_core::D::Minus1)?;
    x.pad_with_zeros(candle_core::D::Minus1, 0, len.next_multiple_of(multiple) - len)
}
