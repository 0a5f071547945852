//! Residual vector quantisation: Euclidean codebooks (Mimi, EnCodec, WavTokenizer) and DAC's factorised
//! cosine-similarity codebooks.
//!
//! Euclidean tensor names: `input_proj.weight` / `output_proj.weight` as `[out, in]` matrices (1x1 convs squeezed by the
//! converter), `layers.{i}.codebook.embed` `[bins, dim]` (already `embed_sum / cluster_usage` where the source kept
//! running sums).

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::linear::Linear;
use super::weight::Matrix;
use super::{cpu_f32, dot, f32_slice, get_or_try_init, sum_all, wide_simd, Weights};
use crate::gguf::MappedF32;

/// One codebook: nearest entry by Euclidean distance.
#[derive(Debug, Clone)]
pub struct EuclideanCodebook {
    /// The entries (bins, dim): in place in a mapped model file, or a tensor.
    embed: Matrix,
    /// The entries as a linear layer: `x · embedᵀ` gives every dot product at once.
    dots: Linear,
    /// ‖e‖² per entry, (1, bins): a cache of `embed`, not a weight transform.
    embed_sq: OnceLock<Tensor>,
    /// The entries in int8 for [`Screen`], made on the [`Screen::AFTER`]-th stream-sized search (`None`: this CPU or
    /// codebook cannot use it).
    screen: OnceLock<Option<std::sync::Arc<Screen>>>,
    /// Stream-sized searches so far, up to [`Screen::AFTER`].
    small_searches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl EuclideanCodebook {
    /// A codebook of `bins` entries of width `dim`, read from `embed`.
    pub fn new(bins: usize, dim: usize, vb: Weights) -> Result<Self> {
        let embed = vb.matrix((bins, dim), "embed")?;
        Ok(Self {
            dots: Linear::exact(embed.clone(), None)?,
            embed,
            embed_sq: OnceLock::new(),
            screen: OnceLock::new(),
            small_searches: Default::default(),
        })
    }

    /// ‖e‖² per entry, computed on first use: codebooks beyond the `n_q` a run asks for are never read.
    fn embed_sq(&self) -> Result<&Tensor> {
        get_or_try_init(&self.embed_sq, || match &self.embed {
            Matrix::Tensor(t) => t.sqr()?.sum_keepdim(1)?.t()?.contiguous(),
            Matrix::Q8_0(..) => self.embed.clone().into_tensor()?.sqr()?.sum_keepdim(1)?.t()?.contiguous(),
            Matrix::Mapped(data, shape) => {
                let (bins, dim) = shape.dims2()?;
                let sq = wide_simd(|| data.as_slice().chunks_exact(dim.max(1)).map(|e| dot(e, e)).collect());
                Tensor::from_vec(sq, (1, bins), &candle_core::Device::Cpu)
            }
        })
    }

    /// Whether this stream-sized search goes through the screen: from the [`Screen::AFTER`]-th on, so a one-shot
    /// short clip (or the short last piece of a long input) never pays for making it.
    fn screened_now(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.screen.get().is_some() || self.small_searches.fetch_add(1, Ordering::Relaxed) + 1 >= Screen::AFTER
    }

    /// (N, dim) → (N,) u32 indices of the nearest entries.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 && x.dim(0)? <= Screen::MAX_ROWS && self.screened_now() {
            let screen = get_or_try_init(&self.screen, || {
                let sq = || self.embed_sq()?.flatten_all()?.to_vec1::<f32>();
                Ok(Screen::new(&self.embed, sq)?.map(std::sync::Arc::new))
            })?;
            if let Some(screen) = screen {
                if x.dim(1)? != screen.dim {
                    candle_core::bail!("codebook input of width {}, entries of {}", x.dim(1)?, screen.dim);
                }
                let x = x.contiguous()?;
                let (storage, layout) = x.storage_and_layout();
                let codes = screen.nearest(cpu_f32(&storage, layout, "codebook input")?);
                let n = codes.len();
                return Tensor::from_vec(codes, n, &candle_core::Device::Cpu);
            }
        }
        // argmin ‖x − e‖² = argmin (‖e‖² − 2 x·e): ‖x‖² is the same for every entry.
        let dots = self.dots.forward(x)?;
        if dots.device().is_cpu() && dots.dtype() == DType::F32 {
            return dots.contiguous()?.apply_op2_no_bwd(self.embed_sq()?, &NearestEntry);
        }
        let dist = self.embed_sq()?.broadcast_sub(&(dots * 2.0)?)?;
        dist.argmin(D::Minus1)
    }

    /// (N,) indices → (N, dim) vectors.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        self.embed.rows(codes)
    }
}

