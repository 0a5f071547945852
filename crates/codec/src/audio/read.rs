//! Decoding audio files with symphonia (wav, flac, mp3, ogg/vorbis) to mono `f32`, packet by packet: [`Reader`]
//! streams a file at a chosen rate; [`read`] and [`read_mono_at`] collect one.

use std::fs::File;
use std::io::ErrorKind;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use symphonia::core::audio::{AudioBuffer, Signal};
use symphonia::core::codecs::{Decoder, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::errors::Result as SymResult;
use symphonia::core::formats::FormatOptions;
use symphonia::core::formats::FormatReader;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::{Descriptor, Hint, Instantiate, Probe, QueryDescriptor};
use symphonia::default::formats::FlacReader;

use super::resample::{output_len, StreamResampler};
use super::{Audio, MAX_INPUT_RATE, MIN_INPUT_RATE};
use crate::{Error, Result};

/// The formats compiled in (symphonia features in Cargo.toml), for error messages.
const SUPPORTED: &str = "wav, flac, mp3, ogg/vorbis";

/// Samples per chunk from [`Reader::next_chunk`] unless [`Reader::set_chunk_len`] says otherwise: 256 KiB of `f32`,
/// 2.7 s at 24 kHz.
pub const DEFAULT_CHUNK_LEN: usize = 1 << 16;

/// Reads an audio file at its native sample rate, downmixed to mono by averaging the channels.
///
/// Integer PCM is scaled to [-1, 1) by 1/2^(bits-1) (16-bit: v/32768; 8-bit unsigned: (v-128)/128); float32 WAV
/// samples of a mono file come back bit-exact. Encoder delay and padding are trimmed where the file records them
/// (gapless mp3). Errors: a missing or unreadable file is [`Error::Io`]; a file that is not audio, holds no audio
/// track, decodes to zero samples or holds a non-finite sample (NaN, ±inf) is [`Error::Audio`].
///
/// The whole file in memory; [`Reader`] streams it, and this is that reader's output in one piece.
pub fn read(path: &Path) -> Result<Audio> {
    Reader::open_at(path, None)?.read_to_end()
}

/// Reads any supported audio file ([`read`](fn@read)) and resamples it to `rate` Hz
/// ([`super::resample`](fn@super::resample)); input rates outside [`MIN_INPUT_RATE`]..=[`MAX_INPUT_RATE`] are an error
/// naming the file.
///
/// The whole file in memory; [`Reader::open`] streams it, and this is that reader's output in one piece.
pub fn read_mono_at(path: &Path, rate: u32) -> Result<Audio> {
    Reader::open(path, rate)?.read_to_end()
}

/// A streaming audio reader: mono `f32` chunks at a chosen rate, decoded packet by packet and resampled as they
/// come ([`StreamResampler`]), so memory stays O(chunk) whatever the file's length.
///
/// [`next_chunk`](Self::next_chunk) returns chunks of exactly [`chunk_len`](Self::set_chunk_len) samples
/// ([`DEFAULT_CHUNK_LEN`] unless set), the last one shorter, then `None`; `Reader` is also an
/// `Iterator<Item = Result<Vec<f32>>>` over the same chunks. The chunks concatenated are, bit for bit, what
/// [`read_mono_at`] returns (that function is this reader collected).
///
/// Everything that can be known from the start of the file is checked by [`open`](Self::open): the file exists and
/// is audio, its first samples decode, its rate is in range. What shows only later (a NaN at minute 40, a rate
/// change mid-stream, a demuxing error) is the error of the chunk that reaches it; after an error the reader is
/// done and returns `None`. A decoder panic on a hostile file becomes an [`Error::Audio`] naming the file.
pub struct Reader {
    source: Source,
    /// The file's rate (checked: > 0) and the rate of the chunks.
    source_rate: u32,
    rate: u32,
    resampler: StreamResampler,
    chunk_len: usize,
    /// Resampled samples not yet returned.
    ready: Vec<f32>,
    /// One packet's mono samples at the file's rate.
    decoded: Vec<f32>,
    /// Samples of the file checked so far (for naming a bad sample's position).
    position: u64,
    /// The input is exhausted (or failed): what is in `ready` is all that is left.
    ended: bool,
}

impl Reader {
    /// Opens `path` for reading as mono at `rate` Hz. Fails, naming the file, when it is missing or not audio, when
    /// it decodes to no samples, when its first samples are not finite, or when its rate is outside
    /// [`MIN_INPUT_RATE`]..=[`MAX_INPUT_RATE`]; `rate` 0 is an [`Error::InvalidArgument`].
    pub fn open(path: &Path, rate: u32) -> Result<Reader> {
        Self::open_at(path, Some(rate))
    }

    /// [`open`](Self::open) at `rate`, or at the file's own rate, unchecked, when `None` (for [`read`]).
    fn open_at(path: &Path, rate: Option<u32>) -> Result<Reader> {
        let (source, first) = guarded(path, || Source::open(path))?;
        // Some whenever a packet decoded, which non-empty `first` implies.
        let source_rate = source.rate.filter(|&r| r > 0).ok_or_else(|| Error::audio(path, "sample rate is 0"))?;
        if rate.is_some() && !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&source_rate) {
            return Err(Error::audio(
                path,
                format!("sample rate {source_rate} Hz is outside the supported {MIN_INPUT_RATE}–{MAX_INPUT_RATE} Hz"),
            ));
        }
        let rate = rate.unwrap_or(source_rate);
        let mut reader = Reader {
            resampler: StreamResampler::new(source_rate, rate)?,
            source,
            source_rate,
            rate,
            chunk_len: DEFAULT_CHUNK_LEN,
            ready: Vec::new(),
            decoded: first,
            position: 0,
            ended: false,
        };
        reader.resample_decoded()?;
        Ok(reader)
    }

    /// The file's sample rate in Hz.
    pub fn source_rate(&self) -> u32 {
        self.source_rate
    }

    /// The rate of the chunks in Hz (`rate` of [`open`](Self::open)).
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// The total number of samples the reader will return, at [`sample_rate`](Self::sample_rate), when the container
    /// records its length (WAV, FLAC with a STREAMINFO count, mp3 with a Xing/LAME header, Ogg); `None` otherwise.
    /// Taken from the file's header: right for a well-formed file, but only an estimate (for progress), never a
    /// size to allocate.
    pub fn estimated_len(&self) -> Option<u64> {
        u64::try_from(output_len(self.source.n_frames?, self.source_rate, self.rate)).ok()
    }

    /// Sets the length of the chunks [`next_chunk`](Self::next_chunk) returns from now on; 0 is an
    /// [`Error::InvalidArgument`].
    pub fn set_chunk_len(&mut self, samples: usize) -> Result<()> {
        if samples == 0 {
            return Err(Error::InvalidArgument("audio chunk length must be at least 1 sample".into()));
        }
        self.chunk_len = samples;
        Ok(())
    }

    /// The next `chunk_len` samples at [`sample_rate`](Self::sample_rate) (fewer for the last chunk), or `None`
    /// after the last one.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<f32>>> {
        while self.ready.len() < self.chunk_len && !self.ended {
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| self.decode_next()));
            if let Err(e) = step.unwrap_or_else(|panic| Err(decoder_panic(&self.source.path, panic))) {
                self.ended = true;
                self.ready = Vec::new();
                return Err(e);
            }
        }
        if self.ready.is_empty() {
            return Ok(None);
        }
        let rest = self.ready.split_off(self.chunk_len.min(self.ready.len()));
        Ok(Some(std::mem::replace(&mut self.ready, rest)))
    }

    /// Decodes the next packet into `ready`; at the end of the input, flushes the resampler and marks the end.
    fn decode_next(&mut self) -> Result<()> {
        self.decoded.clear();
        let more = self.source.next_samples(&mut self.decoded)?;
        self.resample_decoded()?;
        if !more {
            self.resampler.flush(&mut self.ready)?;
            self.ended = true;
        }
        Ok(())
    }

    /// Checks the samples in `decoded` (the next ones of the file) and appends them, resampled, to `ready`.
    fn resample_decoded(&mut self) -> Result<()> {
        if let Some((i, v)) = self.decoded.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let index = self.position + i as u64;
            return Err(Error::audio(
                &self.source.path,
                format!(
                    "sample {index} (at {:.3} s) is {v}; audio must be finite",
                    index as f64 / self.source_rate as f64
                ),
            ));
        }
        self.position += self.decoded.len() as u64;
        self.resampler.push(&self.decoded, &mut self.ready)
    }

    /// The rest of the stream as one [`Audio`] at [`sample_rate`](Self::sample_rate).
    fn read_to_end(mut self) -> Result<Audio> {
        self.chunk_len = usize::MAX;
        let samples = self.next_chunk()?.unwrap_or_default();
        Ok(Audio { sample_rate: self.rate, samples })
    }
}

