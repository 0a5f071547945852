//! Helpers shared by the parity tests: reading reference arrays, comparing, converting into temp files.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use codec::convert::{convert, ConvertOptions};
use codec::npy;
use codec::{Audio, Codec, Codes, DeviceKind};

/// The committed fixture dir `tests/fixtures/<name>`, or `$<env>` when set (full-size sets made by hand).
pub fn fixture_dir(name: &str, env: &str) -> PathBuf {
    match std::env::var_os(env) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name),
    }
}

pub fn load_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let arr = npy::read(path).unwrap();
    (arr.shape.clone(), arr.to_f32_vec())
}

/// Reference codes `(n_q, F)` of any integer dtype.
pub fn load_codes(path: &Path) -> Codes {
    let arr = npy::read(path).unwrap();
    let [n_q, n_frames] = arr.shape[..] else { panic!("{}: codes shape {:?}", path.display(), arr.shape) };
    Codes { n_q, n_frames, data: arr.to_i64_vec().unwrap().into_iter().map(|c| c as u32).collect() }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// `ours` (a leading batch dim of 1, which references drop, as they drop the channel dim of mono audio) against the
/// reference `(shape, values)`: the same shape, cosine at least `min_cos`, and with `max_diff` the largest difference
/// at most that fraction of the reference's largest value.
#[allow(dead_code)]
pub fn assert_close_to(
    stage: &str,
    ours: &candle_core::Tensor,
    (shape, want): (Vec<usize>, Vec<f32>),
    min_cos: f64,
    max_diff: Option<f32>,
) {
    let got = if shape.len() == 1 { ours.flatten_all().unwrap() } else { ours.squeeze(0).unwrap() };
    assert_eq!(got.dims(), &shape[..], "{stage}: shape");
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let cos = cosine(&got, &want);
    let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / peak;
    eprintln!("{stage}: cos {cos:.9}, max diff {diff:.2e} of the peak");
    assert!(cos >= min_cos, "{stage}: cosine {cos} < {min_cos}");
    if let Some(limit) = max_diff {
        assert!(diff <= limit, "{stage}: largest difference {diff:.2e} of the peak > {limit:.0e}");
    }
}

pub fn mismatch_fraction(a: &Codes, b: &Codes) -> f64 {
    assert_eq!((a.n_q, a.n_frames), (b.n_q, b.n_frames), "codes shape");
    a.data.iter().zip(&b.data).filter(|(x, y)| x != y).count() as f64 / a.data.len() as f64
}

/// Converts `src` into a temp GGUF of its own (tests run in parallel).
pub fn convert_to(src: &Path, config: Option<PathBuf>, name: &str) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let out = std::env::temp_dir().join(format!("codec-rs-test-{}-{name}-{n}.gguf", std::process::id()));
    convert(src, &out, &ConvertOptions { config, ..Default::default() }).unwrap();
    out
}

/// The Mimi fixture's model on the CPU and its odd-length input.
pub fn mimi() -> (Codec, Audio) {
    let dir = fixture_dir("mimi", "MIMI_FIXTURES");
    let gguf = convert_to(&dir.join("hub"), None, "fixture-mimi");
    let codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
    std::fs::remove_file(gguf).ok();
    let (_, samples) = load_f32(&dir.join("input_odd.npy"));
    (codec, Audio { sample_rate: 24000, samples })
}

/// A DAC fixture's model (`16khz`, `24khz`, `44khz`) and its input.
pub fn dac(variant: &str) -> (Codec, Audio) {
    let dir = fixture_dir("dac", "DAC_FIXTURES").join(variant);
    let gguf = convert_to(&dir.join("original/weights.pth"), None, &format!("fixture-dac-{variant}"));
    let codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
    std::fs::remove_file(gguf).ok();
    let (_, samples) = load_f32(&dir.join("input.npy"));
    let sample_rate = codec.sample_rate();
    (codec, Audio { sample_rate, samples })
}

