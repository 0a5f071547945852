//! Multi-layer unidirectional LSTM with PyTorch's gate order (input, forget, cell, output), as EnCodec's SEANet
//! uses it (`SLSTM`: the LSTM's output plus its input).
//!
//! Tensor names per layer `l`: `weight_ih_l{l}` `[4H, in]`, `weight_hh_l{l}` `[4H, H]`, `bias_l{l}` `[4H]` (the
//! converter adds PyTorch's `bias_ih` and `bias_hh`).

use super::Weights;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::f32_slice;
use super::linear::Linear;

#[derive(Debug, Clone)]
struct LstmLayer {
    /// Input projection of every step, with the summed biases.
    input: Linear,
    w_hh: Tensor,
    hidden: usize,
}

impl LstmLayer {
    /// (B, T, in) → (B, T, H), from zero state.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Input projections of every step in one matmul; only the recurrent part is sequential.
        let x_proj = self.input.forward(x)?;
        if x_proj.device().is_cpu() && x_proj.dtype() == DType::F32 {
            return x_proj.contiguous()?.apply_op2_no_bwd(&self.w_hh, &Recurrence);
        }
        let (b, t, _) = x.dims3()?;
        let h_dim = self.hidden;
        let w_hh_t = self.w_hh.t()?;
        let mut h = Tensor::zeros((b, h_dim), x.dtype(), x.device())?;
        let mut c = h.clone();
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
        Tensor::stack(&outputs, 1)
    }
}

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
                    hidden: dim,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// (B, C, T) → (B, C, T): the stacked LSTM over time, plus the input (EnCodec's skip).
    pub fn forward_with_skip(&self, x: &Tensor) -> Result<Tensor> {
        let seq = x.transpose(1, 2)?.contiguous()?;
        let y = self.layers.iter().try_fold(seq.clone(), |h, layer| layer.forward(&h))?;
        (y + seq)?.transpose(1, 2)?.contiguous()
    }
}

/// The sequential part of an LSTM layer on CPU: per step one matrix-vector product (threads over gate rows) and the
/// gate arithmetic, in place. With candle ops every step was a dozen small tensor ops, which dominated WavTokenizer's
/// encoder. Inputs: the input projections plus bias (B, T, 4H) and `weight_hh` (4H, H); output h for every step.
struct Recurrence;

/// Dot product with 64 independent accumulators (four AVX-512 registers, `wide_simd`), so the compiler can
/// vectorise it and the adds do not wait on each other (a single running sum must be added in order).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 64;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (xa, xb) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += xa[k] * xb[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for Recurrence {
    fn name(&self) -> &'static str {
        "codec-lstm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, four_h) = l1.shape().dims3()?;
        let h_dim = four_h / 4;
        let x_proj = f32_slice(s1, l1, "lstm input")?;
        let w = f32_slice(s2, l2, "lstm weight_hh")?;
        let mut out = vec![0f32; b * t * h_dim];
        let mut gates = vec![0f32; four_h];
        for bi in 0..b {
            let mut h = vec![0f32; h_dim];
            let mut c = vec![0f32; h_dim];
            for step in 0..t {
                let xp = &x_proj[(bi * t + step) * four_h..(bi * t + step + 1) * four_h];
                let rows_per_task = four_h.div_ceil(rayon::current_num_threads()).max(64);
                gates.par_chunks_mut(rows_per_task).enumerate().for_each(|(chunk, g)| {
                    super::wide_simd(
                        #[inline(always)]
                        || {
                            for (i, gi) in g.iter_mut().enumerate() {
                                let row = chunk * rows_per_task + i;
                                *gi = xp[row] + dot(&w[row * h_dim..(row + 1) * h_dim], &h);
                            }
                        },
                    )
                });
                let dst = &mut out[(bi * t + step) * h_dim..(bi * t + step + 1) * h_dim];
                for j in 0..h_dim {
                    let (i, f) = (sigmoid(gates[j]), sigmoid(gates[h_dim + j]));
                    let (g, o) = (gates[2 * h_dim + j].tanh(), sigmoid(gates[3 * h_dim + j]));
                    c[j] = f * c[j] + i * g;
                    h[j] = o * c[j].tanh();
                    dst[j] = h[j];
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t, h_dim))))
    }
}
