//! Single-precision GEMM, `C (+)= A · B (+ bias)`, packed and cache-blocked in the BLIS layering, with an AVX-512
//! micro-kernel (AVX2 + FMA and portable fallbacks, chosen at run time) and, for `--precision bf16`, an AVX-512 BF16
//! kernel or, on AVX2, f32 kernels over bf16 values (see `kernel`).
//!
//! Why our own: every model here is bounded by matrix products (convs are GEMMs over an implicit im2col, the
//! transformers and ConvNeXt blocks are linear layers). A BLAS-style call on plain matrices — the `gemm` crate candle
//! uses reaches about what OpenBLAS does on our shapes (≈ 170 GFLOP/s at 2 threads here, `examples/gemm_bench.rs`
//! next to `scripts/gemm_reference.py`) — leaves the rest on the table: an im2col buffer per conv (or one product
//! per tap, each re-reading the output), weights repacked on every call, bias / residual / scale passes after
//! it, no bf16. Here operands are *packers* ([`PackA`], [`PackB`]): a convolution packs its input straight from the
//! signal (zero or reflect padding, stride, dilation), weights are packed once ([`Packed`]), and the epilogue adds
//! per-row or per-column bias, scales columns and adds a residual as the tile is stored.
//!
//! Layering (loops outside-in): depth blocks of `KC` → this thread's A rows packed (or found prepacked) once →
//! column blocks of `NC`, B block packed into NR-wide panels (stays in L2) → row blocks of `MC` → for each A panel
//! (held in L1) the kernel sweeps the B panels. Threads (rayon's pool) split the output into contiguous column or
//! row ranges — along the operand that needs packing — each with its own packing buffers; no nested parallelism.

mod int8;
mod kernel;

pub use int8::{gemm_int8, int8_supported, PackedQ8};

use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

use kernel::{MicroKernel, Panel};

/// Depth of a packed block: an A micro-panel (MR × KC) stays in L1 while the kernel sweeps the B panels.
pub(crate) const KC: usize = 256;
/// Columns of a packed B block (a multiple of every kernel's NR): KC × NC floats = 384 KiB, in L2.
const NC: usize = 384;
/// Rows of a packed A block (a multiple of every kernel's MR).
const MC: usize = 192;
/// Up to this many rows, a `--precision bf16` product over prepacked B reads B as bf16 pairs on AVX2.
const BF16_PAIR_ROWS: usize = 48;
/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// An operand that writes its `rows × ks` block into MR-tall panels: `dst[panel·(mr·kc) + p·mr + i]` =
/// `A[rows.start + panel·mr + i, ks.start + p]`, zero past the last row. Packers run inside worker threads and must
/// not use rayon themselves.
pub trait PackA: Sync {
    /// Writes rows `rows` × depths `ks` into `dst` as MR-tall panels (the layout above).
    fn pack_a(&self, rows: Range<usize>, ks: Range<usize>, mr: usize, dst: &mut [f32]);
    /// The block already in panel layout, if this operand was packed ahead of time.
    fn packed_a(&self, _rows: Range<usize>, _ks: Range<usize>, _mr: usize) -> Option<&[f32]> {
        None
    }
    /// The same as bf16 pairs (see `to_bf16_pairs`), if packed ahead of time.
    fn packed_a_pairs(&self, _rows: Range<usize>, _ks: Range<usize>, _mr: usize) -> Option<&[u32]> {
        None
    }
}

/// An operand that writes its `ks × cols` block into NR-wide panels: `dst[panel·(kc·nr) + p·nr + j]` =
/// `B[ks.start + p, cols.start + panel·nr + j]`, zero past the last column.
pub trait PackB: Sync {
    /// Writes depths `ks` × columns `cols` into `dst` as NR-wide panels (the layout above).
    fn pack_b(&self, ks: Range<usize>, cols: Range<usize>, nr: usize, dst: &mut [f32]);
    /// The block already in panel layout, if this operand was packed ahead of time.
    fn packed_b(&self, _ks: Range<usize>, _cols: Range<usize>, _nr: usize) -> Option<&[f32]> {
        None
    }
    /// The same as bf16 pairs (see `to_bf16_pairs`), if packed ahead of time.
    fn packed_b_pairs(&self, _ks: Range<usize>, _cols: Range<usize>, _nr: usize) -> Option<&[u32]> {
        None
    }
    /// Writes the block straight into bf16-pair panels (what `to_bf16_pairs` makes of [`PackB::pack_b`]'s), if
    /// this operand can; `false` has it packed in f32 and converted. For operands packed on every product (a
    /// conv's signal): with few output rows the f32 round trip was a third of a bf16 product's time.
    fn pack_b_pairs(&self, _ks: Range<usize>, _cols: Range<usize>, _nr: usize, _dst: &mut [u32]) -> bool {
        false
    }
}

/// `dst[i]` = the bf16 pair word of `lo[i]` (low half) and `hi[i]` (high half; zero without `hi`): one panel row
/// pair of the bf16 kernel's B operand. The hardware's rounding where the CPU has it, [`bf16_bits`]'s elsewhere
/// (the same).
pub(crate) fn bf16_pair_row(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
    assert!(lo.len() >= dst.len() && hi.is_none_or(|h| h.len() >= dst.len()));
    #[cfg(target_arch = "x86_64")]
    if bf16_supported() {
        // SAFETY: the CPU has AVX-512 BF16 and BW (checked); the assert bounds every read.
        unsafe { bf16_pair_row_avx512(lo, hi, dst) };
        return;
    }
    for (i, d) in dst.iter_mut().enumerate() {
        *d = bf16_bits(lo[i]) | hi.map_or(0, |h| bf16_bits(h[i]) << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn bf16_pair_row_avx512(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let to_u32 = |v: __m512| -> __m512i {
        _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)))
    };
    let n = dst.len();
    let mut i = 0;
    while i < n {
        // The last vector masked: lanes past `n` read nothing and are not written.
        let mask: __mmask16 = if n - i >= 16 { 0xffff } else { (1u16 << (n - i)) - 1 };
        let mut word = to_u32(_mm512_maskz_loadu_ps(mask, lo.as_ptr().add(i)));
        if let Some(h) = hi {
            let high = to_u32(_mm512_maskz_loadu_ps(mask, h.as_ptr().add(i)));
            word = _mm512_or_si512(word, _mm512_slli_epi32::<16>(high));
        }
        _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(i) as *mut i32, mask, word);
        i += 16;
    }
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if x.is_nan() {
        0x7fc0
    } else {
        (b + 0x7fff + ((b >> 16) & 1)) >> 16
    }
}

/// `x` rounded to the nearest bf16 value ([`bf16_bits`]' rounding), as an f32.
#[inline(always)]
pub(crate) fn bf16_value(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// Packed f32 panels (`width` wide, `kc` deep, one after another) → bf16-pair panels `⌈kc/2⌉` deep: word
/// `[q][i]` holds elements `2q` (low half) and `2q + 1` (high half, zero past `kc`) of lane `i`, the operand
/// layout of `vdpbf16ps`.
fn to_bf16_pairs(src: &[f32], width: usize, kc: usize, dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if (width == 8 || width.is_multiple_of(16)) && bf16_supported() {
        // SAFETY: the CPU has AVX-512 BF16, BW and VL (checked above); the slices bound every access.
        unsafe { to_bf16_pairs_avx512(src, width, kc, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if width.is_multiple_of(8) && isa() == Isa::Avx2 {
        // SAFETY: the CPU has AVX2 (`isa`); the slices bound every access.
        unsafe { to_bf16_pairs_avx2(src, width, kc, dst) };
        return;
    }
    let pairs = kc.div_ceil(2);
    for (src, dst) in src.chunks_exact(width * kc).zip(dst.chunks_exact_mut(width * pairs)) {
        for q in 0..pairs {
            for i in 0..width {
                let lo = bf16_bits(src[2 * q * width + i]);
                let hi = if 2 * q + 1 < kc { bf16_bits(src[(2 * q + 1) * width + i]) } else { 0 };
                dst[q * width + i] = lo | (hi << 16);
            }
        }
    }
}

/// [`to_bf16_pairs`] 16 lanes at a time with the hardware's round-to-nearest-even conversion (`vcvtneps2bf16`, the
/// same rounding as [`bf16_bits`]): the activations of every block go through it in `--precision bf16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn to_bf16_pairs_avx512(src: &[f32], width: usize, kc: usize, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let pairs = kc.div_ceil(2);
    if width == 8 {
        // A's MR-tall panels: a pair's two rows are 16 consecutive floats, converted at once, then their halves
        // interleaved (lane i of each row side by side).
        let interleave = _mm256_setr_epi16(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
        for (src, dst) in src.chunks_exact(8 * kc).zip(dst.chunks_exact_mut(8 * pairs)) {
            for q in 0..pairs {
                let rows = if 2 * q + 1 < kc {
                    _mm512_loadu_ps(src[16 * q..16 * q + 16].as_ptr())
                } else {
                    _mm512_maskz_loadu_ps(0x00ff, src[16 * q..16 * q + 8].as_ptr())
                };
                let halves: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(rows));
                let words = _mm256_permutexvar_epi16(interleave, halves);
                _mm256_storeu_si256(dst[8 * q..8 * q + 8].as_mut_ptr() as *mut __m256i, words);
            }
        }
        return;
    }
    for (src, dst) in src.chunks_exact(width * kc).zip(dst.chunks_exact_mut(width * pairs)) {
        for q in 0..pairs {
            let (lo_row, out) = (&src[2 * q * width..(2 * q + 1) * width], &mut dst[q * width..(q + 1) * width]);
            let hi_row = (2 * q + 1 < kc).then(|| &src[(2 * q + 1) * width..(2 * q + 2) * width]);
            for v in 0..width / 16 {
                let to_u32 = |row: &[f32]| {
                    let bf: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(row[v * 16..].as_ptr())));
                    _mm512_cvtepu16_epi32(bf)
                };
                let lo = to_u32(lo_row);
                let word = match hi_row {
                    Some(hi) => _mm512_or_si512(lo, _mm512_slli_epi32::<16>(to_u32(hi))),
                    None => lo,
                };
                _mm512_storeu_si512(out[v * 16..].as_mut_ptr() as *mut __m512i, word);
            }
        }
    }
}

/// The bits of 8 floats rounded to bf16 (round to nearest even, NaN to the quiet NaN), in the high halves, low
/// halves zero: [`bf16_bits`]` << 16` lane by lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_round_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let bits = _mm256_castps_si256(x);
    let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
    let biased = _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
    let rounded = _mm256_and_si256(biased, _mm256_set1_epi32(0xffff_0000_u32 as i32));
    let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
    _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc0_0000), nan)
}

