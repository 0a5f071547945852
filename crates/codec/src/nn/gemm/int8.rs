//! int8 products for `--precision int8` (AVX-512 VNNI `vpdpbusd`) in ggml's q8_0 blocks: the right factor (a linear
//! layer's weights) in blocks of 32 along the depth with one scale each — exactly a q8_0 file's blocks — and the left
//! factor (the activations) quantised the same way, per row, as each product runs, as llama.cpp's q8_0 path does.
//!
//! `C[i, j] = Σ_b a_scale[i, b] · w_scale[b, j] · Σ_{k ∈ b} a_q[i, k] · w_q[k, j]`: each block's dot product is exact
//! integer arithmetic (four byte products per 32-bit lane and instruction, four times the f32 FMA's work), only
//! the per-block scaling is f32. `vpdpbusd` multiplies unsigned by signed bytes, so activations are stored offset by
//! 128 (`q + 128`, in 1..=255) and each block's integer sum starts at `−128 · Σ w_q`, which cancels the offset.

use std::ops::Range;

use rayon::prelude::*;

use super::{Epilogue, Output, PackB, SharedOut, Store, FLOPS, KC, PARALLEL_MIN_WORK};

/// Values per quantisation block (ggml's q8_0).
pub(super) const BLOCK: usize = 32;
/// Words of four bytes per block.
pub(super) const QUADS: usize = BLOCK / 4;
/// Rows of activations per packed panel (the tile's rows).
pub(super) const MR: usize = 4;
/// Columns of weights per packed panel (the tile's columns: three 16-lane vectors).
pub(super) const NR: usize = 48;
/// Output rows and columns one work item covers: its weight block (NR·4 columns × the depth, ≤ 400 KB for a depth
/// of 2048) stays in L2 while its row panels pass over it.
const ITEM_ROWS: usize = 16 * MR;
const ITEM_COLS: usize = 4 * NR;

/// Whether this CPU has the int8 kernel (AVX-512 VNNI).
pub fn int8_supported() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            super::isa() == super::Isa::Avx512 && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Four bytes, the first lowest, as one `vpdpbusd` lane.
#[inline(always)]
fn word(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// A right factor (`depth × cols`) in q8_0 blocks along the depth, in NR-column panels: per panel and block, QUADS
/// rows of NR words (four weights each), NR scales and NR offset compensations.
#[derive(PartialEq)]
pub struct PackedQ8 {
    depth: usize,
    cols: usize,
    blocks: usize,
    quads: Vec<u32>,
    scales: Vec<f32>,
    compensation: Vec<i32>,
}

impl std::fmt::Debug for PackedQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ8({} × {})", self.depth, self.cols)
    }
}

impl PackedQ8 {
    /// Quantises the `depth × cols` operand `b` by ggml's q8_0 rule (the scale rounded to f16, as a q8_0 file
    /// stores it), so weights read from a q8_0 file (`q · scale`, widened) come back as exactly the file's blocks.
    pub fn b(b: &impl PackB, depth: usize, cols: usize) -> Self {
        let blocks = depth.div_ceil(BLOCK);
        Self::build_words(depth, cols, |panel_cols, panel| {
            // The panel's f32 values, `[k][j]`, zero past the depth; packed one depth block at a time (the
            // operand's own packed layout is per depth block).
            let mut values = vec![0f32; blocks * BLOCK * NR];
            for pc in (0..depth).step_by(KC) {
                let kc = KC.min(depth - pc);
                b.pack_b(pc..pc + kc, panel_cols.clone(), NR, &mut values[pc * NR..(pc + kc) * NR]);
            }
            let mut block_values = [0f32; BLOCK];
            for lane in 0..panel_cols.len() {
                for block in 0..blocks {
                    for (t, v) in block_values.iter_mut().enumerate() {
                        *v = values[(block * BLOCK + t) * NR + lane];
                    }
                    let (bytes, d) = quantize_weights(&block_values);
                    panel.put(lane, block, &bytes, half::f16::from_f32(d).to_f32());
                }
            }
        })
    }

