//! Multi-layer unidirectional LSTM with PyTorch's gate order (input, forget, cell, output), as EnCodec's SEANet
//! uses it (`SLSTM`: the LSTM's output plus its input).
//!
//! Tensor names per layer `l`: `weight_ih_l{l}` `[4H, in]`, `weight_hh_l{l}` `[4H, H]`, `bias_l{l}` `[4H]` (the
//! converter adds PyTorch's `bias_ih` and `bias_hh`).

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
struct LstmLayer {
    w_ih_t: Tensor,
    w_hh_t: Tensor,
    bias: Tensor,
    hidden: usize,
}

impl LstmLayer {
    /// (B, T, in) → (B, T, H), from zero state.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let h_dim = self.hidden;
        // Input projections of every step in one matmul; only the recurrent part is sequential.
        let x_proj = x.broadcast_matmul(&self.w_ih_t)?.broadcast_add(&self.bias)?;
        let mut h = Tensor::zeros((b, h_dim), x.dtype(), x.device())?;
        let mut c = h.clone();
        let mut outputs = Vec::with_capacity(t);
        for step in 0..t {
            let gates = (x_proj.narrow(1, step, 1)?.squeeze(1)? + h.matmul(&self.w_hh_t)?)?;
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
    pub fn new(dim: usize, num_layers: usize, vb: VarBuilder) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|l| {
                Ok(LstmLayer {
                    w_ih_t: vb.get((4 * dim, dim), &format!("weight_ih_l{l}"))?.t()?,
                    w_hh_t: vb.get((4 * dim, dim), &format!("weight_hh_l{l}"))?.t()?,
                    bias: vb.get(4 * dim, &format!("bias_l{l}"))?,
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
