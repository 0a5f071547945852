//! 1-D convolutions with the padding rules of the codec references: moshi/EnCodec's `StreamingConv1d` /
//! `StreamingConvTranspose1d` (the input is padded so that the output has exactly `ceil(T / stride)` frames, on the
//! left only for causal models, split around the centre otherwise) and torch's plain `padding=` (DAC). Transposed
//! convolutions run unpadded and are trimmed afterwards.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Module, Result, Tensor, D};

use super::activation::ChannelActivation;
use super::conv_cpu::{Conv1dOp, ConvTranspose1dOp, DepthwiseConv1dOp, PackedConv, PrefixedConv1dOp};
use super::{compact, f32_vec, gemm_form, get_or_try_init, kept, sum_all, Weights};

/// How the border of a padded signal is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    /// Zeros.
    Constant,
    /// Copies of the edge sample.
    Replicate,
    /// The signal mirrored at its edge, the edge sample not repeated (torch's `reflect`).
    Reflect,
}

impl PadMode {
    /// `constant` (or `zeros`), `replicate` or `reflect`, as the references' configs spell them; `None` otherwise.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "constant" | "zeros" => Some(Self::Constant),
            "replicate" => Some(Self::Replicate),
            "reflect" => Some(Self::Reflect),
            _ => None,
        }
    }
}

/// Pads the last dim of `x` (B, C, T) by `left`/`right` samples.
pub fn pad1d(x: &Tensor, left: usize, right: usize, mode: PadMode) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    match mode {
        PadMode::Constant => x.pad_with_zeros(D::Minus1, left, right),
        PadMode::Replicate => x.pad_with_same(D::Minus1, left, right),
        PadMode::Reflect => {
            let len = x.dim(D::Minus1)?;
            // Like torch, reflection needs more samples than the pad; short inputs are zero-extended first.
            let extra = (left.max(right) + 1).saturating_sub(len);
            let x = x.pad_with_zeros(D::Minus1, 0, extra)?;
            let len = len + extra;
            let idx: Vec<u32> =
                (1..=left).rev().chain(0..len).chain((0..right).map(|i| len - 2 - i)).map(|i| i as u32).collect();
            let idx = Tensor::new(idx, x.device())?;
            let y = x.index_select(&idx, 2)?;
            y.narrow(D::Minus1, 0, y.dim(D::Minus1)? - extra)
        }
    }
}

/// Where the `k_eff − stride` samples of padding (or, transposed, of trim) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// All on the left, plus what completes the last window on the right: `ceil(T / stride)` frames (causal SEANet).
    Causal,
    /// Split around the centre (the extra sample on the left), plus what completes the last window (EnCodec).
    Centered,
    /// torch's `padding=p` on both sides; transposed: trims `p` on the left and `p − output_padding` on the right.
    Torch {
        /// Samples of padding on each side (transposed: of trim).
        padding: usize,
        /// Transposed only: trims this many samples fewer on the right (torch's `output_padding`).
        output_padding: usize,
    },
}

/// Hyper-parameters of one convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvConfig {
    /// Taps of the kernel.
    pub kernel_size: usize,
    /// Step between output windows, in input samples (transposed: output samples per input sample).
    pub stride: usize,
    /// Spacing of the kernel taps, in samples.
    pub dilation: usize,
    /// Channel groups: 1 is a dense conv, the channel count a depthwise one.
    pub groups: usize,
    /// Whether the layer has a bias (`bias` tensor).
    pub bias: bool,
    /// Where the padding goes (transposed: the trim).
    pub padding: Padding,
    /// How padded samples are filled.
    pub pad_mode: PadMode,
    /// A 3-tap dense conv may run as Winograd's F(4, 3) (`nn::winograd`): half the multiplies, within f32 rounding
    /// of the direct sum but not the same bits, and an output depends on where its tile starts. Only for layers
    /// that never stream.
    pub winograd: bool,
}

