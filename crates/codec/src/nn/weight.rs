//! Where layers get their weights, and how a weight matrix becomes a GEMM operand on the CPU.
//!
//! A model is built from [`Weights`]: tensors by name, from a model file or any candle `VarBuilder`. Layers that
//! multiply by a matrix take it with [`Weights::matrix`]: when the file stores it as f32, that is the file's own bytes
//! in the memory map, not a copy. Such a `GemmWeight` is read in place by the GEMM's packing on its first run and
//! packed into the kernel's panel layout on its second. So a one-shot `codec encode` allocates and writes nothing for
//! its weights (copying them and faulting in fresh pages for the copies was most of the start-up), while a server,
//! a benchmark or a stream that runs the layer again gets packed weights from then on.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use candle_core::{Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use super::gemm::{PackA, PackB, Packed, PackedQ8};
use super::{f32_vec, pack_at_build};
use crate::gguf::{MappedF32, MappedQ8_0, ModelFile};

/// The weights a model is built from: candle's `VarBuilder` for tensors, plus in-place matrices when they come
/// from a model file.
#[derive(Clone)]
pub struct Weights<'a> {
    vb: VarBuilder<'a>,
    /// The file the tensors come from, and the name prefixes that stand in as placeholders (`models::Parts`).
    file: Option<(&'a ModelFile, &'static [&'static str])>,
}

impl<'a> From<VarBuilder<'a>> for Weights<'a> {
    fn from(vb: VarBuilder<'a>) -> Self {
        Self { vb, file: None }
    }
}

impl<'a> Weights<'a> {
    /// Tensors through `vb`, whose backend reads `file`; matrices under `placeholders` are not mapped.
    pub(crate) fn from_file(vb: VarBuilder<'a>, file: &'a ModelFile, placeholders: &'static [&'static str]) -> Self {
        Self { vb, file: Some((file, placeholders)) }
    }

    /// The weights under `prefix.`.
    pub fn pp(&self, prefix: impl ToString) -> Self {
        Self { vb: self.vb.pp(prefix), file: self.file }
    }

    /// The device the tensors are loaded onto.
    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    /// Tensor `name`, which must have shape `shape`, as an f32 tensor of its own.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.vb.get(shape, name)
    }

    /// Matrix `name` of shape `shape` for a GEMM layer: in place in the mapped file where it is stored as f32 or
    /// q8_0 and the model runs on the CPU, else a tensor of its own.
    pub fn matrix(&self, shape: impl Into<Shape>, name: &str) -> Result<Matrix> {
        let shape = shape.into();
        if let (Some((file, placeholders)), true) = (self.file, self.device().is_cpu()) {
            let prefix = self.vb.prefix();
            let full = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
            let in_place =
                file.tensor_shape(&full) == Some(shape.dims()) && !placeholders.iter().any(|p| full.starts_with(p));
            if in_place {
                let error = |e: crate::Error| candle_core::Error::Msg(e.to_string());
                if let Some(data) = file.mapped_f32(&full).map_err(error)? {
                    return Ok(Matrix::Mapped(data, shape));
                }
                if let Some(blocks) = file.mapped_q8_0(&full).map_err(error)? {
                    return Ok(Matrix::Q8_0(blocks, shape));
                }
            }
        }
        Ok(Matrix::Tensor(self.vb.get(shape, name)?))
    }
}

/// A weight matrix as loaded: f32 values or q8_0 blocks in the mapped model file, or a tensor.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// f32 values read in place from the mapped file, with the matrix's shape.
    Mapped(MappedF32, Shape),
    /// q8_0 blocks in place in the mapped file, with the matrix's shape.
    Q8_0(MappedQ8_0, Shape),
    /// A tensor of its own (other dtypes, other devices, derived matrices).
    Tensor(Tensor),
}

impl From<Tensor> for Matrix {
    fn from(t: Tensor) -> Self {
        Self::Tensor(t)
    }
}

impl Matrix {
    /// Rows `indices` (N,) u32 → (N, cols): a codebook lookup.
    pub fn rows(&self, indices: &Tensor) -> Result<Tensor> {
        match self {
            Self::Tensor(t) => t.index_select(indices, 0),
            Self::Q8_0(..) => self.clone().into_tensor()?.index_select(indices, 0),
            Self::Mapped(data, shape) => {
                let (rows, cols) = shape.dims2()?;
                let (data, indices) = (data.as_slice(), indices.to_vec1::<u32>()?);
                let mut out = Vec::with_capacity(indices.len() * cols);
                for &i in &indices {
                    let i = i as usize;
                    if i >= rows {
                        candle_core::bail!("index {i} out of range for {rows} rows");
                    }
                    out.extend_from_slice(&data[i * cols..(i + 1) * cols]);
                }
                Tensor::from_vec(out, (indices.len(), cols), &Device::Cpu)
            }
        }
    }

