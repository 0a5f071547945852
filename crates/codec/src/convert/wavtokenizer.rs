//! WavTokenizer Lightning checkpoints (`.ckpt` + the training YAML) → GGUF.
//!
//! Kept: `feature_extractor.encodec.encoder.*` (renamed to the SEANet names `encoder.layers.*`, weight norm folded,
//! LSTM biases summed), the codebook `…quantizer.vq.layers.N._codebook.embed`, `backbone.*` and `head.out.*`. Dropped:
//! the unused EnCodec decoder, discriminators, losses and codebook statistics. From the head's Hann window the
//! converter bakes the inverse-real-DFT basis (window folded in) and the squared window, so decoding needs no FFT.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use super::Job;
use crate::models::wavtokenizer::{WavTokenizer, WavTokenizerConfig, ARCH};
use crate::{Error, Result};

const ENCODER: &str = "feature_extractor.encodec.encoder.model.";
const QUANTIZER: &str = "feature_extractor.encodec.quantizer.vq.layers.";

/// True when the tensor names look like a WavTokenizer checkpoint.
pub fn looks_like_wavtokenizer(names: &[&String]) -> bool {
    names.iter().any(|n| n.starts_with(ENCODER)) && names.iter().any(|n| n.starts_with("backbone."))
}

/// Reads the Lightning checkpoint's `state_dict`.
pub fn read_ckpt(path: &Path) -> Result<HashMap<String, Tensor>> {
    super::pickle::check_torch_zip(path)?;
    let tensors = candle_core::pickle::read_all_with_key(path, Some("state_dict"))
        .map_err(|e| Error::convert(path, format!("cannot read the state_dict of this checkpoint: {e}")))?;
    if tensors.is_empty() {
        return Err(Error::convert(path, "no tensors under 'state_dict'"));
    }
    Ok(tensors.into_iter().collect())
}

/// Reads the LightningCLI YAML (`model.init_args.{sample_rate, feature_extractor, backbone, head}`); the SEANet
/// width and the latent size are not in it (the reference hard-codes them) and come from the tensors.
pub fn config_from_yaml(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<WavTokenizerConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let yaml: Json = serde_yaml::from_str(&text).map_err(|e| Error::convert(path, format!("invalid YAML: {e}")))?;
    let missing = |k: &str| Error::convert(path, format!("config lacks '{k}' (or it has the wrong type)"));
    let model = yaml.pointer("/model/init_args").ok_or_else(|| missing("model.init_args"))?;
    let get = |p: &str| model.pointer(p).ok_or_else(|| missing(&format!("model.init_args{}", p.replace('/', "."))));
    let uint = |p: &str| get(p)?.as_u64().map(|v| v as usize).ok_or_else(|| missing(p));
    let fe = "/feature_extractor/init_args";
    let bb = "/backbone/init_args";
    let hd = "/head/init_args";
    let downsamples = get(&format!("{fe}/dowmsamples"))?
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| missing("feature_extractor.init_args.dowmsamples"))?;
    let padding = get(&format!("{hd}/padding"))?.as_str().unwrap_or("");
    if padding != "same" {
        return Err(Error::convert(path, format!("ISTFT padding '{padding}' is not supported (only \"same\")")));
    }
    let shape = |name: &str| tensors.get(name).map(|t| t.dims().to_vec()).ok_or_else(|| missing(name));
    let first_conv =
        shape(&format!("{ENCODER}0.conv.conv.weight_v")).or_else(|_| shape(&format!("{ENCODER}0.conv.conv.weight")))?;
    let embed = shape(&format!("{QUANTIZER}0._codebook.embed"))?;
    let lstm_layers =
        (0..).take_while(|l| tensors.keys().any(|n| n.ends_with(&format!("lstm.weight_ih_l{l}")))).count();
    let cfg = WavTokenizerConfig {
        sample_rate: uint("/sample_rate")?,
        n_filters: first_conv[0],
        downsamples,
        lstm_layers,
        dimension: embed[1],
        codebook_size: uint(&format!("{fe}/vq_bins"))?,
        n_q: uint(&format!("{fe}/num_quantizers"))?,
        backbone_dim: uint(&format!("{bb}/dim"))?,
        intermediate_dim: uint(&format!("{bb}/intermediate_dim"))?,
        num_layers: uint(&format!("{bb}/num_layers"))?,
        adanorm_num_embeddings: uint(&format!("{bb}/adanorm_num_embeddings"))?,
        bandwidth_id: 0,
        n_fft: uint(&format!("{hd}/n_fft"))?,
        istft_hop: uint(&format!("{hd}/hop_length"))?,
    };
    if embed[0] != cfg.codebook_size {
        return Err(Error::convert(
            path,
            format!("vq_bins {} but the codebook has {} rows", cfg.codebook_size, embed[0]),
        ));
    }
    Ok(cfg)
}

