//! Pre-norm transformer with rotate-half RoPE, optional LayerScale and a causal sliding-window mask (Mimi's encoder
//! and decoder transformers, Pocket TTS's). Works on the conv layout (B, C, T) at its boundary.
//!
//! Tensor names per layer `layers.{i}.`: `input_layernorm.{weight,bias}`, `self_attn.{q,k,v,o}_proj.weight`,
//! `self_attn_layer_scale.scale`, `post_attention_layernorm.*`, `mlp.fc1.weight`, `mlp.fc2.weight`,
//! `mlp_layer_scale.scale` (the two scales only with LayerScale). q/k rows are in rotate-half order (the converter
//! permutes interleaved checkpoints).

use super::Weights;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use rayon::prelude::*;

use super::activation::{exp_nonpositive, gelu_tanh, Activation};
use super::compact;
use super::gemm::{gemm, tile_shape, Epilogue, Output, PackB, Packed, Strided};
use super::linear::Linear;
use super::norm::LayerNorm;
use super::{cpu_f32, with_fma};

/// Hyper-parameters of a [`Transformer`].
#[derive(Debug, Clone)]
pub struct TransformerConfig {
    /// Width of the residual stream (the channels C of its (B, C, T) input).
    pub d_model: usize,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Number of layers.
    pub num_layers: usize,
    /// Hidden width of the MLP.
    pub ffn_dim: usize,
    /// A query sees itself and the `context - 1` steps before it.
    pub context: usize,
    /// RoPE base period.
    pub rope_theta: f64,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
    /// The MLP's activation.
    pub activation: MlpActivation,
    /// Whether each branch is scaled per channel before it joins the residual stream (LayerScale).
    pub layer_scale: bool,
}

/// The activation between a transformer MLP's two linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpActivation {
    /// Exact GELU, `x · Φ(x)` (moshi's and transformers' Mimi).
    GeluErf,
    /// GELU's tanh approximation (`F.gelu(x, approximate="tanh")`: Pocket TTS).
    GeluTanh,
}

/// Rotation tables for positions `start..start + len`: (len, head_dim / 2) each. A position's angles do not depend on
/// the other positions in the table, so a stream's tables equal the offline ones.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// On the CPU, the same values (T × head_dim/2 each) for [`split_heads`].
    cos_sin: Option<(Vec<f32>, Vec<f32>)>,
}

impl Rope {
    fn new(start: usize, len: usize, head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half).map(|i| (theta.powf(-2.0 * i as f64 / head_dim as f64)) as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let end = u32::try_from(start + len).map_err(|_| candle_core::Error::Msg("stream too long".into()))?;
        let pos = Tensor::arange(start as u32, end, device)?.to_dtype(DType::F32)?.reshape((len, 1))?;
        let angles = pos.broadcast_mul(&inv_freq)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let cos_sin = if device.is_cpu() { Some((values(&cos)?, values(&sin)?)) } else { None };
        Ok(Self { cos, sin, cos_sin })
    }
}

/// One layer's keys and values of the last `context − 1` steps (B, heads, ≤ context − 1, head_dim): all that the
/// next step's queries can see. Bounded, so a stream of any length holds the same memory.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// Other devices: the steps as tensors, joined with each step's new ones.
    kv: Option<(Tensor, Tensor)>,
    /// CPU: the steps in buffers appended to in place ([`KvRows`]).
    rows: Option<KvRows>,
}

/// Keys and values on the CPU: per (batch, head) row a region of `capacity` steps of `head_dim` floats, the steps
/// held at `start..start + len` of every region. A step appends its new keys after the held ones; steps no query can
/// see any more are dropped by moving `start`, and only when a region is full are the held steps moved back to its
/// front (or the regions grown, for an unbounded context). Joining the held and new keys into fresh tensors every
/// step copied the whole window each step: 5 % of a Mimi stream, and a Pocket TTS generation's cost grew with the
/// square of its length.
#[derive(Debug, Clone)]
struct KvRows {
    keys: Vec<f32>,
    values: Vec<f32>,
    rows: usize,
    head_dim: usize,
    capacity: usize,
    start: usize,
    len: usize,
}

