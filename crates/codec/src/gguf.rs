//! GGUF model files: the `codec.*` metadata keys (one place), a validating reader and a writer.
//!
//! The container format is candle's `gguf_file`; this module adds what a user needs on top: every failure names the
//! file, truncated data is detected at open time, and metadata is read by typed accessors that say which key is missing.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// Metadata keys shared by every architecture. Per-architecture keys live under `codec.<arch>.*` and are named next to
/// the model that reads them.
pub mod keys {
    /// Which architecture the file holds: `mimi`, `dac` or `wavtokenizer` (string).
    pub const ARCHITECTURE: &str = "general.architecture";
    /// The model's name (string).
    pub const NAME: &str = "general.name";
    /// Audio sample rate in Hz (u32).
    pub const SAMPLE_RATE: &str = "codec.sample_rate";
    /// Audio samples per code frame (u32); informational, models derive the hop from their strides.
    pub const HOP_SIZE: &str = "codec.hop_size";
    /// Number of codebooks the file holds (u32).
    pub const N_Q: &str = "codec.n_q";
    /// Entries per codebook (u32).
    pub const CODEBOOK_SIZE: &str = "codec.codebook_size";
    /// Width of one codebook vector (u32).
    pub const CODEBOOK_DIM: &str = "codec.codebook_dim";
    /// Channels of the latent between the encoder and the quantizer (u32).
    pub const LATENT_DIM: &str = "codec.latent_dim";
    /// Whether the file holds the encoder's weights (bool).
    pub const HAS_ENCODER: &str = "codec.has_encoder";
    /// Whether the file holds the decoder's weights (bool).
    pub const HAS_DECODER: &str = "codec.has_decoder";
}

pub use gguf_file::Value;

/// How a model file stores its weights (`codec convert --dtype`); lives with the file format, which the converters
/// use (not the other way round). Biases, norms, codebooks and 1-D tensors always stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageDtype {
    /// 32-bit floats.
    #[default]
    F32,
    /// 16-bit floats.
    F16,
    /// ggml's q8_0: blocks of 32 signed bytes and one f16 scale.
    Q8_0,
}

impl std::str::FromStr for StorageDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_choice("dtype", s, &[("f32", Self::F32), ("f16", Self::F16), ("q8_0", Self::Q8_0)])
    }
}

/// The largest hop (audio samples per code frame) a model file may declare: far above any codec's (Mimi 1920),
/// and small enough that frame and sample counts cannot overflow.
pub const MAX_HOP: usize = 1 << 16;

/// The bytes of one tensor in a mapped model file.
#[derive(Clone)]
struct Region {
    map: Arc<memmap2::Mmap>,
    bytes: std::ops::Range<usize>,
}

impl Region {
    fn bytes(&self) -> &[u8] {
        &self.map[self.bytes.clone()]
    }

    /// Lets the kernel drop the whole pages of these bytes from memory (they are read from the file again if
    /// used): for weights that have been copied into a packed form, so they are not held twice.
    fn release_pages(&self) {
        const PAGE: usize = 4096;
        let start = self.bytes.start.next_multiple_of(PAGE);
        let end = self.bytes.end / PAGE * PAGE;
        if end > start {
            // SAFETY: the map is a read-only shared file mapping: dropped pages are re-read from the file with the
            // same contents, so no reference into the map sees a change. Advice only: a failure changes nothing.
            unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start).ok() };
        }
    }
}

/// f32 values of one tensor, read in place from a mapped model file (checked 4-byte aligned when made).
#[derive(Clone)]
pub struct MappedF32(Region);

impl MappedF32 {
    /// The values, in the tensor's row-major order.
    pub fn as_slice(&self) -> &[f32] {
        bytemuck::cast_slice(self.0.bytes())
    }

    /// See `Region::release_pages`.
    pub fn release_pages(&self) {
        self.0.release_pages()
    }
}

impl std::fmt::Debug for MappedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedF32({} values at byte {})", self.0.bytes.len() / 4, self.0.bytes.start)
    }
}

/// The q8_0 blocks of one tensor (whole blocks, checked when made), in place in a mapped model file: what
/// `--precision int8` multiplies by as stored.
#[derive(Clone)]
pub struct MappedQ8_0(Region);

impl MappedQ8_0 {
    /// ggml's blocks: an f16 scale, then 32 signed bytes, each.
    pub fn blocks(&self) -> &[u8] {
        self.0.bytes()
    }

    /// The values as f32 (`q · scale`, what loading the tensor gives).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.0.bytes.len() / Q8_0_BYTES * Q8_0_BLOCK];
        f32_from_q8_0(self.blocks(), &mut out);
        out
    }

    /// See `Region::release_pages`.
    pub fn release_pages(&self) {
        self.0.release_pages()
    }
}

