//! Mimi checkpoints → GGUF.
//!
//! Two source layouts, one result:
//! - the hub/transformers layout (`config.json` + `model.safetensors`: `encoder.layers.N.conv.weight`, split
//!   `q/k/v_proj` with rotate-half RoPE rows, `codebook.embed_sum`); transformers ≥ 5 in-memory names
//!   (`encoder.encoder_seanet.layers…`) are accepted too;
//! - Kyutai's original layout (`encoder.model.N.conv.conv.weight`, stacked `in_proj_weight` with interleaved RoPE
//!   rows, `_codebook.embedding_sum`), whose architecture is the published kyutai/mimi one unless a `config.json`
//!   is given.
//!
//! Both are renamed to the hub names, then: q/k rows of the original are permuted from interleaved to rotate-half
//! order, codebooks become `embed = embed_sum / max(cluster_usage, 1e-5)`, and the quantizer's 1x1 conv projections are
//! squeezed to matrices.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value as Json;

use super::Job;
use crate::models::mimi::{Mimi, MimiConfig, ARCH};
use crate::{Error, Result};

/// transformers' `MimiEuclideanCodebook` and moshi's `EuclideanCodebook` both clamp usage at this epsilon.
const CLUSTER_USAGE_EPS: f64 = 1e-5;

/// True when the tensor names are those of Kyutai's original checkpoint.
pub fn is_original_layout(names: &[&String]) -> bool {
    names.iter().any(|n| n.contains("in_proj_weight") || n.contains("rvq_first"))
}

/// True when the tensor names look like any Mimi checkpoint.
pub fn looks_like_mimi(names: &[&String]) -> bool {
    is_original_layout(names)
        || names.iter().any(|n| n.contains("semantic_residual_vector_quantizer") || n.contains("encoder_transformer"))
}

/// Reads a transformers-style Mimi `config.json`; missing keys take transformers' `MimiConfig` defaults.
pub fn config_from_json(path: &Path, j: &Json) -> Result<MimiConfig> {
    let bad = |msg: String| Error::convert(path, msg);
    let d = MimiConfig::published(32);
    let uint = |k: &str, default: usize| -> Result<usize> {
        match j.get(k) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| bad(format!("config key '{k}' is not an integer"))),
        }
    };
    let float = |k: &str, default: f64| -> Result<f64> {
        match j.get(k) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| bad(format!("config key '{k}' is not a number"))),
        }
    };
    let boolean = |k: &str, default: bool| -> Result<bool> {
        match j.get(k) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| bad(format!("config key '{k}' is not a bool"))),
        }
    };
    if boolean("use_conv_shortcut", false)? {
        return Err(bad("use_conv_shortcut=true is not a Mimi variant this build supports".into()));
    }
    if float("trim_right_ratio", 1.0)? != 1.0 {
        return Err(bad("only trim_right_ratio=1.0 is supported".into()));
    }
    if uint("audio_channels", 1)? != 1 {
        return Err(bad("only mono Mimi models (audio_channels=1) are supported".into()));
    }
    let ratios = match j.get("upsampling_ratios") {
        None | Some(Json::Null) => d.upsampling_ratios.clone(),
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| v.as_u64().map(|v| v as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("config key 'upsampling_ratios' is not a list of integers".into()))?,
        Some(_) => return Err(bad("config key 'upsampling_ratios' is not a list".into())),
    };
    let sample_rate = uint("sampling_rate", d.sample_rate)?;
    let hidden_size = uint("hidden_size", d.hidden_size)?;
    let heads = uint("num_attention_heads", d.num_attention_heads)?;
    // transformers ≥ 5 writes the frame rate as `_frame_rate`.
    let frame_rate = match j.get("frame_rate") {
        Some(_) => float("frame_rate", 12.5)?,
        None => float("_frame_rate", 12.5)?,
    };
    let seanet_rate = sample_rate as f64 / ratios.iter().product::<usize>() as f64;
    let stride = seanet_rate / frame_rate;
    if stride < 1.0 || (stride - stride.round()).abs() > 1e-6 {
        return Err(bad(format!("frame_rate {frame_rate} does not divide the SEANet rate {seanet_rate}")));
    }
    if uint("num_key_value_heads", heads)? != heads {
        return Err(
            bad("grouped-query attention (num_key_value_heads != num_attention_heads) is not supported".into()),
        );
    }
    let rope_theta = match j.get("rope_parameters").and_then(|p| p.get("rope_theta")) {
        Some(v) => v.as_f64().ok_or_else(|| bad("rope_parameters.rope_theta is not a number".into()))?,
        None => float("rope_theta", d.rope_theta)?,
    };
    let cfg = MimiConfig {
        sample_rate,
        channels: 1,
        hidden_size,
        num_filters: uint("num_filters", d.num_filters)?,
        upsampling_ratios: ratios,
        kernel_size: uint("kernel_size", d.kernel_size)?,
        residual_kernel_size: uint("residual_kernel_size", d.residual_kernel_size)?,
        last_kernel_size: uint("last_kernel_size", d.last_kernel_size)?,
        dilation_growth_rate: uint("dilation_growth_rate", d.dilation_growth_rate)?,
        num_residual_layers: uint("num_residual_layers", d.num_residual_layers)?,
        compress: uint("compress", d.compress)?,
        use_causal_conv: boolean("use_causal_conv", d.use_causal_conv)?,
        pad_mode: j.get("pad_mode").and_then(|v| v.as_str()).unwrap_or("constant").to_string(),
        downsample_stride: stride.round() as usize,
        num_hidden_layers: uint("num_hidden_layers", d.num_hidden_layers)?,
        num_attention_heads: heads,
        head_dim: uint("head_dim", hidden_size / heads.max(1))?,
        intermediate_size: uint("intermediate_size", d.intermediate_size)?,
        sliding_window: uint("sliding_window", d.sliding_window)?,
        rope_theta,
        norm_eps: float("norm_eps", d.norm_eps)?,
        codebook_size: uint("codebook_size", d.codebook_size)?,
        codebook_dim: uint("codebook_dim", hidden_size)?,
        num_quantizers: uint("num_quantizers", d.num_quantizers)?,
        num_semantic_quantizers: uint("num_semantic_quantizers", d.num_semantic_quantizers)?,
    };
    if crate::nn::conv::PadMode::parse(&cfg.pad_mode).is_none() {
        return Err(bad(format!("unknown pad_mode '{}'", cfg.pad_mode)));
    }
    Ok(cfg)
}

