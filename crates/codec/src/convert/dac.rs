//! DAC checkpoints → GGUF.
//!
//! Two source layouts, one result:
//! - descript's released `weights*.pth`: a torch zip/pickle holding `state_dict` (sequential names such as
//!   `encoder.block.1.block.0.block.1.weight_v`) and `metadata.kwargs` with the architecture — read here in Rust;
//! - the hub/transformers layout (`config.json` + `model.safetensors`: `encoder.block.0.res_unit1.conv1.…`).
//!
//! Both are renamed to the hub names, then: weight norm folded (`w = v · g / ‖v‖`, norm over all dims but the first),
//! Snake α squeezed from `[1, C, 1]` to `[C]`, the quantiser's 1x1 projections squeezed to matrices, and each codebook
//! gets its L2-normalised copy (`codebook.normalized`) for the cosine-similarity lookup.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Tensor};
use serde_json::Value as Json;

use super::Job;
use crate::models::dac::{Dac, DacConfig, ARCH};
use crate::{Error, Result};

/// True when the tensor names look like a DAC checkpoint (either layout).
pub fn looks_like_dac(names: &[&String]) -> bool {
    names.iter().any(|n| n.starts_with("quantizer.quantizers.0.codebook"))
}

fn is_original_layout(names: &[&String]) -> bool {
    names.iter().any(|n| n.starts_with("decoder.model."))
}

/// Reads descript's `.pth`: the state dict and the architecture from `metadata.kwargs`.
pub fn read_pth(path: &Path) -> Result<(HashMap<String, Tensor>, DacConfig)> {
    let err = |msg: String| Error::convert(path, msg);
    super::pickle::check_torch_zip(path)?;
    let kwargs = pth_kwargs(path)?;
    let tensors = candle_core::pickle::read_all_with_key(path, Some("state_dict"))
        .map_err(|e| err(format!("cannot read the state_dict: {e}")))?;
    if tensors.is_empty() {
        return Err(err("no tensors under 'state_dict'".into()));
    }
    Ok((tensors.into_iter().collect(), config_from_kwargs(path, &kwargs)?))
}

/// `metadata.kwargs` of a descript checkpoint, as (name, value) pairs.
fn pth_kwargs(path: &Path) -> Result<Vec<(String, Object)>> {
    let err = |msg: String| Error::convert(path, msg);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| err(format!("not a PyTorch zip checkpoint ({e})")))?;
    let pkl = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).and_then(|n| n.ok()).map(|n| n.to_string()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| err("no data.pkl in the checkpoint".into()))?;
    let mut bytes = vec![];
    zip.by_name(&pkl)
        .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
        .map_err(|e| err(format!("cannot read {pkl}: {e}")))?;
    let mut stack = Stack::empty();
    stack.read_loop(&mut std::io::Cursor::new(bytes)).map_err(|e| err(format!("cannot parse {pkl}: {e}")))?;
    let root = stack.finalize().map_err(|e| err(format!("cannot parse {pkl}: {e}")))?;
    let kwargs = dict_get(&root, "metadata")
        .and_then(|m| dict_get(m, "kwargs"))
        .ok_or_else(|| err("no metadata.kwargs: not a descript DAC checkpoint".into()))?;
    match kwargs {
        Object::Dict(items) => Ok(items
            .iter()
            .filter_map(|(k, v)| match k {
                Object::Unicode(k) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()),
        _ => Err(err("metadata.kwargs is not a dict".into())),
    }
}

fn dict_get<'a>(obj: &'a Object, key: &str) -> Option<&'a Object> {
    match obj {
        Object::Dict(items) => items.iter().find(|(k, _)| matches!(k, Object::Unicode(s) if s == key)).map(|(_, v)| v),
        _ => None,
    }
}