/// A WavTokenizer fixture's model (`frame75`, `frame40`) and its input.
pub fn wavtokenizer(variant: &str) -> (Codec, Audio) {
    let dir = fixture_dir("wavtokenizer", "WAVTOKENIZER_FIXTURES").join(variant);
    let gguf = convert_to(
        &dir.join("original/model.ckpt"),
        Some(dir.join("original/config.yaml")),
        &format!("fixture-wt-{variant}"),
    );
    let codec = Codec::load(Path::new(&gguf), DeviceKind::Cpu).unwrap();
    std::fs::remove_file(&gguf).ok();
    let (_, samples) = load_f32(&dir.join("input.npy"));
    (codec, Audio { sample_rate: 24000, samples })
}

/// Codes of `audio` pushed in pieces of `cut` samples, then flushed.
pub fn stream_encode(codec: &Codec, audio: &Audio, cut: usize) -> Codes {
    let mut enc = codec.stream_encoder(None).unwrap();
    let mut parts = Vec::new();
    for piece in audio.samples.chunks(cut) {
        parts.push(enc.push(piece).unwrap());
    }
    parts.push(enc.flush().unwrap());
    concat(&parts)
}

pub fn concat(parts: &[Codes]) -> Codes {
    let n_q = parts[0].n_q;
    let n_frames = parts.iter().map(|p| p.n_frames).sum();
    let data = (0..n_q).flat_map(|q| parts.iter().flat_map(move |p| p.row(q).to_vec())).collect();
    Codes { n_q, n_frames, data }
}

/// Audio of `codes` pushed `cut` frames at a time, then flushed.
pub fn stream_decode(codec: &Codec, codes: &Codes, cut: usize) -> Vec<f32> {
    let mut dec = codec.stream_decoder().unwrap();
    let mut out = Vec::new();
    for from in (0..codes.n_frames).step_by(cut) {
        let to = (from + cut).min(codes.n_frames);
        let data = (0..codes.n_q).flat_map(|q| codes.row(q)[from..to].to_vec()).collect();
        out.extend(dec.push(&Codes { n_q: codes.n_q, n_frames: to - from, data }).unwrap());
    }
    out.extend(dec.flush().unwrap());
    out
}

pub fn assert_same_audio(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let cos = cosine(got, want);
    eprintln!("{what}: cos {cos:.9}");
    assert!(cos >= 0.99999, "{what}: cos {cos}");
}

pub fn check_cuts(name: &str, codec: &Codec, audio: &Audio, sample_cuts: &[usize], frame_cuts: &[usize]) {
    let offline = codec.encode(audio, None).unwrap();
    for &cut in sample_cuts {
        assert_eq!(stream_encode(codec, audio, cut), offline, "{name}: codes pushed {cut} samples at a time");
    }
    // `finish` (the last push and the flush in one pass) gives the same, whole or after a push.
    for split in [0, audio.samples.len() / 3] {
        let mut enc = codec.stream_encoder(None).unwrap();
        let head = enc.push(&audio.samples[..split]).unwrap();
        let tail = enc.finish(&audio.samples[split..]).unwrap();
        assert_eq!(concat(&[head, tail]), offline, "{name}: push {split} samples, then finish");
        assert!(enc.push(&audio.samples[..1]).is_err(), "{name}: finish ends the stream");
    }
    let decoded = codec.decode(&offline).unwrap();
    if !frame_cuts.is_empty() {
        let mut dec = codec.stream_decoder().unwrap();
        let whole = dec.finish(&offline).unwrap();
        assert_same_audio(&format!("{name} decode, finish"), &whole, &decoded.samples);
    }
    for &cut in frame_cuts {
        assert_same_audio(
            &format!("{name} decode, {cut} frames a push"),
            &stream_decode(codec, &offline, cut),
            &decoded.samples,
        );
    }
}