/// Per row of dot products (N, bins) and the entries' ‖e‖² (1, bins): the index of the least `‖e‖² − 2·dot`, the
/// first of equal ones — what candle's `broadcast_sub` then `argmin` give, bit for bit, in one pass with rows across
/// threads. Those were three single-threaded passes per codebook, and in a stream (one row per push) three ops'
/// overhead for each of 32 codebooks.
struct NearestEntry;

impl CustomOp2 for NearestEntry {
    fn name(&self) -> &'static str {
        "codec-nearest-entry"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dots, sq) = (f32_slice(s1, l1, "codebook dot products")?, f32_slice(s2, l2, "codebook norms")?);
        let (n, bins) = l1.shape().dims2()?;
        if bins == 0 || sq.len() != bins {
            candle_core::bail!("nearest entry: {bins} dot products per row for {} entries", sq.len());
        }
        let mut out = vec![0u32; n];
        out.par_iter_mut().zip(dots.par_chunks(bins)).for_each(|(index, row)| {
            let (mut best, mut least) = (0, sq[0] - row[0] * 2.0);
            for (j, (&e, &d)) in sq.iter().zip(row).enumerate() {
                let dist = e - d * 2.0;
                // As candle's argmin: replaced only by a strictly smaller value.
                if least > dist {
                    (best, least) = (j, dist);
                }
            }
            *index = best as u32;
        });
        Ok((CpuStorage::U32(out), Shape::from(n)))
    }
}

/// A stream's codebook search at a quarter of the memory traffic, with the same result bit for bit. A stream step
/// quantises one or two frames: reading each f32 codebook (2 MB for Mimi's, 67 MB for its 32) is all its cost, a
/// fifth of a Mimi encode push. The screen reads the entries quantised to int8 instead (a scale per entry, the
/// nearest multiple of it per element), dots them with the f32 input (each byte widened to f32, one fused
/// multiply-add per element), bounds how far each approximate distance can be from the one the exact search
/// computes, and keeps the entries whose bound reaches below the least upper bound — the exact winner is always among
/// them, usually alone. Those few get their exact f32 dot products, summed in the order the GEMM's kernel sums them
/// (one fused multiply-add per depth, from zero, within one depth block), so the distances, and the first-of-equals
/// choice among them, are those of [`NearestEntry`]. (A bf16 screen, half the bytes, took 43 µs per Mimi codebook on
/// Zen 3 at the memory's speed; this reads half that.)
///
/// The bound on |exact dot − screened dot| for input x and entry c = s·q + e (q the int8 values, e the quantisation
/// error; u = 2⁻²⁴, γ = D·u/(1 − D·u)): ‖x‖·‖e‖ (the quantisation) + γ·‖x‖·s‖q‖ (the f32 sum of the D products, each
/// exact in the FMA) + u·|screened dot| (the product by s), and the distance `‖c‖² − 2·dot` adds its own rounding,
/// u·(‖c‖² + 2|dot|).
#[derive(Debug)]
struct Screen {
    /// Entries in groups of 16: byte `(g·dim + i)·16 + l` holds element i of entry 16g + l, quantised (zero past the
    /// last entry).
    quants: Vec<i8>,
    /// Per entry: its scale s, and its dot product's bound factor (rounded up), ‖e‖ + γ·s‖q‖ (times ‖x‖).
    scale: Vec<f32>,
    input_factor: Vec<f32>,
    /// The f32 entries (the exact sums read them) and their ‖c‖² as the exact search has them.
    entries: MappedF32,
    sq: Vec<f32>,
    bins: usize,
    dim: usize,
}

impl Screen {
    /// Rows up to which a search is screened: a stream's step; wider inputs run the exact GEMM, which is then
    /// compute-bound and efficient.
    const MAX_ROWS: usize = 4;
    /// Entries per group: two AVX2 vectors.
    const LANES: usize = 16;
    /// The stream-sized search from which a codebook is screened: making the screen costs about what two exact
    /// searches do (a 0.1 s Mimi encode, whole process, took 48 → 91 ms when it made the screens at once), and a live
    /// stream's warm-up (`Codec::stream_encoder`: three pushes) makes them before the caller's first push.
    const AFTER: usize = 3;