impl Iterator for Reader {
    type Item = Result<Vec<f32>>;

    /// [`Reader::next_chunk`].
    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

/// One file's audio track being decoded: symphonia's demuxer and decoder, packets to mono samples at the file's rate.
struct Source {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    /// Set by the first packet decoded; every later one must agree.
    rate: Option<u32>,
    /// The track's length in frames, where the container records it.
    n_frames: Option<u64>,
}

/// What decoding the next packet of the track gave.
enum Packet {
    /// Its samples were appended (possibly none).
    Decoded,
    /// It was corrupt and skipped, like players and ffmpeg do, so one damaged mp3 frame does not make the whole file
    /// unreadable.
    Corrupt(&'static str),
    /// The stream ended.
    End,
}

impl Source {
    /// Opens `path` and decodes up to its first samples, which it returns; a file that holds none is an error.
    fn open(path: &Path) -> Result<(Source, Vec<f32>)> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // Opening a directory succeeds on Unix; say so instead of "not a supported audio file".
        if file.metadata().map_err(|e| Error::io(path, e))?.is_dir() {
            return Err(Error::io(path, std::io::Error::from(ErrorKind::IsADirectory)));
        }
        let stream = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let format_opts = FormatOptions { enable_gapless: true, ..Default::default() };
        let probed = probe().format(&hint, stream, &format_opts, &MetadataOptions::default()).map_err(|e| match e {
            SymError::IoError(io) if io.kind() != ErrorKind::UnexpectedEof => Error::io(path, io),
            e => Error::audio(path, format!("not a supported audio file ({}; supported: {SUPPORTED})", describe(&e))),
        })?;
        let format = probed.format;

        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| Error::audio(path, "no audio track"))?;
        let (track_id, n_frames) = (track.id, track.codec_params.n_frames);
        let decoder = symphonia::default::get_codecs()
            .make(&track.codec_params, &DecoderOptions::default())
            .map_err(|e| Error::audio(path, format!("unsupported audio codec ({})", describe(&e))))?;
        let mut source = Source { path: path.to_path_buf(), format, decoder, track_id, rate: None, n_frames };

