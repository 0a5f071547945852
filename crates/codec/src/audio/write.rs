//! WAV output, streamed: [`WavWriter`] writes samples as they come and fills in the sizes at the end; [`write_wav`]
//! writes a whole [`Audio`] through it.
//!
//! Two layouts, both written here: 16-bit PCM (the 16-byte `fmt ` chunk, byte for byte what hound writes) and 32-bit
//! float as the plain IEEE-float format (tag 3, with the `fact` chunk the format requires) rather than hound's
//! WAVE_FORMAT_EXTENSIBLE, which fewer readers take. One writer for both, rather than hound for PCM, because hound
//! counts the data size in an unchecked `u32`: past 4 GiB it wraps and writes a corrupt header, where this one stops
//! with an error.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Audio;
use crate::{Error, Result};

/// Samples converted per write to the file, bounding the conversion buffer.
const BATCH: usize = 1 << 14;

/// Writes mono audio as a WAV file: 32-bit float by default (lossless, values outside [-1, 1] kept), or 16-bit PCM
/// when `pcm16`, where samples are scaled by 32768 (the inverse of [`super::read`](fn@super::read)), rounded and
/// clipped to the 16-bit range. The bytes are those of a [`WavWriter`] given the samples.
pub fn write_wav(path: &Path, audio: &Audio, pcm16: bool) -> Result<()> {
    let format = SampleFormat::new(pcm16);
    // Checked before the file is created, so a signal too long for WAV leaves nothing behind.
    if audio.samples.len() as u64 > format.max_samples() {
        return Err(too_long(path));
    }
    let mut writer = WavWriter::create(path, audio.sample_rate, pcm16)?;
    writer.write(&audio.samples)?;
    writer.finish()
}

/// A mono WAV file written as its samples come: the header is written first with sizes for zero samples, the
/// samples are appended as [`write`](Self::write) is given them, and [`finish`](Self::finish) fills in the sizes.
/// The file is byte for byte what [`write_wav`] writes for the same samples in one piece.
///
/// A WAV file's sizes are 32-bit, so it holds at most about 4 GiB of data (2^30 float or 2^31 16-bit samples,
/// 12 h of float at 24 kHz): a `write` that would pass that is an error and writes none of its samples.
///
/// Dropped without `finish` (an error on the way, a panic), the writer still fills in the sizes for the samples
/// written so far, ignoring any error in doing so: the file is a valid WAV of what was written. A process killed
/// while writing leaves the header of zero samples, with the samples after it.
pub struct WavWriter {
    path: PathBuf,
    out: BufWriter<File>,
    format: SampleFormat,
    sample_rate: u32,
    /// Samples written so far; at most `format.max_samples()`.
    samples: u64,
    /// Conversion buffer for one batch of samples.
    bytes: Vec<u8>,
    /// `finish` ran (successfully or not): nothing is left for `drop` to do.
    finished: bool,
}

/// The two sample layouts written.
#[derive(Clone, Copy, PartialEq)]
enum SampleFormat {
    Pcm16,
    Float32,
}

impl SampleFormat {
    fn new(pcm16: bool) -> Self {
        if pcm16 {
            SampleFormat::Pcm16
        } else {
            SampleFormat::Float32
        }
    }

    fn bytes_per_sample(self) -> u32 {
        match self {
            SampleFormat::Pcm16 => 2,
            SampleFormat::Float32 => 4,
        }
    }

    /// Header bytes before the samples: RIFF header (12), `fmt ` chunk (8 + 16 or 18), for float a `fact` chunk
    /// (8 + 4), `data` chunk header (8).
    fn header_len(self) -> u32 {
        match self {
            SampleFormat::Pcm16 => 12 + (8 + 16) + 8,
            SampleFormat::Float32 => 12 + (8 + 18) + (8 + 4) + 8,
        }
    }

    /// The most samples whose sizes fit the header's 32-bit fields (the RIFF size counts all but 8 header bytes).
    fn max_samples(self) -> u64 {
        (u32::MAX - (self.header_len() - 8)) as u64 / self.bytes_per_sample() as u64
    }