    /// As a tensor (a copy if mapped), for the layers and devices our GEMM does not serve.
    pub fn into_tensor(self) -> Result<Tensor> {
        match self {
            Self::Mapped(data, shape) => Tensor::from_slice(data.as_slice(), shape, &Device::Cpu),
            Self::Q8_0(blocks, shape) => Tensor::from_vec(blocks.dequantize(), shape, &Device::Cpu),
            Self::Tensor(t) => Ok(t),
        }
    }
}

/// How a weight stored row-major (as in the file) is read as a GEMM operand.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OperandLayout {
    /// The stored `rows × cols` matrix itself (a conv's `C_out × C_in·K`).
    AsStored { rows: usize, cols: usize },
    /// The transpose of the stored `rows × cols` matrix (a linear layer's `Wᵀ`).
    Transposed { rows: usize, cols: usize },
    /// A transposed conv weight `(C_in, C_out, K)` as its `stride` output phases stacked (see `conv_cpu`):
    /// `A[(r, o), (i, m)] = w[i, o, r + m·stride]`, zero past the kernel.
    Phases { c_in: usize, c_out: usize, kernel: usize, stride: usize },
    /// A 3-tap conv weight `(C_out, C_in, 3)` as row `row` of its Winograd transform (see `winograd`):
    /// `A[o, i] = Σ_j G[row][j] · w[o, i, j]`.
    Winograd { c_out: usize, c_in: usize, row: usize },
}

impl OperandLayout {
    /// Rows and columns of the operand.
    pub fn dims(self) -> (usize, usize) {
        match self {
            Self::AsStored { rows, cols } => (rows, cols),
            Self::Transposed { rows, cols } => (cols, rows),
            Self::Phases { c_in, c_out, kernel, stride } => (stride * c_out, c_in * kernel.div_ceil(stride)),
            Self::Winograd { c_out, c_in, .. } => (c_out, c_in),
        }
    }

    /// Stored elements it reads.
    fn stored_len(self) -> usize {
        match self {
            Self::AsStored { rows, cols } | Self::Transposed { rows, cols } => rows * cols,
            Self::Phases { c_in, c_out, kernel, .. } => c_in * c_out * kernel,
            Self::Winograd { c_out, c_in, .. } => c_out * c_in * 3,
        }
    }
}

/// Which factor of the product a weight is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Left,
    Right,
}

/// A stored weight read through an [`OperandLayout`].
#[derive(Clone, Copy)]
pub(crate) struct WeightView<'a> {
    data: &'a [f32],
    layout: OperandLayout,
}

impl WeightView<'_> {
    fn strided(&self) -> Option<super::gemm::Strided<'_>> {
        match self.layout {
            OperandLayout::AsStored { rows, cols } => super::gemm::Strided::row_major(self.data, rows, cols),
            OperandLayout::Transposed { rows, cols } => super::gemm::Strided::transposed(self.data, rows, cols),
            OperandLayout::Phases { .. } | OperandLayout::Winograd { .. } => None,
        }
    }
}

impl PackA for WeightView<'_> {
    fn pack_a(&self, rows: Range<usize>, ks: Range<usize>, mr: usize, dst: &mut [f32]) {
        if let OperandLayout::Winograd { c_in, row, .. } = self.layout {
            return self.pack_winograd(rows, ks, mr, dst, c_in, &super::winograd::G[row]);
        }
        let OperandLayout::Phases { c_out, kernel, stride, .. } = self.layout else {
            let strided = self.strided().expect("a stored matrix is strided");
            return strided.pack_a(rows, ks, mr, dst);
        };
        // Phase rows gathered from the stored (C_in, C_out, K) weight, columns walked as (channel, tap) pairs.
        // Row (r, o) at depth (channel, m) reads w[channel, o, r + m·stride]: per panel each lane's `o·K + r`
        // once, then each depth writes the panel's lanes side by side (a lane-by-lane walk down the depth cost
        // 6 % of a Mimi decode reading its weights in place).
        let (kc, taps) = (ks.len(), kernel.div_ceil(stride));
        let mut lanes: Vec<Option<(usize, usize)>> = vec![None; mr];
        for (panel, r0) in rows.clone().step_by(mr).enumerate() {
            let dst = &mut dst[panel * mr * kc..(panel + 1) * mr * kc];
            for (i, lane) in lanes.iter_mut().enumerate() {
                let row = r0 + i;
                // (phase r, offset of w[·, o, r] within a channel's block)
                *lane = (row < rows.end).then(|| (row / c_out, row % c_out * kernel + row / c_out));
            }
            let (mut channel, mut m) = (ks.start / taps, ks.start % taps);
            for out in dst.chunks_exact_mut(mr) {
                let block = &self.data[channel * c_out * kernel..(channel + 1) * c_out * kernel];
                for (d, lane) in out.iter_mut().zip(&lanes) {
                    *d = match *lane {
                        Some((r, at)) if r + m * stride < kernel => block[at + m * stride],
                        _ => 0.0,
                    };
                }
                m += 1;
                if m == taps {
                    (channel, m) = (channel + 1, 0);
                }
            }
        }
    }
}