        let mut samples = Vec::new();
        let mut first_decode_error = None;
        while samples.is_empty() {
            match source.next_packet(&mut samples)? {
                Packet::Decoded => {}
                Packet::Corrupt(msg) => {
                    first_decode_error.get_or_insert(msg);
                }
                Packet::End => {
                    return Err(match first_decode_error {
                        Some(msg) if source.rate.is_none() => Error::audio(path, format!("corrupt audio data ({msg})")),
                        _ => Error::audio(path, "no audio samples"),
                    })
                }
            }
        }
        Ok((source, samples))
    }

    /// Appends the samples of the next packet that decodes; false at the end of the stream.
    fn next_samples(&mut self, out: &mut Vec<f32>) -> Result<bool> {
        loop {
            match self.next_packet(out)? {
                Packet::Decoded => return Ok(true),
                Packet::Corrupt(_) => {}
                Packet::End => return Ok(false),
            }
        }
    }

    /// Decodes the next packet of the track, appending its samples downmixed to mono to `out`.
    fn next_packet(&mut self, out: &mut Vec<f32>) -> Result<Packet> {
        let path = &self.path;
        let packet = loop {
            match self.format.next_packet() {
                Ok(p) if p.track_id() == self.track_id => break p,
                Ok(_) => {}
                // Symphonia signals the end of the stream with an EOF I/O error; a truncated file ends the same way
                // and keeps what was decoded, as other players do.
                Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Packet::End),
                // A chained stream (e.g. concatenated Ogg files) starts a new track: only the first one is read.
                Err(SymError::ResetRequired) => return Ok(Packet::End),
                Err(SymError::IoError(e)) => return Err(Error::io(path, e)),
                Err(e) => return Err(Error::audio(path, format!("cannot demux: {}", describe(&e)))),
            }
        };
        let decoded = match self.decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(msg)) => return Ok(Packet::Corrupt(msg)),
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Packet::End),
            Err(e) => return Err(Error::audio(path, format!("cannot decode: {}", describe(&e)))),
        };
        let spec = *decoded.spec();
        match self.rate {
            None => self.rate = Some(spec.rate),
            Some(r) if r != spec.rate => {
                return Err(Error::audio(path, format!("sample rate changes mid-stream ({r} Hz to {} Hz)", spec.rate)))
            }
            Some(_) => {}
        }
        let mut buf: AudioBuffer<f32> = decoded.make_equivalent();
        decoded.convert(&mut buf);
        downmix_into(&buf, out);
        Ok(Packet::Decoded)
    }
}

