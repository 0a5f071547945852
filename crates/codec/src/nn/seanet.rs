//! SEANet convolutional encoder/decoder (EnCodec, Mimi): strided convs between residual blocks, ELU activations.
//!
//! Tensor names (after the converter): `layers.{i}.conv.{weight,bias}` for the plain and (transposed) strided convs,
//! `layers.{i}.block.{1,3}.conv.*` inside residual blocks, `layers.{i}.shortcut.conv.*` for a conv shortcut. `i` counts
//! every module of the reference's sequential list, activations included, so indices match the checkpoints; an
//! encoder LSTM is `layers.{i}.lstm.*`.

use super::Weights;
use candle_core::{Module, Result, Tensor};

use super::activation::{elu, Activation, ChannelActivation};
use super::conv::{Conv1d, ConvConfig, ConvState, ConvTranspose1d, ConvTransposeState, PadMode, Padding};
use super::lstm::Lstm;

/// Hyper-parameters of a SEANet encoder/decoder pair (moshi's / EnCodec's `SEANetEncoder` arguments).
#[derive(Debug, Clone)]
pub struct SeanetConfig {
    /// Audio channels.
    pub channels: usize,
    /// Latent dimension at the bottleneck.
    pub dimension: usize,
    /// Channels after the encoder's first conv, doubled by each encoder stage.
    pub n_filters: usize,
    /// Decoder upsampling ratios; the encoder applies them reversed.
    pub ratios: Vec<usize>,
    /// Kernel of the first conv.
    pub kernel_size: usize,
    /// Kernel of the first conv in each residual block.
    pub residual_kernel_size: usize,
    /// Kernel of the last conv.
    pub last_kernel_size: usize,
    /// Residual block j of a stage has dilation `dilation_base^j`.
    pub dilation_base: usize,
    /// Residual blocks per stage.
    pub n_residual_layers: usize,
    /// A residual block's hidden channels are its channels divided by this.
    pub compress: usize,
    /// Convs pad on the left only (causal) rather than around the centre.
    pub causal: bool,
    /// How convs fill their padding.
    pub pad_mode: PadMode,
    /// Identity skip in residual blocks (Mimi); otherwise a 1x1 conv shortcut (EnCodec).
    pub true_skip: bool,
    /// LSTM layers (with skip) after the last encoder stage (EnCodec: 2; Mimi: 0).
    pub lstm_layers: usize,
}

impl SeanetConfig {
    fn conv(&self, kernel_size: usize) -> ConvConfig {
        let padding = if self.causal { Padding::Causal } else { Padding::Centered };
        ConvConfig::new(kernel_size, padding, self.pad_mode)
    }
}

/// ELU → conv(k, dilation) dim→dim/compress → ELU → conv k1 back to dim, plus the skip.
#[derive(Debug, Clone)]
struct ResidualBlock {
    conv1: Conv1d,
    conv2: Conv1d,
    shortcut: Option<Conv1d>,
}

impl ResidualBlock {
    fn new(dim: usize, dilation: usize, cfg: &SeanetConfig, vb: Weights) -> Result<Self> {
        let hidden = dim / cfg.compress;
        let conv1 =
            Conv1d::new(dim, hidden, cfg.conv(cfg.residual_kernel_size).dilation(dilation), vb.pp("block.1.conv"))?;
        let conv2 = Conv1d::new(hidden, dim, cfg.conv(1), vb.pp("block.3.conv"))?;
        let shortcut =
            if cfg.true_skip { None } else { Some(Conv1d::new(dim, dim, cfg.conv(1), vb.pp("shortcut.conv"))?) };
        Ok(Self { conv1, conv2, shortcut })
    }

    /// `x + conv2(elu(conv1(elu(x))))`, then `after` if given; the inner ELU applied by conv1 as it writes its
    /// output, `after` by conv2.
    fn forward(&self, x: &Tensor, after: Option<&dyn ChannelActivation>) -> Result<Tensor> {
        let y = self.conv1.forward_then(&elu(x)?, Some(&Activation::Elu))?;
        self.finish(x, &y, after)
    }

    /// [`Self::forward`] on the next samples of a stream (conv1 is the only layer with context).
    fn step(&self, x: &Tensor, state: &mut ConvState, after: Option<&dyn ChannelActivation>) -> Result<Tensor> {
        let y = self.conv1.step_then(&elu(x)?, state, Some(&Activation::Elu))?;
        self.finish(x, &y, after)
    }

    /// conv2 over `elu(conv1(…))` plus the skip of `x`: both pointwise, so a stream runs them as they are.
    fn finish(&self, x: &Tensor, activated: &Tensor, after: Option<&dyn ChannelActivation>) -> Result<Tensor> {
        let skip = match &self.shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        self.conv2.forward_add_then(activated, &skip, after)
    }
}

