//! Decoding audio files with symphonia (wav, flac, mp3, ogg/vorbis) to mono `f32`.

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::OnceLock;

use symphonia::core::audio::{AudioBuffer, Signal};
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::errors::Result as SymResult;
use symphonia::core::formats::FormatOptions;
use symphonia::core::formats::FormatReader;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::{Descriptor, Hint, Instantiate, Probe, QueryDescriptor};
use symphonia::default::formats::FlacReader;

use super::Audio;
use crate::{Error, Result};

/// The formats compiled in (symphonia features in Cargo.toml), for error messages.
const SUPPORTED: &str = "wav, flac, mp3, ogg/vorbis";

/// Reads an audio file at its native sample rate, downmixed to mono by averaging the channels.
///
/// Integer PCM is scaled to [-1, 1) by 1/2^(bits-1) (16-bit: v/32768; 8-bit unsigned: (v-128)/128); float32 WAV
/// samples of a mono file come back bit-exact. Encoder delay and padding are trimmed where the file records them
/// (gapless mp3). Errors: a missing or unreadable file is [`Error::Io`]; a file that is not audio, holds no audio
/// track, or decodes to zero samples is [`Error::Audio`].
pub fn read(path: &Path) -> Result<Audio> {
    // symphonia panics on some malformed headers (a WAV with sample rate 0 builds a zero time base): whatever the
    // decoder does with a hostile file, it becomes an error naming the file.
    std::panic::catch_unwind(|| read_unguarded(path)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        Err(Error::audio(path, format!("malformed audio file (the decoder failed: {msg})")))
    })
}

fn read_unguarded(path: &Path) -> Result<Audio> {
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
    let mut format = probed.format;

    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| Error::audio(path, "no audio track"))?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| Error::audio(path, format!("unsupported audio codec ({})", describe(&e))))?;

    let mut samples = Vec::new();
    let mut rate: Option<u32> = None;
    let mut decoded_any = false;
    let mut first_decode_error = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            // Symphonia signals the end of the stream with an EOF I/O error; a truncated file ends the same way
            // and keeps what was decoded, as other players do.
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            // A chained stream (e.g. concatenated Ogg files) starts a new track: only the first one is read.
            Err(SymError::ResetRequired) => break,
            Err(SymError::IoError(e)) => return Err(Error::io(path, e)),
            Err(e) => return Err(Error::audio(path, format!("cannot demux: {}", describe(&e)))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A corrupt packet is skipped, like players and ffmpeg do, so one damaged mp3 frame does not make the
            // whole file unreadable; a file where nothing decodes is reported below.
            Err(SymError::DecodeError(msg)) => {
                first_decode_error.get_or_insert(msg);
                continue;
            }
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::audio(path, format!("cannot decode: {}", describe(&e)))),
        };
        decoded_any = true;
        let spec = *decoded.spec();
        match rate {
            None => rate = Some(spec.rate),
            Some(r) if r != spec.rate => {
                return Err(Error::audio(path, format!("sample rate changes mid-stream ({r} Hz to {} Hz)", spec.rate)))
            }
            Some(_) => {}
        }
        let mut buf: AudioBuffer<f32> = decoded.make_equivalent();
        decoded.convert(&mut buf);
        downmix_into(&buf, &mut samples);
    }

    if samples.is_empty() {
        return Err(match first_decode_error {
            Some(msg) if !decoded_any => Error::audio(path, format!("corrupt audio data ({msg})")),
            _ => Error::audio(path, "no audio samples"),
        });
    }
    // Some whenever a packet decoded, which non-empty `samples` implies.
    let sample_rate = rate.filter(|&r| r > 0).ok_or_else(|| Error::audio(path, "sample rate is 0"))?;
    Ok(Audio { sample_rate, samples })
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
    use super::super::test_util::{rms, sine, tmp_path, tone_fraction};
    use super::super::write_wav;
    use super::*;

    fn write_hound<S: hound::Sample + Copy>(name: &str, spec: hound::WavSpec, interleaved: &[S]) -> std::path::PathBuf {
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

    #[test]
    fn int16_wav_scaling() {
        let values: Vec<i16> = vec![0, 1, -1, 16384, -16384, i16::MAX, i16::MIN];
        let path = write_hound("i16.wav", int_spec(1, 16_000, 16), &values);
        let audio = read(&path).unwrap();
        assert_eq!(audio.sample_rate, 16_000);
        let expected: Vec<f32> = values.iter().map(|&v| v as f32 / 32768.0).collect();
        assert_eq!(audio.samples, expected);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn int24_wav_scaling() {
        let values: Vec<i32> = vec![0, 1, -1, 4_194_304, -4_194_304, 8_388_607, -8_388_608];
        let path = write_hound("i24.wav", int_spec(1, 44_100, 24), &values);
        let audio = read(&path).unwrap();
        assert_eq!(audio.sample_rate, 44_100);
        let expected: Vec<f32> = values.iter().map(|&v| v as f32 / 8_388_608.0).collect();
        assert_eq!(audio.samples, expected);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn int32_and_8bit_wav_scaling() {
        let values32: Vec<i32> = vec![0, 1 << 30, -(1 << 30), i32::MIN];
        let path = write_hound("i32.wav", int_spec(1, 8_000, 32), &values32);
        assert_eq!(read(&path).unwrap().samples, vec![0.0, 0.5, -0.5, -1.0]);
        let _ = std::fs::remove_file(&path);

        // 8-bit WAV is unsigned on disk; hound takes signed values and adds 128.
        let values8: Vec<i8> = vec![0, 64, -64, i8::MIN, i8::MAX];
        let path = write_hound("u8.wav", int_spec(1, 8_000, 8), &values8);
        let expected: Vec<f32> = values8.iter().map(|&v| v as f32 / 128.0).collect();
        assert_eq!(read(&path).unwrap().samples, expected);
        let _ = std::fs::remove_file(&path);
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
}