/// [`to_bf16_pairs`] 8 lanes at a time on AVX2 (B's 16-wide panels, widened in the kernel: `kernel::Avx2Bf16`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn to_bf16_pairs_avx2(src: &[f32], width: usize, kc: usize, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let pairs = kc.div_ceil(2);
    for (src, dst) in src.chunks_exact(width * kc).zip(dst.chunks_exact_mut(width * pairs)) {
        for q in 0..pairs {
            let (lo_row, out) = (&src[2 * q * width..(2 * q + 1) * width], &mut dst[q * width..(q + 1) * width]);
            let hi_row = (2 * q + 1 < kc).then(|| &src[(2 * q + 1) * width..(2 * q + 2) * width]);
            for v in (0..width).step_by(8) {
                let lo = _mm256_srli_epi32::<16>(bf16_round_avx2(_mm256_loadu_ps(lo_row[v..v + 8].as_ptr())));
                let word = match hi_row {
                    Some(hi) => _mm256_or_si256(lo, bf16_round_avx2(_mm256_loadu_ps(hi[v..v + 8].as_ptr()))),
                    None => lo,
                };
                _mm256_storeu_si256(out[v..v + 8].as_mut_ptr() as *mut __m256i, word);
            }
        }
    }
}

/// Each value replaced by its nearest bf16 value (as [`bf16_bits`] rounds): the operands of `--precision bf16` on
/// AVX2, whose kernels multiply them in f32.
fn round_to_bf16_values(values: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 || isa() == Isa::Avx512 {
        // SAFETY: both ISAs include AVX2; the loop stays inside `values`.
        unsafe { done = round_to_bf16_values_avx2(values) };
    }
    for v in &mut values[done..] {
        *v = bf16_value(*v);
    }
}

/// The whole vectors of [`round_to_bf16_values`]; returns how many values it rounded.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn round_to_bf16_values_avx2(values: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let whole = values.len() / 8 * 8;
    for v in values[..whole].chunks_exact_mut(8) {
        let rounded = bf16_round_avx2(_mm256_loadu_ps(v.as_ptr()));
        _mm256_storeu_ps(v.as_mut_ptr(), _mm256_castsi256_ps(rounded));
    }
    whole
}

/// An operand packed once, ahead of time, in the panel layout of this CPU's kernel: weights, which would otherwise
/// be repacked for every block of every call (on a 1024 × 8192 conv weight over 250 frames that repacking cost a
/// third of the product). Depth blocks of `KC` one after another; inside each, all panels along the packed side.
pub struct Packed {
    data: Vec<f32>,
    /// `data` as bf16 pairs, made on first use in `--precision bf16`.
    pairs: OnceLock<Vec<u32>>,
    /// Rows (for A) or columns (for B) covered.
    len: usize,
    depth: usize,
    /// The panel width it was packed for (the kernel's MR for A, NR for B).
    panel: usize,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} × {}, panel {})", self.len, self.depth, self.panel)
    }
}

impl Packed {
    /// Packs the `m × k` operand `a` as the left factor.
    pub fn a(a: &impl PackA, m: usize, k: usize) -> Self {
        let mr = tile_shape().0;
        Self::pack(m, k, mr, crate::mem::zeroed_f32, |ks, dst| a.pack_a(0..m, ks, mr, dst))
    }

    /// Packs the `k × n` operand `b` as the right factor.
    pub fn b(b: &impl PackB, k: usize, n: usize) -> Self {
        Self::b_in(b, k, n, crate::mem::zeroed_f32)
    }

    /// [`Packed::b`] in memory from `buffer(len)` (`len` floats): a small operand packed on every call (the
    /// attention's keys) reuses one buffer ([`Packed::into_buffer`]) instead of allocating its own each time.
    pub(crate) fn b_in(b: &impl PackB, k: usize, n: usize, buffer: impl FnOnce(usize) -> Vec<f32>) -> Self {
        let nr = tile_shape().1;
        Self::pack(n, k, nr, buffer, |ks, dst| b.pack_b(ks, 0..n, nr, dst))
    }

    /// The packed values' buffer, for [`Packed::b_in`] to reuse.
    pub(crate) fn into_buffer(self) -> Vec<f32> {
        self.data
    }

    fn pack(
        len: usize,
        depth: usize,
        panel: usize,
        buffer: impl FnOnce(usize) -> Vec<f32>,
        pack: impl Fn(Range<usize>, &mut [f32]) + Sync,
    ) -> Self {
        let stride = len.div_ceil(panel) * panel;
        let mut data = buffer(stride * depth);
        assert_eq!(data.len(), stride * depth, "packed operand: a buffer of the wrong size");
        // Depth blocks across threads: a layer packed on its first product (a stream's first push, a transposed
        // weight) is packed while the other threads would wait.
        data.par_chunks_mut((stride * KC).max(1)).enumerate().for_each(|(block, dst)| {
            let pc = block * KC;
            pack(pc..pc + KC.min(depth - pc), dst)
        });
        Self { data, pairs: OnceLock::new(), len, depth, panel }
    }

    /// Every depth block as bf16 pairs, converted on first use.
    fn pairs(&self) -> &[u32] {
        let stride = self.len.div_ceil(self.panel) * self.panel;
        self.pairs.get_or_init(|| {
            let mut out = vec![0u32; stride * self.depth.div_ceil(KC) * KC / 2];
            // Depth blocks across threads, as in `pack`.
            out.par_chunks_mut((stride * KC / 2).max(1)).enumerate().for_each(|(block, dst)| {
                let (pc, kc) = (block * KC, KC.min(self.depth - block * KC));
                to_bf16_pairs(
                    &self.data[stride * pc..stride * (pc + kc)],
                    self.panel,
                    kc,
                    &mut dst[..stride * kc.div_ceil(2)],
                );
            });
            out
        })
    }

    /// Converts to bf16 pairs now rather than on the first bf16 product (where a bf16 kernel reads this operand
    /// as pairs: on AVX-512 BF16 both, on AVX2 B).
    pub(crate) fn prepare_pairs(&self) {
        if bf16_supported() || (isa() == Isa::Avx2 && self.panel == tile_shape().1) {
            self.pairs();
        }
    }

    /// The packed bf16-pair block for `range` × depth block `ks` (every depth block converted on first use).
    fn pairs_block(&self, range: Range<usize>, ks: Range<usize>) -> Option<&[u32]> {
        let stride = self.len.div_ceil(self.panel) * self.panel;
        let ok = range.start.is_multiple_of(self.panel) && range.end <= self.len && ks.end <= self.depth;
        if !ok {
            return None;
        }
        let pairs = self.pairs();
        // Depth blocks before `ks` are whole KC blocks (even), so this one starts at stride · ks.start / 2.
        let depth = ks.len().div_ceil(2);
        let start = stride * ks.start / 2 + range.start * depth;
        Some(&pairs[start..start + range.len().div_ceil(self.panel) * self.panel * depth])
    }