/// One entry of the sequential stack; `Elu` holds no weights but keeps the reference's numbering.
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv1d),
    ConvTranspose(ConvTranspose1d),
    Residual(Box<ResidualBlock>),
    Lstm(Lstm),
    Elu,
}

impl Layer {
    /// The layer on `x`; `after` (given to convs and residual blocks only, see [`fused_elu`]) inside its products.
    fn forward(&self, x: &Tensor, after: Option<&dyn ChannelActivation>) -> Result<Tensor> {
        match self {
            Layer::Conv(c) => c.forward_then(x, after),
            Layer::Residual(r) => r.forward(x, after),
            Layer::ConvTranspose(c) => c.forward(x),
            Layer::Lstm(l) => l.forward_with_skip(x),
            Layer::Elu => elu(x),
        }
    }
}

/// The ELU that layer `i` takes into its products where the next layer is one: a conv's or residual block's
/// output that only the ELU reads is never written unactivated.
fn fused_elu(layers: &[Layer], i: usize) -> Option<&'static dyn ChannelActivation> {
    let fuses =
        matches!(layers[i], Layer::Conv(_) | Layer::Residual(_)) && matches!(layers.get(i + 1), Some(Layer::Elu));
    fuses.then_some(&Activation::Elu)
}

/// Builds the numbered stack; `push` hands each new layer its index's weights.
struct Stack<'a> {
    layers: Vec<Layer>,
    vb: Weights<'a>,
}

impl Stack<'_> {
    fn vb(&self) -> Weights<'_> {
        self.vb.pp(self.layers.len().to_string())
    }
    fn conv(&mut self, c_in: usize, c_out: usize, cfg: ConvConfig) -> Result<()> {
        let conv = Conv1d::new(c_in, c_out, cfg, self.vb().pp("conv"))?;
        self.layers.push(Layer::Conv(conv));
        Ok(())
    }
    fn conv_transpose(&mut self, c_in: usize, c_out: usize, cfg: ConvConfig) -> Result<()> {
        let conv = ConvTranspose1d::new(c_in, c_out, cfg, self.vb().pp("conv"))?;
        self.layers.push(Layer::ConvTranspose(conv));
        Ok(())
    }
    fn residuals(&mut self, dim: usize, cfg: &SeanetConfig) -> Result<()> {
        for j in 0..cfg.n_residual_layers {
            let block = ResidualBlock::new(dim, cfg.dilation_base.pow(j as u32), cfg, self.vb())?;
            self.layers.push(Layer::Residual(Box::new(block)));
        }
        Ok(())
    }
    fn elu(&mut self) {
        self.layers.push(Layer::Elu);
    }
}

fn run(layers: &[Layer], x: &Tensor) -> Result<Tensor> {
    let (mut x, mut i) = (x.clone(), 0);
    while i < layers.len() {
        let after = fused_elu(layers, i);
        x = layers[i].forward(&x, after)?;
        i += 1 + usize::from(after.is_some());
    }
    Ok(x)
}

/// The streaming state of one layer of a stack.
#[derive(Debug, Clone)]
enum LayerState {
    Conv(ConvState),
    ConvTranspose(ConvTransposeState),
    Stateless,
}

/// A SEANet stack's streaming state: each layer's carried samples.
#[derive(Debug, Clone, Default)]
pub struct SeanetState {
    layers: Vec<LayerState>,
}

/// The next samples of a stream through `layers` (causal stacks; see [`Conv1d::step`]).
fn step(layers: &[Layer], x: &Tensor, state: &mut SeanetState) -> Result<Tensor> {
    if state.layers.is_empty() {
        state.layers = layers
            .iter()
            .map(|layer| match layer {
                Layer::Conv(_) | Layer::Residual(_) => LayerState::Conv(ConvState::default()),
                Layer::ConvTranspose(_) => LayerState::ConvTranspose(ConvTransposeState::default()),
                Layer::Lstm(_) | Layer::Elu => LayerState::Stateless,
            })
            .collect();
    }
    // The same ELUs fused as in `run`: the same bits.
    let (mut x, mut i) = (x.clone(), 0);
    while i < layers.len() {
        let after = fused_elu(layers, i);
        x = match (&layers[i], &mut state.layers[i]) {
            (Layer::Conv(c), LayerState::Conv(s)) => c.step_then(&x, s, after)?,
            (Layer::Residual(r), LayerState::Conv(s)) => r.step(&x, s, after)?,
            (Layer::ConvTranspose(c), LayerState::ConvTranspose(s)) => c.step(&x, s)?,
            (Layer::Elu, _) => elu(&x)?,
            _ => candle_core::bail!("this SEANet stack does not stream (an LSTM layer)"),
        };
        i += 1 + usize::from(after.is_some());
    }
    Ok(x)
}

/// A run of consecutive layers of a stack (an encoder's layers before or after its LSTM).
pub struct SeanetPart<'a> {
    layers: &'a [Layer],
}