impl WeightView<'_> {
    /// Panels of `Σ_j g[j] · w[o, i, j]` over rows o and depth i from the stored `(C_out, c_in, 3)` weight: each
    /// lane's transformed row computed whole (vectorised), then the lanes written across the panel.
    fn pack_winograd(
        &self,
        rows: Range<usize>,
        ks: Range<usize>,
        mr: usize,
        dst: &mut [f32],
        c_in: usize,
        g: &[f32; 3],
    ) {
        let kc = ks.len();
        let mut lines = vec![0f32; mr * kc];
        for (panel, r0) in rows.clone().step_by(mr).enumerate() {
            let lanes = mr.min(rows.end - r0);
            for (lane, line) in lines.chunks_exact_mut(kc).take(lanes).enumerate() {
                let o = r0 + lane;
                let taps = &self.data[(o * c_in + ks.start) * 3..(o * c_in + ks.end) * 3];
                super::wide_simd(
                    #[inline(always)]
                    || {
                        for (d, w) in line.iter_mut().zip(taps.chunks_exact(3)) {
                            *d = g[0] * w[0] + g[1] * w[1] + g[2] * w[2];
                        }
                    },
                );
            }
            let dst = &mut dst[panel * mr * kc..(panel + 1) * mr * kc];
            super::gemm::pack_lines(|lane| &lines[lane * kc..(lane + 1) * kc], lanes, mr, dst);
            if lanes < mr {
                dst.chunks_exact_mut(mr).for_each(|d| d[lanes..].fill(0.0));
            }
        }
    }
}

impl PackB for WeightView<'_> {
    fn pack_b(&self, ks: Range<usize>, cols: Range<usize>, nr: usize, dst: &mut [f32]) {
        match self.strided() {
            Some(strided) => strided.pack_b(ks, cols, nr, dst),
            // Transposed convs and Winograd transforms are only ever the left factor.
            None => unreachable!("a transposed conv's phases or a Winograd transform as a right factor"),
        }
    }
}

/// Runs a mapped weight is read in place before it is packed: packing costs about two in-place runs' worth of
/// reading, so a one-shot command over a clip (its one or two pieces) never pays it, and a stream, a long input or a
/// server packs from its third run on.
const IN_PLACE_RUNS: usize = 2;

/// A layer's weight matrix as a GEMM operand on the CPU.
#[derive(Debug)]
pub(crate) enum GemmWeight {
    /// In the mapped model file: read in place on the first [`IN_PLACE_RUNS`] runs, then packed.
    InPlace { data: MappedF32, layout: OperandLayout, side: Side, packed: OnceLock<Packed>, runs: AtomicUsize },
    /// Packed when the layer was built: weights that had to be converted into a tensor of their own anyway
    /// (f16 files, derived matrices), whose f32 copy is then freed.
    Packed { packed: Packed, layout: OperandLayout },
    /// A linear layer's q8_0 blocks in the mapped model file: multiplied as they are in `--precision int8`
    /// ([`GemmWeight::quantized`]), widened and packed on the first f32 or bf16 product.
    Q8_0 { blocks: MappedQ8_0, layout: OperandLayout, packed: OnceLock<Packed> },
}

