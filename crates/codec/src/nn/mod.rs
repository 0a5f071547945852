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
mod winograd;

#[cfg(test)]
pub(crate) mod test_util;

pub use weight::Weights;

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

/// A CPU op over three f32 tensors — an input and two operands (per-channel parameters, keys and values) — run
/// through candle as [`F32Op3`]: each op writes its arithmetic, the storage plumbing is here once.
pub(crate) trait F32Kernel3: Send + Sync {
    /// candle's name of the op.
    const NAME: &'static str;
    /// What each input is, for errors.
    const INPUTS: [&'static str; 3];
    /// The output values and shape from the three inputs' contiguous values and layouts.
    fn run(&self, inputs: [(&[f32], &Layout); 3]) -> Result<(Vec<f32>, candle_core::Shape)>;
}

/// An [`F32Kernel3`] as candle's `CustomOp3` (CPU, f32 only).
pub(crate) struct F32Op3<T>(pub T);

impl<T: F32Kernel3> candle_core::CustomOp3 for F32Op3<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, candle_core::Shape)> {
        let [n1, n2, n3] = T::INPUTS;
        let inputs = [(f32_slice(s1, l1, n1)?, l1), (f32_slice(s2, l2, n2)?, l2), (f32_slice(s3, l3, n3)?, l3)];
        let (out, shape) = self.0.run(inputs)?;
        Ok((CpuStorage::F32(out), shape))
    }
}

/// Starts the one pool of `n` threads every kernel runs on: rayon's global pool (our GEMM, convs, element-wise ops),
/// with candle told the same count for its matmul. candle's own element-wise ops run on the calling thread
/// (`CANDLE_NUM_THREADS=1` unless the user set it): they are about 1 % of a run, and the workers of candle's
/// barrier pool spin for ~0.5 ms after each op on the cores our pool is computing on (4 % of a Mimi encode's CPU
/// samples under perf, user CPU time −6 to −10 % without them). Call before any model runs, while the process has
/// one thread (it sets environment variables); `Err` if the global pool exists already (it keeps its size).
pub fn init_thread_pool(n: usize) -> std::result::Result<(), rayon::ThreadPoolBuildError> {
    one_heap();
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    Ok(())
}

/// Runs `f` on one of the pool's threads (on this one if it is one). A model pass makes hundreds of parallel calls
/// (every GEMM, conv and element-wise kernel); made from a thread outside the pool, each one queues its work, wakes
/// a worker and puts the caller to sleep until the work is done — two thread switches per call, tens of µs each in
/// a VM, most of a stream step's small products. From inside the pool, the caller does its share at once, and the
/// other workers, still spinning after the last call, steal the rest. Mimi streaming at 80 ms per push (2 threads):
/// 12.2 → 10.6 ms per encode push, 11.0 → 9.1 per decode push.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    one_heap();
    rayon::scope(|_| f())
}

/// Makes every thread allocate from glibc's main heap (before the pool's threads start, which is when they would
/// pick heaps of their own). A pass's large activations are then allocated on a worker ([`on_pool`]); from a
/// per-thread heap glibc hands their pages back to the kernel when they are freed, and the next pass faults them
/// in again: 3× the page faults of a DAC decode and +9 % of its time, gone with one heap. Our threads allocate
/// little besides (packing buffers are reused per thread), so they do not contend for it.
fn one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only sets an allocator parameter, and is thread-safe.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        });
    }
}

/// A CPU tensor's contiguous f32 values (its storage and layout), read in place.
pub(crate) fn cpu_f32<'a>(storage: &'a candle_core::Storage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(s) => f32_slice(s, layout, what),
        _ => candle_core::bail!("{what} not on the CPU"),
    }
}

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

