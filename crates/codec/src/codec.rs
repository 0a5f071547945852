//! [`Codec`]: the runtime users call. Loads a GGUF, picks the architecture, resamples input to the model rate, checks
//! codes, and moves data between plain vectors and device tensors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::audio::Audio;
use crate::error::TensorContext;
use crate::gguf::ModelFile;
use crate::models::{self, Model, Parts};
use crate::nn::on_pool;
use crate::stream::{self, DecoderStream, EncoderStream, StreamDecoder, StreamEncoder};
use crate::{Error, Result};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// The first CUDA device (`--features cuda`).
    Cuda,
    /// The first Metal device (`--features metal`).
    Metal,
    /// CUDA or Metal when this build has them and a device answers, else CPU.
    Auto,
}

impl DeviceKind {
    /// The candle device this names; an error if this build or machine lacks it (`Auto` falls back to the CPU).
    pub fn device(self) -> Result<Device> {
        let unavailable = |what: &str, e: candle_core::Error| {
            Error::InvalidArgument(format!("device {what} is not available: {e} (build with --features {what}?)"))
        };
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => Device::new_cuda(0).map_err(|e| unavailable("cuda", e)),
            Self::Metal => Device::new_metal(0).map_err(|e| unavailable("metal", e)),
            Self::Auto => Ok(Device::new_cuda(0).or_else(|_| Device::new_metal(0)).unwrap_or(Device::Cpu)),
        }
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let choices = [("cpu", Self::Cpu), ("cuda", Self::Cuda), ("metal", Self::Metal), ("auto", Self::Auto)];
        crate::error::parse_choice("device", s, &choices)
    }
}

/// Codes of one mono clip: `n_q` rows of `n_frames` entries, row-major (codec.cpp's `(n_q, n_frames)` layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codes {
    /// Number of codebooks (rows).
    pub n_q: usize,
    /// Number of code frames (columns).
    pub n_frames: usize,
    /// The codes, `n_q * n_frames` entries, row `q` at `q * n_frames`.
    pub data: Vec<u32>,
}

impl Codes {
    /// Codebook `q`'s codes, one per frame.
    pub fn row(&self, q: usize) -> &[u32] {
        &self.data[q * self.n_frames..(q + 1) * self.n_frames]
    }
}

/// A loaded codec model.
pub struct Codec {
    model: Arc<dyn Model>,
    /// `general.architecture` of the model file (`models::*::ARCH`); empty for a model built in memory.
    arch: String,
    device: Device,
    path: PathBuf,
    chunk_seconds: f64,
    parts: Parts,
    /// The most memory one model pass may need (see [`Codec::set_memory_limit`]); `None`: unchecked.
    memory_limit: Option<u64>,
    /// Whether a scratch stream has run each way ([`warm_up`]).
    encoder_warm: std::sync::OnceLock<()>,
    decoder_warm: std::sync::OnceLock<()>,
}

impl Codec {
    /// Loads a GGUF model file onto `device`.
    pub fn load(path: &Path, device: DeviceKind) -> Result<Self> {
        Self::load_parts(path, device, Parts::All)
    }

    /// Loads only the half of the model `parts` names (half the start-up when a run only encodes or decodes);
    /// the other direction then fails with an error.
    pub fn load_parts(path: &Path, device: DeviceKind, parts: Parts) -> Result<Self> {
        let file = ModelFile::open(path)?;
        let device = device.device()?;
        let model = models::load(&file, &device, parts)?.into();
        let arch = file.architecture()?.to_string();
        let path = path.to_path_buf();
        let memory_limit = default_memory_limit()?;
        let (encoder_warm, decoder_warm) = Default::default();
        Ok(Self {
            model,
            arch,
            device,
            path,
            chunk_seconds: CHUNK_SECONDS,
            parts,
            memory_limit,
            encoder_warm,
            decoder_warm,
        })
    }

