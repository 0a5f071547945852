//! Converters: source checkpoints → one GGUF model file. Every weight transform lives here (DESIGN.md principle 2).
//!
//! A source is a HF-style directory (`config.json` + `*.safetensors`), a single `.safetensors` file (with `--config`
//! for its architecture where the file alone does not say) or descript's DAC `.pth`. The architecture comes from `--arch`, else from
//! `config.json`'s `model_type`, else from the tensor names.

pub mod dac;
pub mod mimi;
mod pickle;
pub mod pocket_tts;
pub mod wavtokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value as Json;

use crate::gguf::Writer;
use crate::{Error, Result};

pub use crate::gguf::StorageDtype;

/// Options of `convert`; the default detects the architecture and keeps the weights in f32.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// `mimi`, …; `None` detects it from the source.
    pub arch: Option<String>,
    /// A `config.json` giving the architecture (overrides one found next to the weights).
    pub config: Option<PathBuf>,
    /// How the weights are stored (`--dtype`).
    pub dtype: StorageDtype,
    /// `general.name`; default: the source's file or directory name.
    pub name: Option<String>,
}

/// One conversion: the checkpoint it reads, the file it writes, and how.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The checkpoint (file or directory); errors name it.
    pub src: &'a Path,
    /// The GGUF file to write.
    pub out: &'a Path,
    /// How to convert.
    pub opts: &'a ConvertOptions,
}

/// Architectures `convert` knows.
pub const ARCHITECTURES: &[&str] = &[
    crate::models::mimi::ARCH,
    crate::models::dac::ARCH,
    crate::models::wavtokenizer::ARCH,
    crate::models::pocket_tts::ARCH,
];

/// `v · (g / ‖v‖)` with the norm over every dim but the first (torch's `weight_norm(dim=0)`), in torch's order.
fn fold_weight_norm(g: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let dims: Vec<usize> = (1..v.rank()).collect();
    let norm = v.sqr()?.sum_keepdim(dims)?.sqrt()?;
    v.broadcast_mul(&g.reshape(norm.shape())?.div(&norm)?)
}

/// Replaces every weight-normed pair (`X.weight_g` + `X.weight_v`, or transformers' `X.parametrizations.weight.
/// original0/1`) by its folded `X.weight`.
fn fold_weight_norms(src: &Path, tensors: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let err = |msg: String| Error::convert(src, msg);
    let mut plain = HashMap::new();
    let mut norm_g = HashMap::new();
    let mut norm_v = HashMap::new();
    for (name, t) in tensors {
        if let Some(p) =
            name.strip_suffix(".weight_g").or_else(|| name.strip_suffix(".parametrizations.weight.original0"))
        {
            norm_g.insert(p.to_string(), t);
        } else if let Some(p) =
            name.strip_suffix(".weight_v").or_else(|| name.strip_suffix(".parametrizations.weight.original1"))
        {
            norm_v.insert(p.to_string(), t);
        } else {
            plain.insert(name, t);
        }
    }
    for (prefix, g) in norm_g {
        let v = norm_v.remove(&prefix).ok_or_else(|| err(format!("'{prefix}' has weight_g but no weight_v")))?;
        let w = fold_weight_norm(&g, &v).map_err(|e| err(format!("weight norm of '{prefix}': {e}")))?;
        plain.insert(format!("{prefix}.weight"), w);
    }
    if let Some(prefix) = norm_v.keys().next() {
        return Err(err(format!("'{prefix}' has weight_v but no weight_g")));
    }
    Ok(plain)
}

/// One tensor of the file a converter writes: its name, its values, and whether it stays f32 whatever `--dtype`
/// says (codebooks, norm embeddings, tables).
type OutTensor = (String, Tensor, bool);

/// The tensors to write, made by `map` from each of `tensors` in name order (so a source always converts to the
/// same file). `map` gets the name, the tensor, and the error to return for a failed tensor op on it (it names the
/// tensor); it may give none, one or several tensors for one.
/// `name` with, for each rename list in turn, the first occurrence of each `from` replaced by its `to`: how a
/// checkpoint's module paths become the names our layers read.
fn renamed(name: &str, lists: &[&[(&str, &str)]]) -> String {
    let mut out = name.to_string();
    for (from, to) in lists.iter().flat_map(|list| list.iter()) {
        out = out.replacen(from, to, 1);
    }
    out
}