/// Steps of room for two windows of `keep` held steps, or `None` for a window too long to hold twice (an unbounded
/// context, whose regions grow by doubling instead). Mimi's window: 249 held steps.
fn two_windows(keep: usize) -> Option<usize> {
    (keep <= 1 << 14).then_some(2 * keep)
}

impl KvRows {
    /// Empty rows with `capacity` steps of room.
    fn with_room(rows: usize, head_dim: usize, capacity: usize) -> Self {
        let zeros = || vec![0f32; rows * capacity * head_dim];
        Self { keys: zeros(), values: zeros(), rows, head_dim, capacity, start: 0, len: 0 }
    }

    /// Appends `t` steps of new keys and values (rows × t × head_dim each), first dropping held steps beyond the
    /// last `keep`.
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize, keep: usize) {
        let dropped = self.len.saturating_sub(keep);
        (self.start, self.len) = (self.start + dropped, self.len - dropped);
        let d = self.head_dim;
        if self.len + t > self.capacity {
            // Room for two windows where the window is bounded: the held steps then move back to the front once
            // per `keep` steps appended (every ~125 pushes of a Mimi stream, not every third), and a stream never
            // grows its regions (each doubling mid-stream, into fresh pages, made a 10–13 ms transformer step).
            let capacity = (2 * self.capacity).max(self.len + t).max(two_windows(keep).unwrap_or(0) + t);
            for buf in [&mut self.keys, &mut self.values] {
                let mut moved = vec![0f32; self.rows * capacity * d];
                for (r, dst) in moved.chunks_exact_mut(capacity * d).enumerate() {
                    let from = (r * self.capacity + self.start) * d;
                    dst[..self.len * d].copy_from_slice(&buf[from..from + self.len * d]);
                }
                *buf = moved;
            }
            (self.capacity, self.start) = (capacity, 0);
        } else if self.start + self.len + t > self.capacity {
            // Back to the front of each region, in place.
            for buf in [&mut self.keys, &mut self.values] {
                for r in 0..self.rows {
                    let from = (r * self.capacity + self.start) * d;
                    buf.copy_within(from..from + self.len * d, r * self.capacity * d);
                }
            }
            self.start = 0;
        }
        let at = self.start + self.len;
        for (buf, new) in [(&mut self.keys, keys), (&mut self.values, values)] {
            for (r, src) in new.chunks_exact(t * d).enumerate() {
                let to = (r * self.capacity + at) * d;
                buf[to..to + t * d].copy_from_slice(src);
            }
        }
        self.len += t;
    }
}

/// A transformer's streaming state: the position of the next step and each layer's [`KvCache`].
#[derive(Debug, Clone, Default)]
pub struct TransformerState {
    position: usize,
    layers: Vec<KvCache>,
}