    /// Loads what a user names: a GGUF file; a checkpoint [`crate::convert`] reads, converted into a temporary GGUF
    /// removed once loaded (the model keeps the file's pages mapped); or a hub model id, downloaded and converted
    /// once into the hub cache (`progress`: bars on stderr). A path that is neither an existing file nor an id is an
    /// I/O error naming it.
    pub fn open(spec: &Path, device: DeviceKind, progress: bool) -> Result<Self> {
        let path = if spec.exists() {
            spec.to_path_buf()
        } else {
            match spec.to_str().filter(|s| crate::hub::ModelId::parse(s).is_some()) {
                Some(id) => crate::hub::resolve_model(id, progress)?,
                None => {
                    let e = std::fs::metadata(spec).err().unwrap_or_else(|| std::io::ErrorKind::NotFound.into());
                    return Err(Error::io(spec, e));
                }
            }
        };
        if is_gguf(&path) {
            return Self::load(&path, device);
        }
        let converted = tempfile::Builder::new()
            .prefix("codec-rs-")
            .suffix(".gguf")
            .tempfile()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        crate::convert::convert(&path, converted.path(), &Default::default())?;
        Self::load(converted.path(), device)
    }

    /// Wraps an already built model (tests, random-weight benchmarks); a malformed `$CODEC_MEMORY_LIMIT` counts as
    /// unset here (`load` reports it).
    pub fn from_model(model: Box<dyn Model>, device: Device) -> Self {
        let path = PathBuf::from("<memory>");
        Self {
            model: model.into(),
            arch: String::new(),
            device,
            path,
            chunk_seconds: CHUNK_SECONDS,
            parts: Parts::All,
            memory_limit: default_memory_limit().unwrap_or_else(|_| available_memory()),
            encoder_warm: Default::default(),
            decoder_warm: Default::default(),
        }
    }

    /// An error unless this codec was loaded with what `wanted` needs.
    fn require(&self, wanted: Parts) -> Result<()> {
        if self.parts == Parts::All || self.parts == wanted {
            return Ok(());
        }
        let loaded = if self.parts == Parts::Encoder { "encoding" } else { "decoding" };
        let needed = match wanted {
            Parts::Encoder => "encode",
            Parts::Decoder => "decode",
            Parts::All => "run both directions",
        };
        Err(Error::InvalidArgument(format!(
            "{}: the model was loaded for {loaded} only and cannot {needed}",
            self.path.display()
        )))
    }

    /// Audio per piece of a long input, at most (default [`CHUNK_SECONDS`]); results do not depend on it.
    pub fn set_chunk_seconds(&mut self, seconds: f64) {
        self.chunk_seconds = seconds;
    }

    /// The memory one model pass (a whole input, or one chunk of it) may need, in bytes; `None` turns the check
    /// off. Default: `$CODEC_MEMORY_LIMIT` (bytes, or with a K/M/G/T suffix; `off`; anything else is an error at
    /// load) if set, else the memory the system
    /// reports available when the codec is loaded (Linux; unchecked elsewhere). A pass that would need more, by
    /// [`Model::peak_bytes`], fails with an error before it allocates, instead of aborting part way.
    pub fn set_memory_limit(&mut self, bytes: Option<u64>) {
        self.memory_limit = bytes;
    }

    /// An error if one pass over `frames` frames would need more memory than the limit.
    fn check_memory(&self, frames: usize, what: &str) -> Result<()> {
        self.memory_guard().check(frames, what)
    }

    /// The memory check a stream makes on each push.
    fn memory_guard(&self) -> stream::MemoryGuard {
        stream::MemoryGuard { model: self.model.clone(), limit: self.memory_limit }
    }