impl ConvConfig {
    /// A dense conv, stride 1, dilation 1, with bias.
    pub fn new(kernel_size: usize, padding: Padding, pad_mode: PadMode) -> Self {
        Self { kernel_size, stride: 1, dilation: 1, groups: 1, bias: true, padding, pad_mode, winograd: false }
    }
    /// torch's `Conv1d(kernel_size, padding=p)` with zero padding.
    pub fn torch(kernel_size: usize, padding: usize) -> Self {
        Self::new(kernel_size, Padding::Torch { padding, output_padding: 0 }, PadMode::Constant)
    }
    /// With stride `stride`.
    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }
    /// With dilation `dilation`.
    pub fn dilation(self, dilation: usize) -> Self {
        Self { dilation, ..self }
    }
    /// With `groups` channel groups.
    pub fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
    /// With or without a bias.
    pub fn bias(self, bias: bool) -> Self {
        Self { bias, ..self }
    }
    /// Allowed to run as Winograd's F(4, 3) (see the field).
    pub fn winograd(self) -> Self {
        Self { winograd: true, ..self }
    }
}

/// Conv1d over (B, C, T) with reference padding. Weight `[c_out, c_in / groups, k]` (`weight`), bias `[c_out]`.
#[derive(Debug, Clone)]
pub struct Conv1d {
    /// `None` once packed for the CPU kernels (the f32 copy is freed).
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    cfg: ConvConfig,
    /// Depthwise convs on CPU: weight (C, K) and bias as plain vectors, read on first use.
    depthwise: OnceLock<Arc<DepthwiseWeights>>,
    /// The CPU GEMM form of the weights (see `nn::weight::GemmWeight`), made when built.
    packed: Option<Arc<PackedConv>>,
    out_channels: usize,
}

/// A depthwise conv's weight (C, K) and bias as plain vectors.
type DepthwiseWeights = (Vec<f32>, Option<Vec<f32>>);

impl Conv1d {
    /// A conv from `c_in` to `c_out` channels, `weight` (and `bias`) under `vb`; dense ones packed for the CPU
    /// kernels.
    pub fn new(c_in: usize, c_out: usize, cfg: ConvConfig, vb: Weights) -> Result<Self> {
        let dims = (c_out, c_in / cfg.groups, cfg.kernel_size);
        let weight = vb.matrix(dims, "weight")?;
        let bias = if cfg.bias { Some(vb.get(c_out, "bias")?) } else { None };
        let packed = match cfg.groups {
            1 => PackedConv::conv1d(&weight, dims, bias.as_ref())?
                .map(|p| if cfg.winograd { p.with_winograd(&weight) } else { p })
                .map(Arc::new),
            _ => None,
        };
        let weight = if packed.is_some() { None } else { Some(weight.into_tensor()?) };
        Ok(Self { weight, bias, cfg, depthwise: OnceLock::new(), packed, out_channels: c_out })
    }

    /// Input samples one output sample spans (the dilated kernel), and the stride.
    pub fn span_and_stride(&self) -> (usize, usize) {
        ((self.cfg.kernel_size - 1) * self.cfg.dilation + 1, self.cfg.stride)
    }

    /// Output samples for an input of `len` (after this conv's padding).
    pub fn output_len(&self, len: usize) -> usize {
        let (left, right) = self.padding(len);
        let (span, stride) = self.span_and_stride();
        (len + left + right).saturating_sub(span) / stride + 1
    }

    /// Left and right padding for an input of `len` samples. Streaming styles pad `(k_eff - stride)` in total plus
    /// whatever makes the last window complete, so the output has `ceil(len / stride)` frames.
    fn padding(&self, len: usize) -> (usize, usize) {
        let c = &self.cfg;
        let k_eff = (c.kernel_size - 1) * c.dilation + 1;
        let total = k_eff.saturating_sub(c.stride);
        let n_frames = (len + total).saturating_sub(k_eff).div_ceil(c.stride) + 1;
        let ideal = (n_frames - 1) * c.stride + k_eff - total;
        let extra = ideal.saturating_sub(len);
        match c.padding {
            Padding::Causal => (total, extra),
            Padding::Centered => (total - total / 2, total / 2 + extra),
            Padding::Torch { padding, .. } => (padding, padding),
        }
    }