impl std::fmt::Debug for MappedQ8_0 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedQ8_0({} blocks at byte {})", self.0.bytes.len() / Q8_0_BYTES, self.0.bytes.start)
    }
}

/// An opened GGUF model file: metadata and tensor directory read and checked, tensor data still on disk.
pub struct ModelFile {
    /// Where the file was opened from (named in errors).
    pub path: PathBuf,
    /// Size of the file in bytes.
    pub file_size: u64,
    content: gguf_file::Content,
    /// The file mapped on the first [`ModelFile::load_tensor`] or [`ModelFile::mapped_f32`].
    map: std::sync::OnceLock<Arc<memmap2::Mmap>>,
}

impl ModelFile {
    /// Opens and validates `path`: magic, header, and that every tensor's data lies inside the file (all size
    /// arithmetic checked, so a hostile header is an error, never a panic or a wrapped size).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        if zero_alignment(&mut reader) {
            return Err(Error::model_file(path, "not a valid GGUF model file (general.alignment is 0)"));
        }
        reader.rewind().map_err(|e| Error::io(path, e))?;
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| Error::model_file(path, format!("not a valid GGUF model file ({e})")))?;
        for (name, info) in content.tensor_infos.iter() {
            data_range(&content, info, file_size)
                .map_err(|msg| Error::model_file(path, format!("truncated or corrupt: tensor '{name}' {msg}")))?;
        }
        Ok(Self { path: path.to_path_buf(), file_size, content, map: std::sync::OnceLock::new() })
    }

    /// The shape of tensor `name`, if the file has it.
    pub fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims())
    }

    /// The file memory-mapped, on first use.
    fn mapped(&self) -> Result<&Arc<memmap2::Mmap>> {
        if let Some(map) = self.map.get() {
            return Ok(map);
        }
        let file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        // SAFETY: the map is only read. As with any memory-mapped read (candle's safetensors loader does the same),
        // another process truncating the file meanwhile would end this one with SIGBUS; rewriting it in place would
        // give torn values. `Writer::write` replaces files by rename, so our own writes never do either.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&self.path, e))?;
        // Pages read from disk through a huge-page-advised mapping come into the page cache as 2 MiB folios, which
        // this process and every later one map with one entry each (4 KiB pages: 512 entries to fault in, and to
        // tear down at exit). A 295 MB WavTokenizer file, all pages touched: 28 → 2 ms, unmapped 14 → 0.1 ms. Best
        // effort: a file cached in smaller pages keeps them until the kernel evicts it.
        #[cfg(target_os = "linux")]
        map.advise(memmap2::Advice::HugePage).ok();
        Ok(self.map.get_or_init(|| Arc::new(map)))
    }

    /// Tensor `name`'s values in place in the mapped file, if it is stored as f32 that this host can read directly
    /// (little-endian, 4-byte aligned: any GGUF alignment but 1 or 2); `None` otherwise (then use `load_tensor`).
    pub fn mapped_f32(&self, name: &str) -> Result<Option<MappedF32>> {
        let Some(info) = self.content.tensor_infos.get(name) else { return Ok(None) };
        if info.ggml_dtype != GgmlDType::F32 || cfg!(target_endian = "big") {
            return Ok(None);
        }
        let map = self.mapped()?;
        let bytes = data_range(&self.content, info, map.len() as u64)
            .map_err(|msg| Error::model_file(&self.path, format!("truncated or corrupt: tensor '{name}' {msg}")))?;
        let aligned = bytemuck::try_cast_slice::<u8, f32>(&map[bytes.clone()]).is_ok();
        Ok(aligned.then(|| MappedF32(Region { map: map.clone(), bytes })))
    }

    /// Tensor `name`'s q8_0 blocks in place in the mapped file; `None` if it is missing or not q8_0.
    pub fn mapped_q8_0(&self, name: &str) -> Result<Option<MappedQ8_0>> {
        let Some(info) = self.content.tensor_infos.get(name) else { return Ok(None) };
        if info.ggml_dtype != GgmlDType::Q8_0 {
            return Ok(None);
        }
        let map = self.mapped()?;
        let bytes = data_range(&self.content, info, map.len() as u64)
            .map_err(|msg| Error::model_file(&self.path, format!("truncated or corrupt: tensor '{name}' {msg}")))?;
        let whole = bytes.len().is_multiple_of(Q8_0_BYTES);
        Ok(whole.then(|| MappedQ8_0(Region { map: map.clone(), bytes })))
    }

    /// Reads tensor `name` as f32 (the compute dtype) onto `device`, with one pass over its mapped bytes straight
    /// into the tensor's own buffer (f32: one copy; f16 widened, q8_0 dequantized on the way; other ggml types, not
    /// written by `codec convert`, through candle's `QTensor::dequantize`). Models are built tensor by tensor, so
    /// each layer can pack its weights and free the f32 copy before the next is read.
    pub fn load_tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let map = self.mapped()?;
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::model_file(&self.path, format!("tensor '{name}' is missing")))?;
        // Checked again: the file may have changed since `open`.
        let range = data_range(&self.content, info, map.len() as u64)
            .map_err(|msg| Error::model_file(&self.path, format!("truncated or corrupt: tensor '{name}' {msg}")))?;
        tensor_from_bytes(info.ggml_dtype, &map[range], info.shape.dims(), device)
            .map_err(|e| Error::model_file(&self.path, format!("cannot read tensor '{name}': {e}")))
    }

    /// `general.architecture`: which model the file holds.
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

    /// Whether metadata key `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    /// A string value; like every getter, an error naming the key and file if it is missing or of another type.
    pub fn string(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            _ => Err(self.bad_type(key, "a string")),
        }
    }

    /// An unsigned integer value (u64, u32, or an i32 of at least 0).
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.value(key)?;
        v.to_u64()
            .map(|v| v as usize)
            .or_else(|_| v.to_u32().map(|v| v as usize))
            .or_else(|_| v.to_i32().ok().filter(|v| *v >= 0).map(|v| v as usize).ok_or(()))
            .map_err(|_| self.bad_type(key, "an unsigned integer"))
    }

    /// A size or count: an unsigned integer of at least 1.
    pub fn count(&self, key: &str) -> Result<usize> {
        match self.usize(key)? {
            0 => Err(Error::model_file(&self.path, format!("metadata key '{key}' is 0; it must be at least 1"))),
            n => Ok(n),
        }
    }

    /// Stride factors whose product is a hop: a non-empty array of counts, the product at most [`MAX_HOP`].
    pub fn strides(&self, key: &str) -> Result<Vec<usize>> {
        let v = self.usize_array(key)?;
        let hop = v.iter().try_fold(1usize, |hop, &s| hop.checked_mul(s).filter(|&h| h <= MAX_HOP));
        if v.is_empty() || v.contains(&0) || hop.is_none() {
            let msg = format!(
                "metadata key '{key}' is {v:?}; it must be factors of at least 1 multiplying to at most {MAX_HOP}"
            );
            return Err(Error::model_file(&self.path, msg));
        }
        Ok(v)
    }

    /// The model's sample rate, within the rates audio can have here.
    pub fn sample_rate(&self) -> Result<usize> {
        self.rate(keys::SAMPLE_RATE)
    }

    /// A sample rate in Hz within what the audio reader takes.
    pub fn rate(&self, key: &str) -> Result<usize> {
        let rate = self.usize(key)?;
        let (lo, hi) = (crate::audio::MIN_INPUT_RATE as usize, crate::audio::MAX_INPUT_RATE as usize);
        if !(lo..=hi).contains(&rate) {
            let msg = format!("metadata key '{key}' is {rate}; it must be {lo}–{hi} Hz");
            return Err(Error::model_file(&self.path, msg));
        }
        Ok(rate)
    }

    /// A string value, owned.
    pub fn text(&self, key: &str) -> Result<String> {
        self.string(key).map(str::to_string)
    }

    /// A finite float above 0 (a scale, an epsilon, a base).
    pub fn positive_f64(&self, key: &str) -> Result<f64> {
        let v = self.f64(key)?;
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::model_file(&self.path, format!("metadata key '{key}' is {v}; it must be above 0")));
        }
        Ok(v)
    }

    /// A float value, f32 or f64.
    pub fn f64(&self, key: &str) -> Result<f64> {
        match self.value(key)? {
            Value::F32(v) => Ok(*v as f64),
            Value::F64(v) => Ok(*v),
            _ => Err(self.bad_type(key, "a float")),
        }
    }

    /// A bool value.
    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.value(key)? {
            Value::Bool(v) => Ok(*v),
            _ => Err(self.bad_type(key, "a bool")),
        }
    }

    /// An array of u32 values.
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

    /// Every tensor, as [`ModelFile::load_tensor`] reads them, tensors in parallel (largest first, so the loop ends
    /// with small tensors filling the gaps).
    pub fn load_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort_by_key(|n| std::cmp::Reverse(self.content.tensor_infos[*n].shape.elem_count()));
        names.into_par_iter().map(|name| Ok((name.clone(), self.load_tensor(name, device)?))).collect()
    }
}

