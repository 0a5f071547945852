//! 3-tap, stride-1 convolutions with Winograd's minimal filtering F(4, 3): four output steps from six input samples
//! with 6 multiplies per (input, output) channel pair instead of 12 — half the GEMM work of WavTokenizer's pos_net
//! convs (768 → 768, k3: a fifth of its decoder's FLOPs).
//!
//! For a tile of outputs `y[4τ .. 4τ + 4]` and the six samples `d = x̃[4τ .. 4τ + 6]` of the padded input,
//! `y = Aᵀ · ((G·g) ⊙ (Bᵀ·d))` per channel pair. Summed over input channels that is six GEMMs, one per row ξ of
//! the transforms: `M_ξ (C_out × tiles) = U_ξ (C_out × C_in) · V_ξ (C_in × tiles)` with `U_ξ = Σ_j G[ξ][j]·w[·,·,j]`
//! (weights, [`OperandLayout::Winograd`]) and `V_ξ = Σ_i Bᵀ[ξ][i]·d_i` (the input, [`input_transform`]); then
//! `y = Aᵀ·M` per tile ([`output_transform`]), with the bias and a residual added.
//!
//! The interpolation points (0, 1, −1, 2, −½ and ∞) are the set with the smallest f32 error we found: about 1.5×
//! the direct sum's (RMS 7.6e-7 vs 5.3e-7 relative on 768 channels), far inside the parity bounds. Not the same
//! bits as the direct conv, and an output depends on where its tile starts, so layers opt in
//! (`ConvConfig::winograd`) only where they never stream (outputs must match across input cuts).

use std::sync::OnceLock;

use candle_core::Result;
use rayon::prelude::*;

use super::gemm::{gemm, Epilogue, Output, Strided};
use super::weight::{GemmWeight, Matrix, OperandLayout, Side};

/// Output steps per tile.
const TILE: usize = 4;
/// Products per tile and channel pair (input samples per tile).
const POINTS: usize = TILE + 2;

/// Aᵀ: the tile's outputs from the six products.
const AT: [[f32; POINTS]; TILE] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -0.5, 0.0],
    [0.0, 1.0, 1.0, 4.0, 0.25, 0.0],
    [0.0, 1.0, -1.0, 8.0, -0.125, 1.0],
];

/// G: the transformed filter from the three taps.
pub(crate) const G: [[f32; 3]; POINTS] = [
    [1.0, 0.0, 0.0],
    [-1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0],
    [1.0 / 3.0, -1.0 / 3.0, 1.0 / 3.0],
    [1.0 / 15.0, 2.0 / 15.0, 4.0 / 15.0],
    [-16.0 / 15.0, 8.0 / 15.0, -4.0 / 15.0],
    [0.0, 0.0, 1.0],
];

/// Bᵀ: the transformed input from the tile's six samples.
const BT: [[f32; POINTS]; POINTS] = [
    [1.0, 1.5, -2.0, -1.5, 1.0, 0.0],
    [0.0, -1.0, -2.5, -0.5, 1.0, 0.0],
    [0.0, 1.0, 0.5, -2.5, 1.0, 0.0],
    [0.0, -0.5, -1.0, 0.5, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 1.0, 1.5, -2.0, -1.5, 1.0],
];

/// Output steps below which a conv runs direct: the transforms' passes cost more than the multiplies saved.
pub(crate) const MIN_OUTPUT_STEPS: usize = 64;

/// A 3-tap conv's weights `(C_out, C_in, 3)` and their six transformed matrices, made on first use.
#[derive(Debug)]
pub(crate) struct WinogradWeights {
    source: Matrix,
    c_out: usize,
    c_in: usize,
    transformed: OnceLock<Vec<GemmWeight>>,
}

impl WinogradWeights {
    pub fn new(source: Matrix, c_out: usize, c_in: usize) -> Self {
        Self { source, c_out, c_in, transformed: OnceLock::new() }
    }

