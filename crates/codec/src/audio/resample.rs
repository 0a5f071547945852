//! Band-limited sample-rate conversion with rubato's windowed-sinc resampler, aligned to the input (no delay):
//! [`StreamResampler`] converts a stream piece by piece, [`resample`] a whole signal through it.

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
const WINDOW: WindowFunction = WindowFunction::BlackmanHarris2;

/// Resamples mono `samples` from `from` Hz to `to` Hz.
///
/// The output has `round(len · to / from)` samples and is aligned with the input: output sample `m` is the
/// band-limited input evaluated at time `m / to` seconds (the signal is taken as zero outside the input), so a
/// sine keeps its phase. `from == to` returns a copy. Rates of 0 are an [`Error::InvalidArgument`].
///
/// With `to / from = T / F` in lowest terms and `T ≤ 1024` (every pair of common rates), each output lands exactly
/// on one of the `T` tabulated sinc phases: an exact polyphase windowed-sinc filter. Otherwise the phases are
/// interpolated (cubic, 256 phases) and outputs sit 1/256 of an input sample late, a negligible delay.
///
/// This is [`StreamResampler`] given the whole input in one push: the two agree bit for bit.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    let mut resampler = StreamResampler::new(from, to)?;
    // The exact length when it is addressable; otherwise the vector grows as the samples come.
    let mut out = Vec::with_capacity(usize::try_from(output_len(samples.len() as u64, from, to)).unwrap_or(0));
    resampler.push(samples, &mut out)?;
    resampler.flush(&mut out)?;
    Ok(out)
}

/// `round(n · to / from)`: the number of samples [`resample`] makes from `n` (`from` > 0).
pub(super) fn output_len(n: u64, from: u32, to: u32) -> u128 {
    (n as u128 * to as u128 + from as u128 / 2) / from as u128
}

/// [`resample`] for a stream that arrives in pieces: the same filter, alignment and length, with the filter state
/// kept between pieces, so memory stays at one 1024-sample chunk plus the filter whatever the stream's length.
///
/// [`push`](Self::push) as many pieces as come, of any sizes, then [`flush`](Self::flush) once at the end of the
/// stream; the outputs concatenated equal `resample` of the inputs concatenated, bit for bit. The output of a push
/// lags its input by about half the filter (128 input samples) plus one chunk, which `flush` releases.
pub struct StreamResampler {
    from: u32,
    to: u32,
    /// `None` when `from == to`: samples pass through unchanged.
    plan: Option<SincPlan>,
    state: SincState,
}

/// How a rate pair is resampled; fixed at construction.
#[derive(Clone, Copy)]
struct SincPlan {
    /// Sub-sample sinc positions tabulated.
    phases: usize,
    /// Exact polyphase (each output on a tabulated phase) or cubic interpolation between phases.
    exact: bool,
    /// Zeros fed before the input and leading outputs dropped, which align the output to the input (see `new`).
    lead_in: u64,
    skip: u64,
    /// Input frames per rubato call.
    chunk: usize,
}