fn object_usize(v: &Object) -> Option<usize> {
    match v {
        Object::Int(i) => usize::try_from(*i).ok(),
        Object::Long(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn config_from_kwargs(path: &Path, kwargs: &[(String, Object)]) -> Result<DacConfig> {
    let get = |k: &str| kwargs.iter().find(|(name, _)| name == k).map(|(_, v)| v);
    let missing = |k: &str| Error::convert(path, format!("metadata.kwargs lacks '{k}'"));
    let uint = |k: &str| get(k).and_then(object_usize).ok_or_else(|| missing(k));
    let list = |k: &str| match get(k) {
        Some(Object::List(items)) | Some(Object::Tuple(items)) => {
            items.iter().map(object_usize).collect::<Option<Vec<_>>>().ok_or_else(|| missing(k))
        }
        _ => Err(missing(k)),
    };
    if let Some(Object::List(_)) = get("codebook_dim") {
        return Err(Error::convert(path, "per-codebook codebook_dim lists are not supported"));
    }
    let names = ["encoder_dim", "encoder_rates", "latent_dim", "decoder_dim", "decoder_rates", "sample_rate"];
    let given = |k: &str| !matches!(get(k), None | Some(Object::None));
    dac_config(names, &["latent_dim"], uint, list, given)
}

/// A [`DacConfig`] from one source's values: `names` are its names of `encoder_dim`, `encoder_rates`, `latent_dim`,
/// `decoder_dim`, `decoder_rates` and `sample_rate` (the codebook keys are named alike everywhere); `uint` and `list`
/// read a value, an error if it is missing. The keys in `optional` may be left out (`given` says which are set):
/// then descript's defaults apply, a latent `encoder_dim · 2^blocks` wide and the encoder's rates reversed.
fn dac_config(
    names: [&str; 6],
    optional: &[&str],
    uint: impl Fn(&str) -> Result<usize>,
    list: impl Fn(&str) -> Result<Vec<usize>>,
    given: impl Fn(&str) -> bool,
) -> Result<DacConfig> {
    let [encoder_dim, encoder_rates, latent_dim, decoder_dim, decoder_rates, sample_rate] = names;
    let left_out = |k: &str| optional.contains(&k) && !given(k);
    let (encoder_dim, encoder_rates) = (uint(encoder_dim)?, list(encoder_rates)?);
    Ok(DacConfig {
        latent_dim: if left_out(latent_dim) { encoder_dim << encoder_rates.len() } else { uint(latent_dim)? },
        decoder_dim: uint(decoder_dim)?,
        decoder_rates: if left_out(decoder_rates) {
            encoder_rates.iter().rev().copied().collect()
        } else {
            list(decoder_rates)?
        },
        encoder_dim,
        encoder_rates,
        n_codebooks: uint("n_codebooks")?,
        codebook_size: uint("codebook_size")?,
        codebook_dim: uint("codebook_dim")?,
        sample_rate: uint(sample_rate)?,
    })
}

/// Reads a transformers `DacConfig` JSON. `sampling_rate` is required: transformers' default (16000) does not match
/// its default ratios, so a missing value would silently make a wrong model.
pub fn config_from_json(path: &Path, j: &Json) -> Result<DacConfig> {
    let missing = |k: &str| Error::convert(path, format!("config lacks '{k}' (or it is not a non-negative integer)"));
    let uint = |k: &str| j.get(k).and_then(Json::as_u64).map(|v| v as usize).ok_or_else(|| missing(k));
    let list = |k: &str| -> Result<Vec<usize>> {
        j.get(k)
            .and_then(Json::as_array)
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| missing(k))
    };
    let names = [
        "encoder_hidden_size",
        "downsampling_ratios",
        "hidden_size",
        "decoder_hidden_size",
        "upsampling_ratios",
        "sampling_rate",
    ];
    dac_config(names, &["hidden_size", "upsampling_ratios"], uint, list, |k| j.get(k).is_some())
}

/// Maps a descript name to its hub name (`n` = number of encoder/decoder blocks).
fn original_to_hub(name: &str, n: usize) -> Option<String> {
    const UNIT: [&str; 4] = ["snake1", "conv1", "snake2", "conv2"];
    let parts: Vec<&str> = name.split('.').collect();
    let idx = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
    let rest = |i: usize| parts[i..].join(".");
    let unit = |j: usize, k: usize| Some(format!("res_unit{}.{}", j + 1, UNIT.get(k)?));
    // Both sides number their layers alike: encoder.block.i / decoder.model.i, i = 0 the first conv, 1..=n the
    // blocks, then Snake and the last conv.
    let side = match (parts.first().copied(), parts.get(1).copied()) {
        (Some(side @ "encoder"), Some("block")) | (Some(side @ "decoder"), Some("model")) => side,
        _ => return Some(name.to_string()),
    };
    let i = idx(2)?;
    let outer = match i {
        0 => Some("conv1"),
        _ if i == n + 1 => Some("snake1"),
        _ if i == n + 2 => Some("conv2"),
        _ => None,
    };
    if let Some(layer) = outer {
        return Some(format!("{side}.{layer}.{}", rest(3)));
    }
    // Inside block i: <side>.….i.block.j[.block.k].…
    let j = idx(4)?;
    let inner = match (side, j) {
        ("encoder", 0..=2) => format!("{}.{}", unit(j, idx(6)?)?, rest(7)),
        ("encoder", 3) | ("decoder", 0) => format!("snake1.{}", rest(5)),
        ("encoder", 4) => format!("conv1.{}", rest(5)),
        ("decoder", 1) => format!("conv_t1.{}", rest(5)),
        ("decoder", 2..=4) => format!("{}.{}", unit(j - 2, idx(6)?)?, rest(7)),
        _ => return None,
    };
    Some(format!("{side}.block.{}.{inner}", i - 1))
}

/// Converts a loaded checkpoint (`tensors`, descript or hub names) of architecture `cfg` into a GGUF.
pub fn convert(job: &Job, tensors: HashMap<String, Tensor>, cfg: DacConfig) -> Result<()> {
    let err = |msg: String| Error::convert(job.src, msg);
    let names: Vec<&String> = tensors.keys().collect();
    let original = is_original_layout(&names);
    let n_blocks = cfg.encoder_rates.len();

    // 1. Hub names, then weight norm folded.
    let mut renamed: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32).map_err(|e| err(format!("tensor '{name}': {e}")))?;
        let name = if original {
            original_to_hub(&name, n_blocks).ok_or_else(|| err(format!("unexpected tensor '{name}'")))?
        } else {
            name
        };
        renamed.insert(name, t);
    }
    let plain = super::fold_weight_norms(job.src, renamed)?;

    // 2. Shapes the runtime wants, and the normalised codebooks.
    let final_tensors = super::map_in_name_order(job.src, &plain, |name, t, fail| {
        Ok(if name.ends_with(".alpha") {
            vec![(name.into(), t.flatten_all().map_err(fail)?, true)]
        } else if name.ends_with("proj.weight") && name.starts_with("quantizer.") {
            vec![(name.into(), t.squeeze(2).map_err(fail)?, false)]
        } else if let Some(prefix) = name.strip_suffix("codebook.weight") {
            let norm = t.sqr().and_then(|s| s.sum_keepdim(1)).and_then(|s| s.sqrt()).map_err(fail)?;
            let normalized = t.broadcast_div(&norm.clamp(1e-12, f64::INFINITY).map_err(fail)?).map_err(fail)?;
            vec![(name.into(), t.clone(), true), (format!("{prefix}codebook.normalized"), normalized, true)]
        } else {
            vec![(name.into(), t.clone(), false)]
        })
    })?;
    super::write_gguf(job, ARCH, &final_tensors, |vb| Dac::new(cfg.clone(), vb), |w| cfg.to_gguf(w))
}