    /// The CPU GEMM op for `x` (f32 on CPU, not grouped), and whether it pads inside: zero padding, and reflect
    /// padding shorter than the input, happen while the input is packed; other modes pad the input first.
    fn gemm_op<'s>(
        &'s self,
        x: &Tensor,
        (left, right): (usize, usize),
        activation: Option<&'s dyn ChannelActivation>,
    ) -> Result<Option<(Conv1dOp<'s>, bool)>> {
        let c = &self.cfg;
        if !(x.device().is_cpu() && x.dtype() == DType::F32 && c.groups == 1) {
            return Ok(None);
        }
        let len = x.dim(D::Minus1)?;
        let weights = gemm_form(&self.packed)?;
        let reflect = c.pad_mode == PadMode::Reflect && left < len && right < len;
        let inside = c.pad_mode == PadMode::Constant || reflect || (left == 0 && right == 0);
        let op = Conv1dOp { activation, ..Conv1dOp::new(weights, (c.stride, c.dilation), (left, right), reflect) };
        Ok(Some((op, inside)))
    }

    /// `forward(x) + residual`, the add fused into the convolution on CPU.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_add_then(x, residual, None)
    }

    /// `forward(x) + residual`, then `activation` if given: both in the products' epilogue on CPU (a residual
    /// unit whose output only the next layer's activation reads).
    pub fn forward_add_then(
        &self,
        x: &Tensor,
        residual: &Tensor,
        activation: Option<&dyn ChannelActivation>,
    ) -> Result<Tensor> {
        match self.gemm_op(x, self.padding(x.dim(D::Minus1)?), activation)? {
            Some((op, true)) => x.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, &op),
            _ => {
                let y = (self.forward(x)? + residual)?;
                match activation {
                    Some(a) => a.apply(&y),
                    None => Ok(y),
                }
            }
        }
    }

    /// `activation(forward(x))` with an activation: on CPU applied by the products to the output as they write
    /// it (a layer whose output only that activation reads), no pass of its own over the output.
    pub fn forward_then(&self, x: &Tensor, activation: Option<&dyn ChannelActivation>) -> Result<Tensor> {
        self.forward_padded(x, self.padding(x.dim(D::Minus1)?), activation)
    }

    fn depthwise_on_cpu(&self, x: &Tensor, channels: usize) -> bool {
        let c = &self.cfg;
        x.device().is_cpu() && x.dtype() == DType::F32 && c.groups == channels && c.stride == 1
    }

    /// The depthwise CPU op on `x` (already padded unless zero padding `pads` is given).
    fn depthwise_op(&self, x: &Tensor, (pad_left, pad_right): (usize, usize), channels_last: bool) -> Result<Tensor> {
        let vectors = get_or_try_init(&self.depthwise, || {
            Ok(Arc::new((f32_vec(kept(&self.weight)?)?, self.bias.as_ref().map(f32_vec).transpose()?)))
        })?;
        let op = DepthwiseConv1dOp {
            weight: &vectors.0,
            bias: vectors.1.as_deref(),
            kernel: self.cfg.kernel_size,
            dilation: self.cfg.dilation,
            pad_left,
            pad_right,
            channels_last,
        };
        x.contiguous()?.apply_op1_no_bwd(&op)
    }

    /// A depthwise, stride-1 conv of padded `x` (B, C, T) as one multiply-add per tap over the whole tensor (devices
    /// other than the CPU): candle runs a grouped conv as one conv per group, thousands of launches for ConvNeXt.
    fn depthwise_with_tensor_ops(&self, x: &Tensor) -> Result<Tensor> {
        let (_, channels, len) = x.dims3()?;
        let (k, d) = (self.cfg.kernel_size, self.cfg.dilation);
        let span = (k - 1) * d + 1;
        if len < span {
            candle_core::bail!("depthwise conv: input of {len} samples is shorter than the kernel's span {span}");
        }
        let out_len = len - span + 1;
        let w = kept(&self.weight)?.reshape((1, channels, k))?;
        sum_all((0..k).map(|j| x.narrow(2, j * d, out_len)?.broadcast_mul(&w.narrow(2, j, 1)?)))
    }

    /// The conv on a channels-last input (B, T, C) → (B, T', C): in that layout on CPU for zero-padded depthwise
    /// convs (ConvNeXt, whose other ops are per time step, so the block needs no transposes); through (B, C, T)
    /// otherwise.
    pub fn forward_channels_last(&self, x: &Tensor) -> Result<Tensor> {
        let (_, t, channels) = x.dims3()?;
        if self.depthwise_on_cpu(x, channels) && self.cfg.pad_mode == PadMode::Constant {
            return self.depthwise_op(x, self.padding(t), true);
        }
        self.forward(&x.transpose(1, 2)?)?.transpose(1, 2)?.contiguous()
    }
}

