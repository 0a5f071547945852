//! Streaming encode/decode against offline passes on the committed reduced-config fixtures: for every way of
//! cutting the input the concatenated codes equal offline `encode` exactly, and the concatenated audio equals
//! offline `decode` (same length, cos ≥ 0.99999). Offline itself is checked against the references by the parity
//! tests, so these pin streaming to the references too.

use codec::{Codes, Error};

mod common;
use common::{check_cuts, concat, dac, mimi, wavtokenizer};

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
