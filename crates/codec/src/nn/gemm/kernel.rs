//! Register-blocked micro-kernels: `C[0..mr, 0..nr] (+)= Ã · B̃` for one packed A micro-panel (MR rows, `kc` deep,
//! k-major: `a[p·MR + i]`) and one packed B micro-panel (`kc` deep, NR columns: `b[p·NR + j]`).
//!
//! The accumulators live in registers for the whole `kc` loop: per step, NR/W vector loads of B, MR broadcasts of A
//! and MR·NR/W fused multiply-adds (W = vector width). AVX-512: 8 × 48 (24 zmm accumulators); AVX2 + FMA: 6 × 16
//! (12 ymm); a portable 4 × 16 fallback the compiler vectorises as it can. Row edges (`mr < MR`) run a kernel
//! monomorphised for exactly `mr` rows, so a 1-row output (a conv to mono audio) does not pay for 8.
//!
//! `--precision bf16`: on AVX-512 BF16 both operands are bf16 pairs (`vdpbf16ps`). On AVX2 + FMA the same
//! arithmetic — bf16 operands, exact products, f32 sums — is the f32 kernel over operands rounded to bf16
//! ([`Avx2Bf16Values`]), and where the product is a few rows over a large prepacked B (a stream step over a
//! layer's weights, bound by memory, not arithmetic) B is read as bf16 pairs widened in registers ([`Avx2Bf16`]):
//! half the bytes, the same bits.

use super::Store;

/// How a kernel takes one operand's packed panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Panel {
    /// f32 values.
    F32,
    /// f32 words holding the values rounded to bf16 (round to nearest even).
    Bf16Values,
    /// bf16 pairs: elements `2q` and `2q + 1` along the depth in one 32-bit word, low half first, so a panel `kc`
    /// deep is ⌈kc/2⌉ words deep.
    Bf16Pairs,
}

impl Panel {
    /// 32-bit words per packed row (A) or column (B) of depth `kc`.
    pub(super) fn words(self, kc: usize) -> usize {
        if self == Panel::Bf16Pairs {
            kc.div_ceil(2)
        } else {
            kc
        }
    }
}

/// One micro-kernel family: tile shape and the tile routine.
pub(super) trait MicroKernel {
    const MR: usize;
    const NR: usize;
    /// The form of A's and B's panels.
    const A: Panel = Panel::F32;
    const B: Panel = Panel::F32;
    /// Adjacent NR-wide B panels one tile call covers (`nr ≤ NR·PANELS`): more independent sums for a kernel
    /// whose few rows would leave it waiting on each multiply-add's latency.
    const PANELS: usize = 1;
    /// # Safety
    /// `a` holds an MR-tall panel `kc` deep, `b` `⌈nr/NR⌉` adjacent NR-wide ones, in the kernel's [`Panel`] forms;
    /// `store` addresses `mr × nr` valid elements of C (`mr ≤ MR`, `nr ≤ NR·PANELS`); the CPU supports the
    /// kernel's instruction set.
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, mr: usize, nr: usize, store: &Store);
}

/// Writes an accumulated `R × NR` tile held in a row-major scratch array through `store` (strided / edge path).
#[inline(always)]
unsafe fn store_scalar<const NR: usize>(acc: &[[f32; NR]], mr: usize, nr: usize, store: &Store) {
    for (i, row) in acc.iter().enumerate().take(mr) {
        let c = store.c.offset(i as isize * store.rs);
        let row_bias = if store.row_bias.is_null() { 0.0 } else { *store.row_bias.add(i) };
        for (j, &v) in row.iter().enumerate().take(nr) {
            let p = c.offset(j as isize * store.cs);
            let col_bias = if store.col_bias.is_null() { 0.0 } else { *store.col_bias.add(j) };
            let offset = i as isize * store.rs + j as isize * store.cs;
            let residual = if store.residual.is_null() { 0.0 } else { *store.residual.offset(offset) };
            let scale = if store.col_scale.is_null() { 1.0 } else { *store.col_scale.add(j) };
            *p = (v + row_bias + col_bias + if store.load_c { *p } else { 0.0 }) * scale + residual;
        }
    }
}

pub(super) struct Generic;

