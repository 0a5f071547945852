//! CPU convolutions as one GEMM each over an implicit im2col (`nn::gemm`).
//!
//! A conv1d is `Y (C_out × T_out) = W (C_out × C_in·K) · X̂ (C_in·K × T_out)` with `X̂[(i, j), τ] =
//! x[i, τ·stride + j·dilation − pad_left]`. X̂ is never built: the GEMM's B packer reads it straight from the signal
//! (zero or reflect padding and stride included) one cache-sized block at a time, so each output element is written
//! once per depth block, with the bias (and a residual, `Conv1d::forward_add`) added by the GEMM's epilogue. The
//! weight is the GEMM's left factor, packed once per layer ([`PackedConv`]).
//!
//! A transposed conv is split into its `stride` output phases: output sample `u = q·s + r` only receives taps
//! `j = r + m·s`, from input `q − m`, so phase `r` is an ordinary stride-1 conv with `⌈K/s⌉` taps read backwards.
//! The phases read the same im2col columns, so they are stacked as the rows of one GEMM (`s·C_out` rows, B packed
//! once) whose result is then interleaved into the output in one sequential pass. No col2im buffer, no scatter-add,
//! no strided stores in the kernel (which, per phase, made transposed convs 60 % slower than convs of equal work).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use rayon::prelude::*;

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::activation::ChannelActivation;
use super::gemm::{self, gemm, Epilogue, LeftAsRight, Output, PackA, PackB, Packed, RowFunction};
use super::weight::{GemmWeight, Matrix, Operand, OperandLayout, Side};
use super::winograd::WinogradWeights;
use super::{f32_slice, f32_vec, winograd};

/// The weights of one conv layer as the GEMM's left factor, and the bias of each GEMM row.
#[derive(Debug)]
pub struct PackedConv {
    /// Conv: `C_out × C_in·K`. Transposed: `s·C_out × C_in·⌈K/s⌉`, phase-major rows.
    weights: GemmWeight,
    bias: Option<Vec<f32>>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    /// Taps per input channel in the GEMM depth: K for a conv, ⌈K/s⌉ for a transposed conv.
    taps: usize,
    /// `weights` transposed as the right factor, packed on the first narrow product (see [`PackedConv::product`]).
    right: OnceLock<Packed>,
    /// A conv with one output channel: its weight row, for [`single_output`].
    single_row: Option<Vec<f32>>,
    /// A 3-tap conv that may run as Winograd's F(4, 3) ([`PackedConv::with_winograd`]).
    winograd: Option<WinogradWeights>,
}

impl PackedConv {
    /// A conv1d weight `(C_out, C_in, K)`: already the row-major `C_out × C_in·K` matrix the GEMM wants. `None`
    /// where our GEMM does not take the weight (see [`GemmWeight::new`]).
    pub fn conv1d(
        weight: &Matrix,
        (c_out, c_in, kernel): (usize, usize, usize),
        bias: Option<&Tensor>,
    ) -> Result<Option<Self>> {
        let layout = OperandLayout::AsStored { rows: c_out, cols: c_in * kernel };
        let Some(weights) = GemmWeight::new(weight, layout, Side::Left)? else { return Ok(None) };
        let bias = bias.map(f32_vec).transpose()?;
        let single_row = if c_out == 1 { Some(f32_vec(&weight.clone().into_tensor()?)?) } else { None };
        let right = OnceLock::new();
        Ok(Some(Self { weights, bias, c_in, c_out, kernel, taps: kernel, right, single_row, winograd: None }))
    }

    /// This 3-tap conv's wide stride-1, zero-padded products as Winograd's F(4, 3) (`nn::winograd`): half the
    /// multiplies, not the same bits, so only for layers that never stream. Other kernels ignore it.
    pub fn with_winograd(self, weight: &Matrix) -> Self {
        let winograd = (self.kernel == 3).then(|| WinogradWeights::new(weight.clone(), self.c_out, self.c_in));
        Self { winograd, ..self }
    }

    /// A transposed conv weight `(C_in, C_out, K)`, read as its output phases stacked (`OperandLayout::Phases`).
    pub fn conv_transpose1d(
        weight: &Matrix,
        (c_in, c_out, kernel): (usize, usize, usize),
        bias: Option<&Tensor>,
        stride: usize,
    ) -> Result<Option<Self>> {
        let layout = OperandLayout::Phases { c_in, c_out, kernel, stride };
        let Some(weights) = GemmWeight::new(weight, layout, Side::Left)? else { return Ok(None) };
        // Per output channel: added as the phases are put in output order (`ConvTranspose1dOp`), not per phase row.
        let bias = bias.map(f32_vec).transpose()?;
        let taps = kernel.div_ceil(stride);
        let right = OnceLock::new();
        Ok(Some(Self { weights, bias, c_in, c_out, kernel, taps, right, single_row: None, winograd: None }))
    }

    /// `Y = W · X̂` (+ per-row `bias`, + `residual` laid out like Y) into the row-major `rows × n` output `y`.
    ///
    /// A stream's deep layers produce a few time steps per push (Mimi's last encoder conv: 2). With the weights
    /// as the left factor those few columns fill 2 of the kernel's 16 lanes, each weight broadcast on its own:
    /// compute-bound at a fraction of what memory delivers (in bf16 slower than f32). So at most
    /// [`NARROW_COLUMNS`] columns run transposed, `Yᵀ = X̂ᵀ · Wᵀ`: the time steps are the tile's rows, the weights
    /// stream through full vectors. A few more columns than that run transposed too where the kernel's tiles fit
    /// them with less waste ([`runs_transposed`]). Each output element sums the same products in the same order
    /// either way, so the results are the same bits.
    fn product(
        &self,
        cols: &Im2col,
        n: usize,
        y: &mut [f32],
        (row_bias, residual): (Option<&[f32]>, Option<&[f32]>),
        activation: Option<&dyn ChannelActivation>,
    ) {
        if let Some(w) = &self.single_row {
            return single_output(w, cols, y, (row_bias.map(|b| b[0]), residual), activation);
        }
        let y = Output::row_major(y, self.weights.dims().0, n).expect("sized by the caller");
        self.product_into(cols, n, y, (row_bias, residual), activation)
    }