    /// The header for `n` samples (at most `max_samples`) at `rate` Hz, whose byte rate `rate · bytes_per_sample`
    /// was checked to fit.
    fn header(self, rate: u32, n: u64) -> Vec<u8> {
        let bytes_per_sample = self.bytes_per_sample();
        let data_bytes = n as u32 * bytes_per_sample;
        let (tag, fmt_len) = match self {
            SampleFormat::Pcm16 => (1u16, 16u32), // WAVE_FORMAT_PCM, PCMWAVEFORMAT
            SampleFormat::Float32 => (3, 18),     // WAVE_FORMAT_IEEE_FLOAT, WAVEFORMATEX
        };
        let mut header = Vec::with_capacity(self.header_len() as usize);
        header.extend_from_slice(b"RIFF");
        header.extend_from_slice(&(self.header_len() - 8 + data_bytes).to_le_bytes());
        header.extend_from_slice(b"WAVEfmt ");
        header.extend_from_slice(&fmt_len.to_le_bytes());
        header.extend_from_slice(&tag.to_le_bytes());
        header.extend_from_slice(&1u16.to_le_bytes()); // channels
        header.extend_from_slice(&rate.to_le_bytes());
        header.extend_from_slice(&(rate * bytes_per_sample).to_le_bytes());
        header.extend_from_slice(&(bytes_per_sample as u16).to_le_bytes()); // bytes per frame
        header.extend_from_slice(&(8 * bytes_per_sample as u16).to_le_bytes()); // bits per sample
        if self == SampleFormat::Float32 {
            header.extend_from_slice(&0u16.to_le_bytes()); // no extension
            header.extend_from_slice(b"fact");
            header.extend_from_slice(&4u32.to_le_bytes());
            header.extend_from_slice(&(n as u32).to_le_bytes());
        }
        header.extend_from_slice(b"data");
        header.extend_from_slice(&data_bytes.to_le_bytes());
        header
    }
}

fn too_long(path: &Path) -> Error {
    Error::audio(path, "too long for a WAV file (its sizes are 32-bit; at most about 4 GiB of data)")
}

impl WavWriter {
    /// Creates (or truncates) `path` for mono audio at `sample_rate` Hz: 16-bit PCM when `pcm16`, else 32-bit float
    /// (see [`write_wav`]). A rate of 0, or one too high for the header's byte-rate field, is an [`Error::Audio`]
    /// and creates no file; failing to create it is an [`Error::Io`].
    pub fn create(path: &Path, sample_rate: u32, pcm16: bool) -> Result<WavWriter> {
        if sample_rate == 0 {
            return Err(Error::audio(path, "cannot write a WAV file with sample rate 0"));
        }
        let format = SampleFormat::new(pcm16);
        if sample_rate.checked_mul(format.bytes_per_sample()).is_none() {
            return Err(Error::audio(path, "sample rate too high"));
        }
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::new(file);
        out.write_all(&format.header(sample_rate, 0)).map_err(|e| Error::io(path, e))?;
        Ok(WavWriter {
            path: path.to_path_buf(),
            out,
            format,
            sample_rate,
            samples: 0,
            bytes: Vec::new(),
            finished: false,
        })
    }

    /// Appends `samples`; 16-bit PCM scales by 32768, rounds and clips. Passing the WAV size limit is an
    /// [`Error::Audio`] that writes none of them.
    pub fn write(&mut self, samples: &[f32]) -> Result<()> {
        let fits = self.samples.checked_add(samples.len() as u64).is_some_and(|n| n <= self.format.max_samples());
        if !fits {
            return Err(too_long(&self.path));
        }
        for batch in samples.chunks(BATCH) {
            self.bytes.clear();
            match self.format {
                SampleFormat::Pcm16 => self.bytes.extend(batch.iter().flat_map(|&s| to_pcm16(s).to_le_bytes())),
                SampleFormat::Float32 => self.bytes.extend(batch.iter().flat_map(|s| s.to_le_bytes())),
            }
            self.out.write_all(&self.bytes).map_err(|e| Error::io(&self.path, e))?;
            // Counted per batch, so the sizes written at the end cover what reached the file before an I/O error.
            self.samples += batch.len() as u64;
        }
        Ok(())
    }

    /// Samples written so far.
    pub fn samples_written(&self) -> u64 {
        self.samples
    }

    /// Fills in the header's sizes and flushes the file; the writer is done.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.write_sizes().map_err(|e| Error::io(&self.path, e))
    }

    /// Rewrites the header for the samples written so far and flushes, leaving the position at the end.
    fn write_sizes(&mut self) -> std::io::Result<()> {
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&self.format.header(self.sample_rate, self.samples))?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()
    }
}