    /// The screen of a mapped f32 codebook whose ‖c‖² `sq` gives, where this CPU runs the AVX-512 or AVX2 f32 kernel
    /// (whose sums it repeats: one fused multiply-add per depth, from zero), and the entries fit one depth block (so
    /// the kernel sums each dot product in one run); `None` elsewhere.
    fn new(embed: &Matrix, sq: impl FnOnce() -> Result<Vec<f32>>) -> Result<Option<Self>> {
        use super::gemm::{isa, Isa, KC};
        let Matrix::Mapped(data, shape) = embed else { return Ok(None) };
        let (bins, dim) = shape.dims2()?;
        if !(matches!(isa(), Isa::Avx512 | Isa::Avx2) && (1..=KC).contains(&dim) && bins > 0) {
            return Ok(None);
        }
        let sq = sq()?;
        if sq.len() != bins {
            candle_core::bail!("codebook screen: {} norms for {bins} entries", sq.len());
        }
        let entries = data.as_slice();
        let groups = bins.div_ceil(Self::LANES);
        let mut quants = vec![0i8; groups * dim * Self::LANES];
        let (mut scale, mut input_factor) = (vec![0.0; bins], vec![0.0; bins]);
        // A group of 16 entries per task: its bytes, and its entries' scales and bound factors.
        (quants.par_chunks_mut(dim * Self::LANES), scale.par_chunks_mut(Self::LANES))
            .into_par_iter()
            .zip(input_factor.par_chunks_mut(Self::LANES))
            .zip(entries.par_chunks(Self::LANES * dim))
            .for_each(|(((quants, scale), input_factor), group)| {
                for (l, c) in group.chunks_exact(dim).enumerate() {
                    let largest = c.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let s = if largest > 0.0 && largest.is_finite() { largest / 127.0 } else { 0.0 };
                    let (mut error, mut q_norm) = (0f64, 0f64);
                    for (i, &v) in c.iter().enumerate() {
                        let q = if s > 0.0 { (v / s).round().clamp(-127.0, 127.0) } else { 0.0 };
                        quants[i * Self::LANES + l] = q as i8;
                        // q·s exact in f64 (a 24-bit by 8-bit product), so e is.
                        error += (v as f64 - q as f64 * s as f64).powi(2);
                        q_norm += (q as f64).powi(2);
                    }
                    scale[l] = s;
                    // Non-finite entries: an infinite factor makes every entry a candidate.
                    let factor = error.sqrt() + gamma(dim) * s as f64 * q_norm.sqrt();
                    input_factor[l] = if largest.is_finite() { round_up(factor) } else { f32::INFINITY };
                }
            });
        Ok(Some(Self { quants, scale, input_factor, entries: data.clone(), sq, bins, dim }))
    }

    /// The nearest entry of every row of `rows` (N × dim).
    fn nearest(&self, rows: &[f32]) -> Vec<u32> {
        SEARCH_SCRATCH.with(|cell| {
            // Another search on this thread (a pool thread waiting inside one can run another stream's) gets its own.
            let mut fresh = SearchScratch::default();
            let mut borrowed = cell.try_borrow_mut();
            self.nearest_with(rows, borrowed.as_deref_mut().unwrap_or(&mut fresh))
        })
    }