/// Where a stream is; a fresh one at construction and after each flush.
#[derive(Default)]
struct SincState {
    /// Built on the first full chunk: a stream that never fills one (e.g. an empty input) costs no sinc table.
    resampler: Option<SincFixedIn<f32>>,
    /// rubato's output buffer.
    output: Vec<Vec<f32>>,
    /// Lead-in zeros still to feed, leading outputs still to drop.
    lead_in: u64,
    skip: u64,
    /// The chunk being filled (shorter than `SincPlan::chunk`).
    input: Vec<f32>,
    /// Outputs made but not yet returned: past `round(pushed · to / from)`, which the final length may not reach.
    pending: Vec<f32>,
    /// Input samples pushed and output samples returned so far.
    pushed: u64,
    returned: u64,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz; rates of 0 are an [`Error::InvalidArgument`].
    pub fn new(from: u32, to: u32) -> Result<Self> {
        if from == 0 || to == 0 {
            return Err(Error::InvalidArgument(format!("cannot resample from {from} Hz to {to} Hz")));
        }
        let plan = (from != to).then(|| {
            let g = gcd(from, to);
            let (f, t) = ((from / g) as u64, (to / g) as u64);
            // rubato's SincFixedIn with `n` sinc phases puts output k (from 0) at input time (k+1)·F/T − 1 + 1/n: no
            // latency, but an offset that is fractional for most rate pairs. Prepending `lead_in` zeros and dropping
            // the first `skip` outputs moves output m + skip to input time (m + skip + 1)·F/T − 1 + 1/n − lead_in,
            // which is m·F/T when (skip + 1)·F + T/n = T·(lead_in + 1). With n = T that has a solution with
            // skip < T, hence lead_in ≤ F: at most one second of extra input.
            let (phases, exact, lead_in, skip) = if t <= MAX_EXACT_OVERSAMPLING as u64 {
                // Always found: F is invertible modulo T as gcd(F, T) = 1.
                let skip = (0..t).find(|j| ((j + 1) * f + 1) % t == 0).unwrap_or(0);
                let lead_in = ((skip + 1) * f + 1) / t - 1;
                (t as usize, true, lead_in, skip)
            } else {
                // Same equation without the 1/n term, which stays as the documented 1/256-sample residual.
                (FALLBACK_OVERSAMPLING as usize, false, f - 1, t - 1)
            };
            // Each call must yield at least one output for a flush to progress, so a chunk spans ≥ 2 output periods.
            let chunk = CHUNK.max(2 * from.div_ceil(to) as usize);
            SincPlan { phases, exact, lead_in, skip, chunk }
        });
        let mut resampler = StreamResampler { from, to, plan, state: SincState::default() };
        resampler.reset();
        Ok(resampler)
    }

    /// Feeds the next piece of the input and appends to `out` the output samples it completes (possibly none).
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let Some(plan) = self.plan else {
            out.extend_from_slice(samples);
            return Ok(());
        };
        let mut rest = samples;
        while !rest.is_empty() {
            let room = plan.chunk - self.state.input.len();
            let input = &mut self.state.input;
            if self.state.lead_in > 0 {
                let zeros = room.min(usize::try_from(self.state.lead_in).unwrap_or(usize::MAX));
                input.resize(input.len() + zeros, 0.0);
                self.state.lead_in -= zeros as u64;
            } else {
                let n = room.min(rest.len());
                input.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            if self.state.input.len() == plan.chunk {
                self.process_chunk(plan)?;
            }
        }
        self.state.pushed += samples.len() as u64;
        // Return only what the final length is sure to include: it is at least the length of what was pushed so far.
        let sure = output_len(self.state.pushed, self.from, self.to);
        let ready = sure.saturating_sub(self.state.returned as u128).min(self.state.pending.len() as u128) as usize;
        out.extend(self.state.pending.drain(..ready));
        self.state.returned += ready as u64;
        Ok(())
    }

    /// Ends the stream: appends to `out` the rest of the output, `round(pushed · to / from)` samples in all, the
    /// input taken as zero past its end. The resampler is then ready for a new stream.
    pub fn flush(&mut self, out: &mut Vec<f32>) -> Result<()> {
        let Some(plan) = self.plan else { return Ok(()) };
        let total = output_len(self.state.pushed, self.from, self.to);
        // Past the end of the input, zeros until the filter has made the last wanted output.
        while ((self.state.returned + self.state.pending.len() as u64) as u128) < total {
            self.state.input.resize(plan.chunk, 0.0);
            self.process_chunk(plan)?;
        }
        let rest = (total - self.state.returned as u128) as usize;
        out.extend_from_slice(&self.state.pending[..rest]);
        self.reset();
        Ok(())
    }

    /// Forgets the stream so far (input not yet resampled included) and starts a new one.
    pub fn reset(&mut self) {
        let (lead_in, skip) = self.plan.map_or((0, 0), |p| (p.lead_in, p.skip));
        self.state = SincState { lead_in, skip, ..SincState::default() };
    }

