//! Streaming encode/decode against offline passes on the committed reduced-config fixtures: for every way of
//! cutting the input the concatenated codes equal offline `encode` exactly, and the concatenated audio equals
//! offline `decode` (same length, cos ≥ 0.99999). Offline itself is checked against the references by the parity
//! tests, so these pin streaming to the references too.

use codec::{Audio, Codec, Codes, Error};

mod common;
use common::{cosine, dac, mimi, wavtokenizer};

/// Codes of `audio` pushed in pieces of `cut` samples, then flushed.
fn stream_encode(codec: &Codec, audio: &Audio, cut: usize) -> Codes {
    let mut enc = codec.stream_encoder(None).unwrap();
    let mut parts = Vec::new();
    for piece in audio.samples.chunks(cut) {
        parts.push(enc.push(piece).unwrap());
    }
    parts.push(enc.flush().unwrap());
    concat(&parts)
}

fn concat(parts: &[Codes]) -> Codes {
    let n_q = parts[0].n_q;
    let n_frames = parts.iter().map(|p| p.n_frames).sum();
    let data = (0..n_q).flat_map(|q| parts.iter().flat_map(move |p| p.row(q).to_vec())).collect();
    Codes { n_q, n_frames, data }
}

/// Audio of `codes` pushed `cut` frames at a time, then flushed.
fn stream_decode(codec: &Codec, codes: &Codes, cut: usize) -> Vec<f32> {
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

fn assert_same_audio(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let cos = cosine(got, want);
    eprintln!("{what}: cos {cos:.9}");
    assert!(cos >= 0.99999, "{what}: cos {cos}");
}

fn check_cuts(name: &str, codec: &Codec, audio: &Audio, sample_cuts: &[usize], frame_cuts: &[usize]) {
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

#[test]
fn mimi_streams_like_offline_for_every_cut() {
    let (codec, audio) = mimi();
    let hop = codec.hop();
    // The fixture is 1.875 s (45000 samples, a partial last frame); the transformers' context is 20 steps (0.8 s),
    // so the KV caches wrap several times.
    check_cuts("mimi", &codec, &audio, &[1, 1919, hop, hop + 1, 24000, audio.samples.len()], &[1, 2, 7, 1000]);
}

#[test]
fn mimi_stream_is_reusable_after_reset() {
    let (codec, audio) = mimi();
    let offline = codec.encode(&audio, Some(3)).unwrap();
    let mut enc = codec.stream_encoder(Some(3)).unwrap();
    enc.push(&audio.samples[..5000]).unwrap();
    enc.reset();
    let mut parts = vec![enc.push(&audio.samples).unwrap()];
    parts.push(enc.flush().unwrap());
    assert_eq!(concat(&parts), offline);
}

#[test]
fn dac_streams_like_offline() {
    for variant in ["16khz", "24khz", "44khz"] {
        let (codec, audio) = dac(variant);
        let hop = codec.hop();
        check_cuts(&format!("dac {variant}"), &codec, &audio, &[1000, hop, 3 * hop + 7, audio.samples.len()], &[1, 5]);
    }
}

#[test]
fn bad_stream_input_is_an_error_not_a_panic() {
    let (codec, audio) = mimi();
    let mut enc = codec.stream_encoder(None).unwrap();
    let mut nan = audio.samples[..100].to_vec();
    nan[7] = f32::NAN;
    assert!(matches!(enc.push(&nan), Err(Error::InvalidArgument(m)) if m.contains("sample 7")));
    // The refused push left the stream as it was.
    let mut parts = vec![enc.push(&audio.samples).unwrap()];
    parts.push(enc.flush().unwrap());
    assert_eq!(concat(&parts), codec.encode(&audio, None).unwrap());
    let err = enc.push(&audio.samples).unwrap_err().to_string();
    assert!(err.contains("flushed") && err.contains("reset"), "{err}");
    assert!(enc.flush().is_err());

    assert!(codec.stream_encoder(Some(codec.max_n_q() + 1)).is_err());
    let mut dec = codec.stream_decoder().unwrap();
    let out_of_range = Codes { n_q: 1, n_frames: 1, data: vec![codec.codebook_size() as u32] };
    assert!(dec.push(&out_of_range).unwrap_err().to_string().contains("out of range"));
    let too_many = Codes { n_q: codec.max_n_q() + 1, n_frames: 1, data: vec![0; codec.max_n_q() + 1] };
    assert!(dec.push(&too_many).is_err());
    let lying = Codes { n_q: 2, n_frames: 3, data: vec![0; 5] };
    assert!(dec.push(&lying).is_err());
    assert_eq!(dec.push(&Codes { n_q: 2, n_frames: 1, data: vec![1, 2] }).unwrap().len(), codec.hop());
    let other_n_q = Codes { n_q: 3, n_frames: 1, data: vec![1, 2, 3] };
    assert!(dec.push(&other_n_q).unwrap_err().to_string().contains("codebooks"));
}

/// The encoder streams exactly (windows around the LSTM, its state carried); the decoder cannot.
#[test]
fn wavtokenizer_encoder_streams_like_offline() {
    for variant in ["frame75", "frame40"] {
        let (codec, audio) = wavtokenizer(variant);
        let hop = codec.hop();
        check_cuts(variant, &codec, &audio, &[1, 777, hop, 5 * hop + 3, audio.samples.len()], &[]);
    }
}

#[test]
fn wavtokenizer_decoder_does_not_stream() {
    let (codec, _) = wavtokenizer("frame75");
    match codec.stream_decoder() {
        Err(Error::Unsupported(m)) => assert!(m.contains("attention"), "{m}"),
        Err(e) => panic!("expected Unsupported, got {e}"),
        Ok(_) => panic!("expected Unsupported"),
    }
}