    fn nearest_with(&self, rows: &[f32], scratch: &mut SearchScratch) -> Vec<u32> {
        let dim = self.dim;
        let (entries, sq) = (self.entries.as_slice(), &self.sq[..]);
        let mut codes = Vec::with_capacity(rows.len() / dim);
        let SearchScratch { approx, centre, radius, candidates, dots } = scratch;
        // Every value is written before it is read (a lane past a group's candidates is read and ignored).
        approx.resize(self.quants.len() / dim, 0.0);
        centre.resize(self.bins, 0.0);
        radius.resize(self.bins, 0.0);
        let row = |j: usize| &entries[j * dim..(j + 1) * dim];
        for x in rows.chunks_exact(dim) {
            let nx = round_up(x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt());
            let (least_upper, nan) = self.screened_distances(x, nx, approx, (centre, radius));
            // Non-finite distances (an overflowing input or entry): every entry is a candidate, so the exact rule,
            // NaN included, decides.
            let every = !least_upper.is_finite() || nan;
            candidates.clear();
            candidates.extend((0..self.bins).filter(|&j| every || centre[j] - radius[j] <= least_upper));
            // The candidates' exact dot products, in groups across the threads where there are several (a stream's
            // first codebooks keep hundreds: one thread reranked them while the others waited)…
            dots.resize(candidates.len(), 0.0);
            // One group's dot products into `out`, its entries transposed in the running thread's lanes.
            let group_dots = |(group, out): (&[usize], &mut [f32])| {
                RERANK_LANES_BUFFER.with(|cell| {
                    let mut fresh = Vec::new();
                    let mut borrowed = cell.try_borrow_mut();
                    let lanes = borrowed.as_deref_mut().unwrap_or(&mut fresh);
                    lanes.resize(RERANK_LANES * dim, 0.0);
                    out.copy_from_slice(&exact_dots(x, |l| row(group[l]), group.len(), lanes)[..group.len()]);
                })
            };
            if candidates.len() > PARALLEL_RERANK {
                candidates.par_chunks(RERANK_LANES).zip(dots.par_chunks_mut(RERANK_LANES)).for_each(group_dots);
            } else {
                candidates.chunks(RERANK_LANES).zip(dots.chunks_mut(RERANK_LANES)).for_each(group_dots);
            }
            // …then their distances in index order on this thread: the first of equal ones wins, as in
            // `NearestEntry`.
            let (mut best, mut least) = (u32::MAX, f32::INFINITY);
            for (&j, &dot) in candidates.iter().zip(dots.iter()) {
                let dist = sq[j] - dot * 2.0;
                if best == u32::MAX || least > dist {
                    (best, least) = (j as u32, dist);
                }
            }
            codes.push(best);
        }
        codes
    }

    /// Every entry's screened distance `centre[j]` and how far the exact distance may lie from it, `radius[j]`;
    /// returns the least `centre + radius` (an upper bound of the nearest distance) and whether a centre is NaN.
    /// Groups of entries across threads, each task computing its entries' dot products with the int8 bytes
    /// (`approx[j]` = x · q_j, unscaled) and then, while they are in cache, their distances and bounds: twice the
    /// dot product's bound, plus the rounding of the distance's two f32 operations (in the exact search and here)
    /// and of these f32 bounds themselves, all within 4u of the operands and the 1 % margin. (One thread made the
    /// distances after the dot products: 3 µs a codebook, a tenth of a Mimi stream's search.)
    fn screened_distances(
        &self,
        x: &[f32],
        nx: f32,
        approx: &mut [f32],
        (centre, radius): (&mut [f32], &mut [f32]),
    ) -> (f32, bool) {
        let group_bytes = self.dim * Self::LANES;
        // Two tasks per thread: each reads a contiguous run of the entries. `per` is a whole number of groups, so
        // the entries (`bins`) and their groups (`approx`, padded to a group) split into as many tasks.
        let tasks = (2 * rayon::current_num_threads()).max(1);
        let per = (approx.len() / Self::LANES).div_ceil(tasks).max(1) * Self::LANES;
        let (scale, input_factor, sq) = (&self.scale[..], &self.input_factor[..], &self.sq[..]);
        (approx.par_chunks_mut(per), self.quants.par_chunks(per / Self::LANES * group_bytes))
            .into_par_iter()
            .zip(centre.par_chunks_mut(per).zip(radius.par_chunks_mut(per)))
            .enumerate()
            .map(|(task, ((out, quants), (centre, radius)))| {
                // SAFETY: `new` checked AVX-512 F or AVX2 (either runs the AVX2 + FMA kernel); `quants` holds
                // `out.len() / 16` groups of `dim` rows of 16 bytes.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    screen_dots_avx2(quants, x, out)
                };
                let first = task * per;
                let (scale, input_factor, sq) = (&scale[first..], &input_factor[first..], &sq[first..]);
                wide_simd(
                    #[inline(always)]
                    || {
                        for j in 0..centre.len() {
                            let (a, e) = (out[j] * scale[j], sq[j]);
                            let dot = nx * input_factor[j] + U * a.abs() + TINY;
                            centre[j] = e - 2.0 * a;
                            radius[j] = MARGIN * (2.0 * dot + 4.0 * U * (e.abs() + 2.0 * (a.abs() + dot)));
                        }
                        let upper = centre.iter().zip(&*radius).map(|(&d, &r)| d + r).fold(f32::INFINITY, f32::min);
                        (upper, centre.iter().any(|c| c.is_nan()))
                    },
                )
            })
            .reduce(|| (f32::INFINITY, false), |a, b| (a.0.min(b.0), a.1 || b.1))
    }
}