/// Whether the metadata sets `general.alignment` to 0, which candle 0.11's reader divides by (a panic). Only that is
/// looked for: anything else malformed ends the scan and is left to candle's reader to report.
fn zero_alignment(r: &mut BufReader<File>) -> bool {
    type Reader = BufReader<File>;
    fn u32_(r: &mut Reader) -> std::io::Result<u32> {
        let mut b = [0; 4];
        r.read_exact(&mut b).map(|_| u32::from_le_bytes(b))
    }
    /// A length or count: 32 bits in GGUF v1, 64 in v2 and v3.
    fn len(r: &mut Reader, v1: bool) -> std::io::Result<u64> {
        let mut b = [0; 8];
        r.read_exact(&mut b[..if v1 { 4 } else { 8 }]).map(|_| u64::from_le_bytes(b))
    }
    fn skip(r: &mut Reader, n: u64) -> std::io::Result<()> {
        // Past the end is fine here: the next read fails.
        r.seek_relative(i64::try_from(n).map_err(|_| std::io::ErrorKind::InvalidData)?)
    }
    /// Skips one metadata value of type `ty`.
    fn skip_value(r: &mut Reader, ty: u32, v1: bool, depth: usize) -> std::io::Result<()> {
        let bad = || std::io::Error::from(std::io::ErrorKind::InvalidData);
        let fixed = |ty: u32| [1u64, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8].get(ty as usize).copied().filter(|&n| n > 0);
        match ty {
            8 => {
                let n = len(r, v1)?;
                skip(r, n)
            }
            // Deeper than candle's reader allows (64), so nothing it accepts ends the scan early.
            9 if depth <= 65 => {
                let elem = u32_(r)?;
                let count = len(r, v1)?;
                match fixed(elem) {
                    Some(size) => skip(r, count.checked_mul(size).ok_or_else(bad)?),
                    // Strings or arrays, one by one: each reads at least 4 bytes, so a hostile count ends at EOF.
                    None => (0..count).try_for_each(|_| skip_value(r, elem, v1, depth + 1)),
                }
            }
            _ => skip(r, fixed(ty).ok_or_else(bad)?),
        }
    }
    fn scan(r: &mut Reader) -> std::io::Result<bool> {
        if u32_(r)? != 0x4655_4747 {
            return Ok(false); // not "GGUF"
        }
        let v1 = u32_(r)? == 1;
        let _tensors = len(r, v1)?;
        // candle keeps the last of repeated keys.
        let mut zero = false;
        for _ in 0..len(r, v1)? {
            const KEY: &[u8] = b"general.alignment";
            let key_len = len(r, v1)?;
            let mut key = [0; KEY.len()];
            let is_alignment = if key_len == KEY.len() as u64 {
                r.read_exact(&mut key)?;
                key == KEY
            } else {
                skip(r, key_len)?;
                false
            };
            let ty = u32_(r)?;
            if is_alignment {
                zero = false;
                // The integer types candle takes the alignment from: u8, i8, u16, i16, u32, i32.
                if let Some(&size) = [1, 1, 2, 2, 4, 4].get(ty as usize) {
                    let mut b = [0; 4];
                    r.read_exact(&mut b[..size])?;
                    zero = b == [0; 4];
                    continue;
                }
            }
            skip_value(r, ty, v1, 0)?;
        }
        Ok(zero)
    }
    scan(r).unwrap_or(false)
}