    /// The packed block for `range` (starting on a panel boundary) × depth block `ks`.
    fn block(&self, range: Range<usize>, ks: Range<usize>) -> Option<&[f32]> {
        let stride = self.len.div_ceil(self.panel) * self.panel;
        let ok = range.start.is_multiple_of(self.panel) && range.end <= self.len && ks.end <= self.depth;
        let start = stride * ks.start + range.start * ks.len();
        ok.then(|| &self.data[start..start + range.len().div_ceil(self.panel) * self.panel * ks.len()])
    }

    /// Lines `range` (rows of A or columns of B) × depths `ks` into panels `width` wide: the packed block itself
    /// when `width` is the packed one, else gathered value by value (a weight packed as A read as the right
    /// factor, [`LeftAsRight`]: once per layer). Lines past the end are zeros, as packers write them.
    fn repack(&self, range: Range<usize>, ks: Range<usize>, width: usize, dst: &mut [f32]) {
        if let Some(src) = self.block(range.clone(), ks.clone()).filter(|_| width == self.panel) {
            return dst[..src.len()].copy_from_slice(src);
        }
        let stride = self.len.div_ceil(self.panel) * self.panel;
        let kc = ks.len();
        for (panel, first) in range.clone().step_by(width).enumerate() {
            let dst = &mut dst[panel * width * kc..(panel + 1) * width * kc];
            for (p, k) in ks.clone().enumerate() {
                // Depth k lies in the KC block starting at `pc`, `kb` deep, at depth `k − pc` of it.
                let (pc, kb) = (k / KC * KC, KC.min(self.depth - k / KC * KC));
                for (lane, d) in dst[p * width..(p + 1) * width].iter_mut().enumerate() {
                    let line = first + lane;
                    *d = if line < range.end.min(self.len) {
                        let panel_start = line / self.panel * self.panel;
                        self.data[stride * pc + panel_start * kb + (k - pc) * self.panel + line - panel_start]
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    /// Rows (packed as A) or columns (packed as B) it covers.
    pub fn rows(&self) -> usize {
        self.len
    }
    /// Its depth: the product's `k`.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

impl PackA for Packed {
    fn pack_a(&self, rows: Range<usize>, ks: Range<usize>, mr: usize, dst: &mut [f32]) {
        self.repack(rows, ks, mr, dst)
    }
    fn packed_a(&self, rows: Range<usize>, ks: Range<usize>, mr: usize) -> Option<&[f32]> {
        self.block(rows, ks).filter(|_| mr == self.panel)
    }
    fn packed_a_pairs(&self, rows: Range<usize>, ks: Range<usize>, mr: usize) -> Option<&[u32]> {
        (mr == self.panel).then(|| self.pairs_block(rows, ks)).flatten()
    }
}

impl PackB for Packed {
    fn pack_b(&self, ks: Range<usize>, cols: Range<usize>, nr: usize, dst: &mut [f32]) {
        self.repack(cols, ks, nr, dst)
    }
    fn packed_b(&self, ks: Range<usize>, cols: Range<usize>, nr: usize) -> Option<&[f32]> {
        self.block(cols, ks).filter(|_| nr == self.panel)
    }
    fn packed_b_pairs(&self, ks: Range<usize>, cols: Range<usize>, nr: usize) -> Option<&[u32]> {
        (nr == self.panel).then(|| self.pairs_block(cols, ks)).flatten()
    }
}

/// A dense matrix in a slice: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Strided<'a> {
    /// A `rows × cols` view; `None` if an element would lie outside `data`.
    pub fn new(data: &'a [f32], (rows, cols): (usize, usize), rs: usize, cs: usize) -> Option<Self> {
        let last = last_index(rows, cols, rs, cs)?;
        (last.is_none_or(|l| l < data.len())).then_some(Self { data, rs, cs })
    }
    /// Row-major `rows × cols`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Option<Self> {
        Self::new(data, (rows, cols), cols, 1)
    }
    /// The transpose of a row-major `rows × cols` matrix (a `cols × rows` view).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Option<Self> {
        Self::new(data, (cols, rows), 1, cols)
    }
}

/// Index of element `(rows−1, cols−1)`, `Some(None)` for an empty matrix, `None` on overflow.
fn last_index(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<Option<usize>> {
    if rows == 0 || cols == 0 {
        return Some(None);
    }
    (rows - 1).checked_mul(rs)?.checked_add((cols - 1).checked_mul(cs)?).map(Some)
}

impl PackA for Strided<'_> {
    fn pack_a(&self, rows: Range<usize>, ks: Range<usize>, mr: usize, dst: &mut [f32]) {
        let kc = ks.len();
        for (panel, r0) in rows.clone().step_by(mr).enumerate() {
            let dst = &mut dst[panel * mr * kc..(panel + 1) * mr * kc];
            let valid = mr.min(rows.end - r0);
            if self.cs == 1 {
                // Row-major rows: each read contiguously, written down the panel's column.
                let row = |i: usize| &self.data[(r0 + i) * self.rs + ks.start..(r0 + i) * self.rs + ks.end];
                pack_lines(row, valid, mr, dst);
            } else {
                for i in 0..valid {
                    for (p, k) in ks.clone().enumerate() {
                        dst[p * mr + i] = self.data[(r0 + i) * self.rs + k * self.cs];
                    }
                }
            }
            for i in valid..mr {
                for p in 0..kc {
                    dst[p * mr + i] = 0.0;
                }
            }
        }
    }
}

impl PackB for Strided<'_> {
    fn pack_b(&self, ks: Range<usize>, cols: Range<usize>, nr: usize, dst: &mut [f32]) {
        let kc = ks.len();
        // Row-major rows: each depth row's whole panels in one run of fixed-size copies (a `memcpy` call per
        // 16-float panel row cost more than the copy: half a 32-row product's time), the last partial panel after.
        let whole = if self.cs == 1 { cols.len() / nr } else { 0 };
        if whole > 0 {
            super::wide_simd(
                #[inline(always)]
                || {
                    for (p, k) in ks.clone().enumerate() {
                        let start = k * self.rs + cols.start;
                        copy_panel_rows(&self.data[start..start + whole * nr], &mut dst[p * nr..], kc, nr);
                    }
                },
            )
        }
        for (panel, c0) in cols.clone().step_by(nr).enumerate().skip(whole) {
            let dst = &mut dst[panel * kc * nr..(panel + 1) * kc * nr];
            let valid = nr.min(cols.end - c0);
            if self.cs == 1 {
                for (p, k) in ks.clone().enumerate() {
                    let src = &self.data[k * self.rs + c0..k * self.rs + c0 + valid];
                    dst[p * nr..p * nr + valid].copy_from_slice(src);
                    dst[p * nr + valid..(p + 1) * nr].fill(0.0);
                }
            } else {
                if self.rs == 1 {
                    // Columns stored contiguously (a linear layer's Wᵀ): each read in one run.
                    let column = |j: usize| &self.data[(c0 + j) * self.cs + ks.start..(c0 + j) * self.cs + ks.end];
                    pack_lines(column, valid, nr, dst);
                } else {
                    for j in 0..valid {
                        for (p, k) in ks.clone().enumerate() {
                            dst[p * nr + j] = self.data[(c0 + j) * self.cs + k * self.rs];
                        }
                    }
                }
                for p in 0..kc {
                    dst[p * nr + valid..(p + 1) * nr].fill(0.0);
                }
            }
        }
    }
}

/// `src`'s consecutive `nr`-float runs into one row of consecutive panels (`dst[panel·kc·nr..]`, panels `kc` rows
/// deep): for the kernels' panel widths, fixed-size copies the compiler turns into vector moves (inlined into the
/// caller's `wide_simd`, as wide as the CPU allows).
#[inline(always)]
pub(crate) fn copy_panel_rows(src: &[f32], dst: &mut [f32], kc: usize, nr: usize) {
    #[inline(always)]
    fn fixed<const NR: usize>(src: &[f32], dst: &mut [f32], kc: usize) {
        for (panel, run) in src.chunks_exact(NR).enumerate() {
            let run: &[f32; NR] = run.try_into().expect("chunks_exact");
            let to: &mut [f32; NR] = (&mut dst[panel * kc * NR..panel * kc * NR + NR]).try_into().expect("NR floats");
            *to = *run;
        }
    }
    match nr {
        48 => fixed::<48>(src, dst, kc),
        16 => fixed::<16>(src, dst, kc),
        _ => {
            for (panel, run) in src.chunks_exact(nr).enumerate() {
                dst[panel * kc * nr..panel * kc * nr + nr].copy_from_slice(run);
            }
        }
    }
}

/// The transpose of a left factor as a right factor: a conv's weights (`C_out × C_in·K`) on the right of a product
/// whose rows are the output's few time steps (`conv_cpu`'s narrow products). A's MR-tall panels and B's NR-wide
/// ones have the same layout (`dst[panel·(width·kc) + p·width + lane]`), so B's columns are A's rows packed `nr` wide.
pub struct LeftAsRight<'a, A>(pub &'a A);

impl<A: PackA> PackB for LeftAsRight<'_, A> {
    fn pack_b(&self, ks: Range<usize>, cols: Range<usize>, nr: usize, dst: &mut [f32]) {
        self.0.pack_a(cols, ks, nr, dst)
    }
}