fn map_in_name_order(
    src: &Path,
    tensors: &HashMap<String, Tensor>,
    mut map: impl FnMut(&str, &Tensor, &dyn Fn(candle_core::Error) -> Error) -> Result<Vec<OutTensor>>,
) -> Result<Vec<OutTensor>> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let fail = |e: candle_core::Error| Error::convert(src, format!("tensor '{name}': {e}"));
        out.extend(map(name, &tensors[name], &fail)?);
    }
    Ok(out)
}

/// Checks that `tensors` build the model (`build`), then writes them with the metadata `metadata` adds: nothing is
/// written for a checkpoint that does not fit its architecture.
fn write_gguf<M>(
    job: &Job,
    arch: &str,
    tensors: &[OutTensor],
    build: impl FnOnce(crate::nn::Weights) -> candle_core::Result<M>,
    metadata: impl FnOnce(&mut Writer),
) -> Result<()> {
    let Job { src, out, opts } = *job;
    let err = |msg: String| Error::convert(src, msg);
    let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t, _)| (n.clone(), t.clone())).collect();
    let vb = candle_nn::VarBuilder::from_tensors(map, candle_core::DType::F32, &Device::Cpu);
    build(vb.into()).map_err(|e| err(format!("checkpoint does not match the {arch} architecture: {e}")))?;
    let name = opts.name.clone().or_else(|| src.file_name().and_then(|s| s.to_str()).map(String::from));
    let mut w = Writer::new(arch, name.as_deref().unwrap_or(arch));
    metadata(&mut w);
    for (name, t, keep_f32) in tensors {
        w.tensor(name, t, opts.dtype, *keep_f32).map_err(|e| err(format!("tensor '{name}': {e}")))?;
    }
    w.write(out)
}

/// The only `.yaml`/`.yml` file next to `src` (in it, for a directory), if there is exactly one.
fn single_yaml_beside(src: &Path) -> Option<PathBuf> {
    let dir =
        if src.is_dir() { src } else { src.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")) };
    let yamls: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    match yamls.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::convert(path, format!("invalid JSON: {e}")))
}

fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::convert(path, format!("cannot read safetensors: {e}")))
}

/// Converts `src` into the GGUF file `out`.
pub fn convert(src: &Path, out: &Path, opts: &ConvertOptions) -> Result<()> {
    convert_with_notes(src, out, opts, &mut Vec::new())
}