    /// [`PackedConv::product`] into a view `y` of `rows × n` (row-major, possibly uninitialised: every element is
    /// written); not for single-output convs.
    fn product_into(
        &self,
        cols: &Im2col,
        n: usize,
        mut y: Output,
        (row_bias, residual): (Option<&[f32]>, Option<&[f32]>),
        activation: Option<&dyn ChannelActivation>,
    ) {
        let (rows, depth) = self.weights.dims();
        if runs_transposed(n, rows) {
            let weights = self.weights.operand();
            let mut yt = y.transposed();
            let epi = Epilogue { col_bias: row_bias, residual, ..Default::default() };
            if matches!(weights, Operand::InPlace(_)) {
                // Weights still read in place (a short clip's only run): their transpose packed block by block
                // within this product, not kept.
                gemm(n, rows, depth, cols, &LeftAsRight(&weights), &mut yt, &epi);
            } else {
                let right = self.right.get_or_init(|| Packed::b(&LeftAsRight(&weights), depth, rows));
                gemm(n, rows, depth, cols, right, &mut yt, &epi);
            }
            // Here the product's rows are time steps; the few outputs are activated by channel after it.
            if let Some(a) = activation {
                (0..rows).for_each(|channel| a.on_channel(channel, y.row_mut(channel)));
            }
        } else {
            // The product's rows are the output channels.
            let hook = activation.map(|a| move |channel: usize, values: &mut [f32]| a.on_channel(channel, values));
            let epi = Epilogue {
                row_bias,
                residual,
                activation: hook.as_ref().map(|h| h as RowFunction),
                ..Default::default()
            };
            gemm(rows, n, depth, &self.weights.operand(), cols, &mut y, &epi);
        }
    }
}

/// `y = w · X̂ (+ bias, + residual)` for a conv with one output channel (a decoder's last conv, 64 → 1), in f32 at
/// every precision: per depth row of X̂, one multiply-add over a chunk of output steps, chunks across threads. As a
/// GEMM that one row filled one of the tile's eight rows, and packing its im2col cost more than the arithmetic
/// (14 GFLOP/s on Mimi's last conv).
fn single_output(
    w: &[f32],
    cols: &Im2col,
    y: &mut [f32],
    (bias, residual): (Option<f32>, Option<&[f32]>),
    activation: Option<&dyn ChannelActivation>,
) {
    y.par_chunks_mut(SINGLE_OUTPUT_CHUNK).enumerate().for_each_init(Vec::new, |row, (chunk, y)| {
        let (c0, len) = (chunk * SINGLE_OUTPUT_CHUNK, y.len());
        row.resize(len, 0.0);
        y.fill(bias.unwrap_or(0.0));
        for (p, &wp) in w.iter().enumerate() {
            // Read in place where the row lies inside the signal (all but the edges), else gathered with padding.
            let x = match cols.contiguous_row(p, c0..c0 + len) {
                Some(x) => x,
                None => {
                    cols.pack_rows(p..p + 1, c0..c0 + len, len, row);
                    &row[..]
                }
            };
            super::wide_simd(
                #[inline(always)]
                || {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y += wp * x;
                    }
                },
            );
        }
        if let Some(r) = residual {
            for (y, &r) in y.iter_mut().zip(&r[c0..c0 + len]) {
                *y += r;
            }
        }
        if let Some(a) = activation {
            a.on_channel(0, y);
        }
    });
}

/// Output steps per task of [`single_output`]: their sums and one im2col row stay in L1, and a stream step of one
/// Mimi frame (1920 steps) is two tasks.
const SINGLE_OUTPUT_CHUNK: usize = 1024;

/// Output columns up to which a conv runs transposed ([`PackedConv::product`]): beyond, the columns fill the
/// kernel's vectors and the weights' panels are the better left factor.
const NARROW_COLUMNS: usize = 16;

/// Whether a product of `rows` weight rows over `n` output columns runs transposed: up to [`NARROW_COLUMNS`]
/// always, and below four tile widths where the transposed tiles pad less. A transposed conv's stream step makes
/// one more column than its input frames (the overlap): Mimi's 16-frame decoder step 17, which as the wide
/// product filled one 16-lane panel and a second with one lane (0.73 ms a push, transposed 0.53, on Zen 3).
fn runs_transposed(n: usize, rows: usize) -> bool {
    let (mr, nr) = gemm::tile_shape();
    let padded = |len: usize, tile: usize| len.div_ceil(tile) * tile;
    n <= NARROW_COLUMNS || (n < 4 * nr && padded(n, mr) * padded(rows, nr) < padded(n, nr) * padded(rows, mr))
}

/// The implicit im2col matrix of one signal (C_in × t): row `(i, j)` (i-major, `taps` per channel), column `c`
/// holds `x[i, c·stride + offset + j·tap_step]`; outside the signal zero, or with `reflect` the mirrored sample
/// (torch's reflect padding: `x[−n]` is `x[n]`, `x[t − 1 + n]` is `x[t − 1 − n]`; the caller keeps pads < t). The
/// signal is `prefix` (C_in × p, a stream's carried samples) followed by `x` (C_in × (t − p)), read in place.
struct Im2col<'a> {
    x: &'a [f32],
    prefix: &'a [f32],
    p: usize,
    t: usize,
    taps: usize,
    stride: usize,
    offset: isize,
    tap_step: isize,
    reflect: bool,
}

impl PackB for Im2col<'_> {
    fn pack_b(&self, ks: std::ops::Range<usize>, cols: std::ops::Range<usize>, nr: usize, dst: &mut [f32]) {
        // Compiled wide, the fixed-size row copies below become three vector moves instead of `memcpy` calls.
        super::wide_simd(
            #[inline(always)]
            || self.pack_rows(ks, cols, nr, dst),
        )
    }

    /// Stride 1 only: a strided conv's rows are gathered sample by sample either way, and packing one panel row at
    /// a time cost more than its f32 block packed whole and converted.
    fn pack_b_pairs(
        &self,
        ks: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        nr: usize,
        dst: &mut [u32],
    ) -> bool {
        if self.stride != 1 || nr > MAX_PANEL {
            return false;
        }
        let pairs = ks.len().div_ceil(2);
        let mut spill = [[0f32; MAX_PANEL]; 2];
        for q in 0..pairs {
            let (lo, hi) = (ks.start + 2 * q, ks.start + 2 * q + 1);
            let (lo_origin, hi_origin) = (self.origin(lo), self.origin(hi));
            for (panel, c0) in cols.clone().step_by(nr).enumerate() {
                let valid = nr.min(cols.end - c0);
                let [lo_spill, hi_spill] = &mut spill;
                let lo_row = self.panel_row(lo, lo_origin, (c0, valid, nr), lo_spill);
                let hi_row = (hi < ks.end).then(|| self.panel_row(hi, hi_origin, (c0, valid, nr), hi_spill));
                gemm::bf16_pair_row(lo_row, hi_row, &mut dst[(panel * pairs + q) * nr..(panel * pairs + q + 1) * nr]);
            }
        }
        true
    }
}

/// The widest panel [`Im2col::pack_b_pairs`] packs (the AVX-512 kernel's NR).
const MAX_PANEL: usize = 48;