    /// The right factor `Wᵀ` of a linear layer whose weight `W` (`cols × depth`) a q8_0 file stores: its blocks as
    /// they are. `None` if `blocks` is not that many q8_0 blocks.
    pub fn from_q8_0(blocks: &[u8], depth: usize, cols: usize) -> Option<Self> {
        const BYTES: usize = 2 + BLOCK;
        if !Self::takes_q8_0(blocks.len(), depth, cols) {
            return None;
        }
        let row_bytes = depth / BLOCK * BYTES;
        Some(Self::build_words(depth, cols, |panel_cols, panel| {
            for (lane, j) in panel_cols.enumerate() {
                for (block, bytes) in blocks[j * row_bytes..(j + 1) * row_bytes].chunks_exact(BYTES).enumerate() {
                    let scale = half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
                    panel.put(lane, block, &bytes[2..], scale);
                }
            }
        }))
    }

    /// The right factor `Wᵀ` of a linear layer quantised from `W`'s rows (`cols × depth`, row-major) by
    /// [`PackedQ8::b`]'s rule — the same blocks — block by block along each row: a row's blocks are contiguous in
    /// `W`, so nothing is packed or transposed first (that took most of an int8 start-up on an f32 file).
    pub fn from_rows(w: &[f32], depth: usize, cols: usize) -> Self {
        assert_eq!(w.len(), depth * cols, "from_rows: {} values for {cols} rows of {depth}", w.len());
        Self::build_words(depth, cols, |panel_cols, panel| {
            for (lane, j) in panel_cols.enumerate() {
                for (block, values) in w[j * depth..(j + 1) * depth].chunks(BLOCK).enumerate() {
                    let (bytes, d) = quantize_weights(values);
                    panel.put(lane, block, &bytes, half::f16::from_f32(d).to_f32());
                }
            }
        })
    }

    /// Whether `len` bytes are the q8_0 blocks of a `cols × depth` weight whose rows are whole blocks (what
    /// [`PackedQ8::from_q8_0`] takes; a file may also store a tensor whose rows split blocks).
    pub fn takes_q8_0(len: usize, depth: usize, cols: usize) -> bool {
        depth.is_multiple_of(BLOCK)
            && (depth / BLOCK).checked_mul(2 + BLOCK).and_then(|r| r.checked_mul(cols)) == Some(len)
    }

    /// The packed operand from `fill(panel columns, panel)`, which puts each NR-column panel's blocks.
    fn build_words(depth: usize, cols: usize, fill: impl Fn(Range<usize>, &mut PanelWords) + Sync) -> Self {
        let (blocks, panels) = (depth.div_ceil(BLOCK), cols.div_ceil(NR));
        let mut quads = vec![0u32; panels * blocks * QUADS * NR];
        let mut scales = vec![0f32; panels * blocks * NR];
        let mut compensation = vec![0i32; panels * blocks * NR];
        let per_panel = (blocks * QUADS * NR, blocks * NR);
        quads
            .par_chunks_mut(per_panel.0)
            .zip(scales.par_chunks_mut(per_panel.1))
            .zip(compensation.par_chunks_mut(per_panel.1))
            .enumerate()
            .for_each(|(panel, ((quads, scales), compensation))| {
                fill(panel * NR..((panel + 1) * NR).min(cols), &mut PanelWords { quads, scales, compensation })
            });
        Self { depth, cols, blocks, quads, scales, compensation }
    }

    /// (depth, columns) of the operand.
    pub fn dims(&self) -> (usize, usize) {
        (self.depth, self.cols)
    }

    /// The weights as the f32 values the kernel multiplies by (`q · scale`), `[k][j]`: for tests.
    #[cfg(test)]
    fn dequantized(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.depth * self.cols];
        for k in 0..self.depth {
            for j in 0..self.cols {
                let (panel, lane, block) = (j / NR, j % NR, k / BLOCK);
                let base = panel * self.blocks + block;
                let word = self.quads[(base * QUADS + (k % BLOCK) / 4) * NR + lane];
                let q = (word >> (8 * (k % 4))) as u8 as i8;
                out[k * self.cols + j] = q as f32 * self.scales[base * NR + lane];
            }
        }
        out
    }
}

/// One NR-column panel of a [`PackedQ8`] being built.
struct PanelWords<'a> {
    quads: &'a mut [u32],
    scales: &'a mut [f32],
    compensation: &'a mut [i32],
}

