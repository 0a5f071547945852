//! GGUF model files: the `codec.*` metadata keys (one place), a validating reader and a writer.
//!
//! The container format is candle's `gguf_file`; this module adds what a user needs on top: every failure names the
//! file, truncated data is detected at open time, and metadata is read by typed accessors that say which key is missing.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::convert::StorageDtype;
use crate::{Error, Result};

/// Metadata keys shared by every architecture. Per-architecture keys live under `codec.<arch>.*` and are named next to
/// the model that reads them.
pub mod keys {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const SAMPLE_RATE: &str = "codec.sample_rate";
    pub const HOP_SIZE: &str = "codec.hop_size";
    pub const N_Q: &str = "codec.n_q";
    pub const CODEBOOK_SIZE: &str = "codec.codebook_size";
    pub const CODEBOOK_DIM: &str = "codec.codebook_dim";
    pub const LATENT_DIM: &str = "codec.latent_dim";
    pub const HAS_ENCODER: &str = "codec.has_encoder";
    pub const HAS_DECODER: &str = "codec.has_decoder";
}

pub use gguf_file::Value;

/// An opened GGUF model file: metadata and tensor directory read and checked, tensor data still on disk.
pub struct ModelFile {
    pub path: PathBuf,
    pub file_size: u64,
    content: gguf_file::Content,
}

impl ModelFile {
    /// Opens and validates `path`: magic, header, and that every tensor's data lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| Error::model_file(path, format!("not a valid GGUF model file ({e})")))?;
        for (name, info) in content.tensor_infos.iter() {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
            if elems % block != 0 || end > file_size {
                return Err(Error::model_file(
                    path,
                    format!("truncated or corrupt: tensor '{name}' needs bytes up to {end}, the file has {file_size}"),
                ));
            }
        }
        Ok(Self { path: path.to_path_buf(), file_size, content })
    }

    pub fn architecture(&self) -> Result<&str> {
        self.string(keys::ARCHITECTURE)
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| Error::model_file(&self.path, format!("metadata key '{key}' is missing")))
    }

    fn bad_type(&self, key: &str, want: &str) -> Error {
        Error::model_file(&self.path, format!("metadata key '{key}' is not {want}"))
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn string(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            _ => Err(self.bad_type(key, "a string")),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.value(key)?;
        v.to_u64()
            .map(|v| v as usize)
            .or_else(|_| v.to_u32().map(|v| v as usize))
            .or_else(|_| v.to_i32().ok().filter(|v| *v >= 0).map(|v| v as usize).ok_or(()))
            .map_err(|_| self.bad_type(key, "an unsigned integer"))
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        match self.value(key)? {
            Value::F32(v) => Ok(*v as f64),
            Value::F64(v) => Ok(*v),
            _ => Err(self.bad_type(key, "a float")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.value(key)? {
            Value::Bool(v) => Ok(*v),
            _ => Err(self.bad_type(key, "a bool")),
        }
    }

    pub fn usize_array(&self, key: &str) -> Result<Vec<usize>> {
        let Value::Array(items) = self.value(key)? else { return Err(self.bad_type(key, "an array")) };
        items
            .iter()
            .map(|v| v.to_u32().map(|v| v as usize).map_err(|_| self.bad_type(key, "an array of u32")))
            .collect()
    }

    /// Every metadata entry, sorted by key, rendered for `codec info`.
    pub fn metadata_lines(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self.content.metadata.iter().map(|(k, v)| (k.clone(), render_value(v))).collect();
        out.sort();
        out
    }

    /// (name, shape, storage dtype) of every tensor, sorted by name.
    pub fn tensor_list(&self) -> Vec<(String, Vec<usize>, GgmlDType)> {
        let mut out: Vec<_> =
            self.content.tensor_infos.iter().map(|(n, i)| (n.clone(), i.shape.dims().to_vec(), i.ggml_dtype)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Reads every tensor onto `device` as f32 (the compute dtype); quantized storage is dequantized here.
    pub fn load_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut reader = BufReader::new(file);
        let mut out = HashMap::with_capacity(self.content.tensor_infos.len());
        for name in self.content.tensor_infos.keys() {
            let read = |reader: &mut BufReader<File>| -> candle_core::Result<Tensor> {
                let q = self.content.tensor(reader, name, device)?;
                q.dequantize(device)?.to_dtype(DType::F32)
            };
            let tensor = read(&mut reader)
                .map_err(|e| Error::model_file(&self.path, format!("cannot read tensor '{name}': {e}")))?;
            out.insert(name.clone(), tensor);
        }
        Ok(out)
    }
}

fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => format!("[{}]", items.iter().map(render_value).collect::<Vec<_>>().join(", ")),
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        Value::Bool(x) => x.to_string(),
    }
}

/// Collects metadata and tensors, then writes one GGUF file.
#[derive(Default)]
pub struct Writer {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, QTensor)>,
}

impl Writer {
    pub fn new(architecture: &str, name: &str) -> Self {
        let mut w = Self::default();
        w.string(keys::ARCHITECTURE, architecture);
        w.string(keys::NAME, name);
        w
    }

    pub fn string(&mut self, key: &str, v: &str) {
        self.metadata.push((key.into(), Value::String(v.into())));
    }
    pub fn u32(&mut self, key: &str, v: usize) {
        self.metadata.push((key.into(), Value::U32(v as u32)));
    }
    pub fn f32(&mut self, key: &str, v: f64) {
        self.metadata.push((key.into(), Value::F32(v as f32)));
    }
    pub fn bool(&mut self, key: &str, v: bool) {
        self.metadata.push((key.into(), Value::Bool(v)));
    }
    pub fn u32_array(&mut self, key: &str, v: &[usize]) {
        self.metadata.push((key.into(), Value::Array(v.iter().map(|x| Value::U32(*x as u32)).collect())));
    }

    /// Adds a tensor in the requested storage dtype. 1-D tensors (biases, norms, scales) and `keep_f32` tensors
    /// (codebooks) stay f32; q8_0 applies where the last dim is a multiple of its 32-wide block, f16 elsewhere.
    pub fn tensor(&mut self, name: &str, t: &Tensor, dtype: StorageDtype, keep_f32: bool) -> candle_core::Result<()> {
        // A fresh buffer: quantize reads the whole storage, which for a view (e.g. one chunk of a stacked q/k/v)
        // holds more than the tensor.
        let t = Tensor::from_vec(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, t.shape(), &Device::Cpu)?;
        let ggml = match dtype {
            _ if keep_f32 || t.rank() <= 1 => GgmlDType::F32,
            StorageDtype::F32 => GgmlDType::F32,
            StorageDtype::F16 => GgmlDType::F16,
            StorageDtype::Q8_0 if t.dims().last().is_some_and(|d| d % 32 == 0) => GgmlDType::Q8_0,
            StorageDtype::Q8_0 => GgmlDType::F16,
        };
        self.tensors.push((name.into(), QTensor::quantize(&t, ggml)?));
        Ok(())
    }

    /// Writes the file; a failure leaves no partial file behind under `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("gguf.partial");
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = BufWriter::new(file);
        let metadata: Vec<(&str, &Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = self.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let res = gguf_file::write(&mut w, &metadata, &tensors)
            .map_err(|e| Error::model_file(path, format!("cannot write: {e}")))
            .and_then(|_| w.into_inner().map_err(|e| Error::io(&tmp, e.into_error())))
            .and_then(|mut f| f.stream_position().map(|_| ()).map_err(|e| Error::io(&tmp, e)));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}