    /// Resamples the full chunk in `state.input`, drops the outputs still to skip and keeps the rest as pending.
    fn process_chunk(&mut self, plan: SincPlan) -> Result<()> {
        let (from, to) = (self.from, self.to);
        let err = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("resampling {from} Hz to {to} Hz: {e}"));
        let state = &mut self.state;
        let resampler = match &mut state.resampler {
            Some(r) => r,
            None => {
                let params = SincInterpolationParameters {
                    sinc_len: SINC_LEN,
                    f_cutoff: calculate_cutoff(SINC_LEN, WINDOW),
                    oversampling_factor: plan.phases,
                    interpolation: if plan.exact {
                        SincInterpolationType::Nearest
                    } else {
                        SincInterpolationType::Cubic
                    },
                    window: WINDOW,
                };
                let r = SincFixedIn::<f32>::new(to as f64 / from as f64, 1.0, params, plan.chunk, 1)
                    .map_err(|e| err(&e))?;
                state.output = r.output_buffer_allocate(true);
                state.resampler.insert(r)
            }
        };
        let (_, produced) = resampler
            .process_into_buffer(std::slice::from_ref(&state.input), &mut state.output, None)
            .map_err(|e| err(&e))?;
        state.input.clear();
        let dropped = produced.min(usize::try_from(state.skip).unwrap_or(usize::MAX));
        state.skip -= dropped as u64;
        state.pending.extend_from_slice(&state.output[0][dropped..produced]);
        Ok(())
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{noise, sine};
    use super::*;

    /// Resamples a `len`-sample sine of `freq` Hz from `from` to `to` and checks the output has `expected_len`
    /// samples and stays within `tolerance` of the analytic sine away from the edges (there the zero extension
    /// outside the input makes the band-limited signal differ from the infinite sine).
    fn assert_keeps_phase(from: u32, to: u32, freq: f64, len: usize, expected_len: usize, tolerance: f64) {
        let x = sine(len, from, freq, 0.5);
        let y = resample(&x, from, to).unwrap();
        assert_eq!(y.len(), expected_len, "{from}->{to}");
        let expected = sine(y.len(), to, freq, 0.5);
        let edge = (to as usize / 100).max(SINC_LEN); // 10 ms, at least one filter length
        let err = y[edge..y.len() - edge]
            .iter()
            .zip(&expected[edge..])
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        assert!(err < tolerance, "{from}->{to}: max error {err}");
    }

    #[test]
    fn downsample_48k_to_24k_keeps_phase() {
        assert_keeps_phase(48_000, 24_000, 1000.0, 48_000, 24_000, 1e-5);
    }

    #[test]
    fn upsample_16k_to_24k_keeps_phase() {
        // round(16001 · 1.5) = round(24001.5)
        assert_keeps_phase(16_000, 24_000, 1000.0, 16_001, 24_002, 1e-5);
    }

    #[test]
    fn odd_ratios_keep_phase() {
        // Rate pairs whose rubato offset is fractional (44.1k → 24k: 0.8375 input samples), the case the alignment
        // is for.
        for (from, to, freq) in [(44_100, 24_000, 3000.0), (24_000, 44_100, 5000.0), (22_050, 16_000, 7000.0)] {
            let len = from as usize / 2 + 7;
            let expected_len = ((len as u64 * to as u64) as f64 / from as f64).round() as usize;
            assert_keeps_phase(from, to, freq, len, expected_len, 1e-5);
        }
    }

    #[test]
    fn unusual_rate_pair_uses_interpolated_phases() {
        // 44 101 and 24 000 are coprime: T = 24 000 phases would be too many, so the cubic fallback runs, with its
        // 1/256-sample residual delay (≈ 2.8e-4 error at 1 kHz and amplitude 0.5).
        assert_keeps_phase(44_101, 24_000, 1000.0, 44_101, 24_000, 1e-3);
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

    /// `samples` pushed in pieces of the sizes in `pieces`, cycled, then flushed.
    fn streamed(samples: &[f32], from: u32, to: u32, pieces: &[usize]) -> Vec<f32> {
        let mut resampler = StreamResampler::new(from, to).unwrap();
        let mut out = Vec::new();
        let mut rest = samples;
        for &n in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(n.min(rest.len()));
            resampler.push(piece, &mut out).unwrap();
            rest = tail;
        }
        resampler.flush(&mut out).unwrap();
        out
    }

    fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
            panic!("{what}: sample {i} differs: {} vs {}", a[i], b[i]);
        }
    }

    /// Any chunking of the input gives `resample`'s output bit for bit: the same rate, common pairs both ways, and
    /// a pair in the interpolated mode (8000 → 24001: T = 24001 phases would be too many).
    #[test]
    fn stream_equals_whole_for_any_pieces() {
        let x = noise(20_011, 7);
        for (from, to) in [(24_000, 24_000), (44_100, 24_000), (48_000, 16_000), (22_050, 24_000), (8_000, 24_001)] {
            let whole = resample(&x, from, to).unwrap();
            assert_eq!(whole.len() as u128, output_len(x.len() as u64, from, to));
            for pieces in [&[1][..], &[7], &[1024], &[1023, 1, 1025], &[5000, 0, 3, 17_000], &[x.len()]] {
                assert_bits_eq(&streamed(&x, from, to, pieces), &whole, &format!("{from} -> {to} in {pieces:?}"));
            }
        }
    }

    /// A long input in small pieces: bit-exact, and the resampler holds O(chunk) however long the stream is — its
    /// output trails the input by under a chunk plus the lead-in and two filter lengths.
    #[test]
    fn long_stream_in_small_pieces_stays_bounded() {
        let (from, to) = (44_100u32, 24_000u32);
        let x = noise(3_000_017, 11); // 68 s
        let mut resampler = StreamResampler::new(from, to).unwrap();
        let plan = resampler.plan.unwrap();
        let lag_bound = (plan.chunk as u64 + plan.lead_in + 2 * SINC_LEN as u64) * to as u64 / from as u64 + 1;
        let mut out = Vec::new();
        let mut pushed = 0u64;
        for piece in x.chunks(333) {
            resampler.push(piece, &mut out).unwrap();
            pushed += piece.len() as u64;
            let lag = output_len(pushed, from, to) as u64 - out.len() as u64;
            assert!(lag <= lag_bound, "after {pushed} samples the output trails by {lag} > {lag_bound}");
            assert!(resampler.state.input.len() < plan.chunk);
            // At most one chunk's output (rubato's buffer: chunk · to / from + 10).
            assert!(resampler.state.pending.len() <= plan.chunk * to as usize / from as usize + 10);
        }
        resampler.flush(&mut out).unwrap();
        assert_bits_eq(&out, &resample(&x, from, to).unwrap(), "68 s in pieces of 333");
    }

    /// `flush` leaves the resampler ready for a new stream, which comes out as from a fresh one.
    #[test]
    fn flush_starts_a_new_stream() {
        let (a, b) = (noise(5000, 1), noise(3001, 2));
        let mut resampler = StreamResampler::new(22_050, 16_000).unwrap();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        resampler.push(&a, &mut first).unwrap();
        resampler.flush(&mut first).unwrap();
        resampler.push(&b, &mut second).unwrap();
        resampler.flush(&mut second).unwrap();
        assert_bits_eq(&first, &resample(&a, 22_050, 16_000).unwrap(), "first stream");
        assert_bits_eq(&second, &resample(&b, 22_050, 16_000).unwrap(), "second stream");
        assert_eq!(second.len(), 2178); // round(3001 · 16000 / 22050) = round(2177.6)

        // `reset` drops a stream half-way.
        let mut partial = Vec::new();
        resampler.push(&a, &mut partial).unwrap();
        resampler.reset();
        let mut third = Vec::new();
        resampler.push(&b, &mut third).unwrap();
        resampler.flush(&mut third).unwrap();
        assert_bits_eq(&third, &second, "after reset");
    }
}
