//! Band-limited sample-rate conversion with rubato's windowed-sinc resampler, aligned to the input (no delay).

use rubato::{
    calculate_cutoff, Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

use crate::{Error, Result};

/// Sinc filter taps, rubato's "high quality" setting: with its fitted cutoff (`calculate_cutoff`) the pass band ends
/// at ~95 % of the lower Nyquist frequency.
const SINC_LEN: usize = 256;
/// Largest sinc table, in sub-sample positions, for the exact (polyphase) mode: 256 × 1024 f32 = 1 MiB.
const MAX_EXACT_OVERSAMPLING: u32 = 1024;
/// Sub-sample positions for other rate pairs, with cubic interpolation between them (rubato's recommended setting).
const FALLBACK_OVERSAMPLING: u32 = 256;
/// Input frames per resampler call.
const CHUNK: usize = 1024;

/// Resamples mono `samples` from `from` Hz to `to` Hz.
///
/// The output has `round(len · to / from)` samples and is aligned with the input: output sample `m` is the
/// band-limited input evaluated at time `m / to` seconds (the signal is taken as zero outside the input), so a
/// sine keeps its phase. `from == to` returns a copy. Rates of 0 are an [`Error::InvalidArgument`].
///
/// With `to / from = T / F` in lowest terms and `T ≤ 1024` (every pair of common rates), each output lands exactly
/// on one of the `T` tabulated sinc phases: an exact polyphase windowed-sinc filter. Otherwise the phases are
/// interpolated (cubic, 256 phases) and outputs sit 1/256 of an input sample late, a negligible delay.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == 0 || to == 0 {
        return Err(Error::InvalidArgument(format!("cannot resample from {from} Hz to {to} Hz")));
    }
    if from == to {
        return Ok(samples.to_vec());
    }
    let out_len = ((samples.len() as u128 * to as u128 + from as u128 / 2) / from as u128) as usize;
    if out_len == 0 {
        return Ok(Vec::new());
    }

    let g = gcd(from, to);
    let (f, t) = ((from / g) as u64, (to / g) as u64);
    // rubato's SincFixedIn with `n` sinc phases puts output k (from 0) at input time (k+1)·F/T − 1 + 1/n: no
    // latency, but an offset that is fractional for most rate pairs. Prepending `lead_in` zeros and dropping the
    // first `skip` outputs moves output m + skip to input time (m + skip + 1)·F/T − 1 + 1/n − lead_in, which is
    // m·F/T when (skip + 1)·F + T/n = T·(lead_in + 1). With n = T that has a solution with skip < T, hence
    // lead_in ≤ F: at most one second of extra input.
    let (phases, interpolation, lead_in, skip) = if t <= MAX_EXACT_OVERSAMPLING as u64 {
        // Always found: F is invertible modulo T as gcd(F, T) = 1.
        let skip = (0..t).find(|j| ((j + 1) * f + 1) % t == 0).unwrap_or(0);
        let lead_in = ((skip + 1) * f + 1) / t - 1;
        (t as usize, SincInterpolationType::Nearest, lead_in, skip)
    } else {
        // Same equation without the 1/n term, which stays as the documented 1/256-sample residual.
        (FALLBACK_OVERSAMPLING as usize, SincInterpolationType::Cubic, f - 1, t - 1)
    };
    let (lead_in, skip) = (lead_in as usize, skip as usize);

    let err = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("resampling {from} Hz to {to} Hz: {e}"));
    let window = WindowFunction::BlackmanHarris2;
    let params = SincInterpolationParameters {
        sinc_len: SINC_LEN,
        f_cutoff: calculate_cutoff(SINC_LEN, window),
        oversampling_factor: phases,
        interpolation,
        window,
    };
    // Each call must yield at least one output for the loop below to progress, so a chunk spans ≥ 2 output periods.
    let chunk = CHUNK.max(2 * from.div_ceil(to) as usize);
    let mut resampler = SincFixedIn::<f32>::new(to as f64 / from as f64, 1.0, params, chunk, 1).map_err(|e| err(&e))?;

    let want = skip + out_len;
    let mut out = Vec::with_capacity(want + resampler.output_frames_max());
    let mut input = [vec![0.0f32; chunk]];
    let mut output = resampler.output_buffer_allocate(true);
    let mut pos = 0;
    // Past the end of the input the loop feeds zeros until the filter has produced the last wanted output.
    while out.len() < want {
        fill_chunk(&mut input[0], samples, lead_in, pos);
        let (_, produced) = resampler.process_into_buffer(&input, &mut output, None).map_err(|e| err(&e))?;
        out.extend_from_slice(&output[0][..produced]);
        pos += chunk;
    }
    out.drain(..skip);
    out.truncate(out_len);
    Ok(out)
}

