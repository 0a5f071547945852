//! WAV output: 16-bit PCM with hound; 32-bit float written here, as the plain IEEE-float format (tag 3, with the
//! `fact` chunk the format requires) rather than hound's WAVE_FORMAT_EXTENSIBLE, which fewer readers take.

use std::io::Write;
use std::path::Path;

use super::Audio;
use crate::{Error, Result};

/// Writes mono audio as a WAV file: 32-bit float by default (lossless, values outside [-1, 1] kept), or 16-bit PCM
/// when `pcm16`, where samples are scaled by 32768 (the inverse of [`super::read`]), rounded and clipped to the
/// 16-bit range.
pub fn write_wav(path: &Path, audio: &Audio, pcm16: bool) -> Result<()> {
    if audio.sample_rate == 0 {
        return Err(Error::audio(path, "cannot write a WAV file with sample rate 0"));
    }
    if !pcm16 {
        return write_float_wav(path, audio);
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: audio.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let err = |e: hound::Error| match e {
        hound::Error::IoError(io) => Error::io(path, io),
        e => Error::audio(path, format!("cannot write WAV: {e}")),
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(err)?;
    for &s in &audio.samples {
        writer.write_sample(to_pcm16(s)).map_err(err)?;
    }
    writer.finalize().map_err(err)
}

/// Mono 32-bit float WAV: RIFF header, an 18-byte `fmt ` chunk (format 3), `fact` (the sample count), `data`.
fn write_float_wav(path: &Path, audio: &Audio) -> Result<()> {
    let too_long = || Error::audio(path, "too long for a WAV file (its sizes are 32-bit; at most about 4 GiB of data)");
    let n = u32::try_from(audio.samples.len()).map_err(|_| too_long())?;
    let data_bytes = n.checked_mul(4).ok_or_else(too_long)?;
    let riff_bytes = data_bytes.checked_add(4 + (8 + 18) + (8 + 4) + 8).ok_or_else(too_long)?;
    let rate = audio.sample_rate;
    let mut header = Vec::with_capacity(58);
    header.extend_from_slice(b"RIFF");
    header.extend_from_slice(&riff_bytes.to_le_bytes());
    header.extend_from_slice(b"WAVEfmt ");
    header.extend_from_slice(&18u32.to_le_bytes());
    header.extend_from_slice(&3u16.to_le_bytes()); // WAVE_FORMAT_IEEE_FLOAT
    header.extend_from_slice(&1u16.to_le_bytes()); // channels
    header.extend_from_slice(&rate.to_le_bytes());
    header.extend_from_slice(
        &rate.checked_mul(4).ok_or_else(|| Error::audio(path, "sample rate too high"))?.to_le_bytes(),
    );
    header.extend_from_slice(&4u16.to_le_bytes()); // bytes per frame
    header.extend_from_slice(&32u16.to_le_bytes()); // bits per sample
    header.extend_from_slice(&0u16.to_le_bytes()); // no extension
    header.extend_from_slice(b"fact");
    header.extend_from_slice(&4u32.to_le_bytes());
    header.extend_from_slice(&n.to_le_bytes());
    header.extend_from_slice(b"data");
    header.extend_from_slice(&data_bytes.to_le_bytes());
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&header).map_err(|e| Error::io(path, e))?;
    for chunk in audio.samples.chunks(1 << 14) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        out.write_all(&bytes).map_err(|e| Error::io(path, e))?;
    }
    out.flush().map_err(|e| Error::io(path, e))
}

/// `round(x · 32768)` clipped to [-32768, 32767]; NaN becomes 0.
fn to_pcm16(x: f32) -> i16 {
    // `as` saturates and maps NaN to 0, which is the clipping wanted.
    (x * 32768.0).round() as i16
}

#[cfg(test)]
mod tests {
    use super::super::read;
    use super::super::test_util::tmp_path;
    use super::*;

    #[test]
    fn pcm16_scales_rounds_and_clips() {
        assert_eq!(to_pcm16(0.0), 0);
        assert_eq!(to_pcm16(0.5), 16384);
        assert_eq!(to_pcm16(-1.0), -32768);
        assert_eq!(to_pcm16(1.0), 32767);
        assert_eq!(to_pcm16(7.0), 32767);
        assert_eq!(to_pcm16(-7.0), -32768);
        assert_eq!(to_pcm16(f32::NAN), 0);
        assert_eq!(to_pcm16(1.4 / 32768.0), 1);
        assert_eq!(to_pcm16(1.6 / 32768.0), 2);
    }

    #[test]
    fn pcm16_wav_header_and_roundtrip() {
        let path = tmp_path("pcm16_out.wav");
        let audio = Audio { sample_rate: 16_000, samples: vec![0.0, 0.25, -0.5, 2.0, -2.0, 100.0 / 32768.0] };
        write_wav(&path, &audio, true).unwrap();

        let spec = hound::WavReader::open(&path).unwrap().spec();
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 16_000, 16));
        assert_eq!(spec.sample_format, hound::SampleFormat::Int);

        let back = read(&path).unwrap();
        assert_eq!(back.samples, vec![0.0, 0.25, -0.5, 32767.0 / 32768.0, -1.0, 100.0 / 32768.0]);
        let _ = std::fs::remove_file(&path);
    }

    /// Plain IEEE-float format (tag 3, not WAVE_FORMAT_EXTENSIBLE), a `fact` chunk, and the samples bit-exact
    /// through two readers (hound and our own front door).
    #[test]
    fn float_wav_is_plain_ieee_float() {
        let path = tmp_path("f32_out.wav");
        let samples = vec![0.5, -0.25, 3.0, -1e-7, 0.0];
        write_wav(&path, &Audio { sample_rate: 24_000, samples: samples.clone() }, false).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize, bytes.len() - 8);
        assert_eq!(&bytes[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([bytes[20], bytes[21]]), 3);
        assert_eq!(&bytes[38..42], b"fact");
        assert_eq!(&bytes[50..54], b"data");
        assert_eq!(bytes.len(), 58 + 4 * samples.len());
        let mut reader = hound::WavReader::open(&path).unwrap();
        let spec = reader.spec();
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 24_000, 32));
        assert_eq!(spec.sample_format, hound::SampleFormat::Float);
        assert_eq!(reader.samples::<f32>().map(|s| s.unwrap()).collect::<Vec<_>>(), samples);
        assert_eq!(read(&path).unwrap().samples, samples);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unwritable_path_is_an_io_error() {
        let audio = Audio { sample_rate: 24_000, samples: vec![0.0] };
        let err = write_wav(Path::new("/nonexistent/dir/out.wav"), &audio, false).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(matches!(
            write_wav(&tmp_path("rate0.wav"), &Audio { sample_rate: 0, samples: vec![] }, false),
            Err(Error::Audio { .. })
        ));
    }
}
