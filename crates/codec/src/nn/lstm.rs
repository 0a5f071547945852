//! Multi-layer unidirectional LSTM with PyTorch's gate order (input, forget, cell, output), as EnCodec's SEANet
//! uses it (`SLSTM`: the LSTM's output plus its input).
//!
//! Tensor names per layer `l`: `weight_ih_l{l}` `[4H, in]`, `weight_hh_l{l}` `[4H, H]`, `bias_l{l}` `[4H]` (the
//! converter adds PyTorch's `bias_ih` and `bias_hh`).

use super::Weights;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor, D};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::activation::{sigmoid_f32, tanh_f32};
use super::gemm::{bf16_products, bf16_supported};
use super::linear::Linear;
use super::with_fma;
use super::{bf16_pairs, dot, dot_bf16_pairs, f32_slice, f32_vec, get_or_try_init};
use crate::mem::SharedFloats;
use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone)]
struct LstmLayer {
    /// Input projection of every step, with the summed biases.
    input: Linear,
    w_hh: Tensor,
    /// `w_hh`'s rows as bf16 pairs for the fast modes, made on first use: half the bytes a step reads, so a thread's
    /// share of the rows stays in its L2 (in f32 it streams from L3 every step).
    w_hh_pairs: Arc<OnceLock<Vec<u32>>>,
    hidden: usize,
}

impl LstmLayer {
    /// (B, T, in) → (B, T, H), from the state in `carry` (B × [h; c] per item), which is left holding the state
    /// after the last step.
    fn forward(&self, x: &Tensor, carry: &mut LayerState) -> Result<Tensor> {
        let b = x.dim(0)?;
        // Input projections of every step in one matmul; only the recurrent part is sequential.
        let x_proj = self.input.forward(x)?;
        if x_proj.device().is_cpu() && x_proj.dtype() == DType::F32 {
            let values = match carry {
                LayerState::Host(values) => values,
                LayerState::Device(_) => candle_core::bail!("lstm: a device state given to the CPU recurrence"),
            };
            if values.len() != b * 2 * self.hidden {
                candle_core::bail!("lstm: state for {} values, the input has {b} items", values.len());
            }
            // Recurrent weights as bf16 pairs where `vdpbf16ps` multiplies them; elsewhere (AVX2) the recurrence
            // stays f32: its 4 MB of weights per step come from cache, not memory.
            let pairs = if bf16_products() && bf16_supported() {
                Some(get_or_try_init(&self.w_hh_pairs, || Ok(pair_rows(&f32_vec(&self.w_hh)?, self.hidden)))?)
            } else {
                None
            };
            let carry = SharedFloats(values.as_mut_ptr());
            let op = Recurrence { carry, w_hh_pairs: pairs.map(|p| p.as_slice()), _carry: std::marker::PhantomData };
            return x_proj.contiguous()?.apply_op2_no_bwd(&self.w_hh, &op);
        }
        let state = match carry {
            LayerState::Device(state) => state.clone(),
            LayerState::Host(_) => candle_core::bail!("lstm: a CPU state given to a {:?} recurrence", x_proj.device()),
        };
        let (y, state) = self.recurrence_with_tensor_ops(&x_proj, &state)?;
        *carry = LayerState::Device(state);
        Ok(y)
    }

    /// The recurrence over input projections (B, T, 4H) as tensor ops, step by step (devices other than the CPU),
    /// from `state` (B, 2, H): the outputs and the state after the last step, both on the device (no host trips).
    fn recurrence_with_tensor_ops(&self, x_proj: &Tensor, state: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = x_proj.dim(1)?;
        let h_dim = self.hidden;
        let w_hh_t = self.w_hh.t()?;
        let mut h = state.narrow(1, 0, 1)?.squeeze(1)?;
        let mut c = state.narrow(1, 1, 1)?.squeeze(1)?;
        let mut outputs = Vec::with_capacity(t);
        for step in 0..t {
            let gates = (x_proj.narrow(1, step, 1)?.squeeze(1)? + h.matmul(&w_hh_t)?)?;
            let gate = |i: usize| gates.narrow(D::Minus1, i * h_dim, h_dim);
            let input = candle_nn::ops::sigmoid(&gate(0)?)?;
            let forget = candle_nn::ops::sigmoid(&gate(1)?)?;
            let cell = gate(2)?.tanh()?;
            let output = candle_nn::ops::sigmoid(&gate(3)?)?;
            c = ((forget * &c)? + (input * cell)?)?;
            h = (output * c.tanh()?)?;
            outputs.push(h.clone());
        }
        Ok((Tensor::stack(&outputs, 1)?, Tensor::stack(&[&h, &c], 1)?))
    }
}