impl MicroKernel for Generic {
    const MR: usize = 4;
    const NR: usize = 16;
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, mr: usize, nr: usize, store: &Store) {
        let mut acc = [[0f32; 16]; 4];
        for p in 0..kc {
            let b = std::slice::from_raw_parts(b.add(p * 16), 16);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = *a.add(p * 4 + i);
                for (c, &bv) in row.iter_mut().zip(b) {
                    *c += av * bv;
                }
            }
        }
        store_scalar(&acc, mr, nr, store);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{int8_tile, Avx2, Avx2Bf16, Avx2Bf16Values, Avx512, Avx512Bf16};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store_scalar, MicroKernel, Panel, Store};
    use std::arch::x86_64::*;

    /// Calls `kernel::<R>(args…)` for `R = mr` among the listed row counts, `R = 1` otherwise: a tile kernel
    /// monomorphised per row count keeps its accumulators in registers.
    macro_rules! for_rows {
        ($mr:expr, $kernel:ident, $args:tt, $($rows:literal),*) => {
            match $mr {
                $($rows => $kernel::<$rows> $args,)*
                _ => $kernel::<1> $args,
            }
        };
    }

    /// Writes an `[[__m512; V]; R]` tile of accumulators (`R` rows of `V` 16-column vectors) through `store`: masked
    /// vector stores when C's columns are contiguous, the scalar path otherwise. A macro, not a function, over the
    /// tile's own array type: the accumulators must stay in registers (a call took them through memory, 4 % of a Mimi
    /// run; a slice of them made the compiler spill and clear the array on every tile, 1–2 % more).
    macro_rules! store_avx512 {
        ($acc:expr, $nr:expr, $store:expr) => {{
            let (acc, nr, store): (_, usize, &Store) = (&$acc, $nr, $store);
            if store.cs != 1 {
                // Each vector stored on this path only, into memory nothing clears (a zeroed array here was
                // hoisted into every tile call as a memset: 5 % of a WavTokenizer decode), so `acc` itself never
                // has its address taken.
                let mut staged = std::mem::MaybeUninit::<[f32; 48 * 8]>::uninit();
                let base = staged.as_mut_ptr() as *mut f32;
                for_each_row!(acc, |i, row| {
                    for (v, &x) in row.iter().enumerate() {
                        _mm512_storeu_ps(base.add(48 * i + 16 * v), x);
                    }
                });
                store_staged::<48, 8>(base, acc.len(), nr, store);
            } else {
                let masks = [lanes(nr, 0), lanes(nr, 16), lanes(nr, 32)];
                let mut col_bias = [_mm512_setzero_ps(); 3];
                if !store.col_bias.is_null() {
                    for (v, (cb, &m)) in col_bias.iter_mut().zip(&masks).enumerate() {
                        *cb = _mm512_maskz_loadu_ps(m, store.col_bias.add(v * 16));
                    }
                }
                // Row by row at constant indices (a loop over the rows was not unrolled for 6–8 rows, which kept
                // the accumulators in a stack array cleared on every call).
                for_each_row!(acc, |i, row| store_row!(row, i, &masks, &col_bias, store));
            }
        }};
    }

    /// `f(i, &acc[i])` for each row of a tile's accumulator array, `i` a literal (up to 8 rows).
    macro_rules! for_each_row {
        ($acc:expr, |$i:ident, $row:ident| $body:expr) => {
            for_each_row!(@rows $acc, $i, $row, $body, 0, 1, 2, 3, 4, 5, 6, 7)
        };
        (@rows $acc:expr, $i:ident, $row:ident, $body:expr, $($n:literal),*) => {
            $(if let Some($row) = $acc.get($n) {
                let $i: usize = $n;
                $body;
            })*
        };
    }

    /// One row of a tile through `store` with contiguous columns: masked vector stores, the epilogue applied. A
    /// macro, expanded inside the tile's AVX-512 function.
    macro_rules! store_row {
        ($row:expr, $i:expr, $masks:expr, $col_bias:expr, $store:expr) => {{
            let (row, i, masks, col_bias, store): (_, usize, &[u16; 3], &[__m512; 3], &Store) =
                ($row, $i, $masks, $col_bias, $store);
            let c = store.c.offset(i as isize * store.rs);
            let row_bias = _mm512_set1_ps(if store.row_bias.is_null() { 0.0 } else { *store.row_bias.add(i) });
            for (v, (&x, &m)) in row.iter().zip(masks).enumerate() {
                if m == 0 {
                    continue;
                }
                let p = c.add(v * 16);
                let mut y = _mm512_add_ps(_mm512_add_ps(x, row_bias), col_bias[v]);
                if store.load_c {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, p));
                }
                if !store.col_scale.is_null() {
                    y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, store.col_scale.add(v * 16)));
                }
                if !store.residual.is_null() {
                    let r = store.residual.offset(i as isize * store.rs).add(v * 16);
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, r));
                }
                _mm512_mask_storeu_ps(p, m, y);
            }
        }};
    }

    /// A tile through the scalar store (strided outputs, edge columns) from `staged`, whose `rows ≤ R` rows of `W`
    /// floats (their first `nr` columns written) the tile wrote: out of line, so the tile functions carry none of it.
    ///
    /// # Safety
    /// `staged` points at `rows ≤ R` rows of `W` floats whose first `nr ≤ W` are initialised.
    #[cold]
    #[inline(never)]
    unsafe fn store_staged<const W: usize, const R: usize>(staged: *const f32, rows: usize, nr: usize, store: &Store) {
        let mut tile = [[0f32; W]; R];
        for (i, row) in tile.iter_mut().enumerate().take(rows) {
            for (j, v) in row.iter_mut().enumerate().take(nr) {
                *v = *staged.add(W * i + j);
            }
        }
        store_scalar(&tile, rows, nr, store);
    }

    pub(in super::super) struct Avx512;

    impl MicroKernel for Avx512 {
        const MR: usize = 8;
        const NR: usize = 48;
        unsafe fn tile(kc: usize, a: *const f32, b: *const f32, mr: usize, nr: usize, store: &Store) {
            // Narrow tiles (a stream's few time steps) multiply only the column vectors they have: the same FMAs
            // per element, so the same bits, at a third of the work for 16 columns or fewer.
            match nr {
                0..=16 => for_rows!(mr, avx512_16, (kc, a, b, nr, store), 8, 7, 6, 5, 4, 3, 2),
                17..=32 => for_rows!(mr, avx512_32, (kc, a, b, nr, store), 8, 7, 6, 5, 4, 3, 2),
                _ => for_rows!(mr, avx512_48, (kc, a, b, nr, store), 8, 7, 6, 5, 4, 3, 2),
            }
        }
    }

    unsafe fn avx512_16<const R: usize>(kc: usize, a: *const f32, b: *const f32, nr: usize, store: &Store) {
        avx512::<R, 1>(kc, a, b, nr, store)
    }
    unsafe fn avx512_32<const R: usize>(kc: usize, a: *const f32, b: *const f32, nr: usize, store: &Store) {
        avx512::<R, 2>(kc, a, b, nr, store)
    }
    unsafe fn avx512_48<const R: usize>(kc: usize, a: *const f32, b: *const f32, nr: usize, store: &Store) {
        avx512::<R, 3>(kc, a, b, nr, store)
    }

    /// Lane mask for columns `off..off + 16` of a tile with `nr` valid columns.
    #[inline(always)]
    fn lanes(nr: usize, off: usize) -> u16 {
        match nr.saturating_sub(off) {
            0 => 0,
            n if n >= 16 => 0xffff,
            n => (1u16 << n) - 1,
        }
    }

    /// `R` rows × the first `V` of the tile's three 16-column vectors (the others are neither computed nor stored).
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512<const R: usize, const V: usize>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        nr: usize,
        store: &Store,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for p in 0..kc {
            let bp = b.add(p * 48);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = _mm512_loadu_ps(bp.add(16 * v));
            }
            let ap = a.add(p * 8);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                for v in 0..V {
                    row[v] = _mm512_fmadd_ps(ai, bv[v], row[v]);
                }
            }
        }
        store_avx512!(acc, nr.min(16 * V), store);
    }

    /// AVX-512 BF16 (`vdpbf16ps`: two bf16 products per f32 lane, f32 accumulation), the `--precision bf16` mode;
    /// same 8 × 48 tile as [`Avx512`], so weights packed for one convert to the other panel by panel.
    pub(in super::super) struct Avx512Bf16;

    impl MicroKernel for Avx512Bf16 {
        const MR: usize = 8;
        const NR: usize = 48;
        const A: Panel = Panel::Bf16Pairs;
        const B: Panel = Panel::Bf16Pairs;
        unsafe fn tile(kc: usize, a: *const f32, b: *const f32, mr: usize, nr: usize, store: &Store) {
            let (a, b, pairs) = (a as *const u32, b as *const u32, kc.div_ceil(2));
            for_rows!(mr, avx512_bf16, (pairs, a, b, nr, store), 8, 7, 6, 5, 4, 3, 2)
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn avx512_bf16<const R: usize>(pairs: usize, a: *const u32, b: *const u32, nr: usize, store: &Store) {
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        for q in 0..pairs {
            let bp = b.add(q * 48) as *const __m512i;
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(1)));
            let b2: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(2)));
            let ap = a.add(q * 8);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
                row[2] = _mm512_dpbf16_ps(row[2], ai, b2);
            }
        }
        store_avx512!(acc, nr, store);
    }

    /// One int8 tile (`super::int8`): `R ≤ 4` rows of quantised activations × 48 columns of q8_0 weights over
    /// `blocks` blocks of 32. Per block the integer sums start at the weights' offset compensation and take eight
    /// `vpdpbusd` steps (four byte products per lane each); then they are scaled by activation × weight scale into
    /// the f32 accumulators. 12 integer + 12 f32 accumulators + 3 weight vectors fit the 32 registers.
    ///
    /// # Safety
    /// `a` = (quads, scales) of one activation panel, `b` = (quads, scales, compensation) of one weight panel, both
    /// `blocks` deep (`super::int8` layout); `store` addresses `mr × nr` valid elements; the CPU has AVX-512 VNNI.
    pub(in super::super) unsafe fn int8_tile(
        blocks: usize,
        a: (*const u32, *const f32),
        b: (*const u32, *const f32, *const i32),
        mr: usize,
        nr: usize,
        store: &Store,
    ) {
        for_rows!(mr, int8_vnni, (blocks, a, b, nr, store), 4, 3, 2)
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn int8_vnni<const R: usize>(
        blocks: usize,
        (a_quads, a_scales): (*const u32, *const f32),
        (b_quads, b_scales, b_compensation): (*const u32, *const f32, *const i32),
        nr: usize,
        store: &Store,
    ) {
        use crate::nn::gemm::int8::{MR, NR, QUADS};
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        for block in 0..blocks {
            let comp = b_compensation.add(block * NR) as *const __m512i;
            let start = [_mm512_loadu_si512(comp), _mm512_loadu_si512(comp.add(1)), _mm512_loadu_si512(comp.add(2))];
            let mut sums = [start; R];
            for quad in 0..QUADS {
                let bp = b_quads.add((block * QUADS + quad) * NR) as *const __m512i;
                let bv = [_mm512_loadu_si512(bp), _mm512_loadu_si512(bp.add(1)), _mm512_loadu_si512(bp.add(2))];
                let ap = a_quads.add((block * QUADS + quad) * MR);
                for (i, row) in sums.iter_mut().enumerate() {
                    let ai = _mm512_set1_epi32(*ap.add(i) as i32);
                    for v in 0..3 {
                        row[v] = _mm512_dpbusd_epi32(row[v], ai, bv[v]);
                    }
                }
            }
            let bs = b_scales.add(block * NR);
            let ws = [_mm512_loadu_ps(bs), _mm512_loadu_ps(bs.add(16)), _mm512_loadu_ps(bs.add(32))];
            for (i, (row, sum)) in acc.iter_mut().zip(&sums).enumerate() {
                let a_scale = _mm512_set1_ps(*a_scales.add(block * MR + i));
                for v in 0..3 {
                    let scale = _mm512_mul_ps(a_scale, ws[v]);
                    row[v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[v]), scale, row[v]);
                }
            }
        }
        store_avx512!(acc, nr, store);
    }

    /// Writes an `R × 16` tile of AVX2 accumulators (`[[__m256; 2]; R]`, `rows` = R) through `store`, the epilogue
    /// applied. A macro, expanded inside each AVX2 tile function, for the reason given at `store_avx512`.
    macro_rules! store_avx2 {
        ($acc:expr, $rows:expr, $nr:expr, $store:expr) => {{
            let (acc, rows, nr, store): (_, usize, usize, &Store) = (&$acc, $rows, $nr, $store);
            if store.cs != 1 || nr != 16 {
                // Edge columns or a strided output: staged in memory nothing clears, then element by element.
                let mut staged = std::mem::MaybeUninit::<[f32; 16 * 6]>::uninit();
                let base = staged.as_mut_ptr() as *mut f32;
                for_each_row!(acc, |i, row| {
                    _mm256_storeu_ps(base.add(16 * i), row[0]);
                    _mm256_storeu_ps(base.add(16 * i + 8), row[1]);
                });
                store_staged::<16, 6>(base, rows, nr, store);
            } else {
                // Full tiles (nearly all): the epilogue in vectors, as the AVX-512 kernel's `store_row`. Per
                // element the scalar path cost a sixth of a 256-deep tile's multiply-adds.
                let col_bias = [optional_ymm(store.col_bias, 0), optional_ymm(store.col_bias, 8)];
                let col_scale = [optional_ymm(store.col_scale, 0), optional_ymm(store.col_scale, 8)];
                for_each_row!(acc, |i, row| {
                    let c = store.c.offset(i as isize * store.rs);
                    let row_bias = _mm256_set1_ps(if store.row_bias.is_null() { 0.0 } else { *store.row_bias.add(i) });
                    for v in 0..2 {
                        let p = c.add(8 * v);
                        let mut y = _mm256_add_ps(row[v], row_bias);
                        if let Some(b) = col_bias[v] {
                            y = _mm256_add_ps(y, b);
                        }
                        if store.load_c {
                            y = _mm256_add_ps(y, _mm256_loadu_ps(p));
                        }
                        if let Some(s) = col_scale[v] {
                            y = _mm256_mul_ps(y, s);
                        }
                        if !store.residual.is_null() {
                            let r = store.residual.offset(i as isize * store.rs).add(8 * v);
                            y = _mm256_add_ps(y, _mm256_loadu_ps(r));
                        }
                        _mm256_storeu_ps(p, y);
                    }
                });
            }
        }};
    }

    pub(in super::super) struct Avx2;

    impl MicroKernel for Avx2 {
        const MR: usize = 6;
        const NR: usize = 16;
        unsafe fn tile(kc: usize, a: *const f32, b: *const f32, mr: usize, nr: usize, store: &Store) {
            for_rows!(mr, avx2, (kc, a, b, nr, store), 6, 5, 4, 3, 2)
        }
    }

    /// `--precision bf16` on AVX2 for most products: the f32 kernel over panels of values rounded to bf16. The
    /// products of two bf16 values are exact in f32, so this is bf16 × bf16 with f32 sums, at f32 speed.
    pub(in super::super) struct Avx2Bf16Values;

    impl MicroKernel for Avx2Bf16Values {
        const MR: usize = 6;
        const NR: usize = 16;
        const A: Panel = Panel::Bf16Values;
        const B: Panel = Panel::Bf16Values;
        unsafe fn tile(kc: usize, a: *const f32, b: *const f32, mr: usize, nr: usize, store: &Store) {
            Avx2::tile(kc, a, b, mr, nr, store)
        }
    }

    /// `--precision bf16` on AVX2 for a few rows over a prepacked B (weights): B's panels are bf16 pairs, each
    /// 32-bit word widened in registers into its two f32 values (the low half shifted up, the high half masked),
    /// and the multiply-adds run in the order of [`Avx2Bf16Values`] over the same values — the same bits from half
    /// the bytes. The widening costs two integer operations per 16 B values, which is why only products bound by
    /// B's bytes take this kernel. One or two rows take two panels at a time: with 16 columns their four sums,
    /// each a chain of dependent multiply-adds, left the kernel waiting on latency instead of memory.
    pub(in super::super) struct Avx2Bf16;

    impl MicroKernel for Avx2Bf16 {
        const MR: usize = 6;
        const NR: usize = 16;
        const A: Panel = Panel::Bf16Values;
        const B: Panel = Panel::Bf16Pairs;
        const PANELS: usize = 2;
        unsafe fn tile(kc: usize, a: *const f32, b: *const f32, mr: usize, nr: usize, store: &Store) {
            let (b, second) = (b as *const u32, (b as *const u32).add(16 * kc.div_ceil(2)));
            match (mr, nr > 16) {
                (1, true) => avx2_bf16::<1, 4>(kc, a, [b, second], nr, store),
                (2, true) => avx2_bf16::<2, 4>(kc, a, [b, second], nr, store),
                (_, true) => {
                    for_rows!(mr, avx2_bf16_panel, (kc, a, b, 16, store), 6, 5, 4, 3, 2);
                    let rest = store.columns_from(16);
                    for_rows!(mr, avx2_bf16_panel, (kc, a, second, nr - 16, &rest), 6, 5, 4, 3, 2)
                }
                (_, false) => for_rows!(mr, avx2_bf16_panel, (kc, a, b, nr, store), 6, 5, 4, 3, 2),
            }
        }
    }

    unsafe fn avx2_bf16_panel<const R: usize>(kc: usize, a: *const f32, b: *const u32, nr: usize, store: &Store) {
        avx2_bf16::<R, 2>(kc, a, [b, b], nr, store)
    }

    /// `R` rows × `V` 8-column vectors (16 columns from `b[0]`, then 16 from `b[1]` if `V` = 4).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_bf16<const R: usize, const V: usize>(
        kc: usize,
        a: *const f32,
        b: [*const u32; 2],
        nr: usize,
        store: &Store,
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        let high_halves = _mm256_set1_epi32(0xffff_0000_u32 as i32);
        for q in 0..kc.div_ceil(2) {
            let ap = a.add(2 * q * 6);
            // Per panel (each sum's order is all that matters): depth 2q (low halves), then 2q + 1 (high halves),
            // the f32 kernel's order; an odd depth's last pair has no high half to add (A has no row for it). A
            // panel at a time keeps two words and their halves live, not four: with four, two rows spilled.
            for panel in 0..V / 2 {
                let bp = b[panel].add(q * 16) as *const __m256i;
                let words = [_mm256_loadu_si256(bp), _mm256_loadu_si256(bp.add(1))];
                let low = words.map(|w| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w)));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_set1_ps(*ap.add(i));
                    row[2 * panel] = _mm256_fmadd_ps(ai, low[0], row[2 * panel]);
                    row[2 * panel + 1] = _mm256_fmadd_ps(ai, low[1], row[2 * panel + 1]);
                }
                if 2 * q + 1 < kc {
                    let high = words.map(|w| _mm256_castsi256_ps(_mm256_and_si256(w, high_halves)));
                    for (i, row) in acc.iter_mut().enumerate() {
                        let ai = _mm256_set1_ps(*ap.add(6 + i));
                        row[2 * panel] = _mm256_fmadd_ps(ai, high[0], row[2 * panel]);
                        row[2 * panel + 1] = _mm256_fmadd_ps(ai, high[1], row[2 * panel + 1]);
                    }
                }
            }
        }
        let left: [[__m256; 2]; R] = std::array::from_fn(|i| [acc[i][0], acc[i][1]]);
        store_avx2!(left, R, nr.min(16), store);
        if V == 4 && nr > 16 {
            let right: [[__m256; 2]; R] = std::array::from_fn(|i| [acc[i][V - 2], acc[i][V - 1]]);
            store_avx2!(right, R, nr - 16, &store.columns_from(16));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2<const R: usize>(kc: usize, a: *const f32, b: *const f32, nr: usize, store: &Store) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * 16));
            let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
            let ap = a.add(p * 6);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_set1_ps(*ap.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
        }
        store_avx2!(acc, R, nr, store);
    }

    /// The 8 floats at `ptr + offset`, if `ptr` is not null.
    #[inline(always)]
    unsafe fn optional_ymm(ptr: *const f32, offset: usize) -> Option<__m256> {
        (!ptr.is_null()).then(|| _mm256_loadu_ps(ptr.add(offset)))
    }
}
