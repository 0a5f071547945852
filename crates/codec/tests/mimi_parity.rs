//! Mimi against the reference implementations (moshi and transformers) on the committed reduced-config fixtures
//! (`tests/fixtures/mimi`, made by `scripts/make_fixtures.py`): both checkpoint layouts are converted, then codes must
//! be equal and every stage must match by cosine similarity.

use std::path::PathBuf;

use candle_core::{Device, Module, Tensor};
use codec::gguf::ModelFile;
use codec::models::mimi::Mimi;
use codec::{Audio, Codec, Codes, DeviceKind, Parts};

mod common;
use common::{convert_to, cosine, mismatch_fraction};

/// `MIMI_FIXTURES=/tmp/mimi-full` runs the stage test on a full-size set made by `make_fixtures.py --full-size`.
fn fixtures() -> PathBuf {
    common::fixture_dir("mimi", "MIMI_FIXTURES")
}

fn load_f32(name: &str) -> (Vec<usize>, Vec<f32>) {
    common::load_f32(&fixtures().join(name))
}

fn load_codes(name: &str) -> Codes {
    common::load_codes(&fixtures().join(name))
}

fn assert_close(stage: &str, ours: &Tensor, reference: &str, min_cos: f64) {
    common::assert_close_to(stage, ours, load_f32(reference), min_cos, None);
}

fn original_gguf() -> PathBuf {
    let dir = fixtures().join("original");
    convert_to(&dir.join("model.safetensors"), Some(dir.join("config.json")), "original")
}

fn hub_gguf() -> PathBuf {
    convert_to(&fixtures().join("hub"), None, "hub")
}

fn input() -> Audio {
    let (_, samples) = load_f32("input.npy");
    Audio { sample_rate: 24000, samples }
}

/// Every stage of the original-layout conversion against moshi's intermediates.
#[test]
fn stages_match_moshi() {
    let gguf = original_gguf();
    let mimi = Mimi::load(&ModelFile::open(&gguf).unwrap(), &Device::Cpu, codec::Parts::All).unwrap();
    let audio = input();
    let pcm = Tensor::from_slice(&audio.samples, (1, 1, audio.samples.len()), &Device::Cpu).unwrap();

    let x = mimi.encoder.forward(&pcm).unwrap();
    assert_close("seanet_out", &x, "seanet_out.npy", 0.99999);
    let x = mimi.encoder_transformer.forward(&x).unwrap();
    assert_close("enc_transformer_out", &x, "enc_transformer_out.npy", 0.99999);
    let latent = mimi.downsample.forward(&x).unwrap();
    assert_close("latent", &latent, "latent.npy", 0.99999);

    let want = load_codes("codes.npy");
    let codes = mimi.quantizer.encode(&latent, want.n_q).unwrap();
    let got = Codes { n_q: want.n_q, n_frames: want.n_frames, data: codes.flatten_all().unwrap().to_vec1().unwrap() };
    assert_eq!(mismatch_fraction(&got, &want), 0.0, "codes differ from moshi's");

    let ref_codes = Tensor::from_slice(&want.data, (1, want.n_q, want.n_frames), &Device::Cpu).unwrap();
    let q = mimi.quantizer.decode(&ref_codes).unwrap();
    assert_close("quantized", &q, "quantized.npy", 0.99999);
    let x = mimi.upsample.forward(&q).unwrap();
    assert_close("upsampled", &x, "upsampled.npy", 0.99999);
    let x = mimi.decoder_transformer.forward(&x).unwrap();
    assert_close("dec_transformer_out", &x, "dec_transformer_out.npy", 0.9999);
    let y = mimi.decoder.forward(&x).unwrap();
    assert_close("decoded", &y, "decoded.npy", 0.9999);
    std::fs::remove_file(gguf).ok();
}

fn check_end_to_end(codec: &Codec, input: &str, codes: &str, decoded: &str, n_q: Option<usize>) {
    let (_, samples) = load_f32(input);
    let want = load_codes(codes);
    let got = codec.encode(&Audio { sample_rate: 24000, samples }, n_q).unwrap();
    let frac = mismatch_fraction(&got, &want);
    assert_eq!(frac, 0.0, "{codes}: {:.4} % of codes differ", frac * 100.0);
    let audio = codec.decode(&want).unwrap();
    let (_, ref_audio) = load_f32(decoded);
    let cos = cosine(&audio.samples, &ref_audio);
    eprintln!("{decoded}: cos {cos:.9}");
    assert!(cos >= 0.9999, "{decoded}: cosine {cos}");
}