/// `dst[p·width + lane] = line(lane)[p]` for the first `lanes` lanes: lines that run along the depth (rows of a
/// row-major A, columns of a transposed B — weights read in place pack this way) written across a panel, 8 lanes at
/// a time transposed in registers where the CPU allows.
pub(crate) fn pack_lines<'a>(line: impl Fn(usize) -> &'a [f32], lanes: usize, width: usize, dst: &mut [f32]) {
    let mut first = 0;
    if transpose_simd() {
        if lanes == width && (2..8).contains(&width) {
            // A full panel narrower than a vector (AVX2's 6-row A panels): 8 by 8 blocks too, the missing lines
            // copies of the last (lane-by-lane writes were 5 % of a WavTokenizer decode).
            let lines: [&[f32]; 8] = std::array::from_fn(|j| line(j.min(lanes - 1)));
            let len = lines[0].len();
            return transpose_into(lines, &mut dst[..len * width], width);
        }
        while first + 8 <= lanes {
            transpose_into(std::array::from_fn(|j| line(first + j)), &mut dst[first..], width);
            first += 8;
        }
    }
    for lane in first..lanes {
        for (d, &v) in dst.chunks_exact_mut(width).zip(line(lane)) {
            d[lane] = v;
        }
    }
}

/// Whether the packers may use [`transpose_into`]'s AVX path.
fn transpose_simd() -> bool {
    cfg!(target_arch = "x86_64") && isa() != Isa::Generic
}

/// `dst[p·stride + i] = lines[i][p]` for the 8 equally long `lines` (for the first `stride` of them where `stride` <
/// 8): packing a panel from the other layout (rows of a row-major A, columns of a transposed B), in 8 × 8 blocks
/// transposed in AVX registers, the tail one by one. Each depth's 8 values are one store, in ascending order: with
/// `stride` < 8 the values past `stride` land on the next depth's first lanes before its own store overwrites
/// them, and a store that would run past `dst` (the last depth's) goes through a copy. Only called where
/// [`transpose_simd`] holds.
fn transpose_into(lines: [&[f32]; 8], dst: &mut [f32], stride: usize) {
    let len = lines[0].len();
    let lanes = stride.min(8);
    assert!(lines.iter().all(|l| l.len() == len) && (len == 0 || dst.len() >= (len - 1) * stride + lanes));
    let blocks = len / 8 * 8;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX is present (`transpose_simd`); the assert above bounds every load, and every store is checked.
    unsafe {
        transpose_8x8_blocks(&lines, blocks, dst, stride)
    };
    for p in blocks..len {
        for (i, line) in lines.iter().enumerate().take(lanes) {
            dst[p * stride + i] = line[p];
        }
    }
}

/// The 8 × 8 transpose in registers: `out[q] = (r[0][q], …, r[7][q])`, by pairs, then quads, then 128-bit halves.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx")]
unsafe fn transpose_8x8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let mut t = [(_mm256_setzero_ps(), _mm256_setzero_ps()); 4];
    for (pair, t) in t.iter_mut().enumerate() {
        let (a, b) = (r[2 * pair], r[2 * pair + 1]);
        *t = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    }
    let s = [
        _mm256_shuffle_ps::<0x44>(t[0].0, t[1].0),
        _mm256_shuffle_ps::<0xEE>(t[0].0, t[1].0),
        _mm256_shuffle_ps::<0x44>(t[0].1, t[1].1),
        _mm256_shuffle_ps::<0xEE>(t[0].1, t[1].1),
        _mm256_shuffle_ps::<0x44>(t[2].0, t[3].0),
        _mm256_shuffle_ps::<0xEE>(t[2].0, t[3].0),
        _mm256_shuffle_ps::<0x44>(t[2].1, t[3].1),
        _mm256_shuffle_ps::<0xEE>(t[2].1, t[3].1),
    ];
    std::array::from_fn(|q| match q < 4 {
        true => _mm256_permute2f128_ps::<0x20>(s[q], s[q + 4]),
        false => _mm256_permute2f128_ps::<0x31>(s[q - 4], s[q]),
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_8x8_blocks(lines: &[&[f32]; 8], blocks: usize, dst: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    for p in (0..blocks).step_by(8) {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(lines[i].as_ptr().add(p)));
        for (q, v) in transpose_8x8(r).iter().enumerate() {
            let at = (p + q) * stride;
            if at + 8 <= dst.len() {
                _mm256_storeu_ps(dst.as_mut_ptr().add(at), *v);
            } else {
                let mut spill = [0f32; 8];
                _mm256_storeu_ps(spill.as_mut_ptr(), *v);
                let fits = dst.len() - at;
                dst[at..].copy_from_slice(&spill[..fits]);
            }
        }
    }
}

/// The destination `C`, `rows × cols` at `data[i·rs + j·cs]` of `len` floats from `data`.
pub struct Output<'a> {
    data: *mut f32,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

impl<'a> Output<'a> {
    /// `None` if an element would lie outside `data`.
    pub fn new(data: &'a mut [f32], (rows, cols): (usize, usize), rs: usize, cs: usize) -> Option<Self> {
        // SAFETY: `data` is borrowed mutably for 'a.
        unsafe { Self::from_raw(data.as_mut_ptr(), data.len(), (rows, cols), rs, cs) }
    }

    /// Row-major `rows × cols`; `None` if `data` is smaller.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Option<Self> {
        Self::new(data, (rows, cols), cols, 1)
    }

    /// A view of `len` floats from `data` that may be uninitialised: a product writes every element of its
    /// `m × n` part before reading any, so a fresh output needs no zero fill first (`mem::written_in_full`).
    /// `None` if an element would lie past `len`.
    ///
    /// # Safety
    /// `data..data + len` stays valid for writes for 'a, nothing else reads or writes this view's elements
    /// meanwhile, and if they are uninitialised, [`Output::row_mut`] is called only once a product has written them.
    pub(crate) unsafe fn from_raw(
        data: *mut f32,
        len: usize,
        (rows, cols): (usize, usize),
        rs: usize,
        cs: usize,
    ) -> Option<Self> {
        let last = last_index(rows, cols, rs, cs)?;
        let view = Self { data, len, rows, cols, rs, cs, _borrow: PhantomData };
        last.is_none_or(|l| l < len).then_some(view)
    }

    /// The same elements as a `cols × rows` output.
    pub(crate) fn transposed(&mut self) -> Output<'_> {
        Output { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, _borrow: PhantomData, ..*self }
    }

    /// Row `i`, where rows are contiguous (`cs` = 1): in a view made by [`Output::from_raw`] over uninitialised
    /// memory, only after a product has written it.
    pub(crate) fn row_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows && self.cs == 1, "gemm: no contiguous row {i} in a {}-row output", self.rows);
        // SAFETY: the row's elements lie inside the view (checked when it was made) and are borrowed through
        // `self` for as long as the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.data.add(i * self.rs), self.cols) }
    }
}

/// What happens to `A·B` on its way into C.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to every element of row `i` (a conv's per-channel bias in the (C, T) layout).
    pub row_bias: Option<&'a [f32]>,
    /// Added to every element of column `j` (a linear layer's bias in the (T, C) layout).
    pub col_bias: Option<&'a [f32]>,
    /// Multiplies column `j` of the result (after the biases, before the residual): a per-channel scale such as
    /// ConvNeXt's γ in the (T, C) layout.
    pub col_scale: Option<&'a [f32]>,
    /// Added element-wise last, laid out like C (same strides): a residual connection fused into the product
    /// instead of a separate pass that reads both tensors again.
    pub residual: Option<&'a [f32]>,
    /// Stay in f32 under `--precision bf16`: for nearest-codebook searches, where bf16 rounding flips decisions
    /// between close entries at little speed gain.
    pub exact: bool,
    /// An element-wise function `f(row, values)` applied to runs of each finished output row while they are still
    /// in cache (a GELU after a ConvNeXt block's first linear layer, a Snake with one α per conv channel): instead
    /// of a pass that reads and writes the whole output again.
    pub activation: Option<RowFunction<'a>>,
}