impl SeanetPart<'_> {
    /// The layers' forward pass, (B, C, T) → (B, C', T').
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        run(self.layers, x)
    }

    /// How far, in input samples on either side, an output sample can look: every conv's full span at its input's
    /// scale (a bound; the centred padding splits it). Windows with this much input around what they keep give
    /// the bits of one pass.
    pub fn radius(&self) -> usize {
        let mut scale = 1;
        let mut radius = 0;
        for layer in self.layers {
            let convs: Vec<&Conv1d> = match layer {
                Layer::Conv(c) => vec![c],
                Layer::Residual(r) => [&r.conv1, &r.conv2].into_iter().chain(&r.shortcut).collect(),
                Layer::ConvTranspose(_) | Layer::Lstm(_) | Layer::Elu => vec![],
            };
            for conv in convs {
                let (span, _) = conv.span_and_stride();
                radius += (span - 1) * scale;
            }
            if let Layer::Conv(c) = layer {
                scale *= c.span_and_stride().1;
            }
        }
        radius
    }
}

/// Audio (B, channels, T) → latent (B, dimension, T / prod(ratios)).
#[derive(Debug, Clone)]
pub struct SeanetEncoder {
    layers: Vec<Layer>,
}

impl SeanetEncoder {
    /// The encoder `cfg` describes, layer `i`'s tensors under `{i}.` in `vb`.
    pub fn new(cfg: &SeanetConfig, vb: Weights) -> Result<Self> {
        let mut s = Stack { layers: vec![], vb };
        let mut mult = 1;
        s.conv(cfg.channels, cfg.n_filters, cfg.conv(cfg.kernel_size))?;
        for &ratio in cfg.ratios.iter().rev() {
            let dim = mult * cfg.n_filters;
            s.residuals(dim, cfg)?;
            s.elu();
            s.conv(dim, dim * 2, cfg.conv(ratio * 2).stride(ratio))?;
            mult *= 2;
        }
        if cfg.lstm_layers > 0 {
            let lstm = Lstm::new(mult * cfg.n_filters, cfg.lstm_layers, s.vb().pp("lstm"))?;
            s.layers.push(Layer::Lstm(lstm));
        }
        s.elu();
        s.conv(mult * cfg.n_filters, cfg.dimension, cfg.conv(cfg.last_kernel_size))?;
        Ok(Self { layers: s.layers })
    }

    /// Audio (B, channels, T) → latent (B, dimension, T / prod(ratios)).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        run(&self.layers, x)
    }

    /// The next samples of a stream (whole frames) → their part of [`Self::forward`] on the whole stream.
    pub fn step(&self, x: &Tensor, state: &mut SeanetState) -> Result<Tensor> {
        step(&self.layers, x, state)
    }

    /// The layers before the LSTM, the LSTM, the layers after it (`None` without an LSTM): a non-causal encoder
    /// streams its finite-context parts by windows and carries the LSTM's state between them.
    pub fn around_lstm(&self) -> Option<(SeanetPart<'_>, &Lstm, SeanetPart<'_>)> {
        let at = self.layers.iter().position(|l| matches!(l, Layer::Lstm(_)))?;
        let Layer::Lstm(lstm) = &self.layers[at] else { return None };
        Some((SeanetPart { layers: &self.layers[..at] }, lstm, SeanetPart { layers: &self.layers[at + 1..] }))
    }
}

/// Latent (B, dimension, F) → audio (B, channels, F * prod(ratios)).
#[derive(Debug, Clone)]
pub struct SeanetDecoder {
    layers: Vec<Layer>,
}

impl SeanetDecoder {
    /// The decoder `cfg` describes, layer `i`'s tensors under `{i}.` in `vb`.
    pub fn new(cfg: &SeanetConfig, vb: Weights) -> Result<Self> {
        let mut s = Stack { layers: vec![], vb };
        let mut mult = 1 << cfg.ratios.len();
        s.conv(cfg.dimension, mult * cfg.n_filters, cfg.conv(cfg.kernel_size))?;
        for &ratio in cfg.ratios.iter() {
            let dim = mult * cfg.n_filters;
            s.elu();
            s.conv_transpose(dim, dim / 2, cfg.conv(ratio * 2).stride(ratio))?;
            s.residuals(dim / 2, cfg)?;
            mult /= 2;
        }
        s.elu();
        s.conv(cfg.n_filters, cfg.channels, cfg.conv(cfg.last_kernel_size))?;
        Ok(Self { layers: s.layers })
    }

    /// Latent (B, dimension, F) → audio (B, channels, F * prod(ratios)).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        run(&self.layers, x)
    }

    /// The next samples of a stream (whole frames) → their part of [`Self::forward`] on the whole stream.
    pub fn step(&self, x: &Tensor, state: &mut SeanetState) -> Result<Tensor> {
        step(&self.layers, x, state)
    }
}