/// Maps one original-layout name to its hub name; `None` for tensors the runtime does not use.
fn original_to_hub(name: &str) -> Option<String> {
    if name.ends_with("_initialized") {
        return None;
    }
    let renames: &[(&str, &str)] = &[
        ("downsample.conv.conv.conv.", "downsample.conv."),
        ("upsample.convtr.convtr.convtr.", "upsample.conv."),
        ("quantizer.rvq_first.", "quantizer.semantic_residual_vector_quantizer."),
        ("quantizer.rvq_rest.", "quantizer.acoustic_residual_vector_quantizer."),
        (".conv.conv.", ".conv."),
        (".convtr.convtr.", ".conv."),
        (".vq.layers.", ".layers."),
        ("._codebook.embedding_sum", ".codebook.embed_sum"),
        ("._codebook.cluster_usage", ".codebook.cluster_usage"),
    ];
    Some(super::renamed(name, &[MOSHI_MODULES, renames, MOSHI_TRANSFORMER_LAYERS]))
}

/// moshi's SEANet and transformer module paths → ours (Pocket TTS's Mimi is built from the same modules).
pub(crate) const MOSHI_MODULES: &[(&str, &str)] = &[
    ("encoder.model.", "encoder.layers."),
    ("decoder.model.", "decoder.layers."),
    ("encoder_transformer.transformer.", "encoder_transformer."),
    ("decoder_transformer.transformer.", "decoder_transformer."),
];

/// moshi's transformer layer names (`norm1`, `linear1`, `layer_scale_1`, `self_attn.out_proj`) → ours (also Pocket
/// TTS's Mimi and Flow-LM).
pub(crate) const MOSHI_TRANSFORMER_LAYERS: &[(&str, &str)] = &[
    (".self_attn.out_proj.", ".self_attn.o_proj."),
    (".linear1.", ".mlp.fc1."),
    (".linear2.", ".mlp.fc2."),
    (".norm1.", ".input_layernorm."),
    (".norm2.", ".post_attention_layernorm."),
    (".layer_scale_1.", ".self_attn_layer_scale."),
    (".layer_scale_2.", ".mlp_layer_scale."),
];