/// An element-wise function on a run of values of one output row, given the row's index.
pub type RowFunction<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

/// `f` on the `len` elements of row `row` of C from `c` on, `cs` apart: in place where they are contiguous, else
/// through a staging copy.
///
/// # Safety
/// The elements lie in C and belong to the calling thread.
unsafe fn activate_row(f: RowFunction, row: usize, c: *mut f32, cs: usize, len: usize) {
    if cs == 1 {
        return f(row, std::slice::from_raw_parts_mut(c, len));
    }
    let mut staged = [0f32; 64];
    for from in (0..len).step_by(staged.len()) {
        let part = &mut staged[..(len - from).min(64)];
        for (j, v) in part.iter_mut().enumerate() {
            *v = *c.add((from + j) * cs);
        }
        f(row, part);
        for (j, &v) in part.iter().enumerate() {
            *c.add((from + j) * cs) = v;
        }
    }
}

/// Where one micro-tile goes: C at `c` with strides, biases (null when none or not the first depth block), and
/// whether C already holds the earlier depth blocks' sum (added to this one).
pub(crate) struct Store {
    c: *mut f32,
    rs: isize,
    cs: isize,
    row_bias: *const f32,
    col_bias: *const f32,
    /// For the last depth block only (else null): column scales, and the residual laid out like `c`.
    col_scale: *const f32,
    residual: *const f32,
    load_c: bool,
}

impl Store {
    /// The same tile's columns from `j` on: a kernel that covers several adjacent B panels stores each through
    /// its own.
    ///
    /// # Safety
    /// Column `j` lies inside the tile.
    pub(crate) unsafe fn columns_from(&self, j: usize) -> Store {
        let shift = |p: *const f32, by: isize| if p.is_null() { p } else { p.offset(by) };
        Store {
            c: self.c.offset(j as isize * self.cs),
            col_bias: shift(self.col_bias, j as isize),
            col_scale: shift(self.col_scale, j as isize),
            residual: shift(self.residual, j as isize * self.cs),
            ..*self
        }
    }
}

/// The instruction set the kernels use, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: the 8 × 48 kernel (and bf16 / int8 where the CPU has them).
    Avx512,
    /// AVX2 + FMA: the 6 × 16 kernel.
    Avx2,
    /// Portable code (also forced by `CODEC_GEMM_GENERIC=1`).
    Generic,
}

/// Arithmetic of the products: exact f32 (the default), bf16 operands with f32 accumulation (`vdpbf16ps`, about
/// twice the throughput), or int8 (`vpdpbusd`): linear layers' weights in q8_0 blocks (a q8_0 file's own, or f32
/// weights quantised the same way) times activations quantised per row, every other product in bf16. The fast
/// modes' codes and audio differ slightly from the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Exact f32 products (the default; reproduces the references).
    F32,
    /// bf16 operands, f32 accumulation.
    Bf16,
    /// Linear layers in int8 q8_0 blocks, the rest as [`Precision::Bf16`].
    Int8,
}

/// The precision asked for (`Precision as u8`); [`precision`] says what runs.
static REQUESTED: AtomicU8 = AtomicU8::new(Precision::F32 as u8);

/// Floating-point operations (2·m·n·k per product) done by this process's GEMMs: `codec bench` turns them into
/// GFLOP/s per stage.
static FLOPS: AtomicU64 = AtomicU64::new(0);

/// Floating-point operations done by this process's GEMMs so far.
pub fn flops_done() -> u64 {
    FLOPS.load(Ordering::Relaxed)
}

/// Sets the precision of every product in this process. bf16 needs AVX-512 BF16 or AVX2 + FMA (there bf16 operands
/// are multiplied in f32: the same arithmetic, faster only where weights' bytes bound a product — a stream's
/// steps), int8 AVX-512 VNNI; where the CPU lacks it products run in the best precision below it that it has
/// (int8 → bf16 → f32) and this returns `false`.
pub fn set_precision(p: Precision) -> bool {
    REQUESTED.store(p as u8, Ordering::Relaxed);
    precision() == p
}

/// The precision products run in now: the requested one where the CPU supports it, else the next supported below.
pub fn precision() -> Precision {
    let requested = REQUESTED.load(Ordering::Relaxed);
    if requested == Precision::Int8 as u8 && int8_supported() {
        Precision::Int8
    } else if requested != Precision::F32 as u8 && bf16_kernels() {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// Whether the products that are not int8 (convs, and all products in bf16 mode) run in bf16 now: a fast mode is
/// set and the CPU has a bf16 kernel. Otherwise they are exact f32.
pub fn bf16_products() -> bool {
    precision() != Precision::F32 && bf16_kernels()
}

/// Whether this CPU has a kernel for bf16 operands: AVX-512 BF16, or AVX2 + FMA (f32 products of bf16 values).
fn bf16_kernels() -> bool {
    bf16_supported() || isa() == Isa::Avx2
}

/// Whether this CPU has the native bf16 kernel (AVX-512 BF16, `vdpbf16ps`).
pub fn bf16_supported() -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    *BF16.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // Every CPU with BF16 has BW and VL too; `to_bf16_pairs` uses them.
            isa() == Isa::Avx512
                && is_x86_feature_detected!("avx512bf16")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// (MR, NR) of the kernel this CPU runs.
pub fn tile_shape() -> (usize, usize) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (kernel::Avx512::MR, kernel::Avx512::NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (kernel::Avx2::MR, kernel::Avx2::NR),
        _ => (kernel::Generic::MR, kernel::Generic::NR),
    }
}

/// The instruction set the f32 kernels use on this CPU, detected once.
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("CODEC_GEMM_GENERIC").is_some() {
                return Isa::Generic;
            }
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    })
}

/// `C = A · B (+ bias, + residual)` for an (m × k) · (k × n) product: every element of C's `m × n` part is written,
/// and none read before it is (so C may be uninitialised, see [`Output::from_raw`]). Panics only on a caller bug:
/// biases shorter than their dimension, or `c` smaller than `m × n`.
pub fn gemm(m: usize, n: usize, k: usize, a: &impl PackA, b: &impl PackB, c: &mut Output, epi: &Epilogue) {
    assert!(c.rows >= m && c.cols >= n, "gemm: output {}×{} for a {m}×{n} product", c.rows, c.cols);
    assert!(epi.row_bias.is_none_or(|r| r.len() >= m) && epi.col_bias.is_none_or(|b| b.len() >= n));
    assert!(epi.col_scale.is_none_or(|s| s.len() >= n), "gemm: fewer column scales than columns");
    assert!(epi.residual.is_none_or(|r| r.len() >= c.len), "gemm: residual smaller than the output");
    if m == 0 || n == 0 {
        return;
    }
    FLOPS.fetch_add(2 * (m as u64) * (n as u64) * (k as u64), Ordering::Relaxed);
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                let at = i * c.rs + j * c.cs;
                let bias = epi.row_bias.map_or(0.0, |r| r[i]) + epi.col_bias.map_or(0.0, |b| b[j]);
                let residual = epi.residual.map_or(0.0, |r| r[at]);
                let scale = epi.col_scale.map_or(1.0, |s| s[j]);
                let mut v = [bias * scale + residual];
                if let Some(f) = epi.activation {
                    f(i, &mut v);
                }
                // SAFETY: `at` lies inside the view (checked when it was made).
                unsafe { *c.data.add(at) = v[0] };
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if bf16_products() && !epi.exact {
        if isa() == Isa::Avx512 {
            return run::<kernel::Avx512Bf16>((m, n, k), a, b, c, epi);
        }
        // AVX2: a few rows over prepacked weights are bound by the weights' bytes, halved as bf16 pairs; every
        // other product runs at f32 speed over bf16 values. The same bits either way.
        let (_, nr) = tile_shape();
        if m <= BF16_PAIR_ROWS && b.packed_b(0..KC.min(k), 0..NC.min(n), nr).is_some() {
            return run::<kernel::Avx2Bf16>((m, n, k), a, b, c, epi);
        }
        return run::<kernel::Avx2Bf16Values>((m, n, k), a, b, c, epi);
    }
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => run::<kernel::Avx512>((m, n, k), a, b, c, epi),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => run::<kernel::Avx2>((m, n, k), a, b, c, epi),
        _ => run::<kernel::Generic>((m, n, k), a, b, c, epi),
    }
}

/// C's base pointer, shared by the threads; each writes a disjoint range of tiles.
#[derive(Clone, Copy)]
struct SharedOut {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
}
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