impl PanelWords<'_> {
    /// Block `block` of lane `lane`: its 32 quantised values (as bytes of `i8`) and scale — four values per word,
    /// the first lowest, and the offset compensation `−128 · Σ q`.
    fn put(&mut self, lane: usize, block: usize, bytes: &[u8], scale: f32) {
        for quad in 0..QUADS {
            self.quads[(block * QUADS + quad) * NR + lane] = word(&bytes[4 * quad..]);
        }
        self.compensation[block * NR + lane] = -128 * bytes[..BLOCK].iter().map(|&b| b as i8 as i32).sum::<i32>();
        self.scales[block * NR + lane] = scale;
    }
}

/// Activations quantised into MR-row panels: per panel and block, QUADS rows of MR words (four offset bytes each)
/// and MR scales.
struct QuantizedRows {
    quads: Vec<u32>,
    scales: Vec<f32>,
    blocks: usize,
}

/// Quantises the `m` rows of `a` (row-major, `depth` long) per block of 32, each with its own scale.
fn quantize_rows(a: &[f32], m: usize, depth: usize) -> QuantizedRows {
    let blocks = depth.div_ceil(BLOCK);
    let panels = m.div_ceil(MR);
    let mut quads = vec![0u32; panels * blocks * QUADS * MR];
    let mut scales = vec![0f32; panels * blocks * MR];
    let quantize_panel = |panel: usize, quads: &mut [u32], scales: &mut [f32]| {
        for i in 0..MR.min(m - panel * MR) {
            let row = &a[(panel * MR + i) * depth..(panel * MR + i + 1) * depth];
            for block in 0..blocks {
                let values = &row[block * BLOCK..row.len().min((block + 1) * BLOCK)];
                let (bytes, scale) = quantize_activations(values);
                scales[block * MR + i] = scale;
                for quad in 0..QUADS {
                    quads[(block * QUADS + quad) * MR + i] = word(&bytes[4 * quad..]);
                }
            }
        }
    };
    let per_panel = (blocks * QUADS * MR, blocks * MR);
    if m * depth >= PARALLEL_MIN_WORK / 16 {
        let chunks = quads.par_chunks_mut(per_panel.0).zip(scales.par_chunks_mut(per_panel.1));
        chunks.enumerate().for_each(|(panel, (q, s))| quantize_panel(panel, q, s));
    } else {
        let chunks = quads.chunks_mut(per_panel.0).zip(scales.chunks_mut(per_panel.1));
        chunks.enumerate().for_each(|(panel, (q, s))| quantize_panel(panel, q, s));
    }
    QuantizedRows { quads, scales, blocks }
}

/// One block of activations (≤ 32 values, zero past the end) → its bytes `q + 128` and scale, ties rounded to even
/// (one vector instruction, where ggml's `roundf` is a call). Only reached through [`gemm_int8`], which checks the CPU.
#[inline(always)]
fn quantize_activations(values: &[f32]) -> ([u8; BLOCK], f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 is present (gemm_int8 asserts int8_supported); the loads are masked to `values`.
    return unsafe { quantize_activations_avx512(values) };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("int8 products need AVX-512 VNNI ({} values)", values.len())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_activations_avx512(values: &[f32]) -> ([u8; BLOCK], f32) {
    use std::arch::x86_64::*;
    let (x0, x1) = load_block_avx512(values);
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    let scale = amax / 127.0;
    let inv = _mm512_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
    // `vcvtps2dq` rounds to nearest even (the default MXCSR mode); +128 makes the bytes unsigned.
    let to_bytes = |x: __m512| {
        let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x, inv)), _mm512_set1_epi32(128));
        std::mem::transmute::<__m128i, [u8; 16]>(_mm512_cvtepi32_epi8(q))
    };
    let (lo, hi) = (to_bytes(x0), to_bytes(x1));
    let mut bytes = [0u8; BLOCK];
    bytes[..16].copy_from_slice(&lo);
    bytes[16..].copy_from_slice(&hi);
    (bytes, scale)
}

/// One block of weights (≤ 32 values, zero past the end) → its q8_0 values (as bytes of `i8`) and unrounded scale
/// `d = max|v| / 127`, by ggml's rule: `q = round(v · (1/d))`, ties away from zero (every `PackedQ8` constructor
/// that quantises goes through it).
fn quantize_weights(values: &[f32]) -> ([u8; BLOCK], f32) {
    #[cfg(target_arch = "x86_64")]
    if int8_supported() {
        // SAFETY: AVX-512 is present (checked); the loads are masked to `values`.
        return unsafe { quantize_weights_avx512(values) };
    }
    let d = values.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut bytes = [0u8; BLOCK];
    for (b, &v) in bytes.iter_mut().zip(values) {
        *b = (v * inv).round() as i8 as u8;
    }
    (bytes, d)
}