/// Copies `signal[pos .. pos + chunk.len()]` into `chunk`, where `signal` is `lead_in` zeros, then `samples`, then
/// zeros forever.
fn fill_chunk(chunk: &mut [f32], samples: &[f32], lead_in: usize, pos: usize) {
    chunk.fill(0.0);
    let first = lead_in.saturating_sub(pos); // chunk index of the first sample that may come from `samples`
    if first >= chunk.len() {
        return;
    }
    let src = pos + first - lead_in;
    if src >= samples.len() {
        return;
    }
    let n = (chunk.len() - first).min(samples.len() - src);
    chunk[first..first + n].copy_from_slice(&samples[src..src + n]);
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::super::test_util::sine;
    use super::*;

    /// Largest |resampled − analytic| away from the edges, where the zero extension outside the input makes the
    /// band-limited signal differ from the infinite sine.
    fn max_error_vs_analytic(from: u32, to: u32, freq: f64, len: usize) -> (usize, f64) {
        let x = sine(len, from, freq, 0.5);
        let y = resample(&x, from, to).unwrap();
        let expected = sine(y.len(), to, freq, 0.5);
        let edge = (to as usize / 100).max(SINC_LEN); // 10 ms, at least one filter length
        let err = y[edge..y.len() - edge]
            .iter()
            .zip(&expected[edge..])
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        (y.len(), err)
    }

    #[test]
    fn downsample_48k_to_24k_keeps_phase() {
        let (n, err) = max_error_vs_analytic(48_000, 24_000, 1000.0, 48_000);
        assert_eq!(n, 24_000);
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn upsample_16k_to_24k_keeps_phase() {
        let (n, err) = max_error_vs_analytic(16_000, 24_000, 1000.0, 16_001);
        assert_eq!(n, 24_002); // round(16001 · 1.5) = round(24001.5)
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn odd_ratios_keep_phase() {
        // Rate pairs whose rubato offset is fractional (44.1k → 24k: 0.8375 input samples), the case the alignment
        // is for.
        for (from, to, freq) in [(44_100, 24_000, 3000.0), (24_000, 44_100, 5000.0), (22_050, 16_000, 7000.0)] {
            let len = from as usize / 2 + 7;
            let (n, err) = max_error_vs_analytic(from, to, freq, len);
            assert_eq!(n, ((len as u64 * to as u64) as f64 / from as f64).round() as usize);
            assert!(err < 1e-5, "{from}->{to}: max error {err}");
        }
    }

    #[test]
    fn unusual_rate_pair_uses_interpolated_phases() {
        // 44 101 and 24 000 are coprime: T = 24 000 phases would be too many, so the cubic fallback runs, with its
        // 1/256-sample residual delay (≈ 2.8e-4 error at 1 kHz and amplitude 0.5).
        let (n, err) = max_error_vs_analytic(44_101, 24_000, 1000.0, 44_101);
        assert_eq!(n, 24_000);
        assert!(err < 1e-3, "max error {err}");
    }

    #[test]
    fn downsampling_removes_content_above_the_new_nyquist() {
        // 15 kHz cannot exist at 24 kHz (Nyquist 12 kHz): it must be filtered out, not aliased to 9 kHz.
        let x = sine(48_000, 48_000, 15_000.0, 0.5);
        let y = resample(&x, 48_000, 24_000).unwrap();
        let peak = y[SINC_LEN..y.len() - SINC_LEN].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(peak < 1e-3, "aliased peak {peak}");
    }

    #[test]
    fn identity_short_and_invalid() {
        let x = vec![0.25, -1.0, 3.0];
        assert_eq!(resample(&x, 16_000, 16_000).unwrap(), x);
        assert!(resample(&[], 16_000, 24_000).unwrap().is_empty());
        assert_eq!(resample(&[1.0], 48_000, 16_000).unwrap().len(), 0); // round(1/3) = 0
        assert_eq!(resample(&[1.0, 1.0], 48_000, 16_000).unwrap().len(), 1); // round(2/3) = 1
        assert_eq!(resample(&[0.5; 10], 8_000, 192_000).unwrap().len(), 240);
        assert!(matches!(resample(&x, 0, 16_000), Err(Error::InvalidArgument(_))));
        assert!(matches!(resample(&x, 16_000, 0), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn fill_chunk_pads_with_zeros() {
        let s = [1.0, 2.0, 3.0];
        let mut c = [9.0; 4];
        fill_chunk(&mut c, &s, 2, 0);
        assert_eq!(c, [0.0, 0.0, 1.0, 2.0]);
        fill_chunk(&mut c, &s, 2, 4);
        assert_eq!(c, [3.0, 0.0, 0.0, 0.0]);
        fill_chunk(&mut c, &s, 0, 8);
        assert_eq!(c, [0.0; 4]);
        fill_chunk(&mut c, &s, 9, 0);
        assert_eq!(c, [0.0; 4]);
    }
}