/// The CPU GEMM form of a layer's weights, made when the layer was built; an error for a layer that has none (its
/// weights are on another device, or placeholders of a model half that was not loaded).
pub(crate) fn gemm_form<T>(form: &Option<std::sync::Arc<T>>) -> Result<&T> {
    form.as_deref().ok_or_else(|| candle_core::Error::Msg("weights not loaded for the CPU kernels".into()))
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

/// Whether `f32::mul_add` is one instruction inside [`wide_simd`]: x86-64 with AVX2 + FMA or AVX-512, and aarch64.
/// Elsewhere it is libm's `fmaf`, some 20× a multiply and an add, so the element-wise polynomials
/// (`activation::exp_nonpositive` and its users, Snake) take their unfused form there ([`with_fma!`]).
pub(crate) fn fused_multiply_add() -> bool {
    #[cfg(target_arch = "x86_64")]
    return matches!(gemm::isa(), gemm::Isa::Avx512 | gemm::Isa::Avx2);
    #[cfg(not(target_arch = "x86_64"))]
    cfg!(target_arch = "aarch64")
}

/// `$body` with `$fma` a `const bool`: [`fused_multiply_add`], decided once per call, so each form of the
/// element-wise polynomials is its own monomorphised, vectorised loop (`activation::mul_add::<$fma>`).
macro_rules! with_fma {
    ($fma:ident, $body:expr) => {
        if $crate::nn::fused_multiply_add() {
            const $fma: bool = true;
            $body
        } else {
            const $fma: bool = false;
            $body
        }
    };
}
pub(crate) use with_fma;

/// Runs `body` compiled for AVX-512 (else AVX2 + FMA) where the CPU has it, so element-wise loops vectorise 16 (8)
/// wide instead of baseline x86-64's 4 (ELU, GELU, Snake, depthwise taps). Results are bit-identical: Rust never contracts
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
    #[cfg(target_arch = "x86_64")]
    if gemm::isa() == gemm::Isa::Avx2 {
        // 8 wide, and `floor`/`mul_add` as single instructions instead of libm calls (baseline x86-64 has
        // neither SSE4.1's rounding nor FMA).
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        // SAFETY: `isa()` detected AVX2 and FMA.
        return unsafe { avx2(body) };
    }
    body()
}

/// Dot product (LSTM gates, codebook norms) with 64 independent accumulators (four AVX-512 or eight AVX2
/// registers), so the adds do not wait on each other, summed pairwise at the end. Written with intrinsics where the
/// CPU has AVX-512 or AVX2: the portable loop's accumulator array stayed in memory, a store-to-load dependency on
/// every add.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if gemm::isa() == gemm::Isa::Avx512 {
        // SAFETY: AVX-512F is present (checked above).
        return unsafe { dot_avx512(a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if gemm::isa() == gemm::Isa::Avx2 {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 64;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += xa[k] * xb[k];
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            acc[k] += acc[k + width];
        }
    }
    acc[0] + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (r, acc) in acc.iter_mut().enumerate() {
            let (x, y) = (_mm512_loadu_ps(a.as_ptr().add(i + 16 * r)), _mm512_loadu_ps(b.as_ptr().add(i + 16 * r)));
            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(x, y));
        }
        i += 64;
    }
    let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum) + tail
}

/// The portable loop's sums in the portable loop's order (so the same bits), its 64 accumulators in eight AVX2
/// registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    while i + 64 <= n {
        for (r, acc) in acc.iter_mut().enumerate() {
            let (x, y) = (_mm256_loadu_ps(a.as_ptr().add(i + 8 * r)), _mm256_loadu_ps(b.as_ptr().add(i + 8 * r)));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(x, y));
        }
        i += 64;
    }
    let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
    // Lane k of register r is accumulator 8r + k: halving 64 → 8 adds registers r and r + width/8.
    for width in [4, 2, 1] {
        for r in 0..width {
            acc[r] = _mm256_add_ps(acc[r], acc[r + width]);
        }
    }
    let half = _mm_add_ps(_mm256_castps256_ps128(acc[0]), _mm256_extractf128_ps(acc[0], 1));
    let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1))) + tail
}

/// `values` as bf16 pair words (element 2q in the low half, 2q + 1 in the high half, zero past the end), the
/// operand layout of [`dot_bf16_pairs`].
pub(crate) fn bf16_pairs(values: &[f32], dst: &mut [u32]) {
    for (q, d) in dst.iter_mut().enumerate() {
        let hi = values.get(2 * q + 1).map_or(0, |&v| gemm::bf16_bits(v) << 16);
        *d = values.get(2 * q).map_or(0, |&v| gemm::bf16_bits(v)) | hi;
    }
}