/// transformers ≥ 5 nests the halves (`encoder.encoder_seanet.layers…`); map back to the flat hub file names.
fn nested_to_hub(name: &str) -> String {
    let renames: &[(&str, &str)] = &[
        ("encoder.encoder_seanet.layers.", "encoder.layers."),
        ("encoder.encoder_transformer.", "encoder_transformer."),
        ("encoder.downsample.", "downsample."),
        ("decoder.upsample.", "upsample."),
        ("decoder.decoder_transformer.", "decoder_transformer."),
        ("decoder.decoder_seanet.layers.", "decoder.layers."),
    ];
    for (from, to) in renames {
        if let Some(rest) = name.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    name.to_string()
}

/// Rows of a q or k projection from interleaved pairs `(2i, 2i+1)` per head to rotate-half order `(i, i + d/2)`.
pub(crate) fn interleaved_to_rotate_half(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, rows / heads / 2, 2, cols))?.transpose(1, 2)?.reshape((rows, cols))
}

fn count_codebooks(names: &[&String]) -> usize {
    names
        .iter()
        .filter(|n| n.ends_with("embed_sum") || n.ends_with("embedding_sum") || n.ends_with("codebook.embed"))
        .count()
}

/// Converts a loaded checkpoint (`tensors`, original or hub names) with an optional `config.json` into a GGUF.
pub fn convert(job: &Job, tensors: HashMap<String, Tensor>, config: Option<(&Path, &Json)>) -> Result<()> {
    let err = |msg: String| Error::convert(job.src, msg);
    let names: Vec<&String> = tensors.keys().collect();
    let original = is_original_layout(&names);
    let mut cfg = match config {
        Some((path, j)) => config_from_json(path, j)?,
        None if original => MimiConfig::published(count_codebooks(&names)),
        None => {
            return Err(err(
                "the hub layout needs its config.json (put it next to the safetensors or pass --config)".into()
            ))
        }
    };
    let n_found = count_codebooks(&names);
    if n_found < cfg.num_quantizers {
        if config.is_some() {
            return Err(err(format!("config says {} codebooks, the checkpoint has {n_found}", cfg.num_quantizers)));
        }
        cfg.num_quantizers = n_found;
    }

    // 1. Rename to the hub layout, splitting stacked q/k/v.
    let mut hub: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32).map_err(|e| err(format!("tensor '{name}': {e}")))?;
        if original {
            let Some(new) = original_to_hub(&name) else { continue };
            if let Some(prefix) = new.strip_suffix("self_attn.in_proj_weight") {
                let parts = t.chunk(3, 0).map_err(|e| err(format!("tensor '{name}': {e}")))?;
                let heads = cfg.num_attention_heads;
                let permute =
                    |w: &Tensor| interleaved_to_rotate_half(w, heads).map_err(|e| err(format!("{name}: {e}")));
                hub.insert(format!("{prefix}self_attn.q_proj.weight"), permute(&parts[0])?);
                hub.insert(format!("{prefix}self_attn.k_proj.weight"), permute(&parts[1])?);
                hub.insert(format!("{prefix}self_attn.v_proj.weight"), parts[2].clone());
            } else {
                hub.insert(new, t);
            }
        } else {
            hub.insert(nested_to_hub(&name), t);
        }
    }

    // 2. Codebooks from running sums; projections as matrices.
    let final_tensors = super::map_in_name_order(job.src, &hub, |name, t, fail| {
        Ok(if name.ends_with("codebook.cluster_usage") || name.ends_with("codebook.initialized") {
            vec![]
        } else if let Some(prefix) = name.strip_suffix("codebook.embed_sum") {
            let usage = hub
                .get(&format!("{prefix}codebook.cluster_usage"))
                .ok_or_else(|| err(format!("'{prefix}codebook.cluster_usage' is missing")))?;
            let embed = t.broadcast_div(
                &usage.clamp(CLUSTER_USAGE_EPS, f64::INFINITY).map_err(fail)?.unsqueeze(1).map_err(fail)?,
            );
            vec![(format!("{prefix}codebook.embed"), embed.map_err(fail)?, true)]
        } else if name.ends_with("input_proj.weight") || name.ends_with("output_proj.weight") {
            vec![(name.into(), t.squeeze(2).map_err(fail)?, false)]
        } else {
            vec![(name.into(), t.clone(), false)]
        })
    })?;
    super::write_gguf(job, ARCH, &final_tensors, |vb| Mimi::new(cfg.clone(), vb), |w| cfg.to_gguf(w))
}
