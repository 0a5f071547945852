//! Linear layers, `y = x · Wᵀ + b` over the last dim: our GEMM on CPU (the weight as the right factor, see
//! `nn::weight`; the bias added in the GEMM's epilogue), candle's matmul on other devices.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};

use super::activation::Activation;
use super::gemm::{gemm, gemm_int8, precision, Epilogue, Output, PackedQ8, Precision, RowFunction, Strided};
use super::weight::{GemmWeight, Matrix, OperandLayout, Side};
use super::{f32_slice, f32_vec, gemm_form, kept};

/// A linear layer (`nn.Linear`): weight (out, in), optional bias (out).
#[derive(Debug, Clone)]
pub struct Linear {
    /// (out, in); `None` when the CPU kernel has it (`packed`).
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    /// The CPU GEMM form (see `nn::weight::GemmWeight`), made when built.
    packed: Option<Arc<PackedLinear>>,
    /// Which fast modes its products may take.
    arithmetic: Arithmetic,
}

/// How a packed layer's products may run besides f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arithmetic {
    /// Model weights: bf16 or int8 as the precision says.
    Any,
    /// Derived matrices (the ISTFT bases): bf16 at most; int8 steps would be audible noise.
    NoInt8,
    /// f32 always (codebook distances).
    Exact,
}

#[derive(Debug)]
struct PackedLinear {
    /// Wᵀ as the GEMM's right factor (in × out).
    weight_t: GemmWeight,
    bias: Option<Vec<f32>>,
    /// Wᵀ in q8_0 blocks for `--precision int8`: made when built if that is the precision then, else on the
    /// first int8 product.
    int8: OnceLock<PackedQ8>,
}

impl PackedLinear {
    /// `None` where our GEMM does not take the weight (see [`GemmWeight::new`]).
    fn new(weight: &Matrix, layout: OperandLayout, bias: Option<&Tensor>) -> Result<Option<Self>> {
        let Some(weight_t) = GemmWeight::new(weight, layout, Side::Right)? else { return Ok(None) };
        Ok(Some(Self { weight_t, bias: bias.map(f32_vec).transpose()?, int8: OnceLock::new() }))
    }
}

impl Linear {
    /// `weight` (out, in), `bias` (out). On CPU the weight becomes a GEMM operand here (read in place from a
    /// mapped file, or packed and its f32 copy dropped; see `nn::weight`).
    pub fn new(weight: impl Into<Matrix>, bias: Option<Tensor>) -> Result<Self> {
        Self::weight_out_in(weight.into(), bias, Arithmetic::Any)
    }

    /// `nn.Linear(c_in, c_out, bias)` from `vb`: `weight` (out, in) and, with `bias`, `bias` (out).
    pub fn load(c_in: usize, c_out: usize, bias: bool, vb: super::Weights) -> Result<Self> {
        let bias = if bias { Some(vb.get(c_out, "bias")?) } else { None };
        Self::new(vb.matrix((c_out, c_in), "weight")?, bias)
    }

    /// A layer that computes in f32 whatever the precision (codebook distances).
    pub fn exact(weight: impl Into<Matrix>, bias: Option<Tensor>) -> Result<Self> {
        Self::weight_out_in(weight.into(), bias, Arithmetic::Exact)
    }

    /// `x · m` for a right factor `m` (in, out) as stored (the ISTFT bases).
    pub fn right_factor(m: Matrix, bias: Option<Tensor>) -> Result<Self> {
        let (inp, out) = matrix_dims(&m)?;
        Self::build(m, OperandLayout::AsStored { rows: inp, cols: out }, bias, Arithmetic::NoInt8, |t| t.t())
    }

    fn weight_out_in(weight: Matrix, bias: Option<Tensor>, arithmetic: Arithmetic) -> Result<Self> {
        let (out, inp) = matrix_dims(&weight)?;
        Self::build(weight, OperandLayout::Transposed { rows: out, cols: inp }, bias, arithmetic, Ok)
    }