impl TransformerState {
    /// Back to a stream's first step, keeping the key and value buffers for the next stream (a stream's `reset`).
    pub fn restart(&mut self) {
        self.position = 0;
        for cache in &mut self.layers {
            cache.kv = None;
            if let Some(rows) = &mut cache.rows {
                (rows.start, rows.len) = (0, 0);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    context: usize,
}

/// Off-CPU, queries are processed in blocks of this many steps so memory stays O(T · context), not O(T²).
const QUERY_BLOCK: usize = 256;

impl Attention {
    fn new(cfg: &TransformerConfig, vb: Weights) -> Result<Self> {
        let inner = cfg.num_heads * cfg.head_dim;
        Ok(Self {
            q_proj: Linear::load(cfg.d_model, inner, false, vb.pp("q_proj"))?,
            k_proj: Linear::load(cfg.d_model, inner, false, vb.pp("k_proj"))?,
            v_proj: Linear::load(cfg.d_model, inner, false, vb.pp("v_proj"))?,
            o_proj: Linear::load(inner, cfg.d_model, false, vb.pp("o_proj"))?,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim,
            context: cfg.context,
        })
    }

    fn heads(&self, x: Tensor, b: usize, t: usize) -> Result<Tensor> {
        x.reshape((b, t, self.num_heads, self.head_dim))?.transpose(1, 2)?.contiguous()
    }

    /// x (B, T, d_model) at the positions of `rope`, after the steps whose keys `cache` holds → the heads' outputs
    /// (B, T, heads · head_dim), before `o_proj`; the cache is left holding what the next step needs.
    fn attend(&self, x: &Tensor, rope: &Rope, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.attend_cpu(x, rope, cache);
        }
        let q = self.heads(self.q_proj.forward(x)?, b, t)?;
        let k = self.heads(self.k_proj.forward(x)?, b, t)?;
        let v = self.heads(self.v_proj.forward(x)?, b, t)?;
        let q = candle_nn::rotary_emb::rope(&q, &rope.cos, &rope.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &rope.cos, &rope.sin)?;
        let q = (q * self.query_scale())?;
        let (k, v) = match cache.kv.take() {
            Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
            None => (k, v),
        };
        let y = self.attend_blocks(&q, &k, &v)?;
        let keys = k.dim(2)?;
        let keep = (self.context - 1).min(keys);
        // Copies, not views: a view would keep every key of this step alive.
        cache.kv = Some((compact(&k.narrow(2, keys - keep, keep)?)?, compact(&v.narrow(2, keys - keep, keep)?)?));
        y.transpose(1, 2)?.reshape((b, t, self.num_heads * self.head_dim))
    }

    /// 1/√head_dim, the queries' scale.
    fn query_scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// CPU: the projections' outputs split into heads — RoPE'd and the queries scaled in the same pass
    /// ([`split_heads`]) — the new steps' keys and values appended to `cache`'s rows, then [`WindowAttention`] of the
    /// queries over the held and new keys.
    fn attend_cpu(&self, x: &Tensor, rope: &Rope, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, d) = (self.num_heads, self.head_dim);
        let rows = cache.rows.get_or_insert_with(|| KvRows {
            keys: Vec::new(),
            values: Vec::new(),
            rows: b * h,
            head_dim: d,
            capacity: 0,
            start: 0,
            len: 0,
        });
        if (rows.rows, rows.head_dim) != (b * h, d) {
            candle_core::bail!("attention: {b}×{h} heads of {d} after a stream of {} of {}", rows.rows, rows.head_dim);
        }
        let Some((cos, sin)) = &rope.cos_sin else { candle_core::bail!("attention: RoPE tables not on the CPU") };
        let rotation = Some((&cos[..], &sin[..]));
        let project = |linear: &Linear, rotation, scale| -> Result<Vec<f32>> {
            let y = linear.forward(x)?;
            let (storage, layout) = y.storage_and_layout();
            Ok(split_heads(cpu_f32(&storage, layout, "projection")?, (b, t, h, d), rotation, scale))
        };
        let q = project(&self.q_proj, rotation, Some(self.query_scale() as f32))?;
        let (k, v) = (project(&self.k_proj, rotation, None)?, project(&self.v_proj, None, None)?);
        rows.append(&k, &v, t, self.context.saturating_sub(1));
        let (capacity, start, len) = (rows.capacity, rows.start, rows.len);
        let (keys, values) = (&rows.keys[..], &rows.values[..]);
        let held = |r: usize| (r * capacity + start) * d..(r * capacity + start + len) * d;
        let window = WindowAttention { context: self.context };
        let out = window.attend(&q, t, d, |r| (&keys[held(r)], &values[held(r)]));
        Tensor::from_vec(out, (b, h, t, d), &Device::Cpu)?.transpose(1, 2)?.reshape((b, t, h * d))
    }

    /// Additive mask for queries at key positions `q0..q0+nq` over keys `k0..k0+nk`: 0 where `0 <= q − k < context`.
    fn mask(&self, q0: usize, nq: usize, k0: usize, nk: usize, device: &Device) -> Result<Tensor> {
        let mask: Vec<f32> = (q0..q0 + nq)
            .flat_map(|q| (k0..k0 + nk).map(move |k| (q, k)))
            .map(|(q, k)| if k <= q && q - k < self.context { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        Tensor::from_vec(mask, (nq, nk), device)
    }

    /// [`WindowAttention`] with tensor ops (other devices): blocks of queries against the keys their windows span.
    fn attend_blocks(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (t, keys) = (q.dim(2)?, k.dim(2)?);
        let first = keys - t;
        let mut blocks = Vec::with_capacity(t.div_ceil(QUERY_BLOCK));
        for q0 in (0..t).step_by(QUERY_BLOCK) {
            let nq = QUERY_BLOCK.min(t - q0);
            let k0 = (first + q0 + 1).saturating_sub(self.context);
            let nk = first + q0 + nq - k0;
            let scores = q.narrow(2, q0, nq)?.matmul(&k.narrow(2, k0, nk)?.t()?)?;
            let scores = scores.broadcast_add(&self.mask(first + q0, nq, k0, nk, q.device())?)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            blocks.push(probs.matmul(&v.narrow(2, k0, nk)?.contiguous()?)?);
        }
        Tensor::cat(&blocks, 2)
    }
}

/// x (B, T, H·D) → (B, H, T, D) in one pass: with `rotation` = (cos, sin) (T × D/2 each) RoPE as candle's `rope`
/// computes it (rotate-half: `x₁·cos − x₂·sin`, `x₁·sin + x₂·cos`), then with `scale` each value times it plus zero
/// (candle's scalar multiply) — the same operations in the same order as the transpose, `rope` and multiply ops,
/// whose three tensors cost a stream step more than the arithmetic.
fn split_heads(
    x: &[f32],
    (b, t, h, d): (usize, usize, usize, usize),
    rotation: Option<(&[f32], &[f32])>,
    scale: Option<f32>,
) -> Vec<f32> {
    let half = d / 2;
    let mut out = vec![0f32; b * h * t * d];
    for (row, dst) in out.chunks_exact_mut(t * d).enumerate() {
        let (item, head) = (row / h, row % h);
        for (step, dst) in dst.chunks_exact_mut(d).enumerate() {
            let src = &x[(item * t + step) * h * d + head * d..][..d];
            match rotation {
                Some((cos, sin)) => {
                    let (cos, sin) = (&cos[step * half..][..half], &sin[step * half..][..half]);
                    for i in 0..half {
                        let (x1, x2) = (src[i], src[i + half]);
                        dst[i] = x1 * cos[i] - x2 * sin[i];
                        dst[i + half] = x1 * sin[i] + x2 * cos[i];
                    }
                }
                None => dst.copy_from_slice(src),
            }
            if let Some(s) = scale {
                dst.iter_mut().for_each(|v| *v = *v * s + 0.0);
            }
        }
    }
    out
}

/// Causal sliding-window attention on CPU: q (B, H, T, D) against k, v (B, H, K, D), K ≥ T, query `i` sitting at
/// key position `K − T + i` and seeing the `context` keys up to it. A query's result depends only on its own window,
/// never on how many other queries or cached keys the call holds, so a stream fed in any pieces gives the bits of one
/// offline pass (and no T × T scores exist): its scores come from one f32 GEMM over a block of [`QUERIES`] queries
/// and the keys their windows span (each score one multiply-add chain over the head's dimensions, whatever the block),
/// then its softmax and value sum run over its own window, keys in order.
struct WindowAttention {
    context: usize,
}

/// Queries per scores product: few enough that the product runs on one thread (the blocks are the parallel tasks).
const QUERIES: usize = 8;

/// The head size whose value sums run with the sum in registers ([`weighted_sum_in_registers`]; Mimi's heads);
/// other sizes take the general loop.
const HEAD_DIM: usize = 64;

/// `y += Σ p_k · v_k` over the keys in order (`v`: one row of `y.len()` values per key).
#[inline(always)]
fn weighted_sum(p: &[f32], v: &[f32], y: &mut [f32]) {
    for (&p, v) in p.iter().zip(v.chunks_exact(y.len())) {
        for (y, &v) in y.iter_mut().zip(v) {
            *y += p * v;
        }
    }
}

/// [`weighted_sum`] for a [`HEAD_DIM`]-wide head, summed in a local array the compiler keeps in registers (a slice
/// of run-time length was loaded and stored again at every key): the same operations in the same order.
#[inline(always)]
fn weighted_sum_in_registers(p: &[f32], v: &[f32], y: &mut [f32; HEAD_DIM]) {
    let mut acc = *y;
    weighted_sum(p, v, &mut acc);
    *y = acc;
}

impl WindowAttention {
    /// Queries q (rows × T × D, row-major) against each row's keys and values (`row(r)`: K ≥ T steps of D each,
    /// the queries the last T of them) → rows × T × D.
    fn attend<'a>(
        &self,
        q: &[f32],
        t: usize,
        d: usize,
        row: impl Fn(usize) -> (&'a [f32], &'a [f32]) + Sync,
    ) -> Vec<f32> {
        let mut out = crate::mem::zeros_par(q.len());
        let nr = tile_shape().1;
        // Each task takes a run of a row's query blocks — a whole row unless there are more threads than rows —
        // and packs the keys their windows span once, as the products' right factor (panels `nr` keys wide); each
        // block multiplies the whole panels its windows cover, in place. Packing every 8-query block's window
        // anew took 32 packs per head in a 250-step pass.
        let rows = out.len() / (t * d).max(1);
        let blocks = t.div_ceil(QUERIES);
        let per_task = blocks.div_ceil(rayon::current_num_threads().div_ceil(rows.max(1)).max(1)).max(1) * QUERIES;
        let tasks = out
            .par_chunks_mut((t * d).max(1))
            .enumerate()
            .flat_map_iter(|(r, row)| row.chunks_mut(per_task * d).enumerate().map(move |(g, y)| (r, g * per_task, y)));
        tasks.for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, panels), (r, q_first, y_run)| {
                let (k, v) = row(r);
                let keys = k.len() / d;
                // Query i sits at key `keys − t + i` and sees the `context` keys up to it.
                let last = |i: usize| keys - t + i;
                let first = |i: usize| (last(i) + 1).saturating_sub(self.context);
                // The run's keys from a panel boundary, packed once (in this thread's reused buffer).
                let ka = first(q_first) / nr * nr;
                let kb = last(q_first + y_run.len() / d - 1) + 1;
                let run_keys = Strided::transposed(&k[ka * d..kb * d], kb - ka, d).expect("sized");
                let buffer = |len: usize| {
                    let mut buf = std::mem::take(panels);
                    buf.resize(len, 0.0);
                    buf
                };
                let packed = Packed::b_in(&run_keys, d, kb - ka, buffer);
                for (j, y) in y_run.chunks_mut(QUERIES * d).enumerate() {
                    let (i0, n) = (q_first + j * QUERIES, y.len() / d);
                    // From the panel holding the block's first window start: the product reads whole packed
                    // panels in place (scores outside a query's window are never read).
                    let k0 = first(i0) / nr * nr;
                    let nk = last(i0 + n - 1) + 1 - k0;
                    scores.resize(n * nk, 0.0);
                    let queries = Strided::row_major(&q[(r * t + i0) * d..(r * t + i0 + n) * d], n, d).expect("sized");
                    let window_keys = ColumnsFrom(&packed, k0 - ka);
                    let mut s = Output::row_major(scores, n, nk).expect("sized above");
                    // Exact f32 in every precision: a few MFLOP, and the softmax would amplify bf16 rounding.
                    gemm(n, nk, d, &queries, &window_keys, &mut s, &Epilogue { exact: true, ..Default::default() });
                    for (qi, y) in y.chunks_exact_mut(d).enumerate() {
                        let (f, l) = (first(i0 + qi), last(i0 + qi));
                        let s = &mut scores[qi * nk + f - k0..=qi * nk + l - k0];
                        let v = &v[f * d..(l + 1) * d];
                        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        with_fma!(
                            FMA,
                            super::wide_simd(
                                #[inline(always)]
                                || {
                                    for s in s.iter_mut() {
                                        *s = exp_nonpositive::<FMA>(*s - max);
                                    }
                                    match <&mut [f32; HEAD_DIM]>::try_from(&mut *y) {
                                        Ok(y) => weighted_sum_in_registers(s, v, y),
                                        Err(_) => weighted_sum(s, v, y),
                                    }
                                },
                            )
                        );
                        let norm = 1.0 / s.iter().sum::<f32>();
                        y.iter_mut().for_each(|y| *y *= norm);
                    }
                }
                *panels = packed.into_buffer();
            },
        );
        out
    }
}

