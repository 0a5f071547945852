//! Pocket TTS checkpoints (`model.safetensors` as pocket-tts saves a `TTSModel`, its YAML config, and the
//! tokenizer.json) → one GGUF.
//!
//! Every architecture hyper-parameter comes from the YAML (the package's `Config` schema). Values the package keeps
//! in code rather than in the YAML are named constants below, each with where it comes from, and are written to the
//! metadata like the rest, so the runtime reads all of them from the file.
//!
//! Tensors: `mimi.*` is renamed to the Mimi hub names under `mimi.` (`encoder.model.N.` → `encoder.layers.N.`,
//! `convtr.` → `conv.`, `downsample.conv.conv.` → `downsample.conv.`, …); every transformer's stacked
//! `self_attn.in_proj.weight` is split into q/k/v with the q/k rows permuted from interleaved to rotate-half RoPE, and
//! `norm1/2`, `linear1/2`, `layer_scale_1/2`, `out_proj` take the hub names. `flow_lm.bos_before_voice` (1, 1, d)
//! becomes (d). The rest keeps its name.
//!
//! The tokenizer: the whole tokenizer.json as one string under `tokenizer.huggingface.json` (llama.cpp's key for a
//! Hugging Face tokenizer), so the `tokenizers` crate loads it as the package's `tokenizers.Tokenizer.from_file` does.
//! It is found as the YAML's `lookup_table.tokenizer_path` when that is a local file (relative to the YAML), else
//! as `tokenizer.json` beside the YAML, else beside the weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::Value as Json;

use super::mimi::{MOSHI_MODULES, MOSHI_TRANSFORMER_LAYERS};
use super::Job;
use crate::models::pocket_tts::{PocketTts, PocketTtsConfig, ARCH, TOKENIZER_JSON};
use crate::{Error, Result};

/// `nn.LayerNorm(d_model, eps=1e-5)` in `StreamingTransformerLayer` and `FlowLMModel.out_norm`.
const NORM_EPS: f64 = 1e-5;
/// `LayerNorm(channels, eps=1e-6)` in the flow head's `ResBlock` and `FinalLayer`.
const FLOW_NORM_EPS: f64 = 1e-6;
/// `RMSNorm(hidden_size)` (eps 1e-5) closing each `TimestepEmbedder`.
const FLOW_RMS_NORM_EPS: f64 = 1e-5;
/// `DEFAULT_EOS_THRESHOLD` (`default_parameters.py`), what `Config.default_eos_threshold` defaults to.
const DEFAULT_EOS_THRESHOLD: f64 = -4.0;
/// `TTSModel._MIN_FRAMES_BEFORE_EOS`.
const MIN_FRAMES_BEFORE_EOS: usize = 6;
/// `MAX_TOKEN_PER_CHUNK` (`default_parameters.py`).
const MAX_TOKENS_PER_CHUNK: usize = 50;
/// `TTSModel._TOKENS_PER_SECOND_ESTIMATE`.
const TOKENS_PER_SECOND: f64 = 3.0;
/// `TTSModel._GEN_SECONDS_PADDING`.
const GEN_SECONDS_PADDING: f64 = 2.0;
/// `_decode_audio_worker` fades in `sample_rate // 200` samples (5 ms).
const FADE_IN_DIVISOR: usize = 200;
/// `end_on_pause(floor_db=35.0, fade_sec=0.02, pause_sec=0.08)` (`data/audio_utils.py`).
const VOICE_FLOOR_DB: f64 = 35.0;
/// See [`VOICE_FLOOR_DB`].
const VOICE_FADE_SECONDS: f64 = 0.02;
/// See [`VOICE_FLOOR_DB`].
const VOICE_PAUSE_SECONDS: f64 = 0.08;
/// `get_state_for_audio_prompt(truncate=True)` (the package's CLI and server) keeps the first 30 s of a voice.
const VOICE_MAX_SECONDS: f64 = 30.0;

/// True when the tensor names are those of a pocket-tts `TTSModel`.
pub fn looks_like_pocket_tts(names: &[&String]) -> bool {
    names.iter().any(|n| n.starts_with("flow_lm.")) && names.iter().any(|n| n.starts_with("mimi."))
}