/// The rows (`width` values each) of `w` as bf16 pair words, `⌈width/2⌉` per row: the layout the fast modes'
/// recurrence reads `weight_hh` in.
fn pair_rows(w: &[f32], width: usize) -> Vec<u32> {
    let words = width.div_ceil(2);
    let mut pairs = vec![0u32; w.len() / width.max(1) * words];
    for (row, dst) in w.chunks_exact(width.max(1)).zip(pairs.chunks_exact_mut(words.max(1))) {
        bf16_pairs(row, dst);
    }
    pairs
}

/// One layer's state: on the CPU a buffer the recurrence kernel updates in place, elsewhere a (B, 2, H) tensor
/// on the device, so a stream on a GPU never reads its state back.
#[derive(Debug, Clone)]
enum LayerState {
    Host(Vec<f32>),
    Device(Tensor),
}

/// A stacked LSTM's state between calls: per layer, per batch item, h then c.
#[derive(Debug, Clone, Default)]
pub struct LstmState {
    layers: Vec<LayerState>,
}

/// A stacked unidirectional LSTM whose layers keep the width, run with the input added (EnCodec's `SLSTM`).
#[derive(Debug, Clone)]
pub struct Lstm {
    layers: Vec<LstmLayer>,
}

impl Lstm {
    /// `dim` in and out (SEANet's LSTMs keep the width), `num_layers` stacked.
    pub fn new(dim: usize, num_layers: usize, vb: Weights) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|l| {
                Ok(LstmLayer {
                    input: Linear::new(
                        vb.matrix((4 * dim, dim), &format!("weight_ih_l{l}"))?,
                        Some(vb.get(4 * dim, &format!("bias_l{l}"))?),
                    )?,
                    w_hh: vb.get((4 * dim, dim), &format!("weight_hh_l{l}"))?,
                    w_hh_pairs: Arc::default(),
                    hidden: dim,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// (B, C, T) → (B, C, T): the stacked LSTM over time from zero state, plus the input (EnCodec's skip).
    pub fn forward_with_skip(&self, x: &Tensor) -> Result<Tensor> {
        self.step_with_skip(x, &mut LstmState::default())
    }

    /// [`Lstm::forward_with_skip`] on the next steps of a stream, from and to `state`: in any pieces, the bits of
    /// one pass (the same recurrence runs over the same projections).
    pub fn step_with_skip(&self, x: &Tensor, state: &mut LstmState) -> Result<Tensor> {
        let seq = x.transpose(1, 2)?.contiguous()?;
        let (b, hidden) = (x.dim(0)?, self.layers.first().map_or(0, |l| l.hidden));
        if state.layers.is_empty() {
            let zero = if x.device().is_cpu() && x.dtype() == DType::F32 {
                LayerState::Host(vec![0f32; b * 2 * hidden])
            } else {
                LayerState::Device(Tensor::zeros((b, 2, hidden), x.dtype(), x.device())?)
            };
            state.layers = vec![zero; self.layers.len()];
        }
        let y = self
            .layers
            .iter()
            .zip(&mut state.layers)
            .try_fold(seq.clone(), |h, (layer, carry)| layer.forward(&h, carry))?;
        (y + seq)?.transpose(1, 2)?.contiguous()
    }
}

/// The sequential part of an LSTM layer on CPU: per step one matrix-vector product and the gate arithmetic.
/// Every thread of the pool runs the whole recurrence for its own slice of hidden units (their four gate rows of
/// `weight_hh`, which then stay in that core's cache from step to step), and the threads meet at a spin barrier once
/// per step to share the new hidden state. A parallel loop per step paid a pool dispatch and a reload of the weights
/// from L3 at each of the thousands of steps. Inputs: the input projections plus bias (B, T, 4H) and `weight_hh`
/// (4H, H); output h for every step. Each batch item starts from, and leaves its last step's state in, `carry`
/// (B × [h; c], 2H values each).
struct Recurrence<'a> {
    carry: SharedFloats,
    /// `weight_hh` as bf16 pair rows (`LstmLayer::w_hh_pairs`): the fast modes' products, `h` rounded to bf16 too.
    w_hh_pairs: Option<&'a [u32]>,
    _carry: std::marker::PhantomData<&'a mut [f32]>,
}

/// Held by the recurrence that has the pool's threads (see `Recurrence::cpu_fwd`).
static PARALLEL_RECURRENCE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A barrier for threads that each run on their own core: spins briefly (a step takes microseconds), then
/// yields, so an oversubscribed machine does not burn its cores.
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    threads: usize,
}

impl SpinBarrier {
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < 1 << 12 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl CustomOp2 for Recurrence<'_> {
    fn name(&self) -> &'static str {
        "codec-lstm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, four_h) = l1.shape().dims3()?;
        let h_dim = four_h / 4;
        let x_proj = f32_slice(s1, l1, "lstm input")?;
        let w = f32_slice(s2, l2, "lstm weight_hh")?;
        if w.len() != four_h * h_dim || x_proj.len() != b * t * four_h {
            candle_core::bail!("lstm: weight_hh has {} values for hidden size {h_dim}", w.len());
        }
        let mut out = vec![0f32; b * t * h_dim];
        // Hidden state of the step being read and of the step being written.
        let mut states = vec![0f32; 2 * h_dim];
        // All pool threads must reach the barrier together, so only one recurrence at a time may take the pool (a
        // worker waiting at one call's barrier while another worker waits at another's would deadlock); others
        // run on the calling thread alone. From inside the pool (`nn::on_pool`) the caller runs its own share
        // while `broadcast` waits, and a worker busy elsewhere joins when its job ends.
        let pool = PARALLEL_RECURRENCE.try_lock().ok();
        let threads = match pool {
            Some(_) => rayon::current_num_threads().clamp(1, h_dim.div_ceil(32).max(1)),
            None => 1,
        };
        let barrier = SpinBarrier { arrived: AtomicUsize::new(0), generation: AtomicUsize::new(0), threads };
        let (out_ptr, states_ptr) = (SharedFloats(out.as_mut_ptr()), SharedFloats(states.as_mut_ptr()));
        let per = h_dim.div_ceil(threads);
        let carry = self.carry;
        let run = |thread: usize| {
            let units = (thread * per).min(h_dim)..((thread + 1) * per).min(h_dim);
            let mut c = vec![0f32; units.len()];
            let mut gates = vec![0f32; 4 * units.len()];
            let words = h_dim.div_ceil(2);
            let mut h_pairs = vec![0u32; if self.w_hh_pairs.is_some() { words } else { 0 }];
            for bi in 0..b {
                // This item's initial state: h into the half step 0 reads, c into this thread's units.
                for (k, j) in units.clone().enumerate() {
                    // SAFETY: `carry` holds B·2H values (checked by the caller); this thread alone touches unit j
                    // of item bi, and of the state half, until the barrier below.
                    unsafe {
                        *states_ptr.at(j) = *carry.at(bi * 2 * h_dim + j);
                        c[k] = *carry.at(bi * 2 * h_dim + h_dim + j);
                    }
                }
                barrier.wait();
                for step in 0..t {
                    // SAFETY: `states` has 2·H values; this step reads one half, written before the last barrier.
                    let h =
                        unsafe { std::slice::from_raw_parts(states_ptr.at((step % 2) * h_dim) as *const f32, h_dim) };
                    let xp = &x_proj[(bi * t + step) * four_h..(bi * t + step + 1) * four_h];
                    if let Some(pairs) = self.w_hh_pairs {
                        bf16_pairs(h, &mut h_pairs);
                        for (g, gate) in gates.chunks_exact_mut(units.len().max(1)).enumerate() {
                            for (k, gi) in gate.iter_mut().enumerate() {
                                let row = g * h_dim + units.start + k;
                                *gi = xp[row] + dot_bf16_pairs(&pairs[row * words..(row + 1) * words], &h_pairs);
                            }
                        }
                    } else {
                        super::wide_simd(
                            #[inline(always)]
                            || {
                                for (g, gate) in gates.chunks_exact_mut(units.len().max(1)).enumerate() {
                                    for (k, gi) in gate.iter_mut().enumerate() {
                                        let row = g * h_dim + units.start + k;
                                        *gi = xp[row] + dot(&w[row * h_dim..(row + 1) * h_dim], h);
                                    }
                                }
                            },
                        );
                    }
                    // Gates and the cell update over this thread's units in vectorised passes (libm's scalar
                    // expf / tanhf were a fifth of each step).
                    let n = units.len();
                    with_fma!(
                        FMA,
                        super::wide_simd(
                            #[inline(always)]
                            || {
                                let (ifg, o) = gates.split_at_mut(3 * n);
                                let (i_f, g) = ifg.split_at_mut(2 * n);
                                // Two loops, not a chain: `Chain::fold` is a function of its own, compiled without
                                // this closure's target features (scalar, a libm call per multiply-add: 5 % of a
                                // WavTokenizer encode, on the recurrence's critical path).
                                i_f.iter_mut().for_each(|v| *v = sigmoid_f32::<FMA>(*v));
                                o.iter_mut().for_each(|v| *v = sigmoid_f32::<FMA>(*v));
                                g.iter_mut().for_each(|v| *v = tanh_f32::<FMA>(*v));
                                let (i, f) = i_f.split_at(n);
                                for (((c, &i), &f), (g, &o)) in c.iter_mut().zip(i).zip(f).zip(g.iter_mut().zip(&*o)) {
                                    *c = f * *c + i * *g;
                                    // The new h, kept where g was.
                                    *g = o * tanh_f32::<FMA>(*c);
                                }
                            },
                        )
                    );
                    for (k, j) in units.clone().enumerate() {
                        let h_new = gates[2 * n + k];
                        // SAFETY: unit j of the other half and of this step's output row belong to this thread
                        // alone; both lie inside their buffers (j < H, the row inside B·T·H).
                        unsafe {
                            *states_ptr.at(((step + 1) % 2) * h_dim + j) = h_new;
                            *out_ptr.at((bi * t + step) * h_dim + j) = h_new;
                        }
                    }
                    barrier.wait();
                }
                // The item's last state back into `carry` (h of the last step is in the half step t would read).
                for (k, j) in units.clone().enumerate() {
                    // SAFETY: as above; every read of the last step is done (barrier), and the next item's
                    // initial state is written only by this thread for these units.
                    unsafe {
                        *carry.at(bi * 2 * h_dim + j) = *states_ptr.at((t % 2) * h_dim + j);
                        *carry.at(bi * 2 * h_dim + h_dim + j) = c[k];
                    }
                }
                barrier.wait();
            }
        };
        if threads == 1 {
            run(0);
        } else {
            rayon::broadcast(|ctx| {
                if ctx.index() < threads {
                    run(ctx.index())
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t, h_dim))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn zero_state(carry: &mut [f32]) -> Recurrence<'_> {
        Recurrence { carry: SharedFloats(carry.as_mut_ptr()), w_hh_pairs: None, _carry: std::marker::PhantomData }
    }

    /// Random recurrent weights `w_hh` (4·hidden, hidden) and projected inputs (batch, steps, 4·hidden).
    fn random_recurrence(hidden: usize, batch: usize, steps: usize) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let w_hh = Tensor::randn(0f32, 0.2, (4 * hidden, hidden), &dev).unwrap();
        (w_hh, Tensor::randn(0f32, 1.0, (batch, steps, 4 * hidden), &dev).unwrap())
    }