impl GemmWeight {
    /// The operand for `matrix` read through `layout`; `None` for a tensor our GEMM does not take (not on the CPU,
    /// not f32, or a placeholder; see `nn::pack_at_build`).
    pub fn new(matrix: &Matrix, layout: OperandLayout, side: Side) -> Result<Option<Self>> {
        let check = |data: &[f32]| match data.len() == layout.stored_len() {
            true => Ok(()),
            false => Err(candle_core::Error::Msg(format!(
                "weight has {} values, the layer reads {}",
                data.len(),
                layout.stored_len()
            ))),
        };
        match matrix {
            Matrix::Mapped(data, _) => {
                check(data.as_slice())?;
                let (packed, runs) = (OnceLock::new(), AtomicUsize::new(0));
                Ok(Some(Self::InPlace { data: data.clone(), layout, side, packed, runs }))
            }
            // A linear layer's Wᵀ (the right factor, q8_0 blocks along its depth, each row whole blocks) is kept
            // as blocks.
            Matrix::Q8_0(blocks, _)
                if matches!((layout, side), (OperandLayout::Transposed { rows, cols }, Side::Right)
                    if PackedQ8::takes_q8_0(blocks.blocks().len(), cols, rows)) =>
            {
                Ok(Some(Self::Q8_0 { blocks: blocks.clone(), layout, packed: OnceLock::new() }))
            }
            Matrix::Q8_0(blocks, _) => {
                let data = blocks.dequantize();
                check(&data)?;
                Ok(Some(Self::Packed { packed: pack(WeightView { data: &data, layout }, side), layout }))
            }
            Matrix::Tensor(t) if pack_at_build(t) => {
                let data = f32_vec(t)?;
                check(&data)?;
                Ok(Some(Self::Packed { packed: pack(WeightView { data: &data, layout }, side), layout }))
            }
            Matrix::Tensor(_) => Ok(None),
        }
    }

    /// Rows and columns of the operand.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::InPlace { layout, .. } | Self::Packed { layout, .. } | Self::Q8_0 { layout, .. } => layout.dims(),
        }
    }

    /// The right factor in q8_0 blocks for `--precision int8` (a linear layer's Wᵀ): a q8_0 file's own blocks, or
    /// the weights quantised by the same rule.
    pub fn quantized(&self) -> PackedQ8 {
        let (depth, cols) = self.dims();
        match self {
            Self::Q8_0 { blocks, .. } => {
                let packed = PackedQ8::from_q8_0(blocks.blocks(), depth, cols);
                blocks.release_pages();
                // `new` keeps only what `from_q8_0` takes (`takes_q8_0`) as blocks.
                packed.expect("a linear layer's q8_0 blocks")
            }
            // A linear layer's W read in place: quantised from its rows, no panels packed first.
            Self::InPlace { data, layout: OperandLayout::Transposed { .. }, .. } => {
                PackedQ8::from_rows(data.as_slice(), depth, cols)
            }
            _ => PackedQ8::b(&self.operand(), depth, cols),
        }
    }

    /// Packs the weight now (and converts it to bf16 pairs with `bf16`) instead of over its first products: for
    /// layers that run once per generated step, whose first runs would read it in place and pack it mid-generation.
    pub fn prepare(&self, bf16: bool) {
        if let Self::InPlace { runs, .. } = self {
            runs.fetch_max(IN_PLACE_RUNS, Ordering::Relaxed);
        }
        if let (Operand::Packed(packed), true) = (self.operand(), bf16) {
            packed.prepare_pairs();
        }
    }

    /// The operand for one product.
    pub fn operand(&self) -> Operand<'_> {
        match self {
            Self::Packed { packed, .. } => Operand::Packed(packed),
            Self::Q8_0 { blocks, layout, packed } => Operand::Packed(packed.get_or_init(|| {
                let packed = pack(WeightView { data: &blocks.dequantize(), layout: *layout }, Side::Right);
                blocks.release_pages();
                packed
            })),
            Self::InPlace { data, layout, side, packed, runs } => {
                let view = WeightView { data: data.as_slice(), layout: *layout };
                if let Some(p) = packed.get() {
                    Operand::Packed(p)
                } else if runs.fetch_add(1, Ordering::Relaxed) >= IN_PLACE_RUNS {
                    Operand::Packed(packed.get_or_init(|| {
                        let packed = pack(view, *side);
                        // The packed copy replaces the file's bytes in memory from now on.
                        data.release_pages();
                        packed
                    }))
                } else {
                    Operand::InPlace(view)
                }
            }
        }
    }
}

fn pack(view: WeightView, side: Side) -> Packed {
    let (rows, cols) = view.layout.dims();
    match side {
        Side::Left => Packed::a(&view, rows, cols),
        Side::Right => Packed::b(&view, rows, cols),
    }
}