/// Runs `f`, turning a panic into an error naming `path`: symphonia panics on some malformed headers (a WAV with
/// sample rate 0 builds a zero time base), and whatever the decoder does with a hostile file must become an error.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(decoder_panic(path, panic)))
}

/// The error for a decoder panic with payload `panic`.
fn decoder_panic(path: &Path, panic: Box<dyn std::any::Any + Send>) -> Error {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown failure".into());
    Error::audio(path, format!("malformed audio file (the decoder failed: {msg})"))
}

/// symphonia's probe (every enabled format) with FLAC behind [`flac_checked`], registered first so it wins.
fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let mut probe = Probe::default();
        for d in <FlacReader as QueryDescriptor>::query() {
            probe.register(&Descriptor {
                short_name: d.short_name,
                long_name: d.long_name,
                extensions: d.extensions,
                mime_types: d.mime_types,
                markers: d.markers,
                score: d.score,
                inst: Instantiate::Format(flac_checked),
            });
        }
        symphonia::default::register_enabled_formats(&mut probe);
        probe
    })
}

/// symphonia's FLAC reader allocates every length it reads inside a metadata block (a Vorbis comment; a picture's
/// media type, description and data) before reading the bytes, so a lying 32-bit length asked for up to 4 GiB
/// (found by fuzzing). Here, where the probe found the `fLaC` marker (anywhere in the first MiB, as symphonia
/// searches), every such length is first checked to fit in its block — it must, for the block to parse at all — and
/// a lie is an error; then symphonia's reader starts from the marker. Blocks are read one at a time (at most 16 MiB,
/// the 24-bit block size).
fn flac_checked(mut mss: MediaSourceStream, opts: &FormatOptions) -> SymResult<Box<dyn FormatReader>> {
    use std::io::{Read, Seek, SeekFrom};
    use symphonia::core::io::ReadBytes;
    let start = mss.pos();
    let mut magic = [0u8; 4];
    mss.read_exact(&mut magic)?;
    loop {
        let mut header = [0u8; 4];
        match mss.read_exact(&mut header) {
            Ok(()) => {}
            // A truncated file: symphonia reports what is missing.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let (last, kind) = (header[0] & 0x80 != 0, header[0] & 0x7f);
        let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as u64;
        let mut block = Vec::new();
        (&mut mss).take(len).read_to_end(&mut block)?;
        let lengths_fit = match kind {
            4 => vorbis_comment_fits(&block),
            6 => flac_picture_fits(&block),
            _ => true,
        };
        if !lengths_fit {
            return Err(SymError::DecodeError(
                "corrupt FLAC metadata (a length inside a Vorbis comment or picture block runs past its block)",
            ));
        }
        if last || (block.len() as u64) < len {
            break;
        }
    }
    mss.seek(SeekFrom::Start(start))?;
    Ok(Box::new(FlacReader::try_new(mss, opts)?))
}

/// Reads a `u32` at `*at` (little- or big-endian) and advances; `None` past the end.
fn take_u32(b: &[u8], at: &mut usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = b.get(*at..at.checked_add(4)?)?.try_into().ok()?;
    *at += 4;
    Some(if big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) })
}

/// Skips `n` bytes at `*at`; false if fewer are left.
fn skip(b: &[u8], at: &mut usize, n: u32) -> bool {
    match at.checked_add(n as usize).filter(|&end| end <= b.len()) {
        Some(end) => {
            *at = end;
            true
        }
        None => false,
    }
}

/// True unless a length inside a Vorbis comment block (vendor string, each comment) runs past the block. A block
/// that ends early is left to symphonia (it reports the truncation without a large allocation).
fn vorbis_comment_fits(b: &[u8]) -> bool {
    let mut at = 0;
    let Some(vendor) = take_u32(b, &mut at, false) else { return true };
    if !skip(b, &mut at, vendor) {
        return false;
    }
    let Some(n) = take_u32(b, &mut at, false) else { return true };
    for _ in 0..n {
        let Some(len) = take_u32(b, &mut at, false) else { return true };
        if !skip(b, &mut at, len) {
            return false;
        }
    }
    true
}