/// Columns `first..` of a packed right factor, as a right factor of their own (`first` on a panel boundary: the
/// product reads the packed panels in place).
struct ColumnsFrom<'a>(&'a Packed, usize);

impl PackB for ColumnsFrom<'_> {
    fn pack_b(&self, ks: std::ops::Range<usize>, cols: std::ops::Range<usize>, nr: usize, dst: &mut [f32]) {
        self.0.pack_b(ks, cols.start + self.1..cols.end + self.1, nr, dst)
    }
    fn packed_b(&self, ks: std::ops::Range<usize>, cols: std::ops::Range<usize>, nr: usize) -> Option<&[f32]> {
        self.0.packed_b(ks, cols.start + self.1..cols.end + self.1, nr)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: LayerNorm,
    self_attn: Attention,
    attn_scale: Option<Tensor>,
    post_attention_layernorm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    mlp_scale: Option<Tensor>,
    activation: MlpActivation,
}

impl Layer {
    fn new(cfg: &TransformerConfig, vb: Weights) -> Result<Self> {
        Ok(Self {
            input_layernorm: LayerNorm::new(cfg.d_model, cfg.norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            attn_scale: cfg.layer_scale.then(|| vb.get(cfg.d_model, "self_attn_layer_scale.scale")).transpose()?,
            post_attention_layernorm: LayerNorm::new(cfg.d_model, cfg.norm_eps, vb.pp("post_attention_layernorm"))?,
            fc1: Linear::load(cfg.d_model, cfg.ffn_dim, false, vb.pp("mlp.fc1"))?,
            fc2: Linear::load(cfg.ffn_dim, cfg.d_model, false, vb.pp("mlp.fc2"))?,
            mlp_scale: cfg.layer_scale.then(|| vb.get(cfg.d_model, "mlp_layer_scale.scale")).transpose()?,
            activation: cfg.activation,
        })
    }

    fn forward(&self, x: &Tensor, rope: &Rope, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.self_attn.attend(&self.input_layernorm.forward(x)?, rope, cache)?;
        // Each branch's LayerScale and residual add in its last product's epilogue.
        let x = self.self_attn.o_proj.forward_scale_add(&h, self.attn_scale.as_ref(), x)?;
        let h = self.post_attention_layernorm.forward(&x)?;
        let h = match self.activation {
            MlpActivation::GeluErf => self.fc1.forward_activated(&h, Activation::GeluErf)?,
            MlpActivation::GeluTanh => gelu_tanh(&self.fc1.forward(&h)?)?,
        };
        self.fc2.forward_scale_add(&h, self.mlp_scale.as_ref(), &x)
    }
}

/// A stack of pre-norm transformer layers over (B, C, T), with causal sliding-window attention.
#[derive(Debug, Clone)]
pub struct Transformer {
    layers: Vec<Layer>,
    cfg: TransformerConfig,
}

impl Transformer {
    /// The layers `cfg` describes, layer `i`'s tensors under `layers.{i}.` in `vb`.
    pub fn new(cfg: &TransformerConfig, vb: Weights) -> Result<Self> {
        let layers =
            (0..cfg.num_layers).map(|i| Layer::new(cfg, vb.pp(format!("layers.{i}")))).collect::<Result<_>>()?;
        Ok(Self { layers, cfg: cfg.clone() })
    }