/// X̂ᵀ for the narrow products: its rows are X̂'s columns, and MR-tall panels of X̂ᵀ are laid out as NR-wide panels
/// of X̂ are.
impl PackA for Im2col<'_> {
    fn pack_a(&self, rows: std::ops::Range<usize>, ks: std::ops::Range<usize>, mr: usize, dst: &mut [f32]) {
        self.pack_b(ks, rows, mr, dst)
    }
}

impl Im2col<'_> {
    /// Row `p`'s channel, and where in `x` its column 0 reads at stride 1 (negative: in the prefix or before).
    fn origin(&self, p: usize) -> (usize, isize) {
        let (i, j) = (p / self.taps, p % self.taps);
        (i, self.offset + j as isize * self.tap_step - self.p as isize)
    }

    /// Row `p` (at `origin`, stride 1) over one panel's columns `c0..c0 + valid` (`nr` wide, zeros past `valid`):
    /// the signal itself where the panel lies in `x`, else packed into `spill`.
    fn panel_row<'s>(
        &'s self,
        p: usize,
        (i, origin): (usize, isize),
        (c0, valid, nr): (usize, usize, usize),
        spill: &'s mut [f32],
    ) -> &'s [f32] {
        let (start, nx) = (origin + c0 as isize, self.t - self.p);
        if valid == nr && start >= 0 && start as usize + nr <= nx {
            return &self.x[i * nx + start as usize..i * nx + start as usize + nr];
        }
        self.pack_rows(p..p + 1, c0..c0 + valid, nr, &mut spill[..nr]);
        &spill[..nr]
    }

    /// Row `p` of X̂ over columns `cols` as a slice of the signal itself, where it is one: stride 1 and every column
    /// inside `x` (not the prefix, not the padding).
    fn contiguous_row(&self, p: usize, cols: std::ops::Range<usize>) -> Option<&[f32]> {
        let (i, j) = (p / self.taps, p % self.taps);
        let nx = self.t - self.p;
        let start = cols.start as isize + self.offset + j as isize * self.tap_step - self.p as isize;
        let ok = self.stride == 1 && start >= 0 && start as usize + cols.len() <= nx;
        ok.then(|| &self.x[i * nx + start as usize..i * nx + start as usize + cols.len()])
    }

    #[inline(always)]
    fn pack_rows(&self, ks: std::ops::Range<usize>, cols: std::ops::Range<usize>, nr: usize, dst: &mut [f32]) {
        let kc = ks.len();
        let t = self.t as isize;
        // Rows outside, panels inside: the row's channel and tap are found once per row (a division per panel row
        // cost more than its 48-float copy), then every panel reads the same signal row.
        let (mut i, mut j) = (ks.start / self.taps, ks.start % self.taps);
        let (np, nx) = (self.p, self.t - self.p);
        let panels = cols.len() / nr;
        let mut phases = Phases::default();
        for p in 0..kc {
            let pre = &self.prefix[i * np..(i + 1) * np];
            let src = &self.x[i * nx..(i + 1) * nx];
            let at = |v: usize| if v < np { pre[v] } else { src[v - np] };
            let row_start = (cols.start * self.stride) as isize + self.offset + j as isize * self.tap_step;
            let (channel, tap) = (i, j);
            (i, j) = if j + 1 == self.taps { (i + 1, 0) } else { (i, j + 1) };
            // The whole panels whose row lies wholly inside `x` (all but a few at the edges): one tight loop of
            // fixed-size copies. Per panel, the checks and slicing of the general loop below cost more than the
            // 16-float copy itself (packing was a third of a 32-row conv's time on AVX2). At stride s the row is
            // read from the channel's phases, built once for all its taps.
            let (inside, row) = if self.stride == 1 {
                let first = (np as isize - row_start).max(0).unsigned_abs().div_ceil(nr).min(panels);
                let last = ((t - row_start).max(0).unsigned_abs() / nr).min(panels);
                let from = (row_start + (first * nr) as isize).max(np as isize) as usize - np;
                (first..last.max(first), &src[from.min(nx)..])
            } else {
                match phases.row(self, channel, tap, cols.start, panels * nr) {
                    Some(row) => (0..panels, row),
                    None => (0..0, &[][..]),
                }
            };
            if !inside.is_empty() {
                let src = &row[..inside.len() * nr];
                let dst = &mut dst[(inside.start * kc + p) * nr..];
                gemm::copy_panel_rows(src, dst, kc, nr);
            }
            for (panel, c0) in cols.clone().step_by(nr).enumerate() {
                if inside.contains(&panel) {
                    continue;
                }
                let valid = nr.min(cols.end - c0);
                let start = row_start + ((c0 - cols.start) * self.stride) as isize;
                let dst = &mut dst[(panel * kc + p) * nr..(panel * kc + p + 1) * nr];
                if start >= np as isize && start + (((valid.max(1) - 1) * self.stride) as isize) < t {
                    // A panel row inside the signal that the tight loop above left (a partial last panel, a
                    // strided conv's edge block): a plain strided copy (the per-sample edge checks below cost as
                    // much as a downsampling conv's products).
                    let src = src[start as usize - np..].iter().step_by(self.stride);
                    for (d, &v) in dst[..valid].iter_mut().zip(src) {
                        *d = v;
                    }
                    dst[valid..].fill(0.0);
                } else if self.stride == 1 && !self.reflect {
                    // The panel row's columns by what they read — zero padding before the signal, the prefix, `x`,
                    // zero padding after it — as up to four copies (a stream's first panels start in the prefix;
                    // one sample at a time they cost a 1920-step decoder's last conv 0.25 ms a push).
                    let first_reading = |idx: usize| (idx as isize - start).clamp(0, valid as isize) as usize;
                    let (in_prefix, in_x, after) = (first_reading(0), first_reading(np), first_reading(t as usize));
                    let read = |c: usize| (start + c as isize) as usize;
                    dst[..in_prefix].fill(0.0);
                    if in_x > in_prefix {
                        dst[in_prefix..in_x].copy_from_slice(&pre[read(in_prefix)..read(in_x)]);
                    }
                    if after > in_x {
                        dst[in_x..after].copy_from_slice(&src[read(in_x) - np..read(after) - np]);
                    }
                    dst[after..].fill(0.0);
                } else {
                    let s = self.stride as isize;
                    for (c, d) in dst[..valid].iter_mut().enumerate() {
                        let idx = start + c as isize * s;
                        *d = match idx {
                            _ if (0..t).contains(&idx) => at(idx as usize),
                            _ if !self.reflect => 0.0,
                            _ if idx < 0 => src.get(idx.unsigned_abs()).copied().unwrap_or(0.0),
                            _ => src.get((2 * (t - 1) - idx).max(0) as usize).copied().unwrap_or(0.0),
                        };
                    }
                    dst[valid..].fill(0.0);
                }
            }
        }
    }
}