impl Drop for WavWriter {
    /// Fills in the sizes for what was written when `finish` was not called; an error here cannot be reported.
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.write_sizes();
        }
    }
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

    /// Samples covering every conversion case: tiny, beyond full scale, NaN (0 in PCM), and a long sine.
    fn test_samples() -> Vec<f32> {
        let mut samples = vec![0.0, -0.0, 1e-30, 1.5, -2.25, f32::NAN, 0.5, -1.0, 1.0];
        samples.extend(super::super::test_util::sine(50_000, 24_000, 440.0, 0.9));
        samples
    }

    /// The writer fed in pieces of every size (1 sample, odd sizes, more than a conversion batch) writes the same
    /// bytes as `write_wav` in one piece, for both formats.
    #[test]
    fn writer_in_pieces_equals_write_wav() {
        let samples = test_samples();
        for pcm16 in [false, true] {
            let whole = tmp_path(&format!("whole_{pcm16}.wav"));
            write_wav(&whole, &Audio { sample_rate: 22_050, samples: samples.clone() }, pcm16).unwrap();
            let expected = std::fs::read(&whole).unwrap();
            assert_eq!(expected.len(), if pcm16 { 44 + 2 * samples.len() } else { 58 + 4 * samples.len() });
            for piece in [1, 7, 1000, BATCH + 3, samples.len()] {
                let path = tmp_path(&format!("pieces_{pcm16}_{piece}.wav"));
                let mut writer = WavWriter::create(&path, 22_050, pcm16).unwrap();
                for chunk in samples.chunks(piece) {
                    writer.write(chunk).unwrap();
                }
                assert_eq!(writer.samples_written(), samples.len() as u64);
                writer.finish().unwrap();
                assert!(std::fs::read(&path).unwrap() == expected, "pcm16 {pcm16}, pieces of {piece}");
                let _ = std::fs::remove_file(&path);
            }
            let _ = std::fs::remove_file(&whole);
        }
    }

    /// 16-bit output keeps the layout hound wrote before this writer existed, byte for byte.
    #[test]
    fn pcm16_layout_is_hounds() {
        let samples = test_samples();
        let ours = tmp_path("pcm16_ours.wav");
        write_wav(&ours, &Audio { sample_rate: 16_000, samples: samples.clone() }, true).unwrap();
        let theirs = tmp_path("pcm16_hound.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&theirs, spec).unwrap();
        for &s in &samples {
            writer.write_sample(to_pcm16(s)).unwrap();
        }
        writer.finalize().unwrap();
        assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap());
        let _ = std::fs::remove_file(&ours);
        let _ = std::fs::remove_file(&theirs);
    }

    /// A writer dropped without `finish` leaves a valid file of what it was given.
    #[test]
    fn dropped_writer_leaves_a_valid_file() {
        let samples = super::super::test_util::sine(30_000, 24_000, 440.0, 0.5);
        for pcm16 in [false, true] {
            let path = tmp_path(&format!("dropped_{pcm16}.wav"));
            let mut writer = WavWriter::create(&path, 24_000, pcm16).unwrap();
            writer.write(&samples[..20_000]).unwrap();
            writer.write(&samples[20_000..]).unwrap();
            drop(writer);
            let back = read(&path).unwrap();
            assert_eq!(back.sample_rate, 24_000);
            if pcm16 {
                let expected: Vec<f32> = samples.iter().map(|&s| to_pcm16(s) as f32 / 32768.0).collect();
                assert_eq!(back.samples, expected);
            } else {
                assert_eq!(back.samples, samples);
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Past the 32-bit sizes, `write` is an error that writes nothing, and the file stays valid for what it holds.
    /// (The count is set near the limit rather than writing 4 GiB.)
    #[test]
    fn too_long_is_an_error_not_a_corrupt_file() {
        assert_eq!(SampleFormat::Float32.max_samples(), 1_073_741_811); // (2^32 − 1 − 50) / 4
        assert_eq!(SampleFormat::Pcm16.max_samples(), 2_147_483_629); // (2^32 − 1 − 36) / 2
        for pcm16 in [false, true] {
            let path = tmp_path(&format!("too_long_{pcm16}.wav"));
            let mut writer = WavWriter::create(&path, 24_000, pcm16).unwrap();
            let max = writer.format.max_samples();
            writer.samples = max - 2;
            let err = writer.write(&[0.25; 3]).unwrap_err();
            assert!(matches!(err, Error::Audio { .. }), "{err:?}");
            assert!(
                err.to_string().contains("too_long") && err.to_string().contains("too long for a WAV file"),
                "{err}"
            );
            assert_eq!(writer.samples, max - 2);
            writer.write(&[0.25; 2]).unwrap();
            writer.finish().unwrap();
            // The header at the limit: every size fits its field, the RIFF size is within 3 bytes of 2^32.
            let bytes = std::fs::read(&path).unwrap();
            let header_len = if pcm16 { 44 } else { 58 };
            assert_eq!(bytes.len(), header_len + 2 * if pcm16 { 2 } else { 4 });
            let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
            let data = u32::from_le_bytes(bytes[header_len - 4..header_len].try_into().unwrap()) as u64;
            assert_eq!(data, max * if pcm16 { 2 } else { 4 });
            assert_eq!(riff, data + header_len as u64 - 8);
            assert!(u32::MAX as u64 - riff < if pcm16 { 2 } else { 4 });
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn create_rejects_unwritable_rates_before_making_a_file() {
        let path = tmp_path("bad_rate.wav");
        for (rate, says) in [(0, "sample rate 0"), (u32::MAX, "sample rate too high")] {
            let err = WavWriter::create(&path, rate, false).err().unwrap();
            assert!(matches!(err, Error::Audio { .. }) && err.to_string().contains(says), "{err}");
            assert!(!path.exists());
        }
        assert!(WavWriter::create(&path, u32::MAX / 2, true).is_ok()); // 2 bytes per sample fit
        let _ = std::fs::remove_file(&path);
    }
}