/// A search's working memory, kept per thread: a stream searches 32 codebooks a frame, and each search had
/// allocated (and cleared) ~50 KB of it.
#[derive(Default)]
struct SearchScratch {
    approx: Vec<f32>,
    centre: Vec<f32>,
    radius: Vec<f32>,
    candidates: Vec<usize>,
    dots: Vec<f32>,
}

thread_local! {
    static SEARCH_SCRATCH: std::cell::RefCell<SearchScratch> = std::cell::RefCell::new(SearchScratch::default());
    /// [`exact_dots`]' transposed entries, per thread: the calling thread's and the workers' reranking groups
    /// (allocated once, not per group or per push).
    static RERANK_LANES_BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Candidates whose exact dot products run side by side, one per SIMD lane (four AVX2 or two AVX-512 vectors).
const RERANK_LANES: usize = 32;

/// Candidates above which their groups spread over the threads.
const PARALLEL_RERANK: usize = 2 * RERANK_LANES;

/// The exact dot products `x · entry(l)` for the `count ≤ RERANK_LANES` entries, each the kernel's sum — one fused
/// multiply-add per depth, in order, from zero — in its own lane: the entries transposed into `lanes` (depth-major,
/// [`RERANK_LANES`] wide), so the dependent chains of many candidates advance together. One candidate at a time,
/// each chain ran at the multiply-add's latency: a Mimi stream's first two codebooks rerank ~400 candidates each a
/// push (their inputs are the largest, so the screen's bound is widest), 0.3 ms of the search's 1.6.
fn exact_dots<'e>(
    x: &[f32],
    entry: impl Fn(usize) -> &'e [f32],
    count: usize,
    lanes: &mut [f32],
) -> [f32; RERANK_LANES] {
    super::gemm::pack_lines(entry, count, RERANK_LANES, lanes);
    // Inside `wide_simd` each `mul_add` is one instruction (outside, a libm call) and the lanes are vectors; the
    // sums in a local array of known size, which the compiler keeps in registers.
    wide_simd(
        #[inline(always)]
        || {
            let mut dots = [0f32; RERANK_LANES];
            for (&x, column) in x.iter().zip(lanes.chunks_exact(RERANK_LANES)) {
                let column: &[f32; RERANK_LANES] = column.try_into().expect("chunks of RERANK_LANES");
                for l in 0..RERANK_LANES {
                    dots[l] = x.mul_add(column[l], dots[l]);
                }
            }
            dots
        },
    )
}

/// f32's unit roundoff, 2⁻²⁴.
const U: f32 = 1.0 / (1u32 << 24) as f32;
/// Relative margin on every bound: covers the f32 arithmetic the bounds themselves are computed in (a few u).
const MARGIN: f32 = 1.01;
/// Absolute margin of a dot product's bound (products below f32's normal range).
const TINY: f32 = 1e-30;

/// γ = D·u / (1 − D·u): a D-term f32 sum's rounding, relative to the sum of the terms' magnitudes.
fn gamma(dim: usize) -> f64 {
    let du = dim as f64 / (1u64 << 24) as f64;
    du / (1.0 - du)
}

/// `v` as an f32 no smaller than it (and a hair more, for the f64 sums it comes from).
fn round_up(v: f64) -> f32 {
    let f = (v * (1.0 + 1e-9)) as f32;
    if (f as f64) < v {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f
    }
}

/// `out[16g + l]` = Σ_i x_i · q(entry 16g + l, element i) over the groups in `quants` (see [`Screen::quants`]): each
/// byte sign-extended and converted to f32 (exactly), one fused multiply-add per element; 16 entries in two vectors,
/// the elements in four interleaved sums (one chain of dependent FMAs ran at their latency, not the memory's speed),
/// added at the end — any order of the D − 1 additions keeps within the screen's γ bound. AVX2 + FMA, which AVX-512
/// CPUs run too: the search is bound by reading the bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn screen_dots_avx2(quants: &[i8], x: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    /// The 16 bytes of one element of a group's entries, as two vectors of f32.
    #[inline(always)]
    unsafe fn widened(row: *const i8) -> [__m256; 2] {
        [
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(row as *const __m128i))),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(row.add(8) as *const __m128i))),
        ]
    }
    let dim = x.len();
    let whole = dim / 4 * 4;
    for (g, out) in out.chunks_exact_mut(Screen::LANES).enumerate() {
        let group = quants[g * dim * Screen::LANES..(g + 1) * dim * Screen::LANES].as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for i in (0..whole).step_by(4) {
            for (k, acc) in acc.iter_mut().enumerate() {
                let xi = _mm256_set1_ps(x[i + k]);
                let q = widened(group.add((i + k) * Screen::LANES));
                acc[0] = _mm256_fmadd_ps(xi, q[0], acc[0]);
                acc[1] = _mm256_fmadd_ps(xi, q[1], acc[1]);
            }
        }
        for (i, &xi) in x.iter().enumerate().skip(whole) {
            let (xi, q) = (_mm256_set1_ps(xi), widened(group.add(i * Screen::LANES)));
            acc[0][0] = _mm256_fmadd_ps(xi, q[0], acc[0][0]);
            acc[0][1] = _mm256_fmadd_ps(xi, q[1], acc[0][1]);
        }
        let [a, b, c, d] = acc;
        for (v, half) in out.chunks_exact_mut(8).enumerate() {
            let sum = _mm256_add_ps(_mm256_add_ps(a[v], b[v]), _mm256_add_ps(c[v], d[v]));
            _mm256_storeu_ps(half.as_mut_ptr(), sum);
        }
    }
}