    /// The architecture: `mimi`, `dac` or `wavtokenizer` (see [`models::ARCHITECTURES`]).
    pub fn arch(&self) -> &str {
        &self.arch
    }
    /// Audio samples per second the model takes and gives, in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.model.sample_rate()
    }
    /// Audio samples per code frame.
    pub fn hop(&self) -> usize {
        self.model.hop()
    }
    /// Code frames per second (`sample_rate / hop`).
    pub fn frame_rate(&self) -> f64 {
        self.sample_rate() as f64 / self.hop() as f64
    }
    /// The most codebooks the model has (what `n_q: None` means).
    pub fn max_n_q(&self) -> usize {
        self.model.n_q()
    }
    /// Entries per codebook: every code is below this.
    pub fn codebook_size(&self) -> usize {
        self.model.codebook_size()
    }
    /// The device the model's weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The loaded architecture, for tensor-level calls (batched `(B, 1, T)` audio, `(B, n_q, F)` codes).
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// Checks a requested codebook count; `None` means all.
    pub fn check_n_q(&self, n_q: Option<usize>) -> Result<usize> {
        let max = self.max_n_q();
        match n_q {
            None => Ok(max),
            Some(0) => Err(Error::InvalidArgument("--n-q must be at least 1".into())),
            Some(n) if n > max => {
                Err(Error::InvalidArgument(format!("--n-q {n} exceeds the model's maximum of {max} codebooks")))
            }
            Some(n) => Ok(n),
        }
    }

    /// Per-stage wall times of one encode + decode of `audio` (at the model rate) with `n_q` codebooks.
    pub fn stage_times(&self, audio: &Audio, n_q: usize) -> Result<Vec<crate::models::StageTime>> {
        self.require(Parts::All)?;
        let pcm = Tensor::from_slice(&audio.samples, (1, 1, audio.samples.len()), &self.device).ctx("bench input")?;
        on_pool(|| self.model.stage_times(&pcm, n_q)).ctx("bench stages")
    }

    /// Mono audio at any rate → codes with `n_q` codebooks (all when `None`).
    pub fn encode(&self, audio: &Audio, n_q: Option<usize>) -> Result<Codes> {
        self.encode_with_progress(audio, n_q, &mut |_, _| {})
    }

    /// [`Codec::encode`], reporting `(frames done, frames in all)` after each chunk (see [`Codec::pieces`]).
    pub fn encode_with_progress(
        &self,
        audio: &Audio,
        n_q: Option<usize>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Codes> {
        self.require(Parts::Encoder)?;
        let n_q = self.check_n_q(n_q)?;
        self.encode_at_rate(&self.at_model_rate(audio)?, n_q, progress)
    }

    /// [`Codec::encode_with_progress`] of checked samples already at the model's rate.
    fn encode_at_rate(&self, samples: &[f32], n_q: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<Codes> {
        let hop = self.hop();
        let n_frames = samples.len().div_ceil(hop);
        let Some(inner) = self.encoder_stream(n_q)? else {
            // No finite context: one pass.
            self.check_memory(n_frames, "encoding")?;
            let pcm = Tensor::from_slice(samples, (1, 1, samples.len()), &self.device).ctx("encode input")?;
            let codes = on_pool(|| self.model.encode(&pcm, n_q)).ctx(format!("{}: encode", self.path.display()))?;
            let data = codes.flatten_all().and_then(|c| c.to_vec1::<u32>()).ctx("encode")?;
            progress(n_frames, n_frames);
            return Ok(Codes { n_q, n_frames, data });
        };
        // Long inputs go through the stream in pieces, so memory stays that of one piece (and its context).
        let mut stream = StreamEncoder::new(inner, n_q, self.memory_guard());
        let pieces = self.pieces(n_frames);
        let mut rows = vec![Vec::with_capacity(n_frames); n_q];
        let mut done = 0;
        let mut add = |codes: Codes, progress: &mut dyn FnMut(usize, usize)| {
            for (q, row) in rows.iter_mut().enumerate() {
                row.extend_from_slice(codes.row(q));
            }
            done += codes.n_frames;
            progress(done, n_frames);
        };
        let last = pieces.len().saturating_sub(1);
        for (i, piece) in pieces.into_iter().enumerate() {
            let piece = &samples[(piece.start * hop).min(samples.len())..(piece.end * hop).min(samples.len())];
            let codes = if i == last { stream.finish(piece) } else { stream.push(piece) };
            add(self.named(codes)?, progress);
        }
        Ok(Codes { n_q, n_frames, data: rows.concat() })
    }

    /// `audio`'s samples at the model's rate, checked: not empty, all finite.
    fn at_model_rate<'a>(&self, audio: &'a Audio) -> Result<std::borrow::Cow<'a, [f32]>> {
        if audio.samples.is_empty() {
            return Err(Error::InvalidArgument("cannot encode empty audio".into()));
        }
        if let Some((i, v)) = audio.samples.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!("audio sample {i} is {v}: samples must be finite")));
        }
        Ok(if audio.sample_rate == self.sample_rate() {
            std::borrow::Cow::Borrowed(&audio.samples)
        } else {
            std::borrow::Cow::Owned(crate::audio::resample(&audio.samples, audio.sample_rate, self.sample_rate())?)
        })
    }

    /// Several clips → their codes, each identical to [`Codec::encode`] of that clip alone. Clips run together as
    /// batched passes (B > 1), as many as fit a pass's memory budget ([`Codec::piece_memory`], two pieces' worth):
    /// of any lengths, right-padded with zeros, where the model pads exactly ([`Model::pads_exactly`]: Mimi, being
    /// causal; DAC, masking its look-ahead); of equal length for WavTokenizer. A clip with no partner, or too long
    /// for one pass, runs as in `encode`, in pieces. An item's error names its index.
    pub fn encode_batch(&self, audio: &[Audio], n_q: Option<usize>) -> Result<Vec<Codes>> {
        self.require(Parts::Encoder)?;
        let n_q = self.check_n_q(n_q)?;
        let samples = audio
            .iter()
            .enumerate()
            .map(|(i, a)| self.at_model_rate(a).map_err(|e| e.item(i)))
            .collect::<Result<Vec<_>>>()?;
        let hop = self.hop();
        let frames: Vec<usize> = samples.iter().map(|s| s.len().div_ceil(hop)).collect();
        let mut out: Vec<Option<Codes>> = vec![None; audio.len()];
        for group in self.batches(&frames, |i| (samples[i].len(), 0)) {
            if let [i] = group[..] {
                out[i] = Some(self.encode_at_rate(&samples[i], n_q, &mut |_, _| {}).map_err(|e| e.item(i))?);
                continue;
            }
            // Longest first (see `batches`): the others are zero-extended to it.
            let (len, most) = (samples[group[0]].len(), frames[group[0]]);
            let mut flat = vec![0f32; group.len() * len];
            for (row, &i) in flat.chunks_exact_mut(len).zip(&group) {
                row[..samples[i].len()].copy_from_slice(&samples[i]);
            }
            let pcm = Tensor::from_vec(flat, (group.len(), 1, len), &self.device).ctx("encode input")?;
            let lengths: Vec<usize> = group.iter().map(|&i| samples[i].len()).collect();
            let codes = self.named(on_pool(|| self.model.encode_padded(&pcm, &lengths, n_q)).ctx("batched encode"))?;
            let data = codes.flatten_all().and_then(|c| c.to_vec1::<u32>()).ctx("batched encode")?;
            for (&i, item) in group.iter().zip(data.chunks_exact(n_q * most)) {
                let n_frames = frames[i];
                let data = item.chunks_exact(most).flat_map(|row| &row[..n_frames]).copied().collect();
                out[i] = Some(Codes { n_q, n_frames, data });
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Several code sequences → their audio, each identical to [`Codec::decode`] of it alone; batched like
    /// [`Codec::encode_batch`] (sequences of any length right-padded with code 0 where the model pads exactly, else
    /// of equal length), sequences of one codebook count together.
    pub fn decode_batch(&self, codes: &[Codes]) -> Result<Vec<Audio>> {
        self.require(Parts::Decoder)?;
        for (i, c) in codes.iter().enumerate() {
            self.check_decodable(c).map_err(|e| e.item(i))?;
        }
        let sample_rate = self.sample_rate();
        let frames: Vec<usize> = codes.iter().map(|c| c.n_frames).collect();
        let mut out: Vec<Option<Audio>> = vec![None; codes.len()];
        // Only sequences of one codebook count share a pass.
        for group in self.batches(&frames, |i| (codes[i].n_frames, codes[i].n_q)) {
            if let [i] = group[..] {
                out[i] = Some(self.decode(&codes[i]).map_err(|e| e.item(i))?);
                continue;
            }
            // Longest first: the others are extended with code 0.
            let (n_q, most) = (codes[group[0]].n_q, frames[group[0]]);
            let mut flat = vec![0u32; group.len() * n_q * most];
            for (rows, &i) in flat.chunks_exact_mut(n_q * most).zip(&group) {
                for (q, row) in rows.chunks_exact_mut(most).enumerate() {
                    row[..frames[i]].copy_from_slice(codes[i].row(q));
                }
            }
            let t = Tensor::from_vec(flat, (group.len(), n_q, most), &self.device).ctx("decode input")?;
            let lengths: Vec<usize> = group.iter().map(|&i| frames[i]).collect();
            let (pcm, lengths) =
                self.named(on_pool(|| self.model.decode_padded(&t, &lengths)).ctx("batched decode"))?;
            let per_item = pcm.dim(2).ctx("batched decode output")?;
            let data = pcm.flatten_all().and_then(|p| p.to_vec1::<f32>()).ctx("batched decode output")?;
            for ((&i, item), len) in group.iter().zip(data.chunks_exact(per_item.max(1))).zip(lengths) {
                out[i] = Some(Audio { sample_rate, samples: item[..len.min(per_item)].to_vec() });
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Item indices grouped for batched passes, each group longest first (so a pass pads little): items of equal
    /// `key` (length, shape) — of equal shape alone where the model pads exactly — in order of first appearance;
    /// each group cut to what one pass may hold (two pieces' memory at its longest item, see [`Codec::pieces`]) and
    /// to items at least 4/5 of its longest.
    /// An item too long for that, or alone, is a group of one (run through `encode`/`decode`, in pieces).
    fn batches(&self, frames: &[usize], key: impl Fn(usize) -> (usize, usize)) -> Vec<Vec<usize>> {
        let mut groups: Vec<((usize, usize), Vec<usize>)> = Vec::new();
        let pads = self.model.pads_exactly();
        for i in 0..frames.len() {
            let (len, shape) = key(i);
            let k = if pads { (0, shape) } else { (len, shape) };
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, items)) => items.push(i),
                None => groups.push((k, vec![i])),
            }
        }
        let budget = 2 * self.piece_memory();
        let whole = self.chunk_seconds * self.frame_rate();
        let mut out = Vec::new();
        for (_, mut items) in groups {
            items.sort_by_key(|&i| std::cmp::Reverse(frames[i]));
            let mut rest = &items[..];
            while let Some(&first) = rest.first() {
                let peak = self.model.peak_bytes(frames[first]).max(1);
                let per_pass = if frames[first] as f64 > whole { 1 } else { (budget / peak).max(1) as usize };
                // Padding is wasted work: a pass takes only items at least 4/5 of its longest (≤ 25 % padding).
                let similar = rest.iter().take_while(|&&i| frames[i] * 5 >= frames[first] * 4).count();
                let (pass, later) = rest.split_at(per_pass.min(similar));
                out.push(pass.to_vec());
                rest = later;
            }
        }
        out
    }

    /// Names the model file in a model-side error.
    fn named<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|e| match e {
            Error::Tensor { context, source } => {
                Error::Tensor { context: format!("{}: {context}", self.path.display()), source }
            }
            other => other,
        })
    }

    /// A streaming encoder with `n_q` codebooks (all when `None`): audio at the model's rate in pieces of any size,
    /// codes out as frames complete — the codes of [`Codec::encode`] on the whole input. Mimi streams with one
    /// frame of latency; DAC with its receptive field; WavTokenizer is [`Error::Unsupported`].
    pub fn stream_encoder(&self, n_q: Option<usize>) -> Result<StreamEncoder> {
        self.make_stream_encoder(n_q, true)
    }

    /// [`Codec::stream_encoder`] without its warm-up, for going through a file, where only the total time counts:
    /// the first pushes pack the weights as they run instead of scratch pushes packing them first, and a clip that
    /// fits one push reads them in place and never packs them (a third of a short clip's whole `codec encode`).
    pub fn stream_encoder_without_warm_up(&self, n_q: Option<usize>) -> Result<StreamEncoder> {
        self.make_stream_encoder(n_q, false)
    }

    fn make_stream_encoder(&self, n_q: Option<usize>, warm: bool) -> Result<StreamEncoder> {
        self.require(Parts::Encoder)?;
        let n_q = self.check_n_q(n_q)?;
        let stream = || match self.encoder_stream(n_q)? {
            Some(inner) => Ok(StreamEncoder::new(inner, n_q, self.memory_guard())),
            None => Err(Error::Unsupported(format!(
                "{}: this model's encoder cannot stream (its context is unbounded)",
                self.path.display()
            ))),
        };
        if warm {
            let silence = vec![0.0; self.hop()];
            warm_up(&self.encoder_warm, || (0..WARM_UP_PUSHES).try_for_each(|_| stream()?.push(&silence).map(drop)));
        }
        stream()
    }

    /// A streaming decoder: codes in pieces of any number of frames, audio out as it becomes final — the audio of
    /// [`Codec::decode`] on all the codes (up to rounding). WavTokenizer is [`Error::Unsupported`]: its decoder's
    /// attention spans the whole clip, so no sample is final before the last frame.
    pub fn stream_decoder(&self) -> Result<StreamDecoder> {
        self.make_stream_decoder(true)
    }

    /// [`Codec::stream_decoder`] without its warm-up, for writing a file (see
    /// [`Codec::stream_encoder_without_warm_up`]).
    pub fn stream_decoder_without_warm_up(&self) -> Result<StreamDecoder> {
        self.make_stream_decoder(false)
    }

    fn make_stream_decoder(&self, warm: bool) -> Result<StreamDecoder> {
        self.require(Parts::Decoder)?;
        let stream = || match self.decoder_stream() {
            Some(inner) => Ok(StreamDecoder::new(inner, self.device.clone(), self.memory_guard())),
            None => Err(Error::Unsupported(format!(
                "{}: this model's decoder cannot stream (its attention spans the whole clip); decode whole clips",
                self.path.display()
            ))),
        };
        if warm {
            let silence = Codes { n_q: 1, n_frames: 1, data: vec![0] };
            warm_up(&self.decoder_warm, || (0..WARM_UP_PUSHES).try_for_each(|_| stream()?.push(&silence).map(drop)));
        }
        stream()
    }

    /// The model's encoder stream, if it has one.
    fn encoder_stream(&self, n_q: usize) -> Result<Option<Box<dyn EncoderStream>>> {
        Ok(self.model.clone().stream_encoder(n_q, &self.device))
    }

    /// The model's decoder stream, if it has one.
    fn decoder_stream(&self) -> Option<Box<dyn DecoderStream>> {
        self.model.clone().stream_decoder(&self.device)
    }

    /// Codes → mono audio at the model rate, about `n_frames * hop` samples.
    pub fn decode(&self, codes: &Codes) -> Result<Audio> {
        self.decode_with_progress(codes, &mut |_, _| {})
    }

    /// [`Codec::decode`], reporting `(frames done, frames in all)` after each chunk (see [`Codec::pieces`]).
    pub fn decode_with_progress(
        &self,
        codes: &Codes,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Audio> {
        let mut samples = Vec::with_capacity(codes.n_frames.saturating_mul(self.hop()));
        self.decode_to(
            codes,
            &mut |pcm| {
                samples.extend_from_slice(pcm);
                Ok(())
            },
            progress,
        )?;
        Ok(Audio { sample_rate: self.sample_rate(), samples })
    }

    /// Codes → mono audio at the model rate handed to `sink` piece by piece as it is made (about `n_frames * hop`
    /// samples in all), in the working memory of one piece whatever the length (see [`Codec::pieces`]): through the
    /// model's stream, or, for a decoder that cannot stream, its pass cut into pieces
    /// ([`crate::models::Model::decode_in_pieces`]). `progress(frames done, frames in all)` as it goes. An error
    /// of `sink` ends the decode and is returned.
    pub fn decode_to(
        &self,
        codes: &Codes,
        sink: &mut (dyn FnMut(&[f32]) -> Result<()> + Send),
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<()> {
        self.require(Parts::Decoder)?;
        self.check_decodable(codes)?;
        let pieces = self.pieces(codes.n_frames);
        let Some(inner) = self.decoder_stream() else {
            if pieces.len() == 1 {
                self.check_memory(codes.n_frames, "decoding")?;
            }
            let t =
                Tensor::from_slice(&codes.data, (1, codes.n_q, codes.n_frames), &self.device).ctx("decode input")?;
            let piece_frames = pieces.first().map_or(1, |p| p.len());
            // The model's sink speaks candle's errors: keep ours to return as it was.
            let mut failed = None;
            let result = {
                let mut model_sink = |pcm: &[f32]| {
                    sink(pcm).map_err(|e| {
                        let message = e.to_string();
                        failed = Some(e);
                        candle_core::Error::Msg(message)
                    })
                };
                on_pool(|| self.model.decode_in_pieces(&t, piece_frames, &mut model_sink, progress))
            };
            return match failed {
                Some(e) => Err(e),
                None => result.ctx(format!("{}: decode", self.path.display())),
            };
        };
        let mut stream = StreamDecoder::new(inner, self.device.clone(), self.memory_guard());
        let last = pieces.len().saturating_sub(1);
        for (i, piece) in pieces.into_iter().enumerate() {
            let data = (0..codes.n_q).flat_map(|q| &codes.row(q)[piece.clone()]).copied().collect();
            let piece_codes = Codes { n_q: codes.n_q, n_frames: piece.len(), data };
            let pcm = if i == last { stream.finish(&piece_codes) } else { stream.push(&piece_codes) };
            sink(&self.named(pcm)?)?;
            progress(piece.end, codes.n_frames);
        }
        Ok(())
    }

    /// What decoding needs of `codes`: a codebook count this model has, at least one frame, codes in range.
    fn check_decodable(&self, codes: &Codes) -> Result<()> {
        self.check_n_q(Some(codes.n_q))?;
        if codes.n_frames == 0 {
            return Err(Error::InvalidArgument("cannot decode zero frames".into()));
        }
        stream::check_codes(codes, self.max_n_q(), self.codebook_size())
    }

    /// Frames per piece of a long input: `chunk_seconds` of audio, fewer if one pass over that would need more
    /// than [`Codec::piece_memory`] or the memory limit; at least one.
    pub fn piece_frames(&self) -> usize {
        let most = ((self.chunk_seconds * self.frame_rate()) as usize).max(1);
        let budget = self.piece_memory().min(self.memory_limit.unwrap_or(u64::MAX));
        let fits = |frames: usize| self.model.peak_bytes(frames) <= budget;
        // The largest size that fits, by bisection (peak memory grows with length).
        let (mut lo, mut hi) = (1, most);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// The most working memory a short clip may take in one pass: [`WHOLE_PASS_MEMORY`] on the CPU, two pieces'
    /// worth on a GPU ([`Codec::pieces`] also holds it to the memory limit).
    pub fn whole_pass_memory(&self) -> u64 {
        match &self.device {
            Device::Cpu => WHOLE_PASS_MEMORY,
            _ => 2 * self.piece_memory(),
        }
    }

    /// Working memory of one piece: [`PIECE_MEMORY`] on the CPU (where bigger pieces only cost cache misses);
    /// on a GPU, whose many cores need long pieces (and batches) to be busy, a quarter of the device memory free
    /// now (`GPU_PIECE_MEMORY` where that cannot be read).
    pub fn piece_memory(&self) -> u64 {
        match &self.device {
            Device::Cpu => PIECE_MEMORY,
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) => match cuda.cuda_stream().context().mem_get_info() {
                Ok((free, _)) => (free as u64 / 4).max(PIECE_MEMORY),
                Err(_) => GPU_PIECE_MEMORY,
            },
            _ => GPU_PIECE_MEMORY,
        }
    }

    /// How an input of `n_frames` goes through a stream: whole if it is a clip (at most the chunk length) whose one
    /// pass fits [`Codec::whole_pass_memory`], else pieces of [`Codec::piece_frames`]. Results do not depend on the
    /// cut beyond rounding; memory is that of one piece, or of one short clip.
    pub fn pieces(&self, n_frames: usize) -> Vec<std::ops::Range<usize>> {
        // A clip runs whole: one pass costs less than several (each reads the weights, and from a stream's third
        // piece on the weights are packed: a 10 s DAC 16 kHz decode took 4–18 % longer in ten pieces); the memory
        // bound matters for long inputs. The stream checks that one push against the memory limit with what a
        // stream needs (`peak_bytes`, at least `pass_bytes`), so that check decides here too: a limit between the
        // two estimates sends the clip to pieces rather than refusing it.
        let whole = n_frames as f64 <= self.chunk_seconds * self.frame_rate()
            && self.model.pass_bytes(n_frames) <= self.whole_pass_memory()
            && self.memory_limit.is_none_or(|limit| self.model.peak_bytes(n_frames) <= limit);
        let per_piece = if whole { n_frames.max(1) } else { self.piece_frames() };
        (0..n_frames).step_by(per_piece).map(|from| from..(from + per_piece).min(n_frames)).collect()
    }
}

/// Whether `path` is a GGUF file (by its extension or its magic bytes), not a checkpoint to convert.
fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        || std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok_and(|()| &magic == b"GGUF")
}

/// [`Codec::set_memory_limit`]'s default: `$CODEC_MEMORY_LIMIT` (`off` for none), else the system's available
/// memory. A value that does not parse is an error, not a silent default.
fn default_memory_limit() -> Result<Option<u64>> {
    match std::env::var("CODEC_MEMORY_LIMIT") {
        Ok(v) if v.trim().eq_ignore_ascii_case("off") => Ok(None),
        Ok(v) => parse_bytes(&v).map(Some).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "CODEC_MEMORY_LIMIT='{}' is not a size (bytes, or with a K/M/G/T suffix such as 8G; or off)",
                v.escape_debug()
            ))
        }),
        Err(_) => Ok(available_memory()),
    }
}