    /// Makes every layer's weights ready for many steps now ([`Linear::prepare`]): for a transformer run once per
    /// generated step.
    pub fn prepare(&self) {
        let linears: Vec<&Linear> = (self.layers.iter())
            .flat_map(|l| {
                [&l.self_attn.q_proj, &l.self_attn.k_proj, &l.self_attn.v_proj, &l.self_attn.o_proj, &l.fc1, &l.fc2]
            })
            .collect();
        // Each layer packs on its own: the threads share the work.
        linears.par_iter().for_each(|linear| linear.prepare());
    }

    /// (B, C, T) → (B, C, T), the whole input at once.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.step(x, &mut TransformerState::default())
    }

    /// A fresh state for a stream of `batch` items on `device`. On the CPU, with a bounded window, every layer's key
    /// and value buffers are allocated here with room for two windows (16 MB for Mimi's 8 layers), so a running
    /// stream never allocates them: 16 MB allocated (and cleared) inside one push took it 20 ms on our VMs, where
    /// fresh pages are slow to fault in. Their pages fault in a few at a time as the window fills.
    pub fn stream_state(&self, batch: usize, device: &Device) -> TransformerState {
        let mut state = TransformerState::default();
        // Two windows plus a push's few steps: what the first append would make room for.
        let capacity = two_windows(self.cfg.context.saturating_sub(1)).map(|room| room + 2);
        if let Some(capacity) = capacity.filter(|_| device.is_cpu()) {
            let rows = batch * self.cfg.num_heads;
            let cache = || KvCache { kv: None, rows: Some(KvRows::with_room(rows, self.cfg.head_dim, capacity)) };
            state.layers = (0..self.layers.len()).map(|_| cache()).collect();
        }
        state
    }