/// The YAML `path` (the package's `Config` schema) and the tensors → the hyper-parameters. Variants of the schema this
/// build does not run (grouped-query or narrowed attention, low-rank tables, a `z_dim` projection, separate decoder
/// configs, samplers other than LSD) are refused by name.
pub fn config_from_yaml(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<PocketTtsConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let yaml: Json = serde_yaml::from_str(&text).map_err(|e| Error::convert(path, format!("invalid YAML: {e}")))?;
    let bad = |msg: String| Error::convert(path, msg);
    let missing = |k: &str| bad(format!("config lacks '{k}' (or it has the wrong type)"));
    let get = |p: &str| yaml.pointer(p).filter(|v| !v.is_null());
    let uint = |p: &str| get(p).and_then(Json::as_u64).map(|v| v as usize).ok_or_else(|| missing(&dotted(p)));
    let float = |p: &str| get(p).and_then(Json::as_f64).ok_or_else(|| missing(&dotted(p)));
    let boolean = |p: &str, default: bool| match get(p) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| missing(&dotted(p))),
    };
    let string = |p: &str| get(p).and_then(Json::as_str).map(String::from).ok_or_else(|| missing(&dotted(p)));
    for unsupported in [
        "/mimi/decoder_seanet",
        "/mimi/decoder_transformer",
        "/flow_lm/z_dim",
        "/flow_lm/lookup_table/rank",
        "/flow_lm/transformer/attn_dim",
        "/flow_lm/transformer/num_kv_heads",
    ] {
        if get(unsupported).is_some() {
            return Err(bad(format!("'{}' is set: this variant is not supported yet", dotted(unsupported))));
        }
    }
    let flow_type = get("/flow_lm/flow/type").and_then(Json::as_str).unwrap_or("lsd").to_string();

    let ratios = get("/mimi/seanet/ratios")
        .and_then(Json::as_array)
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| missing("mimi.seanet.ratios"))?;
    let sample_rate = uint("/mimi/sample_rate")?;
    let frame_rate = float("/mimi/frame_rate")?;
    let seanet_rate = sample_rate as f64 / ratios.iter().product::<usize>().max(1) as f64;
    let stride = seanet_rate / frame_rate;
    if stride < 1.0 || (stride - stride.round()).abs() > 1e-6 {
        return Err(bad(format!("mimi.frame_rate {frame_rate} does not divide the SEANet rate {seanet_rate}")));
    }
    if uint("/mimi/channels")? != 1 || uint("/mimi/seanet/channels")? != 1 {
        return Err(bad("only mono models (mimi.channels = 1) are supported".into()));
    }
    let dimension = uint("/mimi/seanet/dimension")?;
    let tr = "/mimi/transformer";
    let output_dims = get(&format!("{tr}/output_dimensions")).and_then(Json::as_array).map(|a| a.len());
    if uint(&format!("{tr}/d_model"))? != dimension
        || uint(&format!("{tr}/input_dimension"))? != dimension
        || output_dims != Some(1)
        || uint(&format!("{tr}/output_dimensions/0"))? != dimension
    {
        return Err(
            bad("mimi.transformer must be as wide as mimi.seanet.dimension, one output, no projections".into()),
        );
    }
    let latent_dim = uint("/mimi/quantizer/dimension")?;
    let outer_dim = uint("/mimi/quantizer/output_dimension")?;
    // `inner_dim` / `outer_dim` default to the SEANet dimension (`ConvDownsample1d(out_dimension=None)`); the
    // latents the downsample conv writes are what the quantizer projects, so the two must agree.
    let inner_dim = get("/mimi/inner_dim").and_then(Json::as_u64).map_or(dimension, |v| v as usize);
    let upsample_in = get("/mimi/outer_dim").and_then(Json::as_u64).map_or(dimension, |v| v as usize);
    if inner_dim != latent_dim || upsample_in != outer_dim {
        return Err(bad(format!(
            "mimi.inner_dim {inner_dim} / outer_dim {upsample_in} differ from the quantizer's dimension {latent_dim} / \
             output_dimension {outer_dim}"
        )));
    }
    let d_model = uint("/flow_lm/transformer/d_model")?;
    if uint("/flow_lm/lookup_table/dim")? != d_model {
        return Err(bad("flow_lm.lookup_table.dim must equal flow_lm.transformer.d_model".into()));
    }
    let dim_feedforward = match get("/flow_lm/transformer/dim_feedforward") {
        Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| missing("flow_lm.transformer.dim_feedforward"))?,
        None => d_model * uint("/flow_lm/transformer/hidden_scale")?,
    };
    // The time embedding's width is a constructor default (256), visible only in the weights.
    let freq_name = "flow_lm.flow_net.time_embed.0.mlp.0.weight";
    let frequency_embedding_size = tensors
        .get(freq_name)
        .and_then(|t| t.dims().get(1).copied())
        .ok_or_else(|| bad(format!("the checkpoint lacks '{freq_name}'")))?;
    let replace_characters = match get("/replace_characters") {
        None => "{}".to_string(),
        Some(Json::Object(m)) if m.values().all(Json::is_string) => Json::Object(m.clone()).to_string(),
        Some(_) => return Err(bad("replace_characters is not a map of strings".into())),
    };
    let cfg = PocketTtsConfig {
        sample_rate,
        latent_dim,
        mimi_dimension: dimension,
        mimi_outer_dim: outer_dim,
        mimi_n_filters: uint("/mimi/seanet/n_filters")?,
        mimi_ratios: ratios,
        mimi_kernel_size: uint("/mimi/seanet/kernel_size")?,
        mimi_residual_kernel_size: uint("/mimi/seanet/residual_kernel_size")?,
        mimi_last_kernel_size: uint("/mimi/seanet/last_kernel_size")?,
        mimi_dilation_base: uint("/mimi/seanet/dilation_base")?,
        mimi_n_residual_layers: uint("/mimi/seanet/n_residual_layers")?,
        mimi_compress: uint("/mimi/seanet/compress")?,
        mimi_pad_mode: string("/mimi/seanet/pad_mode")?,
        mimi_downsample_stride: stride.round() as usize,
        mimi_num_layers: uint(&format!("{tr}/num_layers"))?,
        mimi_num_heads: uint(&format!("{tr}/num_heads"))?,
        mimi_dim_feedforward: uint(&format!("{tr}/dim_feedforward"))?,
        mimi_context: uint(&format!("{tr}/context"))?,
        // `MimiTransformerConfig.max_period` defaults to 10000.
        mimi_max_period: get(&format!("{tr}/max_period")).and_then(Json::as_f64).unwrap_or(10000.0),
        mimi_layer_scale: get(&format!("{tr}/layer_scale")).is_some(),
        norm_eps: NORM_EPS,
        flow_lm_d_model: d_model,
        flow_lm_num_heads: uint("/flow_lm/transformer/num_heads")?,
        flow_lm_num_layers: uint("/flow_lm/transformer/num_layers")?,
        flow_lm_dim_feedforward: dim_feedforward,
        flow_lm_max_period: float("/flow_lm/transformer/max_period")?,
        flow_lm_n_bins: uint("/flow_lm/lookup_table/n_bins")?,
        flow_lm_insert_bos_before_voice: boolean("/flow_lm/insert_bos_before_voice", false)?,
        flow_type,
        flow_dim: uint("/flow_lm/flow/dim")?,
        flow_depth: uint("/flow_lm/flow/depth")?,
        flow_frequency_embedding_size: frequency_embedding_size,
        flow_norm_eps: FLOW_NORM_EPS,
        flow_rms_norm_eps: FLOW_RMS_NORM_EPS,
        default_temperature: get("/default_temperature").and_then(Json::as_f64).unwrap_or(0.3),
        eos_threshold: get("/default_eos_threshold").and_then(Json::as_f64).unwrap_or(DEFAULT_EOS_THRESHOLD),
        frames_after_eos: get("/model_recommended_frames_after_eos").and_then(Json::as_u64).unwrap_or(0) as usize,
        min_frames_before_eos: MIN_FRAMES_BEFORE_EOS,
        max_tokens_per_chunk: MAX_TOKENS_PER_CHUNK,
        tokens_per_second: TOKENS_PER_SECOND,
        gen_seconds_padding: GEN_SECONDS_PADDING,
        fade_in_samples: sample_rate / FADE_IN_DIVISOR,
        pad_with_spaces_for_short_inputs: boolean("/pad_with_spaces_for_short_inputs", false)?,
        remove_semicolons: boolean("/remove_semicolons", false)?,
        append_terminal_punctuation: boolean("/append_terminal_punctuation", true)?,
        capitalize_first_letter: boolean("/capitalize_first_letter", true)?,
        replace_characters,
        voice_floor_db: VOICE_FLOOR_DB,
        voice_fade_seconds: VOICE_FADE_SECONDS,
        voice_pause_seconds: VOICE_PAUSE_SECONDS,
        voice_max_seconds: VOICE_MAX_SECONDS,
    };
    cfg.check().map_err(bad)?;
    Ok(cfg)
}

