//! Linear layers, `y = x · Wᵀ + b` over the last dim: our GEMM on CPU (the weight packed once, when the layer is
//! built, as the right factor; the bias added in the GEMM's epilogue), candle's matmul on other devices.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};

use super::gemm::{gemm, Epilogue, Output, Packed, Strided};
use super::{f32_slice, f32_vec, get_or_try_init, kept, pack_at_build};

#[derive(Debug, Clone)]
pub struct Linear {
    /// (out, in); `None` once packed for the CPU kernel (the f32 copy is freed).
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    packed: OnceLock<Arc<PackedLinear>>,
    /// Always f32, also under `--precision bf16` (see `gemm::Epilogue::exact`).
    exact: bool,
}

#[derive(Debug)]
struct PackedLinear {
    /// Wᵀ as the GEMM's right factor (in × out).
    weight_t: Packed,
    bias: Option<Vec<f32>>,
}

impl PackedLinear {
    fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out, inp) = weight.dims2()?;
        let w = f32_vec(weight)?;
        let view = Strided::transposed(&w, out, inp).ok_or_else(|| candle_core::Error::Msg("linear weight".into()))?;
        Ok(Self { weight_t: Packed::b(&view, inp, out), bias: bias.map(f32_vec).transpose()? })
    }
}

impl Linear {
    /// `weight` (out, in), `bias` (out). On CPU the weight is packed here and its f32 copy dropped
    /// (`nn::pack_at_build`).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let packed = OnceLock::new();
        if pack_at_build(&weight) {
            let _ = packed.set(Arc::new(PackedLinear::new(&weight, bias.as_ref())?));
            return Ok(Self { weight: None, bias, packed, exact: false });
        }
        Ok(Self { weight: Some(weight), bias, packed, exact: false })
    }

    /// A layer that computes in f32 whatever the precision (codebook distances).
    pub fn exact(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self { exact: true, ..Self::new(weight, bias)? })
    }

    /// `x · m` for a right factor `m` (in, out) as stored (the ISTFT bases).
    pub fn right_factor(m: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::new(m.t()?, bias)
    }

    fn packed(&self) -> Result<&PackedLinear> {
        get_or_try_init(&self.packed, || Ok(Arc::new(PackedLinear::new(kept(&self.weight)?, self.bias.as_ref())?)))
            .map(|p| p.as_ref())
    }
}

impl Linear {
    /// `forward(x) · scale + residual` (per-feature `scale`, residual shaped like the output), the scale and the
    /// add done in the GEMM's epilogue on CPU — ConvNeXt's `x + γ · pwconv2(h)`.
    pub fn forward_scale_add(&self, x: &Tensor, scale: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let scale = f32_vec(scale)?;
            let op = LinearOp { layer: self.packed()?, exact: self.exact, col_scale: Some(&scale) };
            return x.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, &op);
        }
        residual + self.forward(x)?.broadcast_mul(scale)?
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let op = LinearOp { layer: self.packed()?, exact: self.exact, col_scale: None };
            return x.contiguous()?.apply_op1_no_bwd(&op);
        }
        let y = x.broadcast_matmul(&kept(&self.weight)?.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// One product of a packed layer: whether it stays f32, and an optional per-feature scale.
struct LinearOp<'a> {
    layer: &'a PackedLinear,
    exact: bool,
    col_scale: Option<&'a [f32]>,
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
        let (k, n) = (self.layer.weight_t.depth(), self.layer.weight_t.rows());
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
        let mut out = vec![0f32; m * n];
        let a = Strided::row_major(x, m, k).expect("sized from x");
        let mut y = Output::row_major(&mut out, m, n).expect("sized above");
        let epi = Epilogue {
            col_bias: self.layer.bias.as_deref(),
            col_scale: self.col_scale,
            residual: residual.map(|(r, _)| r),
            exact: self.exact,
            ..Default::default()
        };
        gemm(m, n, k, &a, &self.layer.weight_t, &mut y, &epi);
        Ok((CpuStorage::F32(out), shape))
    }
}