/// A conv's streaming state: the input samples the next output frames still read (before the first step, the
/// left padding).
#[derive(Debug, Clone, Default)]
pub struct ConvState {
    pending: Option<Tensor>,
}

impl Conv1d {
    /// The next samples (B, C, T) of a stream → the output frames whose windows they complete, exactly those of
    /// [`Module::forward`] on the whole stream: a causal conv's at once, a centred one's once the samples its
    /// window reaches ahead to have come ([`Conv1d::flush`] ends the stream with the right padding).
    pub fn step(&self, x: &Tensor, state: &mut ConvState) -> Result<Tensor> {
        self.step_then(x, state, None)
    }

    /// [`Conv1d::step`], then `activation` as [`Conv1d::forward_then`] applies it.
    pub fn step_then(
        &self,
        x: &Tensor,
        state: &mut ConvState,
        activation: Option<&dyn ChannelActivation>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        // The stream so far: `left` virtual zeros (the padding, before the first step) or the carried samples,
        // then `x`.
        let (carried, left) = match state.pending.take() {
            Some(pending) => (Some(pending), 0),
            None => {
                let left = self.padding(0).0;
                match c.pad_mode {
                    PadMode::Constant => (None, left),
                    PadMode::Replicate if x.dim(D::Minus1)? > 0 => {
                        (Some(x.narrow(D::Minus1, 0, 1)?.repeat((1, 1, left))?), 0)
                    }
                    // Nothing to replicate yet: start when the first sample arrives.
                    PadMode::Replicate => return self.no_frames(x),
                    PadMode::Reflect => candle_core::bail!("reflect-padded convolutions do not stream"),
                }
            }
        };
        let (b, ch, len) = x.dims3()?;
        let p = carried.as_ref().map_or(Ok(0), |t| t.dim(D::Minus1))?;
        let span = (c.kernel_size - 1) * c.dilation + 1;
        let total = left + p + len;
        let frames = if total >= span { (total - span) / c.stride + 1 } else { 0 };
        // What the next frames read: the stream from position `used` on (a copy, not a view, which would keep this
        // whole step's input alive until the next step).
        let used = frames * c.stride;
        let mut rest = Vec::with_capacity(3);
        if used < left {
            rest.push(Tensor::zeros((b, ch, left - used), x.dtype(), x.device())?);
        }
        if let Some(carried) = &carried {
            let from = used.saturating_sub(left).min(p);
            rest.push(carried.narrow(D::Minus1, from, p - from)?);
        }
        let from = used.saturating_sub(left + p).min(len);
        rest.push(x.narrow(D::Minus1, from, len - from)?);
        state.pending = Some(compact(&Tensor::cat(&rest, D::Minus1)?)?);
        if frames == 0 {
            return self.no_frames(x);
        }
        match carried {
            Some(carried) => self.forward_after(&carried, x, activation),
            None => self.forward_padded(x, (left, 0), activation),
        }
    }