/// Σ over codebooks of their entries for codes (B, n, T): codebook `i` (the `i`-th of `decoders`, each mapping
/// (B·T,) indices to (B·T, dim) vectors) reads row `i` of the codes; → (B·T, dim).
fn sum_of_entries<F: Fn(&Tensor) -> Result<Tensor>>(
    codes: &Tensor,
    decoders: impl Iterator<Item = F>,
) -> Result<Tensor> {
    let n = codes.dim(1)?;
    sum_all(decoders.take(n).enumerate().map(|(i, decode)| decode(&codes.narrow(1, i, 1)?.flatten_all()?)))
}

/// Projections around a stack of codebooks, each quantising what the previous ones left.
#[derive(Debug, Clone)]
pub struct ResidualVq {
    input_proj: Option<Tensor>,
    output_proj: Option<Tensor>,
    layers: Vec<EuclideanCodebook>,
}

impl ResidualVq {
    /// `dim`: the outside (latent) dimension; `codebook_dim`: inside the codebooks; `projected`: whether 1x1
    /// projections map between them.
    pub fn new(n_q: usize, dim: usize, codebook_dim: usize, bins: usize, projected: bool, vb: Weights) -> Result<Self> {
        let (input_proj, output_proj) = if projected {
            (
                Some(vb.get((codebook_dim, dim), "input_proj.weight")?),
                Some(vb.get((dim, codebook_dim), "output_proj.weight")?),
            )
        } else {
            (None, None)
        };
        let layers = (0..n_q)
            .map(|i| EuclideanCodebook::new(bins, codebook_dim, vb.pp(format!("layers.{i}.codebook"))))
            .collect::<Result<_>>()?;
        Ok(Self { input_proj, output_proj, layers })
    }

    /// Number of codebooks.
    pub fn n_q(&self) -> usize {
        self.layers.len()
    }

    /// Latent (B, dim, T) → codes (B, n_q, T) u32, using the first `n_q` codebooks.
    pub fn encode(&self, x: &Tensor, n_q: usize) -> Result<Tensor> {
        let (b, _, t) = x.dims3()?;
        let x = x.transpose(1, 2)?.flatten(0, 1)?; // (B*T, dim)
        let mut residual = match &self.input_proj {
            Some(w) => x.matmul(&w.t()?)?,
            None => x.contiguous()?,
        };
        let mut codes = Vec::with_capacity(n_q);
        for (i, layer) in self.layers.iter().take(n_q).enumerate() {
            let idx = layer.encode(&residual)?;
            if i + 1 < n_q {
                residual = (residual - layer.decode(&idx)?)?;
            }
            codes.push(idx.reshape((b, 1, t))?);
        }
        Tensor::cat(&codes, 1)
    }

    /// Codes (B, n, T), n ≤ n_q → latent (B, dim, T).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, _, t) = codes.dims3()?;
        let sum = sum_of_entries(codes, self.layers.iter().map(|l| move |idx: &Tensor| l.decode(idx)))?;
        let y = match &self.output_proj {
            Some(w) => sum.matmul(&w.t()?)?,
            None => sum,
        };
        y.reshape((b, t, ()))?.transpose(1, 2)?.contiguous()
    }
}