/// [`quantize_weights`] in two vectors: `round` as `trunc(x + copysign(0.5 − 2⁻²⁵, x))` (exact, as LLVM lowers it);
/// a NaN weight is skipped by the maximum and quantises to 0, as the scalar rule does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_weights_avx512(values: &[f32]) -> ([u8; BLOCK], f32) {
    use std::arch::x86_64::*;
    let (x0, x1) = load_block_avx512(values);
    // `max(a, m)` returns m where a is NaN, so the running maxima never take a NaN.
    let lanes = _mm512_max_ps(_mm512_abs_ps(x1), _mm512_max_ps(_mm512_abs_ps(x0), _mm512_setzero_ps()));
    let mut each = [0f32; 16];
    _mm512_storeu_ps(each.as_mut_ptr(), lanes);
    let d = each.iter().fold(0f32, |m, &v| m.max(v)) / 127.0;
    let inv = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let sign = _mm512_set1_epi32(i32::MIN);
    let below_half = _mm512_set1_epi32(0x3eff_ffff);
    let to_bytes = |x: __m512| {
        let x = _mm512_mul_ps(x, inv);
        let half = _mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(x), sign), below_half);
        let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(_mm512_add_ps(
            x,
            _mm512_castsi512_ps(half),
        ));
        // |r| ≤ 127 (a NaN converts to i32::MIN, whose low byte is 0).
        std::mem::transmute::<__m128i, [u8; 16]>(_mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r)))
    };
    let mut bytes = [0u8; BLOCK];
    bytes[..16].copy_from_slice(&to_bytes(x0));
    bytes[16..].copy_from_slice(&to_bytes(x1));
    (bytes, d)
}

/// A block of ≤ 32 values as two vectors, zero past its end (masked loads: nothing past `values` is read).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_block_avx512(values: &[f32]) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    let mask = |from: usize| match values.len().saturating_sub(from) {
        n if n >= 16 => 0xffff,
        n => (1u16 << n) - 1,
    };
    let x0 = _mm512_maskz_loadu_ps(mask(0), values.as_ptr());
    (x0, _mm512_maskz_loadu_ps(mask(16), values.as_ptr().wrapping_add(16)))
}

/// `C = A · B` (+ the epilogue) for the `m × depth` row-major activations `a` and the quantised weights `b`
/// (`depth × n`). Only where [`int8_supported`]; panics only on a caller bug (sizes that do not match).
pub fn gemm_int8(m: usize, n: usize, a: &[f32], b: &PackedQ8, c: &mut Output, epi: &Epilogue) {
    let depth = b.depth;
    assert!(int8_supported(), "gemm_int8 without AVX-512 VNNI");
    assert!(a.len() >= m * depth && n <= b.cols, "gemm_int8: operands do not match");
    assert!(c.rows >= m && c.cols >= n, "gemm_int8: output {}×{} for a {m}×{n} product", c.rows, c.cols);
    assert!(epi.row_bias.is_none_or(|r| r.len() >= m) && epi.col_bias.is_none_or(|b| b.len() >= n));
    assert!(epi.col_scale.is_none_or(|s| s.len() >= n) && epi.residual.is_none_or(|r| r.len() >= c.len));
    if m == 0 || n == 0 {
        return;
    }
    FLOPS.fetch_add(2 * (m as u64) * (n as u64) * (depth as u64), std::sync::atomic::Ordering::Relaxed);
    let rows = quantize_rows(a, m, depth);
    let out = SharedOut { ptr: c.data, rs: c.rs, cs: c.cs };
    let (row_items, col_items) = (m.div_ceil(ITEM_ROWS), n.div_ceil(ITEM_COLS));
    // Consecutive items share a column block, so a thread's run of items keeps one weight block in L2.
    let item = |index: usize| {
        let (r, col) = (index % row_items, index / row_items);
        let rows_range = r * ITEM_ROWS..m.min((r + 1) * ITEM_ROWS);
        let cols_range = col * ITEM_COLS..n.min((col + 1) * ITEM_COLS);
        // SAFETY: the items cover disjoint tiles of C, inside it (asserted above).
        unsafe { tiles(&rows, b, rows_range, cols_range, out, epi) };
    };
    if m * n * depth >= PARALLEL_MIN_WORK {
        (0..row_items * col_items).into_par_iter().for_each(item);
    } else {
        (0..row_items * col_items).for_each(item);
    }
}

