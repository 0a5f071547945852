//! DAC against the reference implementations (descript-audio-codec and transformers) on the committed reduced-config
//! fixtures (`tests/fixtures/dac/<variant>`, made by `scripts/make_dac_fixtures.py`), one per released variant's
//! structure: both checkpoint layouts are converted, codes must be equal, the latent and the decoded audio must match
//! by cosine similarity, and chunked processing must give what one pass gives.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use codec::gguf::ModelFile;
use codec::models::dac::Dac;
use codec::{Audio, Codec, Codes, DeviceKind};

const VARIANTS: [&str; 3] = ["44khz", "24khz", "16khz"];

mod common;
use common::{convert_to, cosine, mismatch_fraction};

/// `DAC_FIXTURES=/tmp/dac-full` runs the tests on a full-size set made by `make_dac_fixtures.py --full-size`.
fn fixtures(variant: &str) -> PathBuf {
    common::fixture_dir("dac", "DAC_FIXTURES").join(variant)
}

fn variants() -> Vec<&'static str> {
    VARIANTS.into_iter().filter(|v| fixtures(v).exists()).collect()
}

fn load_f32(variant: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    common::load_f32(&fixtures(variant).join(name))
}

fn load_codes(variant: &str, name: &str) -> Codes {
    common::load_codes(&fixtures(variant).join(name))
}

fn layouts(variant: &str) -> [(PathBuf, &'static str); 2] {
    let dir = fixtures(variant);
    [
        (convert_to(&dir.join("original/weights.pth"), None, &format!("{variant}-pth")), "original .pth"),
        (convert_to(&dir.join("hub"), None, &format!("{variant}-hub")), "hub"),
    ]
}

fn input(variant: &str, sample_rate: u32) -> Audio {
    Audio { sample_rate, samples: load_f32(variant, "input.npy").1 }
}

#[test]
fn fixtures_are_present() {
    assert_eq!(variants().len(), VARIANTS.len(), "missing DAC fixture dirs under tests/fixtures/dac");
}

/// Latent, codes and decoded audio of both layouts against descript's outputs, for every variant.
#[test]
fn both_layouts_match_references() {
    for variant in variants() {
        for (gguf, layout) in layouts(variant) {
            eprintln!("{variant} / {layout}");
            let dac = Dac::load(&ModelFile::open(&gguf).unwrap(), &Device::Cpu, codec::Parts::All).unwrap();
            let audio = input(variant, dac.config.sample_rate as u32);
            let pcm = Tensor::from_slice(&audio.samples, (1, 1, audio.samples.len()), &Device::Cpu).unwrap();
            let latent = dac.encode_latent(&pcm).unwrap();
            let (shape, want) = load_f32(variant, "encoder_out.npy");
            assert_eq!(latent.squeeze(0).unwrap().dims(), &shape[..]);
            let cos = cosine(&latent.flatten_all().unwrap().to_vec1().unwrap(), &want);
            eprintln!("  encoder_out cos {cos:.9}");
            assert!(cos >= 0.99999, "{variant} {layout}: encoder_out cos {cos}");

            let codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
            for (codes, decoded, n_q) in
                [("codes.npy", "decoded.npy", None), ("codes_nq2.npy", "decoded_nq2.npy", Some(2))]
            {
                let want = load_codes(variant, codes);
                let got = codec.encode(&audio, n_q).unwrap();
                let frac = mismatch_fraction(&got, &want);
                assert_eq!(frac, 0.0, "{variant} {layout} {codes}: {:.3} % of codes differ", frac * 100.0);
                let out = codec.decode(&want).unwrap();
                let (_, reference) = load_f32(variant, decoded);
                let cos = cosine(&out.samples, &reference);
                eprintln!("  {decoded} cos {cos:.9}");
                assert!(cos >= 0.9999, "{variant} {layout} {decoded}: cos {cos}");
            }
            std::fs::remove_file(gguf).ok();
        }
    }
}

/// The variant's model (its GGUF, the hub layout's removed), the fixture input, and that input's codes and audio
/// from one pass each.
fn one_pass(variant: &str) -> (PathBuf, Codec, Audio, Codes, Audio) {
    let [(gguf, _), (hub, _)] = layouts(variant);
    std::fs::remove_file(hub).ok();
    let codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
    let audio = input(variant, codec.sample_rate());
    let codes = codec.encode(&audio, None).unwrap();
    let whole = codec.decode(&codes).unwrap();
    (gguf, codec, audio, codes, whole)
}

/// A clip runs in one pass, unless a memory limit refuses that pass: then it goes in pieces (the stream checks each
/// push against the limit) and decodes to the same audio up to rounding.
#[test]
fn memory_limit_sends_a_clip_to_pieces() {
    let (gguf, mut codec, _, codes, whole) = one_pass("16khz");
    let n = codes.n_frames;
    assert_eq!(codec.pieces(n).len(), 1, "a short clip runs in one pass");
    // A limit the whole clip's stream push exceeds, though its one pass would fit: pieces sized to the limit.
    let limit = codec.model().peak_bytes(n) / 2;
    assert!(codec.model().pass_bytes(n) < limit);
    codec.set_memory_limit(Some(limit));
    assert!(codec.pieces(n).len() > 1);
    let pieces = codec.decode(&codes).unwrap();
    assert_eq!(pieces.samples.len(), whole.samples.len());
    assert!(common::cosine(&pieces.samples, &whole.samples) >= 0.999999);
    std::fs::remove_file(gguf).ok();
}

/// A long input streamed in pieces of a few frames gives the codes of one pass exactly, and its audio up to rounding
/// (the transposed convs' overlaps are summed in two parts at each cut).
#[test]
fn chunked_equals_one_pass() {
    for variant in variants() {
        let (gguf, mut codec, audio, codes, whole) = one_pass(variant);
        codec.set_chunk_seconds(0.05);
        assert!(codec.pieces(codes.n_frames).len() > 3, "{variant}: the test should cut several chunks");
        assert_eq!(codec.encode(&audio, None).unwrap(), codes, "{variant}: chunked codes differ");
        let chunked = codec.decode(&codes).unwrap();
        assert_eq!(chunked.samples.len(), whole.samples.len());
        let diff = chunked.samples.iter().zip(&whole.samples).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{variant}: chunked vs one pass max |diff| {diff:e}");
        assert!(diff < 1e-4, "{variant}: chunked decode differs by {diff}");
        let cos = common::cosine(&chunked.samples, &whole.samples);
        assert!(cos >= 0.999999, "{variant}: chunked decode cos {cos}");
        std::fs::remove_file(gguf).ok();
    }
}