/// One layer of DAC's factorised quantiser: project the latent to a few dims, pick the entry of highest cosine
/// similarity (both sides L2-normalised), project the raw entry back. Tensor names: `in_proj.{weight,bias}`
/// `[dim, latent]`, `out_proj.{weight,bias}` `[latent, dim]`, `codebook.weight` `[bins, dim]` and
/// `codebook.normalized` (its rows L2-normalised by the converter).
#[derive(Debug, Clone)]
struct FactorizedCodebook {
    in_w: Tensor,
    in_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    codebook: Tensor,
    normalized: Tensor,
    /// ‖normalized row‖², (1, bins): a cache, kept because the reference adds it (≈ 1, not exactly).
    normalized_sq: Tensor,
}

impl FactorizedCodebook {
    fn new(latent: usize, dim: usize, bins: usize, vb: Weights) -> Result<Self> {
        let normalized = vb.get((bins, dim), "codebook.normalized")?;
        let normalized_sq = normalized.sqr()?.sum_keepdim(1)?.t()?.contiguous()?;
        Ok(Self {
            in_w: vb.get((dim, latent), "in_proj.weight")?,
            in_b: vb.get(dim, "in_proj.bias")?,
            out_w: vb.get((latent, dim), "out_proj.weight")?,
            out_b: vb.get(latent, "out_proj.bias")?,
            codebook: vb.get((bins, dim), "codebook.weight")?,
            normalized,
            normalized_sq,
        })
    }

    fn project_out(&self, q: &Tensor) -> Result<Tensor> {
        q.matmul(&self.out_w.t()?)?.broadcast_add(&self.out_b)
    }

    /// Residual (N, latent) → (indices (N,), the quantised residual (N, latent)).
    fn encode(&self, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        let z_e = residual.matmul(&self.in_w.t()?)?.broadcast_add(&self.in_b)?;
        // F.normalize: x / max(‖x‖, 1e-12); then the reference's squared distance, in its order of operations.
        let enc = z_e.broadcast_div(&z_e.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?)?;
        let dots = enc.matmul(&self.normalized.t()?)?;
        let dist = enc.sqr()?.sum_keepdim(1)?.broadcast_sub(&(dots * 2.0)?)?.broadcast_add(&self.normalized_sq)?;
        let idx = dist.argmin(D::Minus1)?;
        // The reference's straight-through `z_e + (z_q − z_e)`: equal to z_q up to rounding, which feeds the residual.
        let z_q = (&z_e + (self.codebook.index_select(&idx, 0)? - &z_e)?)?;
        Ok((idx, self.project_out(&z_q)?))
    }

    fn decode(&self, idx: &Tensor) -> Result<Tensor> {
        self.project_out(&self.codebook.index_select(idx, 0)?)
    }
}

/// DAC's residual stack of factorised codebooks.
#[derive(Debug, Clone)]
pub struct FactorizedRvq {
    layers: Vec<FactorizedCodebook>,
}

