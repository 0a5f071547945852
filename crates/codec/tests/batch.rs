//! Batched encode/decode (`Codec::encode_batch` / `decode_batch`) against single runs on the committed fixtures:
//! every item's codes identical to its own `encode`, its audio the length of its own `decode` and equal to it
//! (cos ≥ 0.99999), with clips of equal length sharing one batched pass and others beside them.

use codec::{Audio, Codec, Codes};

mod common;
use common::{cosine, dac, mimi, wavtokenizer};

/// A batch from one input: the clip, a louder reversed copy (same length, other content), a shorter cut, the clip
/// again, the shorter cut's reverse and a cut a little shorter than the clip (which Mimi and DAC pad into the
/// clip's pass; the 2/3 cuts are too short to share it and pair up) — in interleaved order.
fn batch_of(audio: &Audio) -> Vec<Audio> {
    let with = |samples: Vec<f32>| Audio { sample_rate: audio.sample_rate, samples };
    let len = audio.samples.len();
    let reversed: Vec<f32> = audio.samples.iter().rev().map(|v| v * 1.5).collect();
    let short: Vec<f32> = audio.samples[..len * 2 / 3].to_vec();
    let short_reversed: Vec<f32> = short.iter().rev().copied().collect();
    let almost: Vec<f32> = audio.samples[len / 11..].to_vec();
    vec![
        with(audio.samples.clone()),
        with(reversed),
        with(short),
        with(audio.samples.clone()),
        with(short_reversed),
        with(almost),
    ]
}

fn check(codec: &Codec, audio: &Audio, decodes: bool) {
    let batch = batch_of(audio);
    let codes = codec.encode_batch(&batch, None).unwrap();
    assert_eq!(codes.len(), batch.len());
    let singles: Vec<Codes> = batch.iter().map(|a| codec.encode(a, None).unwrap()).collect();
    for (i, (got, want)) in codes.iter().zip(&singles).enumerate() {
        assert_eq!(got, want, "item {i}: batched codes differ from its own encode");
    }
    assert_ne!(codes[0], codes[1], "the batch's items must differ for the check to mean anything");
    if !decodes {
        return;
    }
    let audio = codec.decode_batch(&codes).unwrap();
    for (i, (got, c)) in audio.iter().zip(&codes).enumerate() {
        let want = codec.decode(c).unwrap();
        assert_eq!(got.samples.len(), want.samples.len(), "item {i}: length");
        let cos = cosine(&got.samples, &want.samples);
        assert!(cos >= 0.99999, "item {i}: batched decode cos {cos} to its own decode");
    }
}

#[test]
fn mimi_batch_equals_single_runs() {
    let (codec, audio) = mimi();
    check(&codec, &audio, true);
}

#[test]
fn dac_batch_equals_single_runs() {
    for variant in ["16khz", "44khz"] {
        let (codec, audio) = dac(variant);
        check(&codec, &audio, true);
    }
}

#[test]
fn wavtokenizer_batch_equals_single_runs() {
    let (codec, audio) = wavtokenizer("frame75");
    check(&codec, &audio, true);
}

#[test]
fn batch_errors_name_the_item() {
    let (codec, audio) = mimi();
    let mut batch = batch_of(&audio);
    batch[2].samples[5] = f32::NAN;
    let err = codec.encode_batch(&batch, None).unwrap_err().to_string();
    assert!(err.contains("batch item 2") && err.contains("finite"), "{err}");
    let mut codes = codec.encode_batch(&batch_of(&audio), None).unwrap();
    codes[3].data[0] = u32::MAX;
    let err = codec.decode_batch(&codes).unwrap_err().to_string();
    assert!(err.contains("batch item 3"), "{err}");
    assert!(codec.encode_batch(&[], None).unwrap().is_empty());
}