    /// The layer with the CPU GEMM form of `weight` read through `layout`, or, where our GEMM does not take it,
    /// the weight as an (out, in) tensor (`out_in` turns the stored tensor into that).
    fn build(
        weight: Matrix,
        layout: OperandLayout,
        bias: Option<Tensor>,
        arithmetic: Arithmetic,
        out_in: impl FnOnce(Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let packed = PackedLinear::new(&weight, layout, bias.as_ref())?;
        // In int8 mode, quantise (f32 file) or repack (q8_0 file) now, with the loading, not on the first product:
        // that product is a streaming model's first frame (Pocket TTS's time to first audio).
        if let Some(p) = packed.as_ref().filter(|_| arithmetic == Arithmetic::Any && precision() == Precision::Int8) {
            p.int8.get_or_init(|| p.weight_t.quantized());
        }
        let packed = packed.map(Arc::new);
        let weight = if packed.is_some() { None } else { Some(out_in(weight.into_tensor()?)?) };
        Ok(Self { weight, bias, packed, arithmetic })
    }
}

impl Linear {
    /// Makes the weights ready for many products now, in the form the precision set now multiplies them in (packed
    /// f32, bf16 pairs, or q8_0 blocks), rather than over the layer's first runs: for layers run once per generated
    /// step (an autoregressive model), where that work would land in the first steps.
    pub fn prepare(&self) {
        let Some(p) = &self.packed else { return };
        match (self.arithmetic, precision()) {
            (Arithmetic::Any, Precision::Int8) => drop(p.int8.get_or_init(|| p.weight_t.quantized())),
            (Arithmetic::Exact, _) | (_, Precision::F32) => p.weight_t.prepare(false),
            _ => p.weight_t.prepare(true),
        }
    }
}

/// The two dims of a matrix weight.
fn matrix_dims(m: &Matrix) -> Result<(usize, usize)> {
    match m {
        Matrix::Mapped(_, shape) | Matrix::Q8_0(_, shape) => shape.dims2(),
        Matrix::Tensor(t) => t.dims2(),
    }
}

impl Linear {
    /// `forward(x) · scale + residual` (per-feature `scale`, none for 1; residual shaped like the output), the
    /// scale and the add done in the GEMM's epilogue on CPU — ConvNeXt's `x + γ · pwconv2(h)`, a transformer
    /// branch's `x + LayerScale · o_proj(h)`. The same operations in the same order as separate ops.
    pub fn forward_scale_add(&self, x: &Tensor, scale: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let scale = scale.map(f32_vec).transpose()?;
            let layer = gemm_form(&self.packed)?;
            let op = LinearOp { layer, arithmetic: self.arithmetic, col_scale: scale.as_deref(), activation: None };
            return x.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, &op);
        }
        let y = self.forward(x)?;
        match scale {
            Some(s) => residual + y.broadcast_mul(s)?,
            None => residual + y,
        }
    }
}

impl Linear {
    /// `activation(forward(x))`, the activation applied on CPU by the GEMM to each tile of the output as it is
    /// written (a transformer's or ConvNeXt's hidden layer): the same values as the two ops.
    pub fn forward_activated(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.cpu_forward(x, Some(activation));
        }
        activation.apply(&self.forward(x)?)
    }

    fn cpu_forward(&self, x: &Tensor, activation: Option<Activation>) -> Result<Tensor> {
        let op = LinearOp { layer: gemm_form(&self.packed)?, arithmetic: self.arithmetic, col_scale: None, activation };
        x.contiguous()?.apply_op1_no_bwd(&op)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.cpu_forward(x, None);
        }
        let y = x.broadcast_matmul(&kept(&self.weight)?.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// One product of a packed layer: the fast modes it may take, an optional per-feature scale and an activation.
struct LinearOp<'a> {
    layer: &'a PackedLinear,
    arithmetic: Arithmetic,
    col_scale: Option<&'a [f32]>,
    activation: Option<Activation>,
}

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "codec-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(f32_slice(storage, layout, "linear input")?, layout, None)
    }
}

/// With a residual (shaped like the output) added in the epilogue.
impl CustomOp2 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "codec-linear-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let residual = f32_slice(s2, l2, "linear residual")?;
        self.run(f32_slice(s1, l1, "linear input")?, l1, Some((residual, l2.shape())))
    }
}

impl LinearOp<'_> {
    fn run(&self, x: &[f32], layout: &Layout, residual: Option<(&[f32], &Shape)>) -> Result<(CpuStorage, Shape)> {
        let (k, n) = self.layer.weight_t.dims();
        let dims = layout.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("linear: input {:?} does not end in {k} features", dims);
        }
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked above") = n;
        let shape = Shape::from(shape);
        if let Some((_, r)) = residual {
            if r != &shape {
                candle_core::bail!("linear: residual {r:?} does not match the output {shape:?}");
            }
        }
        if self.col_scale.is_some_and(|s| s.len() != n) {
            candle_core::bail!("linear: {} scales for {n} features", self.col_scale.map_or(0, |s| s.len()));
        }
        let m = x.len() / k.max(1);
        let hook = self.activation.map(|a| move |_: usize, values: &mut [f32]| a.in_place(values));
        let a = Strided::row_major(x, m, k).expect("sized from x");
        let epi = Epilogue {
            col_bias: self.layer.bias.as_deref(),
            col_scale: self.col_scale,
            residual: residual.map(|(r, _)| r),
            exact: self.arithmetic == Arithmetic::Exact,
            activation: hook.as_ref().map(|h| h as RowFunction),
            ..Default::default()
        };
        let product = |out: *mut f32| {
            // SAFETY: `out` is the m × n buffer being filled.
            let mut y = unsafe { Output::from_raw(out, m * n, (m, n), n, 1) }.expect("sized above");
            if self.arithmetic == Arithmetic::Any && precision() == Precision::Int8 {
                let weight_t = self.layer.int8.get_or_init(|| self.layer.weight_t.quantized());
                gemm_int8(m, n, x, weight_t, &mut y, &epi);
            } else {
                gemm(m, n, k, &a, &self.layer.weight_t.operand(), &mut y, &epi);
            }
        };
        // SAFETY: both products write every element of their output (no zero fill first).
        let out = unsafe { crate::mem::written_in_full(m * n, product) };
        Ok((CpuStorage::F32(out), shape))
    }
}