/// Byte range of a tensor's data in a file of `file_size` bytes, or why it is not a valid one.
fn data_range(
    content: &gguf_file::Content,
    info: &gguf_file::TensorInfo,
    file_size: u64,
) -> std::result::Result<std::ops::Range<usize>, String> {
    let dims = info.shape.dims();
    // Zero dims left out of the check: candle multiplies the trailing dims into strides, which overflow even when a
    // zero dim makes the tensor empty.
    let elems = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d.max(1)))
        .map(|n| if dims.contains(&0) { 0 } else { n })
        .ok_or_else(|| format!("has shape {dims:?}, too large"))?;
    let (block, block_bytes) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
    if elems % block != 0 {
        return Err(format!("has {elems} elements, not whole {:?} blocks of {block}", info.ggml_dtype));
    }
    let size = (elems / block).checked_mul(block_bytes).ok_or_else(|| format!("has shape {dims:?}, too large"))?;
    let start = content.tensor_data_offset.checked_add(info.offset);
    let end = start.and_then(|s| s.checked_add(size as u64));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_size => {
            // Both fit in usize: they are at most the size of a file this process could open or map.
            Ok(usize::try_from(start).map_err(|e| e.to_string())?..usize::try_from(end).map_err(|e| e.to_string())?)
        }
        _ => Err(format!(
            "needs bytes up to {}, the file has {file_size}",
            end.map_or_else(|| "beyond 2^64".to_string(), |e| e.to_string())
        )),
    }
}

/// Output elements per parallel work item when widening one tensor.
const CHUNK: usize = 1 << 16;