fn run<K: MicroKernel>(
    (m, n, k): (usize, usize, usize),
    a: &impl PackA,
    b: &impl PackB,
    c: &mut Output,
    epi: &Epilogue,
) {
    let out = SharedOut { ptr: c.data, rs: c.rs, cs: c.cs };
    let threads =
        if m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_WORK { 1 } else { rayon::current_num_threads() };
    let (m_panels, n_panels) = (m.div_ceil(K::MR), n.div_ceil(K::NR));
    // Split along the operand that has to be packed, so no thread packs what another packs too (conv: weights
    // prepacked, split the signal's columns; linear: weights prepacked, split the rows), if it gives each thread
    // a couple of panels. When both need packing, each thread packs all of the operand not split: split so that
    // is the smaller (A is m × k, B is k × n; a linear layer's weights read in place are B, and larger than a
    // clip's activations), given a panel per thread.
    let a_prepacked = a.packed_a(0..MC.min(m), 0..KC.min(k), K::MR).is_some();
    let b_prepacked = b.packed_b(0..KC.min(k), 0..NC.min(n), K::NR).is_some();
    let split_columns = match (a_prepacked, b_prepacked) {
        (true, false) => n_panels >= 2 * threads || n_panels >= m_panels,
        (false, true) => m_panels < 2 * threads && n_panels > m_panels,
        (true, true) => n_panels >= m_panels,
        (false, false) => n_panels >= threads && m <= n,
    };
    if threads <= 1 {
        block::<K>(0..m, 0..n, k, a, b, out, epi);
    } else if split_columns {
        let per = n_panels.div_ceil(threads) * K::NR;
        (0..n.div_ceil(per)).into_par_iter().for_each(|t| {
            block::<K>(0..m, t * per..((t + 1) * per).min(n), k, a, b, out, epi);
        });
    } else {
        let per = m_panels.div_ceil(threads) * K::MR;
        (0..m.div_ceil(per)).into_par_iter().for_each(|t| {
            block::<K>(t * per..((t + 1) * per).min(m), 0..n, k, a, b, out, epi);
        });
    }
}

thread_local! {
    /// Packing buffers, reused across calls (rayon's workers live for the process).
    static PACK_BUFFERS: RefCell<Buffers> = const { RefCell::new(Buffers::new()) };
}

/// One thread's packing buffers: f32 panels of A and B, and their bf16-pair conversions.
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
    a_pairs: Vec<u32>,
    b_pairs: Vec<u32>,
}

impl Buffers {
    const fn new() -> Self {
        Self { a: Vec::new(), b: Vec::new(), a_pairs: Vec::new(), b_pairs: Vec::new() }
    }
}

/// A 64-byte aligned window of `len` words in `buf`, growing it if needed (panels start on cache lines).
fn aligned<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len + 16 {
        buf.resize(len + 16, T::default());
    }
    let skip = buf.as_ptr().align_offset(64).min(16);
    &mut buf[skip..skip + len]
}

/// Where one operand block's panels come from: prepacked as bf16 pairs, prepacked as f32, packed now straight
/// into bf16 pairs (where the operand can), or packed now.
struct Panels<P, F, Q, K> {
    prepacked_pairs: P,
    prepacked: F,
    pack_pairs: Q,
    pack: K,
}

impl<'o, P, F, Q, K> Panels<P, F, Q, K>
where
    P: FnOnce() -> Option<&'o [u32]>,
    F: FnOnce() -> Option<&'o [f32]>,
    Q: FnOnce(&mut [u32]) -> bool,
    K: FnOnce(&mut [f32]),
{
    /// The block (`padded` rows or columns in panels of `width`, `kc` deep) in the panel form `format`: found
    /// prepacked, or packed into `buf` (then rounded to bf16 values in place, or converted into bf16 `pairs`).
    fn words(
        self,
        format: Panel,
        (padded, width, kc): (usize, usize, usize),
        buf: &mut Vec<f32>,
        pairs: &mut Vec<u32>,
    ) -> *const f32 {
        let prepacked = (self.prepacked)();
        if format == Panel::Bf16Pairs {
            if let Some(p) = (self.prepacked_pairs)() {
                return p.as_ptr() as *const f32;
            }
            if prepacked.is_none() {
                let dst = aligned(pairs, padded * kc.div_ceil(2));
                if (self.pack_pairs)(dst) {
                    return dst.as_ptr() as *const f32;
                }
            }
        }
        let len = padded * kc;
        let f32_panels: &[f32] = match prepacked {
            // Rounded in this thread's buffer: the prepacked panels serve the exact f32 products too.
            Some(p) if format == Panel::Bf16Values => {
                let dst = aligned(buf, len);
                dst.copy_from_slice(&p[..len]);
                round_to_bf16_values(dst);
                return dst.as_ptr();
            }
            Some(p) => p,
            None => {
                let dst = aligned(buf, len);
                (self.pack)(dst);
                if format == Panel::Bf16Values {
                    round_to_bf16_values(dst);
                }
                dst
            }
        };
        if format != Panel::Bf16Pairs {
            return f32_panels.as_ptr();
        }
        let dst = aligned(pairs, padded * kc.div_ceil(2));
        to_bf16_pairs(f32_panels, width, kc, dst);
        dst.as_ptr() as *const f32
    }
}

/// The product restricted to output `rows × cols`, on the calling thread.
///
/// Loop order: depth blocks → (all of this thread's A rows packed once) → column blocks (B block packed once, kept
/// in L2) → row blocks. Each operand is packed exactly once per call; prepacked operands not at all.
fn block<K: MicroKernel>(
    rows: Range<usize>,
    cols: Range<usize>,
    k: usize,
    a: &impl PackA,
    b: &impl PackB,
    out: SharedOut,
    epi: &Epilogue,
) {
    PACK_BUFFERS.with(|bufs| {
        let mut fresh = Buffers::new();
        let mut borrowed = bufs.try_borrow_mut();
        let Buffers { a: abuf, b: bbuf, a_pairs, b_pairs } = match borrowed.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut fresh,
        };
        // Each returns the block's panels in the kernel's word format (f32, or bf16 pairs cast to *const f32).
        let mut a_block = |ic: usize, mc: usize, pc: usize, kc: usize| -> *const f32 {
            let (rows, ks) = (ic..ic + mc, pc..pc + kc);
            let source = Panels {
                prepacked_pairs: || a.packed_a_pairs(rows.clone(), ks.clone(), K::MR),
                prepacked: || a.packed_a(rows.clone(), ks.clone(), K::MR),
                pack_pairs: |_: &mut [u32]| false,
                pack: |dst: &mut [f32]| a.pack_a(rows.clone(), ks.clone(), K::MR, dst),
            };
            source.words(K::A, (mc.div_ceil(K::MR) * K::MR, K::MR, kc), abuf, a_pairs)
        };
        let mut b_block = |jc: usize, nc: usize, pc: usize, kc: usize| -> *const f32 {
            let (cols, ks) = (jc..jc + nc, pc..pc + kc);
            let source = Panels {
                prepacked_pairs: || b.packed_b_pairs(ks.clone(), cols.clone(), K::NR),
                prepacked: || b.packed_b(ks.clone(), cols.clone(), K::NR),
                pack_pairs: |dst: &mut [u32]| b.pack_b_pairs(ks.clone(), cols.clone(), K::NR, dst),
                pack: |dst: &mut [f32]| b.pack_b(ks.clone(), cols.clone(), K::NR, dst),
            };
            source.words(K::B, (nc.div_ceil(K::NR) * K::NR, K::NR, kc), bbuf, b_pairs)
        };
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            // This thread's rows of A for the depth block, packed once (or found prepacked) and reused for every
            // column block; the B block of each column block stays in L2 while all row blocks pass over it.
            let a_rows = a_block(rows.start, rows.len(), pc, kc);
            for jc in cols.clone().step_by(NC) {
                let nc = NC.min(cols.end - jc);
                let bpack = b_block(jc, nc, pc, kc);
                for ic in rows.clone().step_by(MC) {
                    let mc = MC.min(rows.end - ic);
                    // SAFETY: ic − rows.start is a whole number of MR-row panels into the packed rows; both blocks
                    // hold the packed (mc × kc) and (kc × nc) panels.
                    unsafe {
                        let apack = a_rows.add((ic - rows.start) * K::A.words(kc));
                        macro_kernel::<K>(apack, bpack, (ic, mc), (jc, nc), (pc, kc, k), out, epi)
                    };
                }
            }
        }
    });
}