    /// `y (C_out × t_out) = conv(x) (+ bias per row, + residual)` for one item's signal `x` (C_in × t), zero-padded
    /// by `pad_left` on the left and as needed on the right.
    pub fn conv(
        &self,
        (x, t): (&[f32], usize),
        pad_left: usize,
        y: &mut [f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
    ) -> Result<()> {
        let t_out = y.len() / self.c_out.max(1);
        let transformed = super::get_or_try_init(&self.transformed, || {
            (0..POINTS)
                .map(|row| {
                    let layout = OperandLayout::Winograd { c_out: self.c_out, c_in: self.c_in, row };
                    GemmWeight::new(&self.source, layout, Side::Left)?
                        .ok_or_else(|| candle_core::Error::Msg("winograd conv weights not on the CPU".into()))
                })
                .collect()
        })?;
        let (c_in, c_out, tiles) = (self.c_in, self.c_out, t_out.div_ceil(TILE));
        let v = input_transform(x, c_in, t, pad_left, tiles);
        let plane = c_out * tiles;
        assert_eq!(transformed.len(), POINTS, "winograd: one transformed weight per point");
        let products = |m: *mut f32| {
            for (point, (u, v)) in transformed.iter().zip(v.chunks_exact(c_in * tiles)).enumerate() {
                let v = Strided::row_major(v, c_in, tiles).expect("sized above");
                // SAFETY: plane `point` is the `plane` floats from its offset, inside the POINTS · plane.
                let m = unsafe { Output::from_raw(m.add(point * plane), plane, (c_out, tiles), tiles, 1) };
                // Exact f32 in every precision (see `conv_cpu`: Winograd runs only where bf16 would gain nothing).
                let epi = Epilogue { exact: true, ..Default::default() };
                gemm(c_out, tiles, c_in, &u.operand(), &v, &mut m.expect("sized above"), &epi);
            }
        };
        // SAFETY: the POINTS products write every float of their planes.
        let m = unsafe { crate::mem::written_in_full(POINTS * plane, products) };
        output_transform(&m, tiles, y, t_out, bias, residual);
        Ok(())
    }
}

/// `V[ξ][c][τ] = Σ_i Bᵀ[ξ][i] · x̃[c, TILE·τ + i]` (x̃: `x` with `pad_left` zeros before it and zeros after), channels
/// across threads. Each padded row is first split into its TILE phases, `phase[i][τ] = x̃[TILE·τ + i]`, so every
/// sum runs over contiguous slices (`x̃[TILE·τ + 4 + i]` is `phase[i][τ + 1]`) and vectorises.
fn input_transform(x: &[f32], c_in: usize, t: usize, pad_left: usize, tiles: usize) -> Vec<f32> {
    let mut v = crate::mem::zeros_par(POINTS * c_in * tiles);
    let plane = c_in * tiles;
    // Each thread writes channel c's row of all six planes: hand out the planes' rows by channel.
    let rows: Vec<_> = {
        let mut planes: Vec<_> = v.chunks_exact_mut(plane).map(|p| p.chunks_exact_mut(tiles)).collect();
        (0..c_in).map(|_| std::array::from_fn::<_, POINTS, _>(|xi| planes[xi].next().expect("c_in rows"))).collect()
    };
    rows.into_par_iter().enumerate().for_each_init(Vec::new, |phases: &mut Vec<f32>, (c, out)| {
        let src = &x[c * t..(c + 1) * t];
        let len = tiles + 1;
        phases.clear();
        phases.resize(TILE * len, 0.0);
        for (s, &value) in src.iter().enumerate() {
            let padded = s + pad_left;
            if padded < TILE * len {
                phases[(padded % TILE) * len + padded / TILE] = value;
            }
        }
        let p = |i: usize, shift: usize| &phases[i * len + shift..i * len + shift + tiles];
        let d: [&[f32]; POINTS] = [p(0, 0), p(1, 0), p(2, 0), p(3, 0), p(0, 1), p(1, 1)];
        for (out, bt) in out.into_iter().zip(&BT) {
            combine(out, &d, bt);
        }
    });
    v
}

/// `y[o, TILE·τ + r] = Σ_ξ Aᵀ[r][ξ] · M[ξ][o][τ] (+ bias[o], + residual)` for the steps below `t_out`, rows across
/// threads.
fn output_transform(
    m: &[f32],
    tiles: usize,
    y: &mut [f32],
    t_out: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) {
    let plane = m.len() / POINTS;
    y.par_chunks_mut(t_out).enumerate().for_each_init(Vec::new, |steps: &mut Vec<f32>, (o, y)| {
        steps.clear();
        steps.resize(TILE * tiles, 0.0);
        let products: [&[f32]; POINTS] = std::array::from_fn(|xi| &m[xi * plane + o * tiles..][..tiles]);
        for (out, at) in steps.chunks_exact_mut(tiles).zip(&AT) {
            combine(out, &products, at);
        }
        let b = bias.map_or(0.0, |b| b[o]);
        for (u, v) in y.iter_mut().enumerate() {
            *v = steps[(u % TILE) * tiles + u / TILE] + b;
        }
        if let Some(r) = residual {
            for (v, &r) in y.iter_mut().zip(&r[o * t_out..(o + 1) * t_out]) {
                *v += r;
            }
        }
    });
}

/// `out = Σ_k coefficients[k] · terms[k]`, the zero coefficients skipped, one vectorised pass per term.
fn combine(out: &mut [f32], terms: &[&[f32]; POINTS], coefficients: &[f32; POINTS]) {
    out.fill(0.0);
    for (term, &c) in terms.iter().zip(coefficients) {
        if c != 0.0 {
            super::wide_simd(
                #[inline(always)]
                || {
                    for (o, &v) in out.iter_mut().zip(*term) {
                        *o += c * v;
                    }
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::VarBuilder;

    use super::super::activation::Activation;
    use super::super::conv::{Conv1d, ConvConfig};
    use super::super::test_util::max_abs_diff;

    /// Against candle's direct conv1d on a zero-padded input, with bias and a fused residual, over lengths that
    /// leave partial tiles. (Weights read in place from a file: `weight::tests::in_place_weights_match_packed_tensors`.)
    #[test]
    fn winograd_conv_matches_direct_conv() {
        let dev = Device::Cpu;
        for &(c_in, c_out, t, pad) in &[(96, 80, 301, 1), (64, 64, 64, 1), (40, 72, 203, 2), (33, 17, 130, 0)] {
            let w = (Tensor::randn(0f32, 1., (c_out, c_in, 3), &dev).unwrap() / (3.0 * c_in as f64).sqrt()).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let tensors = [("weight".to_string(), w.clone()), ("bias".to_string(), bias.clone())].into();
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
            let conv = Conv1d::new(c_in, c_out, ConvConfig::torch(3, pad).winograd(), vb.into()).unwrap();
            let x = Tensor::randn(0f32, 1., (2, c_in, t), &dev).unwrap();
            let want = x.pad_with_zeros(2, pad, pad).unwrap().conv1d(&w, 0, 1, 1, 1).unwrap();
            let want = want.broadcast_add(&bias.reshape((1, c_out, 1)).unwrap()).unwrap();
            let got = conv.forward(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let err = max_abs_diff(&got, &want);
            assert!(err < 2e-5, "case {:?}: {err}", (c_in, c_out, t, pad));
            // Not the direct kernel's bits (the path under test ran).
            assert!(err > 0.0, "case {:?}", (c_in, c_out, t, pad));
            let residual = Tensor::randn(0f32, 1., got.dims(), &dev).unwrap();
            let fused = conv.forward_add(&x, &residual).unwrap();
            assert_eq!(max_abs_diff(&fused, &(&got + &residual).unwrap()), 0.0);
            // An activation applied after the output transform: the same bits as the op on its own.
            let activated = conv.forward_then(&x, Some(&Activation::Elu)).unwrap();
            assert_eq!(max_abs_diff(&activated, &Activation::Elu.apply(&got).unwrap()), 0.0);
        }
    }
}