    /// The conv, unpadded, of `carried` followed by `x`: read in place on CPU, joined first elsewhere.
    fn forward_after(
        &self,
        carried: &Tensor,
        x: &Tensor,
        activation: Option<&dyn ChannelActivation>,
    ) -> Result<Tensor> {
        if x.dim(D::Minus1)? > 0 {
            if let Some((op, _)) = self.gemm_op(x, (0, 0), activation)? {
                return carried.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &PrefixedConv1dOp(op));
            }
        }
        self.forward_padded(&Tensor::cat(&[carried, x], D::Minus1)?, (0, 0), activation)
    }

    /// The end of a stream: the last output frames, over the right padding of one pass (torch's `padding`; none
    /// for a causal conv fed whole frames). Centred streaming padding depends on the whole length: not supported.
    pub fn flush(&self, state: &mut ConvState) -> Result<Tensor> {
        let Some(pending) = state.pending.take() else { candle_core::bail!("flush of a stream that never started") };
        let right = match self.cfg.padding {
            Padding::Causal => 0,
            Padding::Torch { padding, .. } => padding,
            Padding::Centered => candle_core::bail!("centred convolutions do not stream"),
        };
        let (b, ch, len) = pending.dims3()?;
        let (span, stride) = self.span_and_stride();
        if len + right < span {
            return self.no_frames(&pending);
        }
        let x =
            Tensor::cat(&[&pending, &Tensor::zeros((b, ch, right), pending.dtype(), pending.device())?], D::Minus1)?;
        let frames = (len + right - span) / stride + 1;
        self.forward_padded(&x.narrow(D::Minus1, 0, (frames - 1) * stride + span)?, (0, 0), None)
    }

    /// An empty output (B, C_out, 0) for an input like `x`.
    fn no_frames(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::zeros((x.dim(0)?, self.out_channels, 0), x.dtype(), x.device())
    }

    /// The conv of `x` with `left`/`right` samples of this layer's padding, then `activation`.
    fn forward_padded(
        &self,
        x: &Tensor,
        pads: (usize, usize),
        activation: Option<&dyn ChannelActivation>,
    ) -> Result<Tensor> {
        let y = match self.gemm_op(x, pads, activation)? {
            Some((op, true)) => return x.contiguous()?.apply_op1_no_bwd(&op),
            Some((op, false)) => {
                let x = pad1d(x, pads.0, pads.1, self.cfg.pad_mode)?.contiguous()?;
                return x.apply_op1_no_bwd(&Conv1dOp { pad_left: 0, pad_right: 0, ..op });
            }
            None => self.forward_other(x, pads)?,
        };
        match activation {
            Some(a) => a.apply(&y),
            None => Ok(y),
        }
    }

    /// The conv of `x` where the GEMM op does not take it (depthwise, grouped, other devices).
    fn forward_other(&self, x: &Tensor, (left, right): (usize, usize)) -> Result<Tensor> {
        let c = &self.cfg;
        if self.depthwise_on_cpu(x, x.dim(1)?) {
            let x = if c.pad_mode == PadMode::Constant { x.clone() } else { pad1d(x, left, right, c.pad_mode)? };
            let (left, right) = if c.pad_mode == PadMode::Constant { (left, right) } else { (0, 0) };
            return self.depthwise_op(&x, (left, right), false);
        }
        let x = pad1d(x, left, right, c.pad_mode)?;
        let y = if c.groups > 1 && c.groups == x.dim(1)? && c.groups == self.out_channels && c.stride == 1 {
            self.depthwise_with_tensor_ops(&x)?
        } else {
            x.conv1d(kept(&self.weight)?, 0, c.stride, c.dilation, c.groups)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1))?),
            None => Ok(y),
        }
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_padded(x, self.padding(x.dim(D::Minus1)?), None)
    }
}

/// Transposed Conv1d over (B, C, T): output `(T - 1) * stride + k` trimmed by `k - stride` samples — all on the right
/// when causal (`trim_right_ratio` 1), split around the centre when centered — or as torch's `padding` /
/// `output_padding` say. Weight `[c_in, c_out / groups, k]`.
#[derive(Debug, Clone)]
pub struct ConvTranspose1d {
    /// `None` once packed for the CPU kernels (the f32 copy is freed).
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    kernel_size: usize,
    stride: usize,
    groups: usize,
    padding: Padding,
    /// The CPU GEMM form of the weights, made when built.
    packed: Option<Arc<PackedConv>>,
    out_channels: usize,
}