/// One channel's signal split into its `stride` phases over a block's columns, for a strided conv's packing: tap
/// `j` of column `c` reads `x[base + j·tap_step + c·stride]`, which is element `c + q` of phase `r` (`j·tap_step
/// = q·stride + r`), so every tap's row is a contiguous run of one phase. Built once per channel (each sample read
/// once, in order) instead of gathering every tap's row sample by sample (`K = 2·stride` gathers per sample).
#[derive(Default)]
struct Phases {
    channel: Option<usize>,
    /// Phase `r` at `data[r·len..(r + 1)·len]`.
    data: Vec<f32>,
    len: usize,
}

impl Phases {
    /// Row (`channel`, `tap`) of the im2col over `width` columns from `first_col`, if all of it lies inside `x`
    /// (strided convs only; `None` sends the caller to the general path).
    fn row(&mut self, cols: &Im2col, channel: usize, tap: usize, first_col: usize, width: usize) -> Option<&[f32]> {
        let s = cols.stride;
        if width == 0 || cols.tap_step <= 0 {
            return None;
        }
        let step = cols.tap_step as usize;
        let len = width + (cols.taps - 1) * step / s;
        let base = (first_col * s) as isize + cols.offset;
        // Samples base .. base + len·s of the signal (prefix, then x) must all lie in x.
        let (np, t) = (cols.p as isize, cols.t as isize);
        if base < np || base + (len * s) as isize > t {
            return None;
        }
        // One block's columns per `Phases`, so `len` is the same for every row: only the channel changes.
        if self.channel != Some(channel) {
            let nx = cols.t - cols.p;
            let from = channel * nx + (base - np) as usize;
            let signal = &cols.x[from..from + len * s];
            self.data.resize(len * s, 0.0);
            for (m, frame) in signal.chunks_exact(s).enumerate() {
                for (r, &v) in frame.iter().enumerate() {
                    self.data[r * len + m] = v;
                }
            }
            (self.channel, self.len) = (Some(channel), len);
        }
        let (q, r) = (tap * step / s, tap * step % s);
        Some(&self.data[r * len + q..r * len + q + width])
    }
}

/// Conv1d with implicit zero padding on x (B, C_in, T).
#[derive(Debug, Clone, Copy)]
pub struct Conv1dOp<'a> {
    pub weights: &'a PackedConv,
    pub stride: usize,
    pub dilation: usize,
    pub pad_left: usize,
    pub pad_right: usize,
    /// Reflect padding instead of zeros (pads must be shorter than the input).
    pub reflect: bool,
    /// Applied to the output as the products write it (see `gemm::Epilogue::activation`).
    pub activation: Option<&'a dyn ChannelActivation>,
}

impl<'a> Conv1dOp<'a> {
    /// The conv with `weights`, (stride, dilation), (left, right) padding, reflected or zeros; no activation.
    pub fn new(
        weights: &'a PackedConv,
        (stride, dilation): (usize, usize),
        pads: (usize, usize),
        reflect: bool,
    ) -> Self {
        Self { weights, stride, dilation, pad_left: pads.0, pad_right: pads.1, reflect, activation: None }
    }
}

impl CustomOp1 for Conv1dOp<'_> {
    fn name(&self) -> &'static str {
        "codec-conv1d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(f32_slice(storage, layout, "conv input")?, layout, None, None)
    }
}

/// `conv(x) + residual` in one pass: the residual (B, C_out, T_out) is added in the GEMM's epilogue.
impl CustomOp2 for Conv1dOp<'_> {
    fn name(&self) -> &'static str {
        "codec-conv1d-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let residual = f32_slice(s2, l2, "conv residual")?;
        self.run(f32_slice(s1, l1, "conv input")?, l1, Some((residual, l2.shape())), None)
    }
}

/// [`Conv1dOp`] over a stream's carried samples (B, C_in, P), the first input, followed by the new ones (B, C_in,
/// T), the second: read in place, as if joined.
pub struct PrefixedConv1dOp<'a>(pub Conv1dOp<'a>);

impl CustomOp2 for PrefixedConv1dOp<'_> {
    fn name(&self) -> &'static str {
        "codec-conv1d-prefixed"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, p) = l1.shape().dims3()?;
        let (xb, xc, t) = l2.shape().dims3()?;
        if (b, c) != (xb, xc) || self.0.reflect {
            candle_core::bail!("conv1d: carried samples {:?} do not go before {:?}", l1.shape(), l2.shape());
        }
        let joined = Layout::contiguous((b, c, p + t));
        let prefix = (f32_slice(s1, l1, "conv carried samples")?, p);
        self.0.run(f32_slice(s2, l2, "conv input")?, &joined, None, Some(prefix))
    }
}