/// Dot product of two bf16-pair vectors ([`bf16_pairs`]) with f32 accumulation (`vdpbf16ps`): the LSTM
/// recurrence's products in the fast modes. Only where [`gemm::bf16_supported`].
pub(crate) fn dot_bf16_pairs(a: &[u32], b: &[u32]) -> f32 {
    assert!(gemm::bf16_supported(), "bf16 dot product without AVX-512 BF16");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX-512 BF16 (asserted); the loads stay inside both slices.
    return unsafe { dot_bf16_pairs_avx512(a, b) };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("{} {}", a.len(), b.len())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_bf16_pairs_avx512(a: &[u32], b: &[u32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i < n {
        for (r, acc) in acc.iter_mut().enumerate() {
            let at = i + 16 * r;
            if at >= n {
                break;
            }
            // The last vector masked: lanes past `n` read zeros.
            let mask: __mmask16 = if n - at >= 16 { 0xffff } else { (1u16 << (n - at)) - 1 };
            let x: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(mask, a.as_ptr().add(at) as *const i32));
            let y: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(mask, b.as_ptr().add(at) as *const i32));
            *acc = _mm512_dpbf16_ps(*acc, x, y);
        }
        i += 64;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// `t` in storage of its own, exactly its size: what a stream carries from one step to the next. A view would keep
/// the whole step's buffer alive, and so would candle's `copy`, which clones the whole storage under a view;
/// `force_contiguous` copies just the view's elements, on any device.
pub(crate) fn compact(t: &Tensor) -> Result<Tensor> {
    t.force_contiguous()
}

/// Per-item lengths of a right-padded batch (B, C, T): item b's first `lengths[b]` steps are its own, the rest
/// padding. A conv that looks ahead reads past an item's end; a single run reads zeros there (its padding), a batch
/// the padding's outputs — so a model masks each such conv's input back to zeros, and its outputs stay the single
/// run's.
#[derive(Debug, Clone)]
pub struct ValidLengths(pub Vec<usize>);

impl ValidLengths {
    /// `x` (B, C, T) with every item's steps past its length set to zero.
    pub fn mask(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, t) = x.dims3()?;
        if b != self.0.len() {
            candle_core::bail!("valid lengths for {} items, the batch has {b}", self.0.len());
        }
        if self.0.iter().all(|&len| len >= t) {
            return Ok(x.clone());
        }
        let keep: Vec<f32> =
            self.0.iter().flat_map(|&len| (0..t).map(move |i| if i < len { 1.0 } else { 0.0 })).collect();
        x.broadcast_mul(&Tensor::from_vec(keep, (b, 1, t), x.device())?.to_dtype(x.dtype())?)
    }

    /// The lengths after a layer that maps a length to `f(length)`.
    pub fn map(&self, f: impl Fn(usize) -> usize) -> Self {
        Self(self.0.iter().map(|&len| f(len)).collect())
    }
}

/// [`ValidLengths::mask`] when lengths are given (a padded batch), `x` itself otherwise.
pub fn mask_to(x: Tensor, valid: Option<&ValidLengths>) -> Result<Tensor> {
    match valid {
        Some(v) => v.mask(&x),
        None => Ok(x),
    }
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

#[cfg(test)]
mod tests {
    /// The AVX2 dot product gives the portable loop's bits (machines without AVX-512 ran that loop before).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_dot_is_the_portable_dot() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let values = super::test_util::pseudo_random(2 * 300, 7);
        let (a, b) = values.split_at(300);
        for n in [0, 1, 7, 63, 64, 65, 128, 200, 256, 300] {
            let want = super::dot_portable(&a[..n], &b[..n]);
            // SAFETY: AVX2 detected above.
            let got = unsafe { super::dot_avx2(&a[..n], &b[..n]) };
            assert_eq!(got.to_bits(), want.to_bits(), "length {n}: {got} vs {want}");
        }
    }
}