impl ConvTranspose1d {
    /// A transposed conv from `c_in` to `c_out` channels, `weight` (and `bias`) under `vb`. Grouped ones must be
    /// depthwise with a kernel a multiple of the stride (else an error).
    pub fn new(c_in: usize, c_out: usize, cfg: ConvConfig, vb: Weights) -> Result<Self> {
        let dims = (c_in, c_out / cfg.groups, cfg.kernel_size);
        let weight = vb.matrix(dims, "weight")?;
        let bias = if cfg.bias { Some(vb.get(c_out, "bias")?) } else { None };
        if cfg.groups != 1 && !(cfg.groups == c_in && c_in == c_out && cfg.kernel_size.is_multiple_of(cfg.stride)) {
            candle_core::bail!("grouped transposed conv is supported only depthwise with kernel a multiple of stride");
        }
        let packed = match cfg.groups {
            1 => PackedConv::conv_transpose1d(&weight, dims, bias.as_ref(), cfg.stride)?.map(Arc::new),
            _ => None,
        };
        let weight = if packed.is_some() { None } else { Some(weight.into_tensor()?) };
        Ok(Self {
            weight,
            bias,
            kernel_size: cfg.kernel_size,
            stride: cfg.stride,
            groups: cfg.groups,
            padding: cfg.padding,
            packed,
            out_channels: c_out,
        })
    }

    /// Depthwise transposed conv as broadcast multiply + shifted sums: each input sample writes `k` outputs, the
    /// `k / stride` stride-long slices of which land `stride` apart. Avoids candle's per-channel group loop.
    fn depthwise(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t) = x.dims3()?;
        let (k, s) = (self.kernel_size, self.stride);
        let w = kept(&self.weight)?.reshape((1, c, 1, k))?;
        let prod = x.unsqueeze(3)?.broadcast_mul(&w)?; // (B, C, T, K)
        let out_len = (t - 1) * s + k;
        sum_all((0..k / s).map(|j| {
            let part = prod.narrow(3, j * s, s)?.reshape((b, c, t * s))?;
            part.pad_with_zeros(2, j * s, out_len - t * s - j * s)
        }))
    }
}

/// A transposed conv's streaming state: the last `K − stride` output samples of the frames so far, which the next
/// frames still add to (without bias), and how many of the stream's first samples are still to be trimmed.
#[derive(Debug, Clone, Default)]
pub struct ConvTransposeState {
    overlap: Option<Tensor>,
    trim_left: Option<usize>,
}

impl ConvTranspose1d {
    /// The full output `(T − 1)·stride + K` trimmed by `trim`, with or without the bias.
    fn forward_trimmed(&self, x: &Tensor, (left, right): (usize, usize), biased: usize) -> Result<Tensor> {
        if self.groups == 1 && x.device().is_cpu() && x.dtype() == DType::F32 {
            let weights = gemm_form(&self.packed)?;
            let op = ConvTranspose1dOp { weights, stride: self.stride, trim_left: left, trim_right: right, biased };
            return x.contiguous()?.apply_op1_no_bwd(&op);
        }
        let y = if self.groups == 1 {
            x.conv_transpose1d(kept(&self.weight)?, 0, 0, self.stride, 1, 1)?
        } else {
            self.depthwise(x)?
        };
        let len = y.dim(D::Minus1)?;
        let y = y.narrow(D::Minus1, left, len - left - right)?;
        let (len, biased) = (len - left - right, biased.min(len - left - right));
        match &self.bias {
            Some(_) if biased == len => self.with_bias(y),
            Some(_) if biased > 0 => Tensor::cat(
                &[self.with_bias(y.narrow(D::Minus1, 0, biased)?)?, y.narrow(D::Minus1, biased, len - biased)?],
                D::Minus1,
            ),
            _ => Ok(y),
        }
    }

    /// Samples trimmed from the full output's (left, right) ends.
    /// Output samples for an input of `len` frames: `(len − 1)·stride + K`, trimmed.
    pub fn output_len(&self, len: usize) -> usize {
        let (left, right) = self.trim();
        (len.saturating_sub(1) * self.stride + self.kernel_size).saturating_sub(left + right)
    }

    fn trim(&self) -> (usize, usize) {
        let total = self.kernel_size.saturating_sub(self.stride);
        match self.padding {
            Padding::Causal => (0, total),
            Padding::Centered => (total - total / 2, total / 2),
            Padding::Torch { padding, output_padding } => (padding, padding.saturating_sub(output_padding)),
        }
    }

