//! WavTokenizer against the original repository's code on the committed reduced-config fixtures
//! (`tests/fixtures/wavtokenizer/<variant>`, made by `scripts/make_wavtokenizer_fixtures.py`): the Lightning checkpoint
//! and its YAML are converted, codes must be equal, the encoder output and the decoded audio must match.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use codec::gguf::ModelFile;
use codec::models::wavtokenizer::WavTokenizer;
use codec::{Audio, Codec, Codes, DeviceKind};

mod common;
use common::{cosine, mismatch_fraction};

const VARIANTS: [&str; 2] = ["frame75", "frame40"];

/// `WAVTOKENIZER_FIXTURES=/tmp/wt-full` runs the tests on a full-size set made with `--full-size`.
fn fixtures(variant: &str) -> PathBuf {
    common::fixture_dir("wavtokenizer", "WAVTOKENIZER_FIXTURES").join(variant)
}

fn load_f32(variant: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    common::load_f32(&fixtures(variant).join(name))
}

fn convert(variant: &str) -> PathBuf {
    let dir = fixtures(variant).join("original");
    common::convert_to(&dir.join("model.ckpt"), Some(dir.join("config.yaml")), variant)
}

#[test]
fn both_variants_match_the_reference() {
    for variant in VARIANTS {
        let gguf = convert(variant);
        let model = WavTokenizer::load(&ModelFile::open(&gguf).unwrap(), &Device::Cpu, codec::Parts::All).unwrap();
        let (_, samples) = load_f32(variant, "input.npy");
        let pcm = Tensor::from_slice(&samples, (1, 1, samples.len()), &Device::Cpu).unwrap();
        let latent = model.encoder.forward(&pcm).unwrap();
        let (shape, want) = load_f32(variant, "encoder_out.npy");
        assert_eq!(latent.squeeze(0).unwrap().dims(), &shape[..], "{variant}: encoder_out shape");
        let cos = cosine(&latent.flatten_all().unwrap().to_vec1().unwrap(), &want);
        eprintln!("{variant}: encoder_out cos {cos:.9}");
        assert!(cos >= 0.99999, "{variant}: encoder_out cos {cos}");

        let codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
        let want = common::load_codes(&fixtures(variant).join("codes.npy"));
        let got = codec.encode(&Audio { sample_rate: 24000, samples }, None).unwrap();
        assert_eq!(mismatch_fraction(&got, &want), 0.0, "{variant}: codes differ");
        let out = codec.decode(&Codes { ..want }).unwrap();
        let (_, reference) = load_f32(variant, "decoded.npy");
        let cos = cosine(&out.samples, &reference);
        eprintln!("{variant}: decoded cos {cos:.9}");
        assert!(cos >= 0.9999, "{variant}: decoded cos {cos}");
        std::fs::remove_file(gguf).ok();
    }
}

/// A decode longer than a piece runs in pieces, its pos_net's activations in temporary files (the GroupNorms'
/// statistics gathered over every piece, the attention in blocks of queries against tiles of keys) and the layers
/// after it with the frames they reach on each side: the audio equals one pass over the whole input.
#[test]
fn long_decode_in_pieces_equals_one_pass() {
    let gguf = convert("frame75");
    let mut codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
    // Two blocks of queries (4096 each), five tiles of keys (1024), pieces of 0.3 s (22 frames; the decoder's
    // three times that).
    let frames = 5000;
    codec.set_chunk_seconds(0.3);
    assert!(codec.pieces(frames).len() > 200);
    let size = codec.codebook_size() as u64;
    let data: Vec<u32> = (0..frames as u64).map(|i| ((i * 2654435761) % size) as u32).collect();
    let codes = Codes { n_q: 1, n_frames: frames, data };
    let mut reported = vec![];
    let pieces = codec.decode_with_progress(&codes, &mut |done, all| reported.push((done, all))).unwrap();

    let tensor = Tensor::from_slice(&codes.data, (1, 1, frames), &Device::Cpu).unwrap();
    let whole = codec.model().decode(&tensor).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(pieces.samples.len(), whole.len());
    assert_eq!(whole.len(), frames * codec.hop());
    let cos = cosine(&pieces.samples, &whole);
    let worst = pieces.samples.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let peak = whole.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("5000 frames in pieces vs one pass: cos {cos:.12}, max diff {worst:e} at peak {peak}");
    assert!(cos >= 0.99999, "cos {cos}");
    assert!(worst <= 1e-4 * peak, "max diff {worst} at peak {peak}");
    // Progress rises to the whole input.
    assert!(reported.windows(2).all(|w| w[0].0 <= w[1].0) && reported.len() > 60);
    assert_eq!(reported.last(), Some(&(frames, frames)));
    std::fs::remove_file(gguf).ok();
}