/// A weight operand for one product: packed, or read in place.
pub(crate) enum Operand<'a> {
    Packed(&'a Packed),
    InPlace(WeightView<'a>),
}

impl PackA for Operand<'_> {
    fn pack_a(&self, rows: Range<usize>, ks: Range<usize>, mr: usize, dst: &mut [f32]) {
        match self {
            Self::Packed(p) => p.pack_a(rows, ks, mr, dst),
            Self::InPlace(v) => v.pack_a(rows, ks, mr, dst),
        }
    }
    fn packed_a(&self, rows: Range<usize>, ks: Range<usize>, mr: usize) -> Option<&[f32]> {
        match self {
            Self::Packed(p) => p.packed_a(rows, ks, mr),
            Self::InPlace(_) => None,
        }
    }
    fn packed_a_pairs(&self, rows: Range<usize>, ks: Range<usize>, mr: usize) -> Option<&[u32]> {
        match self {
            Self::Packed(p) => p.packed_a_pairs(rows, ks, mr),
            Self::InPlace(_) => None,
        }
    }
}

impl PackB for Operand<'_> {
    fn pack_b(&self, ks: Range<usize>, cols: Range<usize>, nr: usize, dst: &mut [f32]) {
        match self {
            Self::Packed(p) => p.pack_b(ks, cols, nr, dst),
            Self::InPlace(v) => v.pack_b(ks, cols, nr, dst),
        }
    }
    fn packed_b(&self, ks: Range<usize>, cols: Range<usize>, nr: usize) -> Option<&[f32]> {
        match self {
            Self::Packed(p) => p.packed_b(ks, cols, nr),
            Self::InPlace(_) => None,
        }
    }
    fn packed_b_pairs(&self, ks: Range<usize>, cols: Range<usize>, nr: usize) -> Option<&[u32]> {
        match self {
            Self::Packed(p) => p.packed_b_pairs(ks, cols, nr),
            Self::InPlace(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Module, Tensor};

    use super::*;
    use crate::gguf::{StorageDtype, Writer};
    use crate::nn::conv::{Conv1d, ConvConfig, ConvTranspose1d, PadMode, Padding};
    use crate::nn::linear::Linear;
    use crate::nn::rvq::EuclideanCodebook;

    /// Layers built over a mapped f32 file (read in place on the first run, packed on the second) give exactly
    /// what the same layers built from tensors give (packed when built), on every run.
    #[test]
    fn in_place_weights_match_packed_tensors() {
        let dev = Device::Cpu;
        let tensors: HashMap<String, Tensor> = [
            ("conv.weight", vec![6, 5, 3]),
            ("tconv.weight", vec![5, 4, 8]),
            ("linear.weight", vec![7, 5]),
            ("codebook.embed", vec![9, 5]),
            ("wconv.weight", vec![6, 5, 3]),
        ]
        .into_iter()
        .map(|(name, shape)| (name.to_string(), Tensor::randn(0f32, 1., shape, &dev).unwrap()))
        .chain([("conv.bias".to_string(), Tensor::randn(0f32, 1., 6, &dev).unwrap())])
        .chain([("tconv.bias".to_string(), Tensor::randn(0f32, 1., 4, &dev).unwrap())])
        .collect();
        let path = std::env::temp_dir().join(format!("codec-weight-test-{}.gguf", std::process::id()));
        let mut w = Writer::new("test", "test");
        for (name, t) in &tensors {
            w.tensor(name, t, StorageDtype::F32, true).unwrap();
        }
        w.write(&path).unwrap();
        let file = ModelFile::open(&path).unwrap();
        let mapped = Weights::from_file(VarBuilder::from_tensors(tensors.clone(), DType::F32, &dev), &file, &[]);
        let owned: Weights = VarBuilder::from_tensors(tensors, DType::F32, &dev).into();
        assert!(matches!(mapped.matrix((7, 5), "linear.weight").unwrap(), Matrix::Mapped(..)));
        assert!(matches!(owned.matrix((7, 5), "linear.weight").unwrap(), Matrix::Tensor(..)));

        let conv =
            |vb: &Weights| Conv1d::new(5, 6, ConvConfig::new(3, Padding::Causal, PadMode::Constant), vb.pp("conv"));
        let tconv = |vb: &Weights| {
            ConvTranspose1d::new(5, 4, ConvConfig::new(8, Padding::Causal, PadMode::Constant).stride(4), vb.pp("tconv"))
        };
        let linear = |vb: &Weights| Linear::new(vb.matrix((7, 5), "linear.weight")?, None);
        let codebook = |vb: &Weights| EuclideanCodebook::new(9, 5, vb.pp("codebook"));
        let wconv = |vb: &Weights| Conv1d::new(5, 6, ConvConfig::torch(3, 1).bias(false).winograd(), vb.pp("wconv"));
        let x = Tensor::randn(0f32, 1., (2, 5, 40), &dev).unwrap();
        let rows = Tensor::randn(0f32, 1., (40, 5), &dev).unwrap();
        let same = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        };
        let (c_m, c_o) = (conv(&mapped).unwrap(), conv(&owned).unwrap());
        let (t_m, t_o) = (tconv(&mapped).unwrap(), tconv(&owned).unwrap());
        let (l_m, l_o) = (linear(&mapped).unwrap(), linear(&owned).unwrap());
        let (q_m, q_o) = (codebook(&mapped).unwrap(), codebook(&owned).unwrap());
        let (w_m, w_o) = (wconv(&mapped).unwrap(), wconv(&owned).unwrap());
        let long = Tensor::randn(0f32, 1., (2, 5, 100), &dev).unwrap();
        // A few samples: the convs' narrow (transposed) products.
        let short = x.narrow(2, 0, 3).unwrap().contiguous().unwrap();
        for _run in 0..3 {
            same(&c_m.forward(&x).unwrap(), &c_o.forward(&x).unwrap());
            same(&t_m.forward(&x).unwrap(), &t_o.forward(&x).unwrap());
            same(&c_m.forward(&short).unwrap(), &c_o.forward(&short).unwrap());
            same(&t_m.forward(&short).unwrap(), &t_o.forward(&short).unwrap());
            same(&l_m.forward(&rows).unwrap(), &l_o.forward(&rows).unwrap());
            same(&w_m.forward(&long).unwrap(), &w_o.forward(&long).unwrap());
            let codes = q_m.encode(&rows).unwrap();
            assert_eq!(codes.to_vec1::<u32>().unwrap(), q_o.encode(&rows).unwrap().to_vec1::<u32>().unwrap());
            same(&q_m.decode(&codes).unwrap(), &q_o.decode(&codes).unwrap());
        }
        // A codebook lookup past the last entry is an error, not a panic.
        assert!(q_m.decode(&Tensor::new(&[9u32], &dev).unwrap()).is_err());
        let _ = std::fs::remove_file(&path);
    }

    /// A linear weight stored as q8_0 stays as its blocks (`Matrix::Q8_0`) and multiplies, in f32, exactly as the
    /// same weight loaded as a tensor (widened at load) does; its quantised form is the file's blocks.
    #[test]
    fn q8_0_linear_weights_stay_blocks_and_match_widened_ones() {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1., (40, 64), &dev).unwrap();
        let path = std::env::temp_dir().join(format!("codec-weight-q8-test-{}.gguf", std::process::id()));
        let mut w = Writer::new("test", "test");
        w.tensor("linear.weight", &weight, StorageDtype::Q8_0, false).unwrap();
        w.write(&path).unwrap();
        let file = ModelFile::open(&path).unwrap();
        let widened = file.load_tensor("linear.weight", &dev).unwrap();
        let tensors = HashMap::from([("linear.weight".to_string(), widened.clone())]);
        let mapped = Weights::from_file(VarBuilder::from_tensors(tensors, DType::F32, &dev), &file, &[]);
        let matrix = mapped.matrix((40, 64), "linear.weight").unwrap();
        assert!(matches!(matrix, Matrix::Q8_0(..)));
        let x = Tensor::randn(0f32, 1., (9, 64), &dev).unwrap();
        let from_blocks = Linear::new(matrix.clone(), None).unwrap().forward(&x).unwrap();
        let from_tensor = Linear::new(widened.clone(), None).unwrap().forward(&x).unwrap();
        assert_eq!(from_blocks.to_vec2::<f32>().unwrap(), from_tensor.to_vec2::<f32>().unwrap());
        let layout = OperandLayout::Transposed { rows: 40, cols: 64 };
        let native = GemmWeight::new(&matrix, layout, Side::Right).unwrap().unwrap().quantized();
        let requantised = GemmWeight::new(&Matrix::Tensor(widened), layout, Side::Right).unwrap().unwrap().quantized();
        assert_eq!(format!("{native:?}"), format!("{requantised:?}"));
        assert!(native == requantised, "the file's blocks and the widened weights quantised again differ");
        let _ = std::fs::remove_file(&path);
    }
}