/// `/a/b/0` → `a.b.0`, as a user reads a YAML path.
fn dotted(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// The tokenizer.json for the YAML at `config` and the weights at `src` (see the module doc).
pub fn find_tokenizer(src: &Path, config: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(config).map_err(|e| Error::io(config, e))?;
    let yaml: Json = serde_yaml::from_str(&text).map_err(|e| Error::convert(config, format!("invalid YAML: {e}")))?;
    let dir = |p: &Path| p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let mut candidates = vec![];
    if let Some(p) = yaml.pointer("/flow_lm/lookup_table/tokenizer_path").and_then(Json::as_str) {
        if !p.contains("://") {
            candidates.push(dir(config).join(p));
        }
    }
    candidates.push(dir(config).join("tokenizer.json"));
    candidates.push(dir(src).join("tokenizer.json"));
    candidates.dedup();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Error::convert(src, format!("cannot find the tokenizer.json (tried {})", tried.join(", ")))
    })
}

/// Maps one `mimi.*` name (after the `mimi.` prefix) to the Mimi hub name `nn::seanet` / `nn::transformer` read.
fn mimi_to_hub(name: &str) -> String {
    let renames: &[(&str, &str)] = &[
        ("downsample.conv.conv.", "downsample.conv."),
        ("upsample.convtr.convtr.", "upsample.conv."),
        (".convtr.", ".conv."),
    ];
    super::renamed(name, &[MOSHI_MODULES, renames, MOSHI_TRANSFORMER_LAYERS])
}