    /// The next T steps (B, C, T) of a stream whose earlier steps `state` remembers → (B, C, T): what [`forward`]
    /// gives for these steps on the whole stream, bit for bit.
    ///
    /// [`forward`]: Transformer::forward
    pub fn step(&self, x: &Tensor, state: &mut TransformerState) -> Result<Tensor> {
        let t = x.dim(D::Minus1)?;
        if t == 0 {
            return Ok(x.clone());
        }
        let rope = Rope::new(state.position, t, self.cfg.head_dim, self.cfg.rope_theta, x.device())?;
        state.layers.resize_with(self.layers.len(), KvCache::default);
        let mut h = x.transpose(1, 2)?.contiguous()?;
        for (layer, cache) in self.layers.iter().zip(&mut state.layers) {
            h = layer.forward(&h, &rope, cache)?;
        }
        state.position += t;
        h.transpose(1, 2)?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;

    /// A row's keys packed once serve a window from any panel boundary in place, and other offsets through the
    /// packed operand's gather: the same panels the keys' own packer writes.
    #[test]
    fn packed_key_columns_match_the_keys_packed_directly() {
        let (keys, d) = (45, 12);
        let nr = tile_shape().1;
        let k = crate::nn::test_util::pseudo_random(keys * d, 7);
        let strided = Strided::transposed(&k, keys, d).unwrap();
        let packed = Packed::b(&strided, d, keys);
        for (from, cols) in [(0, 0..45), (nr, 0..45 - nr), (3, 0..40), (0, 5..30)] {
            let view = ColumnsFrom(&packed, from);
            let len = cols.len().div_ceil(nr) * nr * d;
            let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            strided.pack_b(0..d, cols.start + from..cols.end + from, nr, &mut want);
            match view.packed_b(0..d, cols.clone(), nr) {
                Some(block) => got.copy_from_slice(&block[..len]),
                None => view.pack_b(0..d, cols.clone(), nr, &mut got),
            }
            assert_eq!(got, want, "keys {cols:?} from {from}");
        }
        assert!(ColumnsFrom(&packed, nr).packed_b(0..d, 0..45 - nr, nr).is_some());
        assert!(ColumnsFrom(&packed, 3).packed_b(0..d, 0..40, nr).is_none());
    }

    /// The one-pass head split gives the bits of the tensor ops it replaces: transpose into heads, candle's `rope`,
    /// the queries' scalar multiply.
    #[test]
    fn split_heads_is_candles_ops_bit_for_bit() {
        let dev = Device::Cpu;
        let (b, t, h, d) = (2, 5, 3, 8);
        let x = Tensor::randn(0f32, 3.0, (b, t, h * d), &dev).unwrap();
        let rope = Rope::new(7, t, d, 10000.0, &dev).unwrap();
        let heads = x.reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let rotated = candle_nn::rotary_emb::rope(&heads, &rope.cos, &rope.sin).unwrap();
        let scaled = (&rotated * 0.125f64).unwrap();
        let (cos, sin) = rope.cos_sin.as_ref().unwrap();
        let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let tensor_bits = |t: &Tensor| bits(t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let split = |rotation, scale| bits(split_heads(&values, (b, t, h, d), rotation, scale));
        assert_eq!(split(None, None), tensor_bits(&heads));
        assert_eq!(split(Some((&cos[..], &sin[..])), None), tensor_bits(&rotated));
        assert_eq!(split(Some((&cos[..], &sin[..])), Some(0.125)), tensor_bits(&scaled));
    }

    /// A 2-layer transformer of width 16 with random weights, attending over `context` steps.
    fn transformer(context: usize) -> Transformer {
        let cfg = TransformerConfig {
            d_model: 16,
            num_heads: 2,
            head_dim: 8,
            num_layers: 2,
            ffn_dim: 32,
            context,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            activation: MlpActivation::GeluErf,
            layer_scale: true,
        };
        let dev = Device::Cpu;
        let mut tensors = HashMap::new();
        for i in 0..cfg.num_layers {
            let mut add = |name: &str, shape: &[usize]| {
                let t = Tensor::randn(0f32, 0.3, shape, &dev).unwrap();
                tensors.insert(format!("layers.{i}.{name}"), t);
            };
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                add(&format!("{norm}.weight"), &[16]);
                add(&format!("{norm}.bias"), &[16]);
            }
            for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                add(&format!("self_attn.{proj}.weight"), &[16, 16]);
            }
            add("self_attn_layer_scale.scale", &[16]);
            add("mlp.fc1.weight", &[32, 16]);
            add("mlp.fc2.weight", &[16, 32]);
            add("mlp_layer_scale.scale", &[16]);
        }
        Transformer::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &dev).into()).unwrap()
    }

    /// Steps in pieces of any size give the bits of one pass, with a window shorter than the stream (held keys
    /// dropped, the buffers' regions filled and moved back) and with an unbounded one (regions grown); from a
    /// default state, from a stream's preallocated one, and from that one restarted after a whole stream.
    #[test]
    fn steps_in_pieces_match_one_pass_bit_for_bit() {
        let x = Tensor::randn(0f32, 1.0, (2, 16, 60), &Device::Cpu).unwrap();
        for context in [5, 250, usize::MAX] {
            let model = transformer(context);
            let whole = model.forward(&x).unwrap();
            let mut reused = model.stream_state(2, &Device::Cpu);
            for (pieces, fresh) in [(&[1usize][..], true), (&[3, 1, 7], false), (&[13, 2], true), (&[60], false)] {
                let mut state = if fresh { TransformerState::default() } else { model.stream_state(2, &Device::Cpu) };
                let (mut at, mut outs) = (0, Vec::new());
                for &n in pieces.iter().cycle() {
                    let n = n.min(60 - at);
                    outs.push(model.step(&x.narrow(2, at, n).unwrap(), &mut state).unwrap());
                    at += n;
                    if at == 60 {
                        break;
                    }
                }
                let streamed = Tensor::cat(&outs, 2).unwrap();
                let diff = (&streamed - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert_eq!(diff, 0.0, "context {context}, pieces {pieces:?}");
                // The same stream again through one state, restarted after each.
                reused.restart();
                let again: Vec<Tensor> = (0..60)
                    .step_by(pieces[0])
                    .map(|at| model.step(&x.narrow(2, at, pieces[0].min(60 - at)).unwrap(), &mut reused).unwrap())
                    .collect();
                let again = Tensor::cat(&again, 2).unwrap();
                let diff = (&again - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert_eq!(diff, 0.0, "context {context}, restarted, pieces of {}", pieces[0]);
            }
        }
    }
}