/// Every MR × NR tile of output `rows × cols` (both starting on a panel boundary).
///
/// # Safety
/// The tiles lie inside C and no other thread writes them.
unsafe fn tiles(
    a: &QuantizedRows,
    b: &PackedQ8,
    rows: Range<usize>,
    cols: Range<usize>,
    out: SharedOut,
    epi: &Epilogue,
) {
    let blocks = a.blocks;
    debug_assert_eq!(blocks, b.blocks);
    for row in rows.clone().step_by(MR) {
        let panel = row / MR;
        let aq = a.quads[panel * blocks * QUADS * MR..].as_ptr();
        let ascale = a.scales[panel * blocks * MR..].as_ptr();
        for col in cols.clone().step_by(NR) {
            let panel = col / NR;
            let weights = (
                b.quads[panel * b.blocks * QUADS * NR..].as_ptr(),
                b.scales[panel * b.blocks * NR..].as_ptr(),
                b.compensation[panel * b.blocks * NR..].as_ptr(),
            );
            let store = Store {
                c: out.ptr.add(row * out.rs + col * out.cs),
                rs: out.rs as isize,
                cs: out.cs as isize,
                row_bias: epi.row_bias.map_or(std::ptr::null(), |r| r[row..].as_ptr()),
                col_bias: epi.col_bias.map_or(std::ptr::null(), |c| c[col..].as_ptr()),
                col_scale: epi.col_scale.map_or(std::ptr::null(), |s| s[col..].as_ptr()),
                residual: epi.residual.map_or(std::ptr::null(), |r| r.as_ptr().add(row * out.rs + col * out.cs)),
                load_c: false,
            };
            let (mr, nr) = (MR.min(rows.end - row), NR.min(cols.end - col));
            #[cfg(target_arch = "x86_64")]
            super::kernel::int8_tile(blocks, (aq, ascale), weights, mr, nr, &store);
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("no int8 kernel on this architecture ({mr} × {nr}, {:?})", (aq, ascale, weights, &store));
        }
        if let Some(f) = epi.activation {
            for i in row..rows.end.min(row + MR) {
                super::activate_row(f, i, out.ptr.add(i * out.rs + cols.start * out.cs), out.cs, cols.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::pseudo_random;
    use super::super::Strided;
    use super::*;

    /// Weights widened from q8_0 blocks (`q · f16 scale`, as a q8_0 file loads) quantise back to the same blocks.
    #[test]
    fn q8_0_weights_come_back_as_their_blocks() {
        let (k, n) = (64, 50);
        let w = pseudo_random(k * n, 1);
        let first = PackedQ8::b(&Strided::row_major(&w, k, n).unwrap(), k, n);
        let widened = first.dequantized();
        let again = PackedQ8::b(&Strided::row_major(&widened, k, n).unwrap(), k, n);
        assert_eq!(again.quads, first.quads);
        assert_eq!(again.scales, first.scales);
        assert_eq!(again.dequantized(), widened);
        // And the blocks are close to the weights: half a step (max|x|/127 ≤ 0.5/127) per value, plus 127 steps
        // times the f16 scale's relative rounding (2⁻¹¹).
        let err = w.iter().zip(&widened).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= 0.5 / 127.0 * (0.5 + 127.0 / 2048.0), "max quantisation error {err}");
    }

    /// A q8_0 file's blocks of `W` (ggml's rule, written out here independently) pack exactly as `Wᵀ` quantised.
    #[test]
    fn file_blocks_pack_like_quantised_weights() {
        let (out, depth) = (53, 96);
        let w = pseudo_random(out * depth, 3);
        let mut file = Vec::new();
        for block in w.chunks_exact(BLOCK) {
            let d = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            file.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
            file.extend(block.iter().map(|&v| (v * if d != 0.0 { 1.0 / d } else { 0.0 }).round() as i8 as u8));
        }
        let native = PackedQ8::from_q8_0(&file, depth, out).unwrap();
        let quantised = PackedQ8::b(&Strided::transposed(&w, out, depth).unwrap(), depth, out);
        assert_eq!(native.quads, quantised.quads);
        assert_eq!(native.scales, quantised.scales);
        assert_eq!(native.compensation, quantised.compensation);
        assert!(PackedQ8::from_q8_0(&file[1..], depth, out).is_none());
        assert!(PackedQ8::from_q8_0(&file, depth + 1, out).is_none());
    }

    /// Quantising straight from `W`'s rows gives the blocks of `Wᵀ` packed and quantised, over a depth that
    /// ends in a partial block, columns past a panel, an all-zero block and an extreme value.
    #[test]
    fn rows_quantise_like_packed_weights() {
        for (out, depth) in [(53, 96), (5, 70), (97, 33)] {
            let mut w = pseudo_random(out * depth, 4);
            w[..32.min(depth)].fill(0.0);
            w[out * depth / 2] = 3e4;
            // A block whose scale is exactly 1, with exact ties: rounded away from zero.
            w[depth..depth + 6].copy_from_slice(&[127.0, 0.5, -0.5, 1.5, 2.5, -2.5]);
            let direct = PackedQ8::from_rows(&w, depth, out);
            let packed = PackedQ8::b(&Strided::transposed(&w, out, depth).unwrap(), depth, out);
            assert!(direct == packed, "{out} × {depth}");
            let (bytes, d) = quantize_weights(&w[depth..depth + 6]);
            assert_eq!((bytes[..6].iter().map(|&b| b as i8).collect::<Vec<_>>(), d), (vec![127, 1, -1, 2, 3, -3], 1.0));
        }
    }

    /// The int8 product equals an f64 product of the quantised operands, over edge sizes (rows and columns not
    /// multiples of the tile, depths not multiples of the block, several work items), with the epilogue.
    #[test]
    fn matches_the_product_of_the_quantised_operands() {
        if !int8_supported() {
            return;
        }
        for (ci, &(m, n, k)) in
            [(1, 1, 1), (3, 50, 33), (9, 97, 64), (70, 200, 300), (130, 400, 512)].iter().enumerate()
        {
            let a = pseudo_random(m * k, 10 + ci as u64);
            let w = pseudo_random(k * n, 20 + ci as u64);
            let (bias, scale) = (pseudo_random(n, 30 + ci as u64), pseudo_random(n, 40 + ci as u64));
            let residual = pseudo_random(m * n, 50 + ci as u64);
            let packed = PackedQ8::b(&Strided::row_major(&w, k, n).unwrap(), k, n);
            let wq = packed.dequantized();
            let rows = quantize_rows(&a, m, k);
            let mut got = vec![f32::NAN; m * n];
            let epi = Epilogue {
                col_bias: Some(&bias),
                col_scale: Some(&scale),
                residual: Some(&residual),
                ..Default::default()
            };
            gemm_int8(m, n, &a, &packed, &mut Output::row_major(&mut got, m, n).unwrap(), &epi);
            for i in 0..m {
                for j in 0..n {
                    let mut dot = 0f64;
                    for kk in 0..k {
                        let (panel, block, lane) = (i / MR, kk / BLOCK, i % MR);
                        let base = panel * rows.blocks + block;
                        let word = rows.quads[(base * QUADS + (kk % BLOCK) / 4) * MR + lane];
                        let q = (word >> (8 * (kk % 4))) as u8 as i32 - 128;
                        dot += q as f64 * rows.scales[base * MR + lane] as f64 * wq[kk * n + j] as f64;
                    }
                    let want = (dot + bias[j] as f64) * scale[j] as f64 + residual[i * n + j] as f64;
                    let g = got[i * n + j] as f64;
                    assert!((g - want).abs() < 1e-5 * (k as f64).sqrt(), "{m}×{n}×{k} ({i}, {j}): {g} vs {want}");
                    // And near the f32 product: the quantisation error only.
                    let exact: f64 = (0..k).map(|kk| a[i * k + kk] as f64 * w[kk * n + j] as f64).sum();
                    let exact = (exact + bias[j] as f64) * scale[j] as f64 + residual[i * n + j] as f64;
                    assert!((g - exact).abs() < 0.02 * (k as f64).sqrt() * 0.25, "{m}×{n}×{k}: {g} vs exact {exact}");
                }
            }
        }
    }
}