/// `123`, `512M`, `8G`, `1.5T` → bytes (binary units); `None` if malformed.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'B'),
    };
    let scale = match unit {
        'B' => 1u64,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        'T' => 1 << 40,
        _ => return None,
    };
    let value = number.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)? * scale as f64;
    (value < u64::MAX as f64).then_some(value as u64)
}

/// `MemAvailable` of `/proc/meminfo`: what can be allocated without swapping.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The most memory one piece of a long input may need: keeps a stream's peak memory a few hundred MB above the
/// model's, whatever the input's length.
pub const PIECE_MEMORY: u64 = 128 << 20;

/// The most working memory a clip of at most the chunk length takes in one pass on the CPU: a 20 s Mimi or DAC 16 kHz
/// clip runs whole; DAC 44.1 kHz clips beyond 9 s go in pieces.
pub const WHOLE_PASS_MEMORY: u64 = 1 << 30;

/// [`PIECE_MEMORY`] on a GPU whose free memory cannot be read.
pub const GPU_PIECE_MEMORY: u64 = 4 << 30;

/// Runs `scratch` (pushes of one frame of silence into scratch streams, thrown away) the first time a codec makes
/// a stream in that direction (`done`). A stream runs its layers once per push: the third run of a weight read in
/// place from the file packs it, a narrow conv packs its transposed weights on its first, and each of those took
/// one push of the caller's audio a few hundred milliseconds. Now that happens when the first stream is made, and
/// every push of a real stream runs on packed weights. Results are the same bits either way; an error here is the
/// real stream's to report, so it is dropped.
fn warm_up(done: &std::sync::OnceLock<()>, scratch: impl FnOnce() -> Result<()>) {
    done.get_or_init(|| drop(scratch()));
}

/// Pushes of the warm-up: one more than the runs a weight is read in place, so every layer has packed its weights.
const WARM_UP_PUSHES: usize = 3;

/// Default audio per piece of a long input, at most (see [`Codec::piece_frames`]): long enough that per-piece
/// overheads do not count.
pub const CHUNK_SECONDS: f64 = 20.0;

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn parses_byte_sizes() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes(" 8g "), Some(8 << 30));
        assert_eq!(parse_bytes("1.5K"), Some(1536));
        for bad in ["", "G", "-1G", "1X", "nanG", "1e30T"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }
}