/// Every micro-tile of one packed A block × one packed B block: each A panel (in L1) against all B panels.
///
/// # Safety
/// `apack` holds ⌈mc/MR⌉ panels of MR × kc floats, `bpack` ⌈nc/NR⌉ panels of kc × NR; the output rows
/// `row0..row0+mc` and columns `col0..col0+nc` lie inside C and belong to this thread.
unsafe fn macro_kernel<K: MicroKernel>(
    apack: *const f32,
    bpack: *const f32,
    (row0, mc): (usize, usize),
    (col0, nc): (usize, usize),
    (pc, kc, k): (usize, usize, usize),
    out: SharedOut,
    epi: &Epilogue,
) {
    let (first, last) = (pc == 0, pc + kc == k);
    // Words per panel row or column: a depth of kc floats, or ⌈kc/2⌉ bf16 pairs.
    let (a_depth, b_depth) = (K::A.words(kc), K::B.words(kc));
    for ir in (0..mc).step_by(K::MR) {
        let row = row0 + ir;
        for jr in (0..nc).step_by(K::NR * K::PANELS) {
            let col = col0 + jr;
            let store = Store {
                c: out.ptr.add(row * out.rs + col * out.cs),
                rs: out.rs as isize,
                cs: out.cs as isize,
                row_bias: match epi.row_bias {
                    Some(r) if first => r[row..].as_ptr(),
                    _ => std::ptr::null(),
                },
                col_bias: match epi.col_bias {
                    Some(c) if first => c[col..].as_ptr(),
                    _ => std::ptr::null(),
                },
                col_scale: match epi.col_scale {
                    Some(s) if last => s[col..].as_ptr(),
                    _ => std::ptr::null(),
                },
                residual: match epi.residual {
                    Some(r) if last => r.as_ptr().add(row * out.rs + col * out.cs),
                    _ => std::ptr::null(),
                },
                load_c: !first,
            };
            K::tile(
                kc,
                apack.add(ir * a_depth),
                bpack.add(jr * b_depth),
                K::MR.min(mc - ir),
                (K::NR * K::PANELS).min(nc - jr),
                &store,
            );
        }
        // Once the row panel's tiles are final, while they are in cache: one call per row of the block rather
        // than per tile row, whose 16 values would not amortise the call.
        if let (Some(f), true) = (epi.activation, last) {
            for i in row..row + K::MR.min(mc - ir) {
                activate_row(f, i, out.ptr.add(i * out.rs + col0 * out.cs), out.cs, nc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) use crate::nn::test_util::pseudo_random;

    /// Each value rounded to bf16.
    fn rounded(values: &[f32]) -> Vec<f32> {
        values.iter().map(|&x| bf16_value(x)).collect()
    }

    /// Pair rows of every length (the vector path's masked tail) against the scalar rounding, with and without a
    /// high row.
    #[test]
    fn pair_rows_match_scalar_rounding() {
        let (lo, hi) = (pseudo_random(40, 1), pseudo_random(40, 2));
        for n in 0..=40 {
            let mut got = vec![7u32; n + 1];
            bf16_pair_row(&lo, Some(&hi), &mut got[..n]);
            let want: Vec<u32> = (0..n).map(|i| bf16_bits(lo[i]) | bf16_bits(hi[i]) << 16).collect();
            assert_eq!(&got[..n], &want[..], "length {n}");
            assert_eq!(got[n], 7, "length {n}: wrote past the row");
            bf16_pair_row(&lo, None, &mut got[..n]);
            assert!(got[..n].iter().zip(&lo).all(|(&w, &l)| w == bf16_bits(l)), "length {n}, no high row");
        }
    }

    /// Every kernel family against a naive triple loop, over edge sizes (rows and columns not multiples of the
    /// tile, depths across KC), strided operands and outputs (elements between the written columns untouched),
    /// biases, column scales and residuals.
    #[test]
    fn matches_naive() {
        let cases = [
            (1, 1, 1),
            (1, 300, 7),
            (8, 48, 256),
            (9, 49, 257),
            (13, 100, 600),
            (70, 5, 33),
            (200, 401, 70),
            (3, 1000, 2),
            (6, 800, 300),
        ];
        for (ci, &(m, n, k)) in cases.iter().enumerate() {
            let a = pseudo_random(m * k, ci as u64);
            let bt = pseudo_random(n * k, 100 + ci as u64); // B stored transposed (n × k)
            let rb = pseudo_random(m, 200 + ci as u64);
            let cb = pseudo_random(n, 300 + ci as u64);
            let init = pseudo_random(m * n * 2, 400 + ci as u64);
            let residual = pseudo_random(m * n * 2, 500 + ci as u64);
            let cs = pseudo_random(n, 600 + ci as u64);
            let mut want = init.clone();
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * bt[j * k + p] as f64).sum();
                    // C with column stride 2: every other element is written.
                    let (r, s) = (residual[i * 2 * n + 2 * j] as f64, cs[j] as f64);
                    want[i * 2 * n + 2 * j] = ((dot + rb[i] as f64 + cb[j] as f64) * s + r) as f32;
                }
            }
            // B both ways: stored transposed (packed by lines), and row-major (packed by panel rows).
            let b_row_major: Vec<f32> = (0..k * n).map(|i| bt[(i % n) * k + i / n]).collect();
            for (kind, row_major) in
                [Isa::Avx512, Isa::Avx2, Isa::Generic].into_iter().flat_map(|i| [(i, false), (i, true)])
            {
                let mut got = init.clone();
                let am = Strided::row_major(&a, m, k).unwrap();
                let bm = match row_major {
                    false => Strided::transposed(&bt, n, k).unwrap(),
                    true => Strided::row_major(&b_row_major, k, n).unwrap(),
                };
                let mut c = Output::new(&mut got, (m, n), 2 * n, 2).unwrap();
                let epi = Epilogue {
                    row_bias: Some(&rb),
                    col_bias: Some(&cb),
                    col_scale: Some(&cs),
                    residual: Some(&residual),
                    ..Default::default()
                };
                match kind {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 if is_x86_feature_detected!("avx512f") => {
                        run::<kernel::Avx512>((m, n, k), &am, &bm, &mut c, &epi)
                    }
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") => {
                        run::<kernel::Avx2>((m, n, k), &am, &bm, &mut c, &epi)
                    }
                    Isa::Generic => run::<kernel::Generic>((m, n, k), &am, &bm, &mut c, &epi),
                    _ => continue,
                }
                let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
                assert!(
                    err < 1e-4 * (k as f32).sqrt(),
                    "{kind:?} {m}×{n}×{k} (B row-major {row_major}): max error {err}"
                );
            }
        }
    }

    /// An epilogue activation is the product's final values (residual included) put through the function, each
    /// once: contiguous and strided outputs, depths over several blocks, a zero depth.
    #[test]
    fn activation_applies_once_to_final_values() {
        // Not idempotent, and row-dependent: applying it twice, to a partial sum or with another row shows.
        let square_plus_row =
            |row: usize, values: &mut [f32]| values.iter_mut().for_each(|v| *v = *v * *v + row as f32);
        for &(m, n, k) in &[(17, 131, 300), (9, 5, 40), (4, 70, 0), (200, 401, 70)] {
            let a = pseudo_random(m * k, 1);
            let b = pseudo_random(k * n, 2);
            let residual = pseudo_random(2 * m * n, 3);
            for cs in [1, 2] {
                let product = |activation| {
                    let mut c = vec![0f32; 2 * m * n];
                    let epi = Epilogue { residual: Some(&residual), activation, ..Default::default() };
                    let (am, bm) = (Strided::row_major(&a, m, k).unwrap(), Strided::row_major(&b, k, n).unwrap());
                    gemm(m, n, k, &am, &bm, &mut Output::new(&mut c, (m, n), cs * n, cs).unwrap(), &epi);
                    c
                };
                let (plain, activated) = (product(None), product(Some(&square_plus_row)));
                for i in 0..m {
                    for j in 0..n {
                        let at = i * cs * n + j * cs;
                        let want = plain[at] * plain[at] + i as f32;
                        assert_eq!(activated[at], want, "{m}×{n}×{k}, cs {cs}: ({i}, {j})");
                    }
                }
            }
        }
    }

    /// Overwrite mode with a contiguous output (the masked-store path), a column scale and a residual.
    #[test]
    fn overwrites_contiguous_output() {
        let (m, n, k) = (17, 131, 300);
        let a = pseudo_random(m * k, 1);
        let b = pseudo_random(k * n, 2);
        let (scale, residual) = (pseudo_random(n, 3), pseudo_random(m * n, 4));
        let mut got = vec![f32::NAN; m * n];
        // Depth 300 spans two depth blocks: the scale and residual apply once, on the last.
        let epi = Epilogue { col_scale: Some(&scale), residual: Some(&residual), ..Default::default() };
        gemm(
            m,
            n,
            k,
            &Strided::row_major(&a, m, k).unwrap(),
            &Strided::row_major(&b, k, n).unwrap(),
            &mut Output::row_major(&mut got, m, n).unwrap(),
            &epi,
        );
        for i in 0..m {
            for j in 0..n {
                let dot: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                let want = dot * scale[j] + residual[i * n + j];
                assert!((got[i * n + j] - want).abs() < 1e-3, "({i}, {j}): {} vs {want}", got[i * n + j]);
            }
        }
    }

    /// Operands packed ahead of time give the same product as packing per call.
    #[test]
    fn prepacked_operands_match() {
        let (m, n, k) = (37, 530, 600);
        let a = pseudo_random(m * k, 5);
        let b = pseudo_random(k * n, 6);
        let (am, bm) = (Strided::row_major(&a, m, k).unwrap(), Strided::row_major(&b, k, n).unwrap());
        let (pa, pb) = (Packed::a(&am, m, k), Packed::b(&bm, k, n));
        let mut want = vec![0f32; m * n];
        gemm(m, n, k, &am, &bm, &mut Output::row_major(&mut want, m, n).unwrap(), &Epilogue::default());
        let mut got = vec![0f32; m * n];
        gemm(m, n, k, &pa, &pb, &mut Output::row_major(&mut got, m, n).unwrap(), &Epilogue::default());
        assert_eq!(got, want);
    }

    /// The bf16 kernel equals an f64 product of the bf16-rounded operands (up to f32 accumulation), with operands
    /// packed per call and ahead of time, odd depths included.
    #[test]
    fn bf16_matches_rounded_product() {
        if !bf16_supported() {
            return;
        }
        for &(m, n, k) in &[(9, 50, 7), (20, 130, 301), (1, 3, 1), (64, 200, 512)] {
            let a = pseudo_random(m * k, 7);
            let b = pseudo_random(k * n, 8);
            let (ar, br) = (rounded(&a), rounded(&b));
            let (am, bm) = (Strided::row_major(&a, m, k).unwrap(), Strided::row_major(&b, k, n).unwrap());
            let (pa, pb) = (Packed::a(&am, m, k), Packed::b(&bm, k, n));
            for prepacked in [false, true] {
                let mut got = vec![0f32; m * n];
                let mut c = Output::row_major(&mut got, m, n).unwrap();
                if prepacked {
                    run::<kernel::Avx512Bf16>((m, n, k), &pa, &bm, &mut c, &Epilogue::default());
                } else {
                    run::<kernel::Avx512Bf16>((m, n, k), &am, &pb, &mut c, &Epilogue::default());
                }
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|p| ar[i * k + p] as f64 * br[p * n + j] as f64).sum();
                        let g = got[i * n + j] as f64;
                        assert!((g - want).abs() < 1e-4, "{m}×{n}×{k} ({i}, {j}): {g} vs {want}");
                    }
                }
            }
        }
    }

    /// The vectorised bf16-pair conversions (AVX-512 BF16 or AVX2, whichever this CPU has) give the scalar one's
    /// bits (rounding ties, odd and even depths), for B's 48- and 16-wide panels and A's 8-tall ones.
    #[test]
    fn bf16_pair_conversions_agree() {
        for (width, kc) in [(48usize, 7usize), (8, 7), (8, 6), (16, 3), (16, 256)] {
            let pairs = kc.div_ceil(2);
            let mut src = pseudo_random(width * kc * 2, 9);
            src[3] = f32::from_bits(0x3f80_8000); // exactly halfway between two bf16 values
            src[5] = f32::from_bits(0x3f81_8000);
            src[6] = f32::NAN;
            src[7] = f32::from_bits(0x7f7f_ffff); // rounds to infinity
            let (mut fast, mut slow) = (vec![0u32; width * pairs * 2], vec![0u32; width * pairs * 2]);
            to_bf16_pairs(&src, width, kc, &mut fast);
            for (src, dst) in src.chunks_exact(width * kc).zip(slow.chunks_exact_mut(width * pairs)) {
                for q in 0..pairs {
                    for i in 0..width {
                        let hi = if 2 * q + 1 < kc { bf16_bits(src[(2 * q + 1) * width + i]) } else { 0 };
                        dst[q * width + i] = bf16_bits(src[2 * q * width + i]) | (hi << 16);
                    }
                }
            }
            assert_eq!(fast, slow, "width {width}, depth {kc}");
        }
    }

    /// Rounding to bf16 values in place, vectors and tail: [`bf16_bits`]' rounding (ties to even, NaN quiet,
    /// overflow to infinity, signs and zeros kept).
    #[test]
    fn rounding_to_bf16_values_matches_scalar() {
        let mut values = pseudo_random(37, 10);
        let specials = [0x3f80_8000, 0x3f81_8000, 0x7fc0_0001, 0xff80_0001, 0x7f7f_ffff, 0x8000_0000, 0x0000_0001];
        for (v, bits) in values.iter_mut().zip(specials) {
            *v = f32::from_bits(bits);
        }
        let want: Vec<u32> = values.iter().map(|&v| bf16_bits(v) << 16).collect();
        round_to_bf16_values(&mut values);
        assert_eq!(values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    }

    /// `--precision bf16` on AVX2: the pair kernel (B as bf16 pairs, one or two panels a tile), the f32 kernel over
    /// rounded panels, and the plain f32 kernel over operands rounded beforehand give the same bits — biases,
    /// column scales, residuals and strided outputs included, odd depths and depths across KC; and they are the
    /// rounded operands' product.
    #[test]
    fn avx2_bf16_kernels_agree_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        {
            if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
                return;
            }
            for &(m, n, k) in &[(1, 40, 7), (2, 33, 300), (3, 16, 1), (7, 100, 256), (13, 17, 513), (48, 64, 64)] {
                let (a, b) = (pseudo_random(m * k, 11), pseudo_random(k * n, 12));
                let (ar, br) = (rounded(&a), rounded(&b));
                let (rb, cb, scale) = (pseudo_random(m, 13), pseudo_random(n, 14), pseudo_random(n, 15));
                let residual = pseudo_random(2 * m * n, 16);
                let epi = Epilogue {
                    row_bias: Some(&rb),
                    col_bias: Some(&cb),
                    col_scale: Some(&scale),
                    residual: Some(&residual),
                    ..Default::default()
                };
                let (am, bm) = (Strided::row_major(&a, m, k).unwrap(), Strided::row_major(&b, k, n).unwrap());
                let (arm, brm) = (Strided::row_major(&ar, m, k).unwrap(), Strided::row_major(&br, k, n).unwrap());
                let pb = Packed::b(&bm, k, n);
                for cs in [1, 2] {
                    let product = |kernel: &dyn Fn(&mut Output)| {
                        let mut c = pseudo_random(2 * m * n, 17);
                        kernel(&mut Output::new(&mut c, (m, n), cs * n, cs).unwrap());
                        c
                    };
                    let want = product(&|c| run::<kernel::Avx2>((m, n, k), &arm, &brm, c, &epi));
                    let pairs = product(&|c| run::<kernel::Avx2Bf16>((m, n, k), &am, &pb, c, &epi));
                    let values = product(&|c| run::<kernel::Avx2Bf16Values>((m, n, k), &am, &bm, c, &epi));
                    let values_prepacked = product(&|c| run::<kernel::Avx2Bf16Values>((m, n, k), &am, &pb, c, &epi));
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let what = format!("{m}×{n}×{k}, column stride {cs}");
                    assert_eq!(bits(&pairs), bits(&want), "{what}: pairs");
                    assert_eq!(bits(&values), bits(&want), "{what}: rounded values");
                    assert_eq!(bits(&values_prepacked), bits(&want), "{what}: rounded prepacked values");
                    for i in 0..m {
                        for j in 0..n {
                            let at = i * cs * n + j * cs;
                            let dot: f64 = (0..k).map(|p| ar[i * k + p] as f64 * br[p * n + j] as f64).sum();
                            let c = dot + rb[i] as f64 + cb[j] as f64;
                            let expect = (c * scale[j] as f64 + residual[at] as f64) as f32;
                            let tolerance = 1e-4 * (k as f32).sqrt() * (1.0 + expect.abs());
                            assert!(
                                (pairs[at] - expect).abs() < tolerance,
                                "{what} ({i}, {j}): {} vs {expect}",
                                pairs[at]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn views_are_bounds_checked() {
        let data = [0f32; 12];
        assert!(Strided::row_major(&data, 3, 4).is_some());
        assert!(Strided::row_major(&data, 4, 4).is_none());
        assert!(Strided::new(&data, (2, 2), usize::MAX, 1).is_none());
        let mut out = [0f32; 12];
        assert!(Output::new(&mut out, (3, 3), 4, 2).is_none());
    }
}