/// The per-layer transformer names of pocket-tts → the hub names.
fn transformer_to_hub(name: &str) -> String {
    super::renamed(name, &[MOSHI_TRANSFORMER_LAYERS])
}

/// Converts a loaded `TTSModel` state dict with its config and tokenizer.json into a GGUF.
pub fn convert(job: &Job, tensors: HashMap<String, Tensor>, cfg: PocketTtsConfig, tokenizer: &Path) -> Result<()> {
    let err = |msg: String| Error::convert(job.src, msg);
    let tokenizer_json = std::fs::read_to_string(tokenizer).map_err(|e| Error::io(tokenizer, e))?;
    let vocab = tokenizer_vocab_size(&tokenizer_json).map_err(|e| Error::convert(tokenizer, e))?;
    if vocab != cfg.flow_lm_n_bins {
        return Err(Error::convert(
            tokenizer,
            format!("the tokenizer has {vocab} pieces, the config's lookup_table.n_bins is {}", cfg.flow_lm_n_bins),
        ));
    }
    let mut renamed: Vec<(String, Tensor, bool)> = Vec::new();
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32).map_err(|e| err(format!("tensor '{name}': {e}")))?;
        let fail = |e: candle_core::Error| err(format!("tensor '{name}': {e}"));
        let new = if let Some(rest) = name.strip_prefix("mimi.") {
            format!("mimi.{}", mimi_to_hub(rest))
        } else if name.starts_with("flow_lm.transformer.") {
            transformer_to_hub(&name)
        } else if name == "flow_lm.bos_before_voice" {
            renamed.push((name.clone(), t.flatten_all().map_err(fail)?, false));
            continue;
        } else if name.starts_with("flow_lm.") {
            name.clone()
        } else {
            return Err(err(format!("unexpected tensor '{name}' (neither flow_lm.* nor mimi.*)")));
        };
        if let Some(prefix) = new.strip_suffix("self_attn.in_proj.weight") {
            let heads = if new.starts_with("mimi.") { cfg.mimi_num_heads } else { cfg.flow_lm_num_heads };
            let parts = t.chunk(3, 0).map_err(fail)?;
            let permute = |w: &Tensor| super::mimi::interleaved_to_rotate_half(w, heads).map_err(fail);
            renamed.push((format!("{prefix}self_attn.q_proj.weight"), permute(&parts[0])?, false));
            renamed.push((format!("{prefix}self_attn.k_proj.weight"), permute(&parts[1])?, false));
            renamed.push((format!("{prefix}self_attn.v_proj.weight"), parts[2].clone(), false));
        } else {
            // The lookup table, the latent statistics and the flow head's time frequencies stay exact.
            let keep_f32 = new.contains("conditioner.embed") || new.contains(".freqs") || new.contains("emb_");
            renamed.push((new, t, keep_f32));
        }
    }
    renamed.sort_by(|a, b| a.0.cmp(&b.0));
    super::write_gguf(
        job,
        ARCH,
        &renamed,
        |vb| PocketTts::new(cfg.clone(), tokenizer_json.clone(), vb).map(|_| ()),
        |w| {
            cfg.to_gguf(w);
            w.string(TOKENIZER_JSON, &tokenizer_json);
        },
    )
}

/// Pieces of a tokenizer.json's model (`model.vocab`: a list for Unigram, a map for BPE / WordPiece) plus its added
/// tokens not already among them: what `tokenizers`' `get_vocab_size()` counts.
fn tokenizer_vocab_size(json: &str) -> std::result::Result<usize, String> {
    let j: Json = serde_json::from_str(json).map_err(|e| format!("invalid tokenizer.json: {e}"))?;
    let vocab = j.pointer("/model/vocab").ok_or("tokenizer.json has no model.vocab")?;
    let mut ids: std::collections::BTreeSet<u64> = match vocab {
        Json::Array(a) => (0..a.len() as u64).collect(),
        Json::Object(m) => m.values().filter_map(Json::as_u64).collect(),
        _ => return Err("tokenizer.json's model.vocab is neither a list nor a map".into()),
    };
    if let Some(Json::Array(added)) = j.get("added_tokens") {
        ids.extend(added.iter().filter_map(|t| t.get("id").and_then(Json::as_u64)));
    }
    Ok(ids.len())
}