impl FactorizedRvq {
    /// `n_q` layers (tensors under `quantizers.{i}`) of `bins` entries of width `dim`, quantising a latent of
    /// `latent` channels.
    pub fn new(n_q: usize, latent: usize, dim: usize, bins: usize, vb: Weights) -> Result<Self> {
        let layers = (0..n_q)
            .map(|i| FactorizedCodebook::new(latent, dim, bins, vb.pp(format!("quantizers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Latent (B, latent, T) → (codes (B, n_q, T), the sum of the quantised residuals (B, latent, T)).
    pub fn encode(&self, x: &Tensor, n_q: usize) -> Result<(Tensor, Tensor)> {
        let (b, _, t) = x.dims3()?;
        let mut residual = x.transpose(1, 2)?.flatten(0, 1)?.contiguous()?;
        let mut codes = Vec::with_capacity(n_q);
        let mut quantized = Vec::with_capacity(n_q);
        for layer in self.layers.iter().take(n_q) {
            let (idx, q) = layer.encode(&residual)?;
            residual = (residual - &q)?;
            quantized.push(Ok(q));
            codes.push(idx.reshape((b, 1, t))?);
        }
        let sum = sum_all(quantized)?;
        Ok((Tensor::cat(&codes, 1)?, sum.reshape((b, t, ()))?.transpose(1, 2)?.contiguous()?))
    }

    /// Codes (B, n, T) → latent (B, latent, T).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, _, t) = codes.dims3()?;
        let sum = sum_of_entries(codes, self.layers.iter().map(|l| move |idx: &Tensor| l.decode(idx)))?;
        sum.reshape((b, t, ()))?.transpose(1, 2)?.contiguous()
    }

    /// Number of codebooks.
    pub fn n_q(&self) -> usize {
        self.layers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The screened search (one row at a time, as a stream runs it) picks exactly what the exact GEMM search picks
    /// (many rows at once), on random rows at several scales, entries themselves, midpoints between two entries
    /// (ties broken by rounding), duplicated entries (exact ties: the first index wins) and a spiky entry, for an
    /// even and an odd entry width. Without AVX-512 or AVX2 both sides are the exact search.
    #[test]
    fn screened_search_matches_the_exact_search() {
        use crate::gguf::{ModelFile, StorageDtype, Writer};
        use candle_nn::VarBuilder;
        let dev = Device::Cpu;
        for (bins, dim) in [(512usize, 256usize), (64, 7)] {
            let mut entries = Tensor::randn(0f32, 1.0, (bins, dim), &dev).unwrap();
            // Entries 10 and 11 equal: their distances tie exactly.
            entries = entries.slice_assign(&[11..12, 0..dim], &entries.narrow(0, 10, 1).unwrap()).unwrap();
            // Entry 5 spiky (one element 1000× the rest): its int8 scale leaves the others few levels.
            let spike = (entries.narrow(0, 5, 1).unwrap().narrow(1, 0, 1).unwrap() * 1000.0).unwrap();
            entries = entries.slice_assign(&[5..6, 0..1], &spike).unwrap();
            let path = std::env::temp_dir().join(format!("codec-screen-test-{}-{dim}.gguf", std::process::id()));
            let mut w = Writer::new("test", "test");
            w.tensor("codebook.embed", &entries, StorageDtype::F32, true).unwrap();
            w.write(&path).unwrap();
            let file = ModelFile::open(&path).unwrap();
            let tensors = [("codebook.embed".to_string(), entries.clone())].into_iter().collect();
            let vb = Weights::from_file(VarBuilder::from_tensors(tensors, DType::F32, &dev), &file, &[]);
            let codebook = EuclideanCodebook::new(bins, dim, vb.pp("codebook")).unwrap();
            std::fs::remove_file(&path).ok();

            let e = entries.to_vec2::<f32>().unwrap();
            let mut rows: Vec<Vec<f32>> = Vec::new();
            for scale in [1e-3f32, 0.3, 1.0, 40.0] {
                let r = (Tensor::randn(0f32, 1.0, (60, dim), &dev).unwrap() * scale as f64).unwrap();
                rows.extend(r.to_vec2::<f32>().unwrap());
            }
            rows.extend(e.iter().take(30).cloned());
            for k in 0..60 {
                let (a, b) = (&e[k % bins], &e[(7 * k + 3) % bins]);
                rows.push(a.iter().zip(b).map(|(x, y)| 0.5 * (x + y)).collect());
            }
            rows.push(vec![0.0; dim]);
            rows.push(vec![f32::MAX; dim]);
            rows.push([f32::NAN].repeat(dim));
            let n = rows.len();
            let all = Tensor::from_vec(rows.concat(), (n, dim), &dev).unwrap();
            let exact = codebook.encode(&all).unwrap().to_vec1::<u32>().unwrap();
            let screened: Vec<u32> = (0..n)
                .map(|i| codebook.encode(&all.narrow(0, i, 1).unwrap()).unwrap().to_vec1::<u32>().unwrap()[0])
                .collect();
            assert_eq!(screened, exact, "{bins} × {dim}");
            assert!(exact.contains(&10) && !exact.contains(&11), "exact ties go to the first index");
            if matches!(crate::nn::gemm::isa(), crate::nn::gemm::Isa::Avx512 | crate::nn::gemm::Isa::Avx2) {
                assert!(matches!(codebook.screen.get(), Some(Some(_))), "the screen ran");
            }
        }
    }

    #[test]
    fn nearest_entry_is_candles_argmin() {
        let dev = Device::Cpu;
        // Rounded values, so many distances tie exactly: the first of equal minima must win, as in candle.
        let dots = (Tensor::randn(0f32, 4.0, (37, 300), &dev).unwrap().round().unwrap() * 0.5).unwrap();
        let sq = Tensor::randn(0f32, 4.0, (1, 300), &dev).unwrap().round().unwrap();
        let got = dots.apply_op2_no_bwd(&sq, &NearestEntry).unwrap().to_vec1::<u32>().unwrap();
        let want = sq.broadcast_sub(&(&dots * 2.0).unwrap()).unwrap().argmin(D::Minus1).unwrap();
        assert_eq!(got, want.to_vec1::<u32>().unwrap());
        assert!(got.iter().any(|&i| i > 0), "a degenerate draw");
    }
}