impl Conv1dOp<'_> {
    /// The conv of `x` (B, C_in, T of `layout`, or with `prefix` (samples, P) T − P of them after the prefix's P).
    fn run(
        &self,
        x: &[f32],
        layout: &Layout,
        residual: Option<(&[f32], &Shape)>,
        prefix: Option<(&[f32], usize)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c_in, t) = layout.shape().dims3()?;
        let w = self.weights;
        if c_in != w.c_in {
            candle_core::bail!("conv1d: input has {c_in} channels, weight expects {}", w.c_in);
        }
        let (prefix, p) = prefix.unwrap_or((&[], 0));
        let span = self.dilation * (w.kernel - 1) + 1;
        if t == 0 || t + self.pad_left + self.pad_right < span {
            candle_core::bail!(
                "conv1d: {t} input samples (padded {}) are fewer than the kernel's span {span}",
                t + self.pad_left + self.pad_right
            );
        }
        let t_out = (t + self.pad_left + self.pad_right - span) / self.stride + 1;
        let shape = Shape::from((b, w.c_out, t_out));
        if let Some((_, r)) = residual {
            if r != &shape {
                candle_core::bail!("conv1d: residual {r:?} does not match the output {shape:?}");
            }
        }
        let (x_len, p_len) = (c_in * (t - p), c_in * p);
        // Winograd in f32 only: in bf16 its transforms' rounding (entries up to 8) added to bf16's own took the
        // WavTokenizer fixture's decoded cos from 0.99982 to 0.99944. Where bf16 products are f32 multiplies of
        // bf16 values (AVX2) a direct bf16 conv is no faster than f32, so these never-streamed layers keep
        // Winograd, exact (9 % of a WavTokenizer-75 decode).
        let winograd = w.winograd.as_ref().filter(|_| {
            let shape = self.stride == 1 && self.dilation == 1 && !self.reflect && p == 0;
            let f32_kernels = !super::gemm::bf16_products() || !super::gemm::bf16_supported();
            shape && t_out >= winograd::MIN_OUTPUT_STEPS && f32_kernels
        });
        let item_len = w.c_out * t_out;
        let cols = |item: usize| Im2col {
            x: &x[item * x_len..(item + 1) * x_len],
            prefix: &prefix[item * p_len..(item + 1) * p_len],
            p,
            t,
            taps: w.kernel,
            stride: self.stride,
            offset: -(self.pad_left as isize),
            tap_step: self.dilation as isize,
            reflect: self.reflect,
        };
        let residual = |item: usize| residual.map(|(r, _)| &r[item * item_len..(item + 1) * item_len]);
        let biases = w.bias.as_deref();
        if winograd.is_none() && w.single_row.is_none() {
            // The product writes every output: no zero fill first.
            let fill = |out: *mut f32| {
                for item in 0..b {
                    // SAFETY: item's rows are the `item_len` floats from its offset, inside the `b · item_len`.
                    let y = unsafe { Output::from_raw(out.add(item * item_len), item_len, (w.c_out, t_out), t_out, 1) };
                    let y = y.expect("sized above");
                    w.product_into(&cols(item), t_out, y, (biases, residual(item)), self.activation);
                }
            };
            // SAFETY: each item's product writes all of its rows (`gemm`).
            let out = unsafe { crate::mem::written_in_full(b * item_len, fill) };
            return Ok((CpuStorage::F32(out), shape));
        }
        let mut out = crate::mem::zeros_par(b * item_len);
        for (item, yb) in out.chunks_exact_mut(item_len).enumerate() {
            let residual = residual(item);
            if let Some(winograd) = winograd {
                let x = &x[item * x_len..(item + 1) * x_len];
                winograd.conv((x, t), self.pad_left, yb, biases, residual)?;
                if let Some(a) = self.activation {
                    yb.par_chunks_mut(t_out).enumerate().for_each(|(channel, values)| a.on_channel(channel, values));
                }
                continue;
            }
            w.product(&cols(item), t_out, yb, (biases, residual), self.activation);
        }
        Ok((CpuStorage::F32(out), shape))
    }
}

/// Transposed conv1d on x (B, C_in, T), the full output `(T − 1)·stride + K` trimmed by `trim_left`/`trim_right`.
#[derive(Debug, Clone, Copy)]
pub struct ConvTranspose1dOp<'a> {
    pub weights: &'a PackedConv,
    pub stride: usize,
    pub trim_left: usize,
    pub trim_right: usize,
    /// The output samples, from the first kept, that get the bias: all of them, or a stream step's final ones (the
    /// samples after them are the overlap the next step completes, which adds its own bias then).
    pub biased: usize,
}

impl CustomOp1 for ConvTranspose1dOp<'_> {
    fn name(&self) -> &'static str {
        "codec-conv-transpose1d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "conv input")?;
        let (b, c_in, t) = layout.shape().dims3()?;
        let (w, s) = (self.weights, self.stride);
        if c_in != w.c_in || w.weights.dims().0 != s * w.c_out {
            candle_core::bail!("conv_transpose1d: input has {c_in} channels, weight expects {}", w.c_in);
        }
        let full = if t == 0 { 0 } else { (t - 1) * s + w.kernel };
        let t_out = full.saturating_sub(self.trim_left + self.trim_right);
        if t_out == 0 {
            return Ok((CpuStorage::F32(Vec::new()), Shape::from((b, w.c_out, 0))));
        }
        // Output o = q·s + r − trim_left: the phases' columns q0..q1 (at least one) cover every output sample.
        let q0 = self.trim_left / s;
        let q1 = (t_out + self.trim_left).div_ceil(s);
        let n = q1 - q0;
        let (phase_rows, total) = (s * w.c_out, b * w.c_out * t_out);
        // Written in full below (every phase product, every interleaved row): no zero fill first.
        let mut out = Vec::with_capacity(total);
        for (xb, yb) in
            x.chunks_exact(c_in * t).zip(out.spare_capacity_mut()[..total].chunks_exact_mut(w.c_out * t_out))
        {
            let cols = Im2col {
                x: xb,
                prefix: &[],
                p: 0,
                t,
                taps: w.taps,
                stride: 1,
                offset: q0 as isize,
                tap_step: -1,
                reflect: false,
            };
            let product = |phases: *mut f32| {
                // SAFETY: the `phase_rows × n` floats from `phases` are the buffer being filled.
                let y = unsafe { Output::from_raw(phases, phase_rows * n, (phase_rows, n), n, 1) };
                w.product_into(&cols, n, y.expect("sized above"), (None, None), None);
            };
            // SAFETY: the product writes all of its output.
            let phases = unsafe { crate::mem::written_in_full(phase_rows * n, product) };
            // out[o, q·s + r − trim_left] = phases[(r, o), q − q0] (+ bias[o]).
            yb.par_chunks_mut(t_out.max(1)).enumerate().for_each(|(o, row)| {
                let phase = |r: usize| &phases[(r * w.c_out + o) * n..(r * w.c_out + o + 1) * n];
                let bias = w.bias.as_ref().map(|b| (b[o], self.biased));
                interleave_phases(row, phase, s, self.trim_left % s, bias);
            });
        }
        // SAFETY: every item's rows were written in full, each value once (`interleave_phases`).
        unsafe { out.set_len(total) };
        Ok((CpuStorage::F32(out), Shape::from((b, w.c_out, t_out))))
    }
}

/// One output row of a transposed conv from its `s` phase rows: `row[i] = phase(r)[q]` where `i + offset = q·s + r`,
/// plus `bias` on the first `biased` values. In L1-sized blocks, one phase at a time: a strided copy each, where
/// walking the row sample by sample (phase and column updated per value) took a Mimi decode's last upsampling
/// 13 ms for its 61 MB, twice what the memory needs.
///
/// Writes every value of `row` (which may be uninitialised) exactly once; panics if a phase row is too short.
fn interleave_phases<'p>(
    row: &mut [MaybeUninit<f32>],
    phase: impl Fn(usize) -> &'p [f32],
    s: usize,
    offset: usize,
    bias: Option<(f32, usize)>,
) {
    const BLOCK: usize = 4096;
    let (bias, biased) = bias.unwrap_or((0.0, 0));
    for (b, block) in row.chunks_mut(BLOCK).enumerate() {
        let i0 = b * BLOCK;
        for r in 0..s {
            // The block's first value of phase r, its column in that phase, and how many of its values are biased.
            let first = (r + s - (i0 + offset) % s) % s;
            if first >= block.len() {
                continue;
            }
            let q = (i0 + first + offset) / s;
            let count = (block.len() - first).div_ceil(s);
            let sums = &phase(r)[q..q + count];
            let with_bias = biased.saturating_sub(i0 + first).div_ceil(s).min(count);
            // The sums lead each zip: a zip takes its first iterator's next item before the second's, so the
            // first loop ends without consuming a value slot.
            let mut values = block[first..].iter_mut().step_by(s);
            for (&sum, v) in sums[..with_bias].iter().zip(values.by_ref()) {
                v.write(sum + bias);
            }
            for (&sum, v) in sums[with_bias..].iter().zip(values) {
                v.write(sum);
            }
        }
    }
}

