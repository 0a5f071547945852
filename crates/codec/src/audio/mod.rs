//! Audio in and out: decoding common formats to mono `f32` ([`read`](fn@read), [`read_mono_at`]), sample-rate
//! conversion ([`resample`](fn@resample)) and WAV output ([`write_wav`]).
//!
//! Each has a streaming form that holds one chunk rather than the whole signal: [`Reader`] (decode, downmix and
//! resample as the file is read), [`StreamResampler`] and [`WavWriter`] (samples written as they come). The
//! whole-signal functions are those run to the end, so both give the same samples and bytes.
//!
//! Samples are `f32` in [-1, 1] (integer formats are scaled by 1/2^(bits-1), as symphonia and numpy users expect);
//! multi-channel input is downmixed by averaging the channels, because every codec here is mono.

mod read;
mod resample;
mod write;

pub use read::{read, read_mono_at, Reader, DEFAULT_CHUNK_LEN};
pub use resample::{resample, StreamResampler};
pub use write::{write_wav, WavWriter};

/// Mono audio at a given sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples per second.
    pub sample_rate: u32,
    /// One sample per frame, nominally in [-1, 1].
    pub samples: Vec<f32>,
}

/// Input sample rates accepted for resampling: below or above these a file is almost surely lying, and resampling
/// it would make far more samples (a 48 KB WAV claiming 1 Hz asked for 9 GB) or do far more work than its size
/// suggests.
pub const MIN_INPUT_RATE: u32 = 1000;
/// The highest input sample rate accepted, in Hz (see [`MIN_INPUT_RATE`]).
pub const MAX_INPUT_RATE: u32 = 768_000;

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    /// A scratch file's path, unique per test name and process, removed when dropped (test runs used to leave a
    /// directory of them behind each time).
    pub fn tmp_path(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join("codec-rs-tests");
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Scratch(dir.join(format!("{}-{name}", std::process::id())))
    }

    /// See [`tmp_path`].
    pub struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl AsRef<std::path::Path> for Scratch {
        fn as_ref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            std::fs::remove_file(&self.0).ok();
        }
    }

    /// `amp · sin(2π·freq·n/rate)` for n in 0..len.
    pub fn sine(len: usize, rate: u32, freq: f64, amp: f64) -> Vec<f32> {
        (0..len).map(|n| (amp * (2.0 * std::f64::consts::PI * freq * n as f64 / rate as f64).sin()) as f32).collect()
    }

    /// A deterministic noise-like signal in [-0.5, 0.5) (a linear congruential generator): full band, so every
    /// filter tap matters.
    pub fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Fraction of the signal's energy in a tone of `freq` Hz, whatever its phase: 1.0 for a pure sine over whole
    /// periods, near 0 for noise or another frequency.
    pub fn tone_fraction(x: &[f32], rate: u32, freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
        let (mut s, mut c, mut e) = (0.0f64, 0.0f64, 0.0f64);
        for (n, &v) in x.iter().enumerate() {
            let v = v as f64;
            s += v * (w * n as f64).sin();
            c += v * (w * n as f64).cos();
            e += v * v;
        }
        2.0 * (s * s + c * c) / (x.len() as f64 * e)
    }

    /// Root mean square.
    pub fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{sine, tmp_path};
    use super::*;

    #[test]
    fn read_mono_at_resamples_and_keeps_native_rate() {
        let path = tmp_path("read_mono_at.wav");
        let audio = Audio { sample_rate: 48_000, samples: sine(4800, 48_000, 440.0, 0.5) };
        write_wav(&path, &audio, false).unwrap();

        let native = read_mono_at(&path, 48_000).unwrap();
        assert_eq!(native, audio);

        let at24 = read_mono_at(&path, 24_000).unwrap();
        assert_eq!(at24.sample_rate, 24_000);
        assert_eq!(at24.samples.len(), 2400);
        let _ = std::fs::remove_file(&path);
    }
}
