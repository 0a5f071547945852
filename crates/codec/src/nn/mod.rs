//! Building blocks shared by the architectures.

pub mod activation;
pub mod conv;
pub mod gemm;
pub mod linear;
pub mod norm;
mod conv_cpu;
pub mod lstm;
pub mod rvq;
pub mod seanet;
pub mod snake;
pub mod transformer;
pub mod vocos;

use candle_core::{CpuStorage, Layout, Result, Tensor};

/// The f32 data of a contiguous CPU tensor, from its storage and layout.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
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