/// One tensor of `dims` from its GGUF bytes (`bytes.len()` already checked to match), as f32 on `device`.
fn tensor_from_bytes(dtype: GgmlDType, bytes: &[u8], dims: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let elems: usize = dims.iter().product();
    // Zeroed by the kernel, not again by us: the conversion below is the one pass over the buffer.
    let mut out = crate::mem::zeroed_f32(elems);
    match dtype {
        GgmlDType::F32 => {
            out.par_chunks_mut(CHUNK).zip(bytes.par_chunks(CHUNK * 4)).for_each(|(out, bytes)| f32_from_le(bytes, out))
        }
        GgmlDType::F16 => out
            .par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * 2))
            .for_each(|(out, bytes)| f32_from_f16_le(bytes, out)),
        GgmlDType::Q8_0 => {
            const _: () = assert!(CHUNK.is_multiple_of(Q8_0_BLOCK));
            out.par_chunks_mut(CHUNK)
                .zip(bytes.par_chunks(CHUNK / Q8_0_BLOCK * Q8_0_BYTES))
                .for_each(|(out, bytes)| f32_from_q8_0(bytes, out))
        }
        _ => {
            // candle reads the blocks in place as their structs (up to 8-byte aligned), but GGUF data may start at
            // any offset: copy the bytes to an aligned buffer first (these dtypes are rare; f32, f16, q8_0 are not).
            let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()].copy_from_slice(bytes);
            let bytes = &bytemuck::cast_slice::<u64, u8>(&aligned)[..bytes.len()];
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, bytes, dims.to_vec(), &Device::Cpu)?;
            return q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?.to_device(device);
        }
    }
    Tensor::from_vec(out, dims, device)
}

fn f32_from_le(bytes: &[u8], out: &mut [f32]) {
    bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(bytes);
    if cfg!(target_endian = "big") {
        out.iter_mut().for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
    }
}

fn f32_from_f16_le(bytes: &[u8], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    match bytemuck::try_cast_slice::<u8, half::f16>(bytes) {
        // Vectorised (F16C where the CPU has it); exact, as every f16 is an f32.
        Ok(src) if cfg!(target_endian = "little") => src.convert_to_f32_slice(out),
        // Data at an odd offset (legal, if unusual, in GGUF) or a big-endian host.
        _ => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(y, b)| *y = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
    }
}

/// ggml's q8_0 block: an f16 scale, then 32 signed bytes.
const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 2 + Q8_0_BLOCK;

/// Dequantizes whole q8_0 blocks, as ggml and candle do (`q as f32 * scale`, so the results are identical).
fn f32_from_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (out, block) in out.chunks_exact_mut(Q8_0_BLOCK).zip(bytes.chunks_exact(Q8_0_BYTES)) {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (y, &q) in out.iter_mut().zip(&block[2..]) {
            *y = q as i8 as f32 * d;
        }
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
    /// A writer with `general.architecture` and `general.name` set.
    pub fn new(architecture: &str, name: &str) -> Self {
        let mut w = Self::default();
        w.string(keys::ARCHITECTURE, architecture);
        w.string(keys::NAME, name);
        w
    }

    /// Adds a string value.
    pub fn string(&mut self, key: &str, v: &str) {
        self.metadata.push((key.into(), Value::String(v.into())));
    }
    /// Adds an unsigned integer value, stored as u32.
    pub fn u32(&mut self, key: &str, v: usize) {
        self.metadata.push((key.into(), Value::U32(v as u32)));
    }
    /// Adds a float value, stored as f32.
    pub fn f32(&mut self, key: &str, v: f64) {
        self.metadata.push((key.into(), Value::F32(v as f32)));
    }
    /// Adds a bool value.
    pub fn bool(&mut self, key: &str, v: bool) {
        self.metadata.push((key.into(), Value::Bool(v)));
    }
    /// Adds an array of unsigned integers, stored as u32.
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
    ///
    /// Only a regular file (or nothing) at `path` is replaced: a directory, symlink, device or pipe there is an
    /// error, and errors name `path`, not the temporary file beside it.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_file() {
                return Err(Error::model_file(path, "is not a regular file; refusing to replace it"));
            }
        }
        let tmp = path.with_extension("gguf.partial");
        let file = File::create(&tmp).map_err(|e| Error::io(path, e))?;
        let mut w = BlockWriter { file, block: Vec::with_capacity(WRITE_BLOCK), written: 0 };
        let metadata: Vec<(&str, &Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = self.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let res = gguf_file::write(&mut w, &metadata, &tensors)
            .map_err(|e| Error::model_file(path, format!("cannot write: {e}")))
            .and_then(|_| w.flush().map_err(|e| Error::io(path, e)));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

/// A model file's writer: whole blocks of [`WRITE_BLOCK`] bytes at multiples of it (the last one short). ext4 then
/// caches the file in 2 MiB folios, which a mapping ([`ModelFile`]) maps with one entry each, so a freshly converted
/// model starts as fast as one read cold from disk; after `BufWriter`'s 8 KiB writes a third of a fresh 295 MB
/// WavTokenizer file stayed in smaller folios (194 of 293 MB mapped in 2 MiB pages; all of it now).
struct BlockWriter {
    file: File,
    block: Vec<u8>,
    /// Bytes written to `file` before `block`.
    written: u64,
}

/// The page cache's huge folio: 2 MiB.
const WRITE_BLOCK: usize = 2 << 20;

impl BlockWriter {
    fn write_block(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.block)?;
        self.written += self.block.len() as u64;
        self.block.clear();
        Ok(())
    }
}