/// [`convert`], adding to `notes` what a user should know about choices made on the way (a `config.json` beside
/// the weights that was ignored, and why).
pub fn convert_with_notes(src: &Path, out: &Path, opts: &ConvertOptions, notes: &mut Vec<String>) -> Result<()> {
    if let Some(arch) = &opts.arch {
        if !ARCHITECTURES.contains(&arch.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "unknown architecture '{arch}' (known: {})",
                ARCHITECTURES.join(", ")
            )));
        }
    }
    let job = Job { src, out, opts };
    let meta = std::fs::metadata(src).map_err(|e| Error::io(src, e))?;
    let ext = src.extension().and_then(|x| x.to_str()).unwrap_or("");
    if meta.is_file() && ext == "pth" {
        // descript's DAC release format: weights and architecture in one torch pickle.
        if opts.arch.as_deref().is_some_and(|a| a != crate::models::dac::ARCH) {
            return Err(Error::convert(src, "a .pth source is read as descript's DAC format (--arch dac)"));
        }
        let (tensors, cfg) = dac::read_pth(src)?;
        return dac::convert(&job, tensors, cfg);
    }
    if meta.is_file() && ext == "ckpt" {
        // WavTokenizer's release format: a Lightning checkpoint plus its training YAML.
        if opts.arch.as_deref().is_some_and(|a| a != crate::models::wavtokenizer::ARCH) {
            return Err(Error::convert(
                src,
                "a .ckpt source is read as a WavTokenizer checkpoint (--arch wavtokenizer)",
            ));
        }
        let config = opts.config.clone().or_else(|| single_yaml_beside(src)).ok_or_else(|| {
            Error::convert(src, "a WavTokenizer .ckpt needs its YAML config: pass --config FILE.yaml")
        })?;
        let tensors = wavtokenizer::read_ckpt(src)?;
        let cfg = wavtokenizer::config_from_yaml(&config, &tensors)?;
        return wavtokenizer::convert(&job, tensors, cfg);
    }
    let (weights, found_config): (Vec<PathBuf>, Option<PathBuf>) = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(src)
            .map_err(|e| Error::io(src, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        let config = src.join("config.json");
        (files, config.exists().then_some(config))
    } else {
        if ext != "safetensors" {
            return Err(Error::convert(
                src,
                format!(
                    "unsupported source '.{ext}' (this build reads a directory, a .safetensors, a DAC .pth or a \
                     WavTokenizer .ckpt file)"
                ),
            ));
        }
        let config = src.parent().map(|p| p.join("config.json")).filter(|p| p.exists());
        (vec![src.to_path_buf()], config)
    };
    if weights.is_empty() {
        return Err(Error::convert(src, "no .safetensors file in this directory"));
    }
    let mut tensors = HashMap::new();
    for file in &weights {
        tensors.extend(load_safetensors(file)?);
    }
    // Pocket TTS: a TTSModel state dict with the package's YAML config (never a config.json).
    let pocket = crate::models::pocket_tts::ARCH;
    if opts.arch.as_deref() == Some(pocket)
        || (opts.arch.is_none() && pocket_tts::looks_like_pocket_tts(&tensors.keys().collect::<Vec<_>>()))
    {
        let config = opts.config.clone().or_else(|| single_yaml_beside(src)).ok_or_else(|| {
            Error::convert(src, "a pocket-tts checkpoint needs its YAML config: pass --config FILE.yaml")
        })?;
        let tokenizer = pocket_tts::find_tokenizer(src, &config)?;
        let cfg = pocket_tts::config_from_yaml(&config, &tensors)?;
        return pocket_tts::convert(&job, tensors, cfg, &tokenizer);
    }
    let config_path = opts.config.clone().or(found_config);
    let mut config = config_path.as_ref().map(|p| read_json(p)).transpose()?;
    let model_type = config.as_ref().and_then(|j| j.get("model_type")).and_then(|v| v.as_str()).map(String::from);
    // A config.json found beside the weights is theirs only if it says it describes one of our architectures
    // (Kyutai's repos ship their language model's config next to the Mimi weights); one given with --config is
    // trusted unless it names another architecture.
    if let (Some(path), None) = (&config_path, &opts.config) {
        if !model_type.as_deref().is_some_and(|t| ARCHITECTURES.contains(&t)) {
            let what = model_type.as_deref().map_or("has no model_type".to_string(), |t| format!("describes '{t}'"));
            notes.push(format!("ignoring {}: it {what}, not a codec this build converts", path.display()));
            config = None;
        }
    }

    let names: Vec<&String> = tensors.keys().collect();
    let model_type = config.as_ref().and(model_type.as_deref());
    let arch = match (&opts.arch, model_type) {
        (Some(a), _) => a.clone(),
        (None, Some(t)) => t.to_string(),
        (None, None) if mimi::looks_like_mimi(&names) => crate::models::mimi::ARCH.to_string(),
        (None, None) if dac::looks_like_dac(&names) => crate::models::dac::ARCH.to_string(),
        (None, None) => {
            return Err(Error::convert(src, "cannot tell the architecture from the tensor names; pass --arch"))
        }
    };
    // A config.json of another model next to the weights is not their config.
    let own_config = match (&config_path, &config) {
        (Some(p), Some(j)) if model_type.is_none_or(|t| t == arch) => Some((p.as_path(), j)),
        _ => None,
    };
    match arch.as_str() {
        crate::models::mimi::ARCH => mimi::convert(&job, tensors, own_config),
        crate::models::dac::ARCH => {
            let (path, j) = own_config.ok_or_else(|| {
                Error::convert(src, "a DAC safetensors checkpoint needs its config.json (next to it or --config)")
            })?;
            dac::convert(&job, tensors, dac::config_from_json(path, j)?)
        }
        other => Err(Error::convert(
            src,
            format!("architecture '{other}' is not supported by this build (known: {})", ARCHITECTURES.join(", ")),
        )),
    }
}