    /// The threaded CPU recurrence equals the step-by-step tensor ops, over batch items (each from zero state)
    /// and an odd number of steps.
    #[test]
    fn cpu_recurrence_matches_tensor_ops() {
        let dev = Device::Cpu;
        for hidden in [40, 100] {
            let (w_hh, x_proj) = random_recurrence(hidden, 3, 7);
            let w_ih = Tensor::randn(0f32, 0.2, (4 * hidden, hidden), &dev).unwrap();
            let layer = LstmLayer { input: Linear::new(w_ih, None).unwrap(), w_hh, w_hh_pairs: Arc::default(), hidden };
            let mut carry = vec![0f32; 3 * 2 * hidden];
            let got = x_proj.apply_op2_no_bwd(&layer.w_hh, &zero_state(&mut carry)).unwrap();
            let zero = Tensor::zeros((3, 2, hidden), DType::F32, &dev).unwrap();
            let (want, state) = layer.recurrence_with_tensor_ops(&x_proj, &zero).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "hidden {hidden}");
            // The state both leave behind (h and c of the last step, per item) agrees too.
            let state = state.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let worst = state.iter().zip(&carry).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "hidden {hidden}: state differs by {worst}");
        }
    }

    /// The fast modes' recurrence (weights and h rounded to bf16, `vdpbf16ps`) against the same recurrence in f64
    /// from the rounded operands, over an odd hidden size (a half-empty last pair), two items and several steps.
    #[test]
    fn bf16_recurrence_matches_rounded_reference() {
        if !super::super::gemm::bf16_supported() {
            return;
        }
        let round = |v: f32| super::super::gemm::bf16_value(v) as f64;
        for hidden in [40, 37] {
            let (b, steps) = (2, 6);
            let (w_hh, x_proj) = random_recurrence(hidden, b, steps);
            let w = w_hh.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let pairs = pair_rows(&w, hidden);
            let mut carry = vec![0f32; b * 2 * hidden];
            let op = Recurrence { w_hh_pairs: Some(&pairs), ..zero_state(&mut carry) };
            let got = x_proj.apply_op2_no_bwd(&w_hh, &op).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let xp = x_proj.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
            let mut worst = 0f64;
            for item in 0..b {
                let (mut h, mut c) = (vec![0f64; hidden], vec![0f64; hidden]);
                for step in 0..steps {
                    let x = &xp[(item * steps + step) * 4 * hidden..];
                    let gate = |g: usize, j: usize| {
                        let row = &w[(g * hidden + j) * hidden..(g * hidden + j + 1) * hidden];
                        x[g * hidden + j] as f64
                            + row.iter().zip(&h).map(|(&w, &h)| round(w) * round(h as f32)).sum::<f64>()
                    };
                    let new: Vec<(f64, f64)> = (0..hidden)
                        .map(|j| {
                            let c = sigmoid(gate(1, j)) * c[j] + sigmoid(gate(0, j)) * gate(2, j).tanh();
                            (sigmoid(gate(3, j)) * c.tanh(), c)
                        })
                        .collect();
                    for (j, &(hj, cj)) in new.iter().enumerate() {
                        (h[j], c[j]) = (hj, cj);
                        worst = worst.max((got[(item * steps + step) * hidden + j] as f64 - hj).abs());
                    }
                }
            }
            assert!(worst < 2e-5, "hidden {hidden}: bf16 recurrence off the rounded reference by {worst}");
        }
    }

    /// Steps run in pieces, the state carried between them, give the bits of one pass (streaming encode).
    #[test]
    fn carried_state_continues_the_recurrence() {
        let hidden = 64;
        let (w_hh, x_proj) = random_recurrence(hidden, 2, 9);
        let run = |x: &Tensor, carry: &mut Vec<f32>| x.apply_op2_no_bwd(&w_hh, &zero_state(carry)).unwrap();
        let want = run(&x_proj, &mut vec![0f32; 2 * 2 * hidden]);
        let mut carry = vec![0f32; 2 * 2 * hidden];
        let pieces: Vec<Tensor> = [(0, 4), (4, 1), (5, 4)]
            .iter()
            .map(|&(s, n)| run(&x_proj.narrow(1, s, n).unwrap().contiguous().unwrap(), &mut carry))
            .collect();
        let got = Tensor::cat(&pieces, 1).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(got), flat(want));
    }

    /// Recurrences started at once from several threads, and from inside the pool, all finish (no two wait at
    /// each other's barrier) with the single-call result.
    #[test]
    fn concurrent_recurrences_finish() {
        use rayon::prelude::*;
        let hidden = 96;
        let (w_hh, x_proj) = random_recurrence(hidden, 1, 50);
        let run = || {
            let mut carry = vec![0f32; 2 * hidden];
            x_proj
                .apply_op2_no_bwd(&w_hh, &zero_state(&mut carry))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let want = run();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(run)).collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), want);
            }
        });
        let inside: Vec<Vec<f32>> = (0..4).into_par_iter().map(|_| run()).collect();
        assert!(inside.iter().all(|got| *got == want));
    }
}