impl Write for BlockWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(WRITE_BLOCK - self.block.len());
        self.block.extend_from_slice(&data[..n]);
        if self.block.len() == WRITE_BLOCK {
            self.write_block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_block()?;
        self.file.flush()
    }
}

impl Seek for BlockWriter {
    /// The position (what candle's GGUF writer asks, to pad to the alignment) without writing; a move writes what is
    /// held first.
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        if to == SeekFrom::Current(0) {
            return Ok(self.written + self.block.len() as u64);
        }
        self.write_block()?;
        self.written = self.file.seek(to)?;
        Ok(self.written)
    }
}

/// The keys every model file has beside its config's: the hop and that both halves are present.
pub fn write_shared_keys(w: &mut Writer, hop: usize) {
    w.u32(keys::HOP_SIZE, hop);
    w.bool(keys::HAS_ENCODER, true);
    w.bool(keys::HAS_DECODER, true);
}

/// Declares a model's config struct with each field's GGUF metadata key beside it, so adding a model's config is
/// declaring it once:
///
/// ```text
/// metadata_config! {
///     /// The struct's doc.
///     pub struct XConfig {
///         /// A field's doc.
///         pub sample_rate: usize = rate(keys::SAMPLE_RATE),                // a shared key (`keys`)
///         pub n_filters: usize = count(key::N_FILTERS = "codec.x.n_filters"), // a key of this model, declared here
///         pub channels: usize = fixed(1),                                  // no key: always this value
///     }
///     /// The key module's doc.
///     pub mod key;
/// }
/// ```
///
/// It generates the struct, the module `key` with a const for each key declared here (documented as its field),
/// `read_metadata(&ModelFile) -> Result<Self>` and `write_metadata(&self, &mut Writer)`. Each kind is read by the
/// [`ModelFile`] method of its name, which checks the value and names the key and the file in its error: `count`
/// (usize ≥ 1), `usize`, `strides` (factors of a hop), `rate` (Hz), `positive_f64`, `f64`, `bool`, `text` (String).
macro_rules! metadata_config {
    (
        $(#[$attr:meta])*
        pub struct $ty:ident {
            $($(#[$field_attr:meta])* pub $field:ident: $field_ty:ty = $kind:ident($($spec:tt)*),)+
        }
        $(#[$key_attr:meta])*
        pub mod key;
    ) => {
        $(#[$attr])*
        pub struct $ty {
            $($(#[$field_attr])* pub $field: $field_ty,)+
        }

        $(#[$key_attr])*
        pub mod key {
            $($crate::gguf::metadata_config!(@const [$(#[$field_attr])*] $($spec)*);)+
        }

        impl $ty {
            /// Every field from its metadata key, each checked (see `metadata_config!`).
            fn read_metadata(f: &$crate::gguf::ModelFile) -> $crate::Result<Self> {
                Ok(Self { $($field: $crate::gguf::metadata_config!(@read f, $kind, $($spec)*),)+ })
            }

            /// Every field to its metadata key (what `read_metadata` reads).
            fn write_metadata(&self, w: &mut $crate::gguf::Writer) {
                $($crate::gguf::metadata_config!(@write w, &self.$field, $kind, $($spec)*);)+
            }
        }
    };
    (@const [$($doc:tt)*] key::$name:ident = $key:literal) => { $($doc)* pub const $name: &str = $key; };
    (@const [$($doc:tt)*] $($other:tt)*) => {};
    (@read $f:ident, fixed, $value:expr) => { $value };
    (@read $f:ident, $kind:ident, $module:ident::$name:ident $(= $key:literal)?) => { $f.$kind($module::$name)? };
    (@write $w:ident, $v:expr, fixed, $value:expr) => {};
    (@write $w:ident, $v:expr, $kind:ident, $module:ident::$name:ident $(= $key:literal)?) => {
        $crate::gguf::metadata_config!(@put $kind, $w, $module::$name, $v)
    };
    (@put count, $w:ident, $key:expr, $v:expr) => { $w.u32($key, *$v) };
    (@put usize, $w:ident, $key:expr, $v:expr) => { $w.u32($key, *$v) };
    (@put rate, $w:ident, $key:expr, $v:expr) => { $w.u32($key, *$v) };
    (@put strides, $w:ident, $key:expr, $v:expr) => { $w.u32_array($key, $v) };
    (@put positive_f64, $w:ident, $key:expr, $v:expr) => { $w.f32($key, *$v) };
    (@put f64, $w:ident, $key:expr, $v:expr) => { $w.f32($key, *$v) };
    (@put bool, $w:ident, $key:expr, $v:expr) => { $w.bool($key, *$v) };
    (@put text, $w:ident, $key:expr, $v:expr) => { $w.string($key, $v) };
}
pub(crate) use metadata_config;

#[cfg(test)]
mod tests {
    use super::*;

    /// `Writer::write` replaces a regular file but never a directory or a symlink, and names the target in errors.
    #[test]
    fn write_refuses_special_targets() {
        let dir = std::env::temp_dir().join(format!("codec-rs-gguf-target-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = Writer::new("mimi", "test");
        let err = w.write(&dir).unwrap_err().to_string();
        assert!(err.contains("not a regular file") && err.contains(&*dir.to_string_lossy()), "{err}");
        let target = dir.join("real.gguf");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.join("link.gguf");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&target, &link).unwrap();
            assert!(w.write(&link).unwrap_err().to_string().contains("not a regular file"));
            assert_eq!(std::fs::read(&target).unwrap(), b"x", "the symlink's target was touched");
        }
        w.write(&target).unwrap();
        assert!(ModelFile::open(&target).is_ok());
        let err = w.write(&dir.join("missing/sub/out.gguf")).unwrap_err().to_string();
        assert!(err.contains("out.gguf") && !err.contains("partial"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("codec-gguf-{}-{name}", std::process::id()))
    }

    /// The loader before memory-mapping: candle's reader → QTensor → dequantize → f32.
    fn load_via_qtensor(path: &Path) -> HashMap<String, Tensor> {
        let mut reader = BufReader::new(File::open(path).unwrap());
        let content = gguf_file::Content::read(&mut reader).unwrap();
        let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
        names
            .into_iter()
            .map(|n| {
                let q = content.tensor(&mut reader, &n, &Device::Cpu).unwrap();
                (n, q.dequantize(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap())
            })
            .collect()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn load_tensors_equals_candle_dequantize_for_f32_f16_q8_0() {
        let dev = Device::Cpu;
        let mut w = Writer::new("test", "test");
        // Large enough to span several parallel chunks with a partial last one; odd sizes elsewhere.
        let shapes: &[(&str, &[usize])] = &[("big", &[3, 65_600]), ("mat", &[5, 64]), ("odd", &[3, 7]), ("vec", &[33])];
        for (i, (name, shape)) in shapes.iter().enumerate() {
            let t = (Tensor::randn(0f32, 1.0, *shape, &dev).unwrap() * (i as f64 + 0.5)).unwrap();
            for dtype in [StorageDtype::F32, StorageDtype::F16, StorageDtype::Q8_0] {
                w.tensor(&format!("{name}.{dtype:?}"), &t, dtype, false).unwrap();
            }
        }
        // Special values survive f16 (±0, ±inf, subnormals, the extremes).
        let special = Tensor::new(&[[0f32, -0.0, f32::INFINITY, -f32::INFINITY, 6.0e-8, -3.0e-5, 65504.0, 1.0]], &dev);
        w.tensor("special", &special.unwrap(), StorageDtype::F16, false).unwrap();
        let path = tmp("dtypes.gguf");
        w.write(&path).unwrap();

        let file = ModelFile::open(&path).unwrap();
        let kinds: Vec<GgmlDType> = file.tensor_list().iter().map(|t| t.2).collect();
        for want in [GgmlDType::F32, GgmlDType::F16, GgmlDType::Q8_0] {
            assert!(kinds.contains(&want), "no {want:?} tensor in the test file");
        }
        let got = file.load_tensors(&dev).unwrap();
        let want = load_via_qtensor(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got.len(), want.len());
        for (name, w) in &want {
            let g = &got[name];
            assert_eq!(g.dtype(), DType::F32, "{name}");
            assert_eq!(g.dims(), w.dims(), "{name}");
            assert_eq!(bits(g), bits(w), "{name} differs from candle's dequantize");
        }
    }

    #[test]
    fn f16_at_an_odd_offset_widens_the_same() {
        let values: Vec<half::f16> = (0..1000).map(|i| half::f16::from_f32((i as f32 - 500.0) * 0.37)).collect();
        let mut bytes = vec![0u8];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let (mut aligned, mut odd) = (vec![0f32; 1000], vec![0f32; 1000]);
        let copy = bytes[1..].to_vec(); // a fresh allocation: aligned
        f32_from_f16_le(&copy, &mut aligned);
        f32_from_f16_le(&bytes[1..], &mut odd);
        let want: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
        assert_eq!(aligned, want);
        assert_eq!(odd, want);
    }

    #[test]
    fn block_dtypes_at_an_odd_offset_load_the_same() {
        // candle views these blocks in place as structs: at an odd offset that was a misaligned slice (found by
        // fuzzing); now they are copied aligned first.
        use GgmlDType::*;
        for dtype in [Q4_0, Q4_1, Q5_0, Q5_1, Q2K, Q3K, Q4K, Q5K, Q6K, BF16] {
            let dims = [2, dtype.block_size()];
            let n = 2 * dtype.type_size();
            let bytes: Vec<u8> = (0..=n).map(|i| (i * 37 % 251) as u8).collect();
            let copy = bytes[1..].to_vec(); // a fresh allocation: aligned
            let aligned = tensor_from_bytes(dtype, &copy, &dims, &Device::Cpu).unwrap();
            let odd = tensor_from_bytes(dtype, &bytes[1..], &dims, &Device::Cpu).unwrap();
            assert_eq!(bits(&odd), bits(&aligned), "{dtype:?}");
        }
    }

    /// A GGUF v3 file with one tensor of `dims` (ggml order) and dtype `dtype`, data offset 0, and `data` after the
    /// header; `metadata` is (key, value type, value bytes).
    fn raw_gguf(metadata: &[(&str, u32, Vec<u8>)], dims: &[u64], dtype: u32, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend((metadata.len() as u64).to_le_bytes());
        for (k, ty, v) in metadata {
            string(&mut b, k);
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        string(&mut b, "t");
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(dtype.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32, 0);
        b.extend(data);
        b
    }

    fn open_error(name: &str, bytes: &[u8]) -> String {
        let path = tmp(name);
        std::fs::write(&path, bytes).unwrap();
        let res = ModelFile::open(&path);
        std::fs::remove_file(&path).unwrap();
        match res {
            Ok(_) => panic!("{name}: opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn hostile_headers_are_errors() {
        // The element count overflows (it would wrap to 0 unchecked, and "fit" an empty data section).
        let msg = open_error("overflow.gguf", &raw_gguf(&[], &[1 << 33, 1 << 33, 1 << 33], 0, &[]));
        assert!(msg.contains("too large"), "{msg}");
        // The byte count overflows.
        let msg = open_error("empty.gguf", &raw_gguf(&[], &[1 << 40, 1 << 40, 0], 0, &[]));
        assert!(msg.contains("too large"), "{msg}");
        let msg = open_error("bytes.gguf", &raw_gguf(&[], &[1 << 62, 2], 0, &[]));
        assert!(msg.contains("too large"), "{msg}");
        // Data past the end of the file.
        let msg = open_error("short.gguf", &raw_gguf(&[], &[4, 4], 0, &[0; 60]));
        assert!(msg.contains("truncated") && msg.contains("needs bytes up to"), "{msg}");
        // q8_0 with a partial block.
        let msg = open_error("block.gguf", &raw_gguf(&[], &[33], 8 /* q8_0 */, &[0; 68]));
        assert!(msg.contains("blocks"), "{msg}");
        // An alignment of 0 (candle's reader divides by it), also after other entries and as the last of two.
        let u32_entry = |k: &'static str, v: u32| (k, 4u32, v.to_le_bytes().to_vec());
        let msg = open_error("align.gguf", &raw_gguf(&[u32_entry("general.alignment", 0)], &[4], 0, &[0; 16]));
        assert!(msg.contains("alignment"), "{msg}");
        let mut strings = [8u32.to_le_bytes().as_slice(), &2u64.to_le_bytes()].concat(); // [str; 2]
        for item in ["ab", "cde"] {
            strings.extend((item.len() as u64).to_le_bytes());
            strings.extend(item.as_bytes());
        }
        let entries = [
            ("general.name", 8u32, [3u64.to_le_bytes().as_slice(), b"abc"].concat()),
            ("list", 9, strings),
            ("general.alignmenu", 4, 0u32.to_le_bytes().to_vec()),
            u32_entry("general.alignment", 32),
            u32_entry("general.alignment", 0),
        ];
        let msg = open_error("align2.gguf", &raw_gguf(&entries, &[4], 0, &[0; 16]));
        assert!(msg.contains("alignment"), "{msg}");
        // A well-formed file of the same shape, with those entries up to an alignment of 32, opens and loads.
        let path = tmp("fine.gguf");
        let data: Vec<u8> = [1f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, raw_gguf(&entries[..4], &[4], 0, &data)).unwrap();
        let t = ModelFile::open(&path).unwrap().load_tensors(&Device::Cpu).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(t["t"].to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
    }
}