/// Depthwise conv1d (groups = channels, one `K`-tap filter per channel) with implicit zero padding on x (B, C, T),
/// or on x (B, T, C) with `channels_last`: per tap one multiply-add over a contiguous row (vectorised), rows across
/// threads; both layouts add the taps in the same order, so they give the same bits. candle runs it as one tiny
/// convolution per channel.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseConv1dOp<'a> {
    /// (C, K) row-major.
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub kernel: usize,
    pub dilation: usize,
    pub pad_left: usize,
    pub pad_right: usize,
    /// Input and output are (B, T, C) instead of (B, C, T).
    pub channels_last: bool,
}

impl CustomOp1 for DepthwiseConv1dOp<'_> {
    fn name(&self) -> &'static str {
        "codec-depthwise-conv1d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "conv input")?;
        let (b, c, t) = match layout.shape().dims3()? {
            (b, t, c) if self.channels_last => (b, c, t),
            dims => dims,
        };
        let k = self.kernel;
        if self.weight.len() != c * k || self.bias.is_some_and(|b| b.len() != c) {
            candle_core::bail!("depthwise conv1d: input has {c} channels, weight holds {}", self.weight.len() / k);
        }
        let span = self.dilation * (k - 1) + 1;
        let t_out = (t + self.pad_left + self.pad_right).saturating_sub(span) + 1;
        let mut out = crate::mem::zeros_par(b * c * t_out);
        if self.channels_last && t_out > 0 && c > 0 {
            // Taps as rows (K, C), so each tap is one contiguous multiply-add over the channels.
            let taps: Vec<f32> = (0..k).flat_map(|j| (0..c).map(move |ch| self.weight[ch * k + j])).collect();
            out.par_chunks_mut(c).enumerate().for_each(|(row, y)| {
                let (bi, to) = (row / t_out, row % t_out);
                match self.bias {
                    Some(bias) => y.copy_from_slice(bias),
                    None => y.fill(0.0),
                }
                for (j, w) in taps.chunks_exact(c).enumerate() {
                    let src = (to + j * self.dilation) as isize - self.pad_left as isize;
                    if !(0..t as isize).contains(&src) {
                        continue;
                    }
                    let xr = &x[(bi * t + src as usize) * c..(bi * t + src as usize + 1) * c];
                    super::wide_simd(
                        #[inline(always)]
                        || {
                            for ((yv, &xv), &wv) in y.iter_mut().zip(xr).zip(w) {
                                *yv += wv * xv;
                            }
                        },
                    )
                }
            });
            return Ok((CpuStorage::F32(out), Shape::from((b, t_out, c))));
        }
        if t_out > 0 {
            out.par_chunks_mut(t_out).zip(x.par_chunks(t.max(1))).enumerate().for_each(|(row, (y, x))| {
                let ch = row % c;
                y.fill(self.bias.map_or(0.0, |b| b[ch]));
                for (j, &w) in self.weight[ch * k..(ch + 1) * k].iter().enumerate() {
                    // y[τ] += w · x[τ + j·d − pad_left] where the input index is inside the row.
                    let offset = (j * self.dilation) as isize - self.pad_left as isize;
                    let lo = (-offset).clamp(0, t_out as isize) as usize;
                    let hi = (t as isize - offset).clamp(lo as isize, t_out as isize) as usize;
                    if hi == lo {
                        continue;
                    }
                    let src = &x[(lo as isize + offset) as usize..(hi as isize + offset) as usize];
                    super::wide_simd(
                        #[inline(always)]
                        || {
                            for (yv, &xv) in y[lo..hi].iter_mut().zip(src) {
                                *yv += w * xv;
                            }
                        },
                    )
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, t_out))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::activation::Activation;
    use super::super::test_util::max_abs_diff;
    use super::*;
    use candle_core::{Device, Tensor};

    /// A signal packed straight into bf16 pair panels gives the words of its f32 panels converted: over zero padding
    /// on both sides, a stream's carried prefix, dilation, reversed taps (transposed convs), reflection, depth blocks
    /// starting on an odd row or ending on half a pair, and a ragged last panel.
    #[test]
    fn pair_packing_matches_f32_packing_converted() {
        let (c, t, nr) = (3, 130, MAX_PANEL);
        let signal: Vec<f32> = (0..c * t).map(|i| ((i * 37) % 101) as f32 / 7.0 - 6.5).collect();
        let prefix: Vec<f32> = (0..c * 5).map(|i| i as f32 * 0.3 - 2.0).collect();
        // (taps, offset, tap_step, reflect, carried samples)
        for &(taps, offset, tap_step, reflect, p) in &[
            (3, -2, 1, false, 0),
            (7, -9, 3, false, 0),
            (3, 0, -1, false, 0),
            (4, -3, 2, true, 0),
            (3, -1, 1, false, 5),
        ] {
            let x = if p > 0 { &signal[..c * (t - p)] } else { &signal[..] };
            let cols = Im2col { x, prefix: &prefix[..c * p], p, t, taps, stride: 1, offset, tap_step, reflect };
            for (ks, range) in [(0..c * taps, 0..t), (1..c * taps, 5..t - 3), (2..c * taps - 1, 40..41)] {
                let (kc, pairs, panels) = (ks.len(), ks.len().div_ceil(2), range.len().div_ceil(nr));
                let mut f = vec![0f32; panels * kc * nr];
                cols.pack_b(ks.clone(), range.clone(), nr, &mut f);
                let mut words = vec![0u32; panels * pairs * nr];
                assert!(cols.pack_b_pairs(ks.clone(), range.clone(), nr, &mut words));
                for panel in 0..panels {
                    for q in 0..pairs {
                        for lane in 0..nr {
                            let at = |row: usize| f[(panel * kc + row) * nr + lane];
                            let hi = if 2 * q + 1 < kc { gemm::bf16_bits(at(2 * q + 1)) << 16 } else { 0 };
                            let want = gemm::bf16_bits(at(2 * q)) | hi;
                            let got = words[(panel * pairs + q) * nr + lane];
                            assert_eq!(got, want, "taps {taps} offset {offset} ks {ks:?} panel {panel} pair {q}");
                        }
                    }
                }
            }
        }
    }

    /// Against candle's own conv1d on an explicitly zero-padded input, over strides, dilations and paddings.
    #[test]
    fn conv1d_matches_candle() {
        let dev = Device::Cpu;
        for &(c_in, c_out, k, s, d, l, r) in &[
            (1, 4, 7, 1, 1, 6, 0),
            (3, 5, 3, 1, 3, 3, 3),
            (16, 8, 4, 2, 1, 2, 1),
            (12, 6, 8, 4, 1, 4, 3),
            (10, 4, 7, 3, 1, 4, 2),
            (9, 3, 5, 2, 1, 0, 0),
            (9, 2, 1, 1, 1, 0, 0),
            (40, 70, 3, 1, 1, 2, 0),
            (5, 3, 6, 3, 2, 5, 2),
            (6, 1, 7, 1, 1, 3, 3),
        ] {
            // Long enough for several column blocks (interior blocks pack from whole rows or a strided conv's
            // phases, edge blocks sample by sample).
            for t in [137, 1500] {
                let x = Tensor::randn(0f32, 1., (2, c_in, t), &dev).unwrap();
                let w = Tensor::randn(0f32, 1., (c_out, c_in, k), &dev).unwrap();
                let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
                let packed = PackedConv::conv1d(&w.clone().into(), w.dims3().unwrap(), Some(&bias)).unwrap().unwrap();
                let op = Conv1dOp::new(&packed, (s, d), (l, r), false);
                let got = x.apply_op1_no_bwd(&op).unwrap();
                let want = x.pad_with_zeros(2, l, r).unwrap().conv1d(&w, 0, s, d, 1).unwrap();
                let want = want.broadcast_add(&bias.reshape((1, c_out, 1)).unwrap()).unwrap();
                assert_eq!(got.dims(), want.dims());
                assert!(max_abs_diff(&got, &want) < 1e-4, "case {:?}", (c_in, c_out, k, s, d, l, r));
                // The fused residual add is the conv plus the residual, exactly.
                let residual = Tensor::randn(0f32, 1., got.dims(), &dev).unwrap();
                let fused = x.apply_op2_no_bwd(&residual, &op).unwrap();
                assert_eq!(max_abs_diff(&fused, &(&got + &residual).unwrap()), 0.0);
                // So is the activation applied by the products (a one-output conv's by its own loop).
                let activated = Conv1dOp { activation: Some(&Activation::Elu), ..op };
                let activated = x.apply_op1_no_bwd(&activated).unwrap();
                assert_eq!(max_abs_diff(&activated, &Activation::Elu.apply(&got).unwrap()), 0.0);
            }
        }
    }

    /// A per-channel activation (Snake, one α per output channel) applied by the products is the op on the
    /// conv's output, bit for bit: wide outputs (channels are the product's rows), narrow ones (its columns), and
    /// a one-channel conv.
    #[test]
    fn channel_activation_is_the_op_on_the_output() {
        let dev = Device::Cpu;
        for &(c_out, t) in &[(12, 300), (12, 9), (1, 300), (70, 2)] {
            let alpha = Tensor::rand(0.2f32, 3.0, c_out, &dev).unwrap();
            let tensors = [("alpha".to_string(), alpha)].into();
            let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &dev);
            let snake = super::super::snake::Snake::new(c_out, vb.into()).unwrap();
            let x = Tensor::randn(0f32, 1., (2, 5, t), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (c_out, 5, 3), &dev).unwrap();
            let packed = PackedConv::conv1d(&w.clone().into(), w.dims3().unwrap(), None).unwrap().unwrap();
            let op = Conv1dOp::new(&packed, (1, 1), (2, 0), false);
            let plain = x.apply_op1_no_bwd(&op).unwrap();
            let activated = x.apply_op1_no_bwd(&Conv1dOp { activation: Some(&snake), ..op }).unwrap();
            assert_eq!(max_abs_diff(&activated, &snake.forward(&plain).unwrap()), 0.0, "{c_out} channels, {t} steps");
            assert!(max_abs_diff(&activated, &plain) > 0.0);
        }
    }

    /// Short outputs run transposed ([`runs_transposed`]: up to `NARROW_COLUMNS` time steps, and some more where
    /// the tiles pad less); they must be the same bits as the same time steps of a wide output (streams and whole
    /// clips give identical codes); with bias and residual; convs and transposed convs. (Weights read in place
    /// from a file: `weight::tests::in_place_weights_match_packed_tensors`.)
    #[test]
    fn narrow_outputs_match_wide_ones_bit_for_bit() {
        let dev = Device::Cpu;
        let cut = |t: &Tensor, len: usize| t.narrow(2, 0, len).unwrap().contiguous().unwrap();
        for &(c_in, c_out, k, s, d) in &[(24, 40, 3, 1, 1), (16, 100, 4, 2, 1), (9, 60, 7, 1, 3), (64, 17, 16, 8, 1)] {
            let x = Tensor::randn(0f32, 1., (2, c_in, 200), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (c_out, c_in, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let packed = PackedConv::conv1d(&w.clone().into(), w.dims3().unwrap(), Some(&bias)).unwrap().unwrap();
            let op = Conv1dOp::new(&packed, (s, d), (5, 0), false);
            let wide = x.apply_op1_no_bwd(&op).unwrap();
            assert!(wide.dim(2).unwrap() > NARROW_COLUMNS);
            for t in [1, 2, 7, 16, 30] {
                let Ok(narrow) = cut(&x, t).apply_op1_no_bwd(&op) else { continue };
                let n = narrow.dim(2).unwrap();
                assert_eq!(
                    max_abs_diff(&narrow, &cut(&wide, n)),
                    0.0,
                    "conv {:?}, {t} samples",
                    (c_in, c_out, k, s, d)
                );
                let residual = Tensor::randn(0f32, 1., narrow.dims(), &dev).unwrap();
                let fused = cut(&x, t).apply_op2_no_bwd(&residual, &op).unwrap();
                assert_eq!(max_abs_diff(&fused, &(&narrow + &residual).unwrap()), 0.0);
                // The activation on a transposed output (strided rows, staged).
                let activated = Conv1dOp { activation: Some(&Activation::Elu), ..op };
                let activated = cut(&x, t).apply_op1_no_bwd(&activated).unwrap();
                assert_eq!(max_abs_diff(&activated, &Activation::Elu.apply(&narrow).unwrap()), 0.0);
            }
            // Transposed: the first t·s samples of t inputs' output see every input they will ever see.
            let wt = Tensor::randn(0f32, 1., (c_in, c_out, k), &dev).unwrap();
            let packed =
                PackedConv::conv_transpose1d(&wt.clone().into(), wt.dims3().unwrap(), Some(&bias), s).unwrap().unwrap();
            let op = ConvTranspose1dOp { weights: &packed, stride: s, trim_left: 0, trim_right: 0, biased: usize::MAX };
            let wide = x.apply_op1_no_bwd(&op).unwrap();
            for t in [1, 2, 5, 16, 30] {
                let narrow = cut(&x, t).apply_op1_no_bwd(&op).unwrap();
                let same = cut(&narrow, t * s);
                assert_eq!(
                    max_abs_diff(&same, &cut(&wide, t * s)),
                    0.0,
                    "transposed {:?}, {t} frames",
                    (c_in, c_out, k, s)
                );
            }
        }
    }

    /// Implicit reflect padding equals reflect-padding the input first.
    #[test]
    fn conv1d_reflect_matches_padded_input() {
        let dev = Device::Cpu;
        for &(c_in, c_out, k, s, d, l, r, t) in
            &[(3, 4, 7, 1, 1, 3, 3, 40), (5, 2, 4, 2, 1, 2, 1, 9), (2, 3, 3, 1, 3, 3, 3, 7), (4, 2, 8, 4, 1, 2, 2, 60)]
        {
            let x = Tensor::randn(0f32, 1., (2, c_in, t), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (c_out, c_in, k), &dev).unwrap();
            let packed = PackedConv::conv1d(&w.clone().into(), w.dims3().unwrap(), None).unwrap().unwrap();
            let op = Conv1dOp::new(&packed, (s, d), (l, r), true);
            let got = x.apply_op1_no_bwd(&op).unwrap();
            let padded = crate::nn::conv::pad1d(&x, l, r, crate::nn::conv::PadMode::Reflect).unwrap();
            let want = padded.conv1d(&w, 0, s, d, 1).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_abs_diff(&got, &want) < 1e-4, "case {:?}", (c_in, c_out, k, s, d, l, r, t));
        }
    }

    #[test]
    fn depthwise_conv1d_matches_candle() {
        let dev = Device::Cpu;
        for &(c, k, d, l, r, t) in &[(6, 7, 1, 3, 3, 40), (4, 3, 2, 4, 0, 9), (3, 5, 1, 0, 0, 5), (2, 7, 1, 3, 3, 2)] {
            let x = Tensor::randn(0f32, 1., (2, c, t), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (c, 1, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c, &dev).unwrap();
            let (wv, bv) = (w.flatten_all().unwrap().to_vec1().unwrap(), bias.to_vec1().unwrap());
            let op = DepthwiseConv1dOp {
                weight: &wv,
                bias: Some(&bv),
                kernel: k,
                dilation: d,
                pad_left: l,
                pad_right: r,
                channels_last: false,
            };
            let got = x.apply_op1_no_bwd(&op).unwrap();
            let want = x.pad_with_zeros(2, l, r).unwrap().conv1d(&w, 0, 1, d, c).unwrap();
            let want = want.broadcast_add(&bias.reshape((1, c, 1)).unwrap()).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_abs_diff(&got, &want) < 1e-5, "case {:?}", (c, k, d, l, r, t));
            // Channels last: the same bits, transposed.
            let xt = x.transpose(1, 2).unwrap().contiguous().unwrap();
            let tc = xt.apply_op1_no_bwd(&DepthwiseConv1dOp { channels_last: true, ..op }).unwrap();
            assert_eq!(max_abs_diff(&tc.transpose(1, 2).unwrap(), &got), 0.0, "case {:?}", (c, k, d, l, r, t));
        }
    }

    /// Phase rows interleaved block by block equal the sample-by-sample walk, for strides 1–8, every phase offset,
    /// rows over several blocks, and the bias stopping before, inside and across blocks.
    #[test]
    fn interleaved_phases_match_a_walk_over_the_row() {
        for s in [1usize, 2, 3, 4, 5, 6, 8] {
            for offset in 0..s {
                for len in [1, 7, 4096, 4097, 9000] {
                    let n = (len + offset).div_ceil(s);
                    let phases: Vec<Vec<f32>> =
                        (0..s).map(|r| (0..n).map(|q| (r * 100_000 + q) as f32 * 0.25).collect()).collect();
                    for biased in [0, 3, 4095, 4100, usize::MAX] {
                        let mut want = vec![0f32; len];
                        for (i, v) in want.iter_mut().enumerate() {
                            let (q, r) = ((i + offset) / s, (i + offset) % s);
                            *v = if i < biased { phases[r][q] + 1.5 } else { phases[r][q] };
                        }
                        let mut got = vec![MaybeUninit::new(f32::NAN); len];
                        interleave_phases(&mut got, |r| &phases[r][..], s, offset, Some((1.5, biased)));
                        // SAFETY: initialised above (and overwritten by the call).
                        let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
                        assert_eq!(got, want, "stride {s}, offset {offset}, {len} values, biased {biased}");
                    }
                }
            }
        }
    }

    /// Against candle per batch item: candle 0.11's CPU conv_transpose1d mixes up batch items when B > 1.
    #[test]
    fn conv_transpose1d_matches_candle() {
        let dev = Device::Cpu;
        for &(c_in, c_out, k, s, tl, tr) in &[
            (8, 4, 8, 4, 0, 4),
            (5, 3, 4, 2, 1, 1),
            (6, 6, 3, 1, 0, 0),
            (4, 2, 10, 5, 3, 2),
            (3, 2, 2, 3, 0, 0),
            (16, 9, 16, 8, 4, 4),
        ] {
            let x = Tensor::randn(0f32, 1., (2, c_in, 11), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (c_in, c_out, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let dims = w.dims3().unwrap();
            let packed = PackedConv::conv_transpose1d(&w.clone().into(), dims, Some(&bias), s).unwrap().unwrap();
            let op =
                ConvTranspose1dOp { weights: &packed, stride: s, trim_left: tl, trim_right: tr, biased: usize::MAX };
            let got = x.apply_op1_no_bwd(&op).unwrap();
            let items: Vec<Tensor> =
                (0..2).map(|i| x.narrow(0, i, 1).unwrap().conv_transpose1d(&w, 0, 0, s, 1, 1).unwrap()).collect();
            let full = Tensor::cat(&items, 0).unwrap();
            let len = full.dim(2).unwrap();
            let want = full.narrow(2, tl, len - tl - tr).unwrap();
            let want = want.broadcast_add(&bias.reshape((1, c_out, 1)).unwrap()).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_abs_diff(&got, &want) < 1e-4, "case {:?}", (c_in, c_out, k, s, tl, tr));
        }
    }
}