/// The inverse real DFT of `n` points, times `window`, as two `(n/2 + 1, n)` matrices: frame = Re·real + Im·imag.
/// Row k weighs `c_k/n · (cos, −sin)(2πkn/N)` with c = 1 for DC and Nyquist, 2 elsewhere (irfft's Hermitian sum).
pub(crate) fn irfft_basis(window: &[f32]) -> candle_core::Result<(Tensor, Tensor)> {
    let n = window.len();
    let bins = n / 2 + 1;
    let mut real = Vec::with_capacity(bins * n);
    let mut imag = Vec::with_capacity(bins * n);
    for k in 0..bins {
        let c = if k == 0 || 2 * k == n { 1.0 } else { 2.0 };
        for (t, w) in window.iter().enumerate() {
            // k·t mod n keeps the angle small, so f64 cos/sin stay exact to the last bit of the f32 result.
            let angle = 2.0 * std::f64::consts::PI * ((k * t) % n) as f64 / n as f64;
            real.push((c * angle.cos() * *w as f64 / n as f64) as f32);
            imag.push((-c * angle.sin() * *w as f64 / n as f64) as f32);
        }
    }
    Ok((Tensor::from_vec(real, (bins, n), &Device::Cpu)?, Tensor::from_vec(imag, (bins, n), &Device::Cpu)?))
}

/// Converts a checkpoint's `state_dict` with its YAML architecture into a GGUF.
pub fn convert(job: &Job, tensors: HashMap<String, Tensor>, cfg: WavTokenizerConfig) -> Result<()> {
    let err = |msg: String| Error::convert(job.src, msg);
    // 1. Keep what the runtime uses, under its names; fold weight norm.
    let mut kept: HashMap<String, Tensor> = HashMap::new();
    let mut window = None;
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32).map_err(|e| err(format!("tensor '{name}': {e}")))?;
        if let Some(rest) = name.strip_prefix(ENCODER) {
            kept.insert(format!("encoder.layers.{}", rest.replacen(".conv.conv.", ".conv.", 1)), t);
        } else if let Some(rest) = name.strip_prefix(QUANTIZER) {
            if let Some(layer) = rest.strip_suffix("._codebook.embed") {
                kept.insert(format!("quantizer.layers.{layer}.codebook.embed"), t);
            }
        } else if name == "head.istft.window" {
            window = Some(t);
        } else if name.starts_with("backbone.") || name.starts_with("head.out.") {
            kept.insert(name, t);
        }
    }
    let mut plain = super::fold_weight_norms(job.src, kept)?;

    // 2. LSTM biases summed; the ISTFT tables from the window.
    let lstm_biases: Vec<String> = plain.keys().filter(|n| n.contains(".lstm.bias_ih_l")).cloned().collect();
    for ih in lstm_biases {
        let hh = ih.replace(".bias_ih_l", ".bias_hh_l");
        let (b_ih, b_hh) = (plain.remove(&ih), plain.remove(&hh));
        let (Some(b_ih), Some(b_hh)) = (b_ih, b_hh) else { return Err(err(format!("'{hh}' is missing"))) };
        let sum = (b_ih + b_hh).map_err(|e| err(format!("{ih}: {e}")))?;
        plain.insert(ih.replace(".bias_ih_l", ".bias_l"), sum);
    }
    let window = window.ok_or_else(|| err("'head.istft.window' is missing".into()))?;
    let window: Vec<f32> = window.flatten_all().and_then(|w| w.to_vec1()).map_err(|e| err(format!("window: {e}")))?;
    if window.len() != cfg.n_fft {
        return Err(err(format!("the ISTFT window has {} points, n_fft is {}", window.len(), cfg.n_fft)));
    }
    let (basis_real, basis_imag) = irfft_basis(&window).map_err(|e| err(format!("ISTFT basis: {e}")))?;
    let window_sq = Tensor::from_vec(window.iter().map(|w| w * w).collect::<Vec<f32>>(), cfg.n_fft, &Device::Cpu)
        .map_err(|e| err(format!("ISTFT window: {e}")))?;
    plain.insert("head.istft.basis_real".into(), basis_real);
    plain.insert("head.istft.basis_imag".into(), basis_imag);
    plain.insert("head.istft.window_sq".into(), window_sq);

    // Codebooks, norm embeddings and the ISTFT tables stay f32; the rest follows --dtype.
    let keep_f32 = |n: &str| n.contains("codebook") || n.contains(".norm.") || n.starts_with("head.istft.");
    let final_tensors =
        super::map_in_name_order(job.src, &plain, |name, t, _| Ok(vec![(name.into(), t.clone(), keep_f32(name))]))?;
    super::write_gguf(job, ARCH, &final_tensors, |vb| WavTokenizer::new(cfg.clone(), vb), |w| cfg.to_gguf(w))
}
