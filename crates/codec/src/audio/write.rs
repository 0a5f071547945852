//! WAV output with hound.

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
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: audio.sample_rate,
        bits_per_sample: if pcm16 { 16 } else { 32 },
        sample_format: if pcm16 { hound::SampleFormat::Int } else { hound::SampleFormat::Float },
    };
    let err = |e: hound::Error| match e {
        hound::Error::IoError(io) => Error::io(path, io),
        e => Error::audio(path, format!("cannot write WAV: {e}")),
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(err)?;
    for &s in &audio.samples {
        if pcm16 {
            writer.write_sample(to_pcm16(s)).map_err(err)?;
        } else {
            writer.write_sample(s).map_err(err)?;
        }
    }
    writer.finalize().map_err(err)
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

    #[test]
    fn float_wav_header() {
        let path = tmp_path("f32_out.wav");
        write_wav(&path, &Audio { sample_rate: 24_000, samples: vec![0.5; 10] }, false).unwrap();
        let spec = hound::WavReader::open(&path).unwrap().spec();
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 24_000, 32));
        assert_eq!(spec.sample_format, hound::SampleFormat::Float);
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