    /// The next frames (B, C, T) of a stream → the output samples they make final: later frames only add to samples
    /// after the first `T · stride`. Equal to [`Module::forward`] on the whole stream up to rounding (a cut's
    /// overlap is summed in two parts; a stream's first step gives the bits of one pass); [`ConvTranspose1d::flush`]
    /// gives the rest. Kernels up to twice the stride (every codec's), so the overlap lies within one step.
    pub fn step(&self, x: &Tensor, state: &mut ConvTransposeState) -> Result<Tensor> {
        let (t, s) = (x.dim(D::Minus1)?, self.stride);
        let tail = self.kernel_size.saturating_sub(s);
        if tail > s {
            candle_core::bail!("transposed convolutions with a kernel over twice the stride do not stream");
        }
        let to_trim = state.trim_left.get_or_insert(self.trim().0);
        if t == 0 {
            // Nothing yet; an empty overlap of the right shape lets a flush end the stream.
            let y = Tensor::zeros((x.dim(0)?, self.out_channels, 0), x.dtype(), x.device())?;
            state.overlap.get_or_insert_with(|| y.clone());
            return Ok(y);
        }
        // Everything the frames make, in one product (the weights read once, not again for the last frame's
        // overlap): the first T·s samples with the bias, as one pass computes them, then the `tail` the last frame
        // adds beyond them, without bias (the next step adds to them).
        let full = self.forward_trimmed(x, (0, 0), t * s)?;
        let y = full.narrow(D::Minus1, 0, t * s)?.contiguous()?;
        let overlap = state.overlap.replace(compact(&full.narrow(D::Minus1, t * s, tail)?)?);
        if let Some(overlap) = overlap.filter(|o| o.dim(D::Minus1).is_ok_and(|n| n == tail && n > 0)) {
            let head = (y.narrow(D::Minus1, 0, tail)? + overlap)?;
            y.slice_set(&head, D::Minus1, 0)?;
        }
        let drop = (*to_trim).min(t * s);
        *to_trim -= drop;
        y.narrow(D::Minus1, drop, t * s - drop)
    }

    /// The end of a stream: the overlap's samples that one pass keeps (none for a causal conv).
    pub fn flush(&self, state: &mut ConvTransposeState) -> Result<Tensor> {
        let Some(overlap) = state.overlap.take() else { candle_core::bail!("flush of a stream that never started") };
        let len = overlap.dim(D::Minus1)?;
        let drop = state.trim_left.take().unwrap_or(0).min(len);
        let keep = len.saturating_sub(self.trim().1).saturating_sub(drop);
        self.with_bias(overlap.narrow(D::Minus1, drop, keep)?)
    }

    fn with_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1))?),
            None => Ok(y),
        }
    }
}

impl Module for ConvTranspose1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_trimmed(x, self.trim(), usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{VarBuilder, VarMap};

    /// The off-CPU depthwise path (one multiply-add per tap) equals candle's grouped conv, dilated too.
    #[test]
    fn depthwise_with_tensor_ops_matches_grouped_conv() {
        let dev = Device::Cpu;
        for &(c, k, d) in &[(6, 7, 1), (4, 3, 2), (5, 1, 1)] {
            let varmap = VarMap::new();
            let cfg = ConvConfig::torch(k, 0).groups(c).dilation(d);
            let build = || Conv1d::new(c, c, cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev).into()).unwrap();
            // Register the weights, give them random values, then build the layer from those.
            build();
            for var in varmap.all_vars() {
                var.set(&Tensor::randn(0f32, 1.0, var.shape(), &dev).unwrap()).unwrap();
            }
            let conv = build();
            let x = Tensor::randn(0f32, 1., (2, c, 40), &dev).unwrap();
            let got = conv.depthwise_with_tensor_ops(&x).unwrap();
            let want = x.conv1d(kept(&conv.weight).unwrap(), 0, 1, d, c).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff: f32 = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(diff < 1e-5 && scale > 0.5, "case {:?}: diff {diff}, scale {scale}", (c, k, d));
        }
    }
}