/// Both layouts through the public API: all codebooks, a prefix of them, and an input that is not a whole number
/// of frames.
#[test]
fn both_layouts_match_references() {
    for (gguf, layout) in [(original_gguf(), "original"), (hub_gguf(), "hub")] {
        eprintln!("layout: {layout}");
        let codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
        check_end_to_end(&codec, "input.npy", "codes.npy", "decoded.npy", None);
        check_end_to_end(&codec, "input.npy", "codes_nq3.npy", "decoded_nq3.npy", Some(3));
        check_end_to_end(&codec, "input_odd.npy", "codes_odd.npy", "decoded_odd.npy", None);
        check_end_to_end(&codec, "input.npy", "codes_hub.npy", "decoded_hub.npy", None);
        std::fs::remove_file(gguf).ok();
    }
}

/// Loading one half (`codec encode` / `codec decode`): the same codes and audio as the whole model, and a clear
/// error for the other direction.
#[test]
fn one_half_loads_and_runs_alone() {
    let gguf = hub_gguf();
    let whole = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
    let encoder = Codec::load_parts(&gguf, DeviceKind::Cpu, Parts::Encoder).unwrap();
    let decoder = Codec::load_parts(&gguf, DeviceKind::Cpu, Parts::Decoder).unwrap();
    let codes = whole.encode(&input(), None).unwrap();
    assert_eq!(encoder.encode(&input(), None).unwrap().data, codes.data);
    assert_eq!(decoder.decode(&codes).unwrap().samples, whole.decode(&codes).unwrap().samples);
    let err = encoder.decode(&codes).unwrap_err().to_string();
    assert!(err.contains("loaded for encoding only"), "{err}");
    let err = decoder.encode(&input(), None).unwrap_err().to_string();
    assert!(err.contains("loaded for decoding only"), "{err}");
    std::fs::remove_file(gguf).ok();
}

/// The two conversions hold the same model: identical tensors after the layout transforms.
#[test]
fn layouts_convert_to_identical_tensors() {
    let (a, b) = (original_gguf(), hub_gguf());
    let (fa, fb) = (ModelFile::open(&a).unwrap(), ModelFile::open(&b).unwrap());
    let (ta, tb) = (fa.load_tensors(&Device::Cpu).unwrap(), fb.load_tensors(&Device::Cpu).unwrap());
    let mut names: Vec<_> = ta.keys().collect();
    names.sort();
    let mut names_b: Vec<_> = tb.keys().collect();
    names_b.sort();
    assert_eq!(names, names_b, "tensor names differ");
    for name in names {
        let diff = (&ta[name] - &tb[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-6, "{name}: max diff {diff}");
    }
    std::fs::remove_file(a).ok();
    std::fs::remove_file(b).ok();
}

/// A pass that would need more memory than the limit is refused before it runs, with a message that says so;
/// without a limit the same input runs.
#[test]
fn memory_limit_refuses_oversized_passes() {
    let gguf = hub_gguf();
    let mut codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
    codec.set_memory_limit(None);
    let codes = codec.encode(&input(), None).unwrap();
    codec.set_memory_limit(Some(1 << 20));
    let err = codec.encode(&input(), None).unwrap_err().to_string();
    assert!(err.contains("encoding") && err.contains("GiB limit"), "{err}");
    let err = codec.decode(&codes).unwrap_err().to_string();
    assert!(err.contains("decoding") && err.contains("GiB limit"), "{err}");
    // The estimate saturates rather than wrapping for absurd lengths.
    assert_eq!(codec.model().peak_bytes(usize::MAX), u64::MAX);
    std::fs::remove_file(gguf).ok();
}

/// A config.json of another model beside the weights (Kyutai's repos ship their language model's next to the
/// Mimi tokenizer) is not taken for the codec's: it is ignored, with a note saying so.
#[test]
fn foreign_config_beside_weights_is_ignored() {
    let dir = std::env::temp_dir().join(format!("codec-rs-test-{}-foreign", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("original/model.safetensors"), dir.join("model.safetensors")).unwrap();
    let lm = r#"{"model_type": "moshi", "dim": 4096, "num_heads": 32, "num_layers": 32, "n_q": 8, "card": 2048}"#;
    std::fs::write(dir.join("config.json"), lm).unwrap();
    let out = dir.join("out.gguf");
    let mut notes = Vec::new();
    let result =
        codec::convert::convert_with_notes(&dir.join("model.safetensors"), &out, &Default::default(), &mut notes);
    assert!(notes.iter().any(|n| n.contains("ignoring") && n.contains("describes 'moshi'")), "{notes:?}");
    // Without it, the weights are read as the published kyutai/mimi architecture, which this reduced fixture is
    // not: the error is about the weights, not about a 'moshi' architecture.
    let err = result.unwrap_err().to_string();
    assert!(!err.contains("moshi") && err.contains("mimi"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