/// True unless a length inside a FLAC picture block (media type, description, data) runs past the block.
fn flac_picture_fits(b: &[u8]) -> bool {
    let mut at = 4; // picture type
    for field in 0..3 {
        if field == 2 && !skip(b, &mut at, 16) {
            return true; // width, height, depth, colours: truncated, left to symphonia
        }
        let Some(len) = take_u32(b, &mut at, true) else { return true };
        if !skip(b, &mut at, len) {
            return false;
        }
    }
    true
}

/// Appends the channel average of `buf` to `out`; a single channel is copied unchanged (bit-exact).
fn downmix_into(buf: &AudioBuffer<f32>, out: &mut Vec<f32>) {
    let planes = buf.planes();
    let planes = planes.planes();
    match planes {
        [] => {}
        [mono] => out.extend_from_slice(mono),
        _ => {
            let scale = 1.0 / planes.len() as f32;
            out.extend((0..buf.frames()).map(|i| planes.iter().map(|p| p[i]).sum::<f32>() * scale));
        }
    }
}

/// Symphonia's message without its module prefix ("core (probe): no suitable format reader found" → the last part).
fn describe(e: &SymError) -> String {
    match e {
        SymError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => "file ends too early".into(),
        SymError::Unsupported(msg) | SymError::DecodeError(msg) | SymError::LimitError(msg) => {
            msg.rsplit(": ").next().unwrap_or(msg).to_string()
        }
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{noise, rms, sine, tmp_path, tone_fraction};
    use super::super::write_wav;
    use super::*;

    fn write_hound<S: hound::Sample + Copy>(
        name: &str,
        spec: hound::WavSpec,
        interleaved: &[S],
    ) -> super::super::test_util::Scratch {
        let path = tmp_path(name);
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for &s in interleaved {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        path
    }

    fn int_spec(channels: u16, rate: u32, bits: u16) -> hound::WavSpec {
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: bits, sample_format: hound::SampleFormat::Int }
    }

    fn data_file(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
    }

    #[test]
    fn float32_wav_roundtrip_is_bit_exact() {
        let path = tmp_path("f32_roundtrip.wav");
        // Values a lossy conversion would disturb: tiny, denormal, above full scale, and a sine.
        let mut samples = vec![0.0, -0.0, 1e-30, f32::MIN_POSITIVE / 3.0, 1.5, -2.25, 0.1, -0.333_333_34];
        samples.extend(sine(1000, 22_050, 1234.5, 0.9));
        let audio = Audio { sample_rate: 22_050, samples };
        write_wav(&path, &audio, false).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.sample_rate, 22_050);
        assert_eq!(back.samples.len(), audio.samples.len());
        for (a, b) in audio.samples.iter().zip(&back.samples) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Writes `values` as a mono `bits`-bit integer WAV at `rate` and checks that reading it gives each value over
    /// `full_scale`, at that rate.
    fn assert_int_wav_scaling<S>(name: &str, rate: u32, bits: u16, values: &[S], full_scale: f32)
    where
        S: hound::Sample + Copy + Into<f64>,
    {
        let path = write_hound(name, int_spec(1, rate, bits), values);
        let audio = read(&path).unwrap();
        assert_eq!(audio.sample_rate, rate);
        let expected: Vec<f32> = values.iter().map(|&v| v.into() as f32 / full_scale).collect();
        assert_eq!(audio.samples, expected, "{name}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn int_wav_scaling() {
        assert_int_wav_scaling("i16.wav", 16_000, 16, &[0i16, 1, -1, 16384, -16384, i16::MAX, i16::MIN], 32768.0);
        let values24 = [0i32, 1, -1, 4_194_304, -4_194_304, 8_388_607, -8_388_608];
        assert_int_wav_scaling("i24.wav", 44_100, 24, &values24, 8_388_608.0);
        assert_int_wav_scaling("i32.wav", 8_000, 32, &[0i32, 1 << 30, -(1 << 30), i32::MIN], 2_147_483_648.0);
        // 8-bit WAV is unsigned on disk; hound takes signed values and adds 128.
        assert_int_wav_scaling("u8.wav", 8_000, 8, &[0i8, 64, -64, i8::MIN, i8::MAX], 128.0);
    }

    #[test]
    fn multichannel_is_averaged_to_mono() {
        // Stereo: L, R interleaved.
        let stereo: Vec<i16> = vec![1000, 3000, -2000, 2000, 32767, 32767, -32768, 0];
        let path = write_hound("stereo.wav", int_spec(2, 24_000, 16), &stereo);
        let audio = read(&path).unwrap();
        let expected: Vec<f32> = stereo.chunks(2).map(|f| (f[0] as f32 + f[1] as f32) / 2.0 / 32768.0).collect();
        assert_eq!(audio.samples.len(), 4);
        for (a, b) in audio.samples.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-7, "{a} vs {b}");
        }
        let _ = std::fs::remove_file(&path);

        // Three channels (hound writes WAVE_FORMAT_EXTENSIBLE).
        let three: Vec<i16> = vec![3000, 6000, 9000, -300, -600, -900];
        let path = write_hound("three.wav", int_spec(3, 24_000, 16), &three);
        let audio = read(&path).unwrap();
        assert_eq!(audio.samples.len(), 2);
        assert!((audio.samples[0] - 6000.0 / 32768.0).abs() < 1e-7);
        assert!((audio.samples[1] + 600.0 / 32768.0).abs() < 1e-7);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn empty_wav_is_an_error() {
        let path = write_hound::<i16>("empty.wav", int_spec(1, 16_000, 16), &[]);
        let err = read(&path).unwrap_err();
        assert!(matches!(err, Error::Audio { .. }), "{err:?}");
        assert!(err.to_string().ends_with("no audio samples"), "{err}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn garbage_file_is_a_one_line_error() {
        let path = tmp_path("garbage.wav");
        std::fs::write(&path, b"this is plain text, not a RIFF file at all\n".repeat(20)).unwrap();
        let err = read(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Audio { .. }), "{err:?}");
        assert!(msg.contains("garbage.wav") && msg.contains("not a supported audio file"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let _ = std::fs::remove_file(&path);

        let path = tmp_path("zero_bytes.flac");
        std::fs::write(&path, b"").unwrap();
        let msg = read(&path).unwrap_err().to_string();
        assert!(msg.contains("not a supported audio file"), "{msg}");
        let _ = std::fs::remove_file(&path);
    }

    /// Found by fuzzing (fuzz target `audio`): a FLAC Vorbis comment declaring 2.8 GB made symphonia allocate it
    /// before reading; lengths inside comment and picture blocks are now checked against their block first.
    #[test]
    fn flac_metadata_lengths_past_their_block_are_an_error() {
        let flac = std::fs::read(data_file("sine440_16k_mono.flac")).unwrap();
        assert_eq!(&flac[..5], b"fLaC\x00", "STREAMINFO first, not the last block");
        let mut comment = 3u32.to_le_bytes().to_vec();
        comment.extend_from_slice(b"abc");
        comment.extend_from_slice(&1u32.to_le_bytes());
        comment.extend_from_slice(&0xa9a9_a9a9u32.to_le_bytes());
        comment.extend_from_slice(b"x=1");
        let mut picture = 3u32.to_be_bytes().to_vec();
        picture.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
        picture.extend_from_slice(b"image/png");
        for (kind, body, junk) in [(4u8, &comment, 0), (6, &picture, 0), (4, &comment, 53)] {
            // The fuzzer's second find: the marker after 53 bytes of junk, where symphonia's probe still finds it.
            let mut file = vec![0x5a; junk];
            file.extend_from_slice(&flac[..42]);
            let len = (body.len() as u32).to_be_bytes();
            file.extend_from_slice(&[0x80 | kind, len[1], len[2], len[3]]);
            file.extend_from_slice(body);
            let path = tmp_path(&format!("lying_block_{kind}_{junk}.flac"));
            std::fs::write(&path, &file).unwrap();
            let err = read(&path).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::Audio { .. }), "{err:?}");
            assert!(
                msg.contains("corrupt FLAC metadata") && msg.contains(&format!("lying_block_{kind}_{junk}")),
                "{msg}"
            );
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = read(Path::new("/nonexistent/dir/nothing.wav")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nothing.wav"));
    }

    /// The committed files hold a 440 Hz sine at amplitude 0.5 (see tests/data/README.md).
    fn check_sine_file(name: &str, rate: u32, len: usize) {
        let audio = read(&data_file(name)).unwrap();
        assert_eq!(audio.sample_rate, rate, "{name}");
        assert_eq!(audio.samples.len(), len, "{name}");
        // Lossy codecs smear the edges: judge the middle.
        let mid = &audio.samples[len / 10..len - len / 10];
        let tone = tone_fraction(mid, rate, 440.0);
        assert!(tone > 0.95, "{name}: tone fraction {tone}");
        let r = rms(mid);
        assert!((r - 0.5 / 2f64.sqrt()).abs() < 0.02, "{name}: rms {r}");
    }

    #[test]
    fn reads_flac() {
        check_sine_file("sine440_16k_mono.flac", 16_000, 8000);
    }

    #[test]
    fn reads_mp3_without_encoder_delay() {
        // The LAME tag's delay and padding are trimmed (gapless): exactly the 0.5 s that was encoded.
        check_sine_file("sine440_24k_mono.mp3", 24_000, 12_000);
    }

    #[test]
    fn reads_stereo_ogg_vorbis() {
        // Trimmed to the last page's granule position. (Symphonia 0.5 cannot trim a file whose audio fits on one
        // Ogg page, hence 3 s rather than 0.5 s.)
        check_sine_file("sine440_22k_stereo.ogg", 22_050, 66_150);
    }

    #[test]
    fn directory_is_an_io_error() {
        let err = read(&std::env::temp_dir()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }

    /// `path` through a [`Reader`] at `rate` in chunks of `chunk_len`, concatenated; every chunk but the last must
    /// be `chunk_len` long, and the reader must hold no more than a chunk and a few packets at any time.
    fn read_in_chunks(path: &Path, rate: u32, chunk_len: usize) -> Vec<f32> {
        let mut reader = Reader::open(path, rate).unwrap();
        reader.set_chunk_len(chunk_len).unwrap();
        let mut chunks = Vec::new();
        while let Some(chunk) = reader.next_chunk().unwrap() {
            assert!(reader.ready.len() < 16_384, "{} samples held back", reader.ready.len());
            chunks.push(chunk);
        }
        let (last, full) = chunks.split_last().expect("at least one chunk");
        assert!(full.iter().all(|c| c.len() == chunk_len), "{}: chunks of {chunk_len}", path.display());
        assert!((1..=chunk_len).contains(&last.len()), "{}: last chunk of {}", path.display(), last.len());
        assert!(reader.next().is_none(), "the reader is done after `None`");
        chunks.concat()
    }

    fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
            panic!("{what}: sample {i} differs: {} vs {}", a[i], b[i]);
        }
    }

    /// A 16-bit WAV of noise, `seconds` long, `channels` interleaved.
    fn noise_wav(name: &str, rate: u32, channels: u16, seconds: f64) -> (super::super::test_util::Scratch, usize) {
        let frames = (rate as f64 * seconds) as usize + 13;
        let interleaved: Vec<i16> =
            noise(frames * channels as usize, rate as u64).iter().map(|&v| (v * 65_535.0) as i16).collect();
        (write_hound(name, int_spec(channels, rate, 16), &interleaved), frames)
    }

    /// The reader's chunks, for several chunk lengths, are bit for bit what `read_mono_at` returns: the same rate,
    /// common pairs both ways, an odd pair in the interpolated mode (8000 → 24001), mono and stereo; and the
    /// length estimate is the real length.
    #[test]
    fn reader_chunks_equal_the_whole_file() {
        for (from, channels, to) in
            [(24_000, 1, 24_000), (44_100, 2, 24_000), (48_000, 1, 16_000), (22_050, 2, 24_000), (8_000, 1, 24_001)]
        {
            let (path, frames) = noise_wav(&format!("chunks_{from}_{channels}.wav"), from, channels, 1.5);
            let whole = read_mono_at(&path, to).unwrap();
            assert_eq!(whole.sample_rate, to);
            assert_eq!(whole.samples.len() as u128, output_len(frames as u64, from, to));
            let reader = Reader::open(&path, to).unwrap();
            assert_eq!((reader.source_rate(), reader.sample_rate()), (from, to));
            assert_eq!(reader.estimated_len(), Some(whole.samples.len() as u64));
            for chunk_len in [1, 1000, 4096, DEFAULT_CHUNK_LEN] {
                let streamed = read_in_chunks(&path, to, chunk_len);
                assert_bits_eq(&streamed, &whole.samples, &format!("{from} -> {to}, chunks of {chunk_len}"));
            }
            let _ = std::fs::remove_file(&path);
        }
        // The committed compressed files (FLAC, gapless mp3, stereo Vorbis) at a rate none of them has.
        for (name, len) in
            [("sine440_16k_mono.flac", 12_000), ("sine440_24k_mono.mp3", 12_000), ("sine440_22k_stereo.ogg", 72_000)]
        {
            let path = data_file(name);
            let whole = read_mono_at(&path, 24_000).unwrap();
            assert_eq!(whole.samples.len(), len, "{name}");
            assert_eq!(Reader::open(&path, 24_000).unwrap().estimated_len(), Some(len as u64), "{name}");
            for chunk_len in [777, DEFAULT_CHUNK_LEN] {
                assert_bits_eq(&read_in_chunks(&path, 24_000, chunk_len), &whole.samples, name);
            }
        }
    }

    /// A long file in small chunks (20 ms at the output rate) is the whole file, with bounded memory (checked in
    /// `read_in_chunks`).
    #[test]
    fn long_file_in_small_chunks() {
        let (path, _) = noise_wav("long.wav", 44_100, 2, 60.0);
        let whole = read_mono_at(&path, 24_000).unwrap();
        assert_eq!(whole.samples.len(), 1_440_007); // round((60 · 44100 + 13) · 24000 / 44100)
        assert_bits_eq(&read_in_chunks(&path, 24_000, 480), &whole.samples, "60 s in chunks of 480");
        let _ = std::fs::remove_file(&path);
    }

    /// A NaN deep in the file is the error of the chunk that reaches it, naming the file, the sample (at the file's
    /// rate) and its time; the chunks before it come out, and the reader ends. At the very start, `open` fails.
    #[test]
    fn non_finite_sample_is_the_error_of_the_chunk_that_reaches_it() {
        let path = tmp_path("late_nan.wav");
        let mut samples = sine(240_000, 24_000, 440.0, 0.5);
        samples[200_000] = f32::NAN;
        write_wav(&path, &Audio { sample_rate: 24_000, samples: samples.clone() }, false).unwrap();
        let expected = format!("{}: sample 200000 (at 8.333 s) is NaN; audio must be finite", path.display());

        let mut reader = Reader::open(&path, 16_000).unwrap();
        reader.set_chunk_len(10_000).unwrap();
        let mut good = 0;
        let err = loop {
            match reader.next_chunk() {
                Ok(Some(chunk)) => good += chunk.len(),
                Ok(None) => panic!("no error after {good} samples"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, Error::Audio { .. }), "{err:?}");
        assert_eq!(err.to_string(), expected);
        // 200 000 samples at 24 kHz are 133 333 at 16 kHz: the whole chunks before them came out.
        assert_eq!(good, 130_000);
        assert!(reader.next_chunk().unwrap().is_none());
        assert_eq!(read_mono_at(&path, 16_000).unwrap_err().to_string(), expected);
        assert_eq!(read(&path).unwrap_err().to_string(), expected);

        samples[0] = f32::NEG_INFINITY;
        write_wav(&path, &Audio { sample_rate: 24_000, samples }, false).unwrap();
        let err = Reader::open(&path, 24_000).err().unwrap().to_string();
        assert!(err.ends_with("sample 0 (at 0.000 s) is -inf; audio must be finite"), "{err}");
        let _ = std::fs::remove_file(&path);
    }

    /// A rate outside the supported range fails `Reader::open` (before any resampling); `read`, at the file's own
    /// rate, still reads it.
    #[test]
    fn out_of_range_rate_fails_open_not_read() {
        let path = write_hound("one_hz.wav", int_spec(1, 1, 16), &[100i16; 2000]);
        let err = Reader::open(&path, 24_000).err().unwrap();
        assert!(matches!(err, Error::Audio { .. }), "{err:?}");
        assert!(err.to_string().ends_with("sample rate 1 Hz is outside the supported 1000–768000 Hz"), "{err}");
        let audio = read(&path).unwrap();
        assert_eq!((audio.sample_rate, audio.samples.len()), (1, 2000));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn reader_arguments_and_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Reader>();
        let path = data_file("sine440_16k_mono.flac");
        let mut reader = Reader::open(&path, 16_000).unwrap();
        assert!(matches!(reader.set_chunk_len(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(Reader::open(&path, 0).err().unwrap(), Error::InvalidArgument(_)));
        // The iterator gives the chunks `next_chunk` would.
        reader.set_chunk_len(3000).unwrap();
        let lens: Vec<usize> = reader.map(|c| c.unwrap().len()).collect();
        assert_eq!(lens, [3000, 3000, 2000]);
    }
}
