//! Pocket TTS against the pocket-tts package (4.0.1) on the committed reduced-config fixtures
//! (`tests/fixtures/pocket_tts`, made by `scripts/make_pocket_tts_fixtures.py`): the checkpoint is converted with its
//! YAML and tokenizer.json, then every stage of the Mimi variant must match by cosine similarity.

use std::path::PathBuf;

use candle_core::{Device, Module, Tensor};
use codec::gguf::ModelFile;
use codec::models::pocket_tts::{PocketTts, ARCH, TOKENIZER_JSON};

mod common;
use common::{convert_to, cosine};

/// `POCKET_TTS_FIXTURES=/tmp/pocket-full` runs on another set made by the script.
fn fixtures() -> PathBuf {
    common::fixture_dir("pocket_tts", "POCKET_TTS_FIXTURES")
}

fn load_f32(name: &str) -> (Vec<usize>, Vec<f32>) {
    common::load_f32(&fixtures().join(name))
}

/// A reference array as a tensor of its own shape with a batch dim in front.
fn reference(name: &str) -> Tensor {
    let (shape, data) = load_f32(name);
    let mut dims = vec![1];
    dims.extend(shape);
    Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
}

/// Cosine similarity at least `min_cos`, and the largest difference at most 1e-5 of the reference's largest value:
/// f32 ports agree to a few ulps, while a near miss (exact GELU for its tanh form, say) moves the cosine only in the
/// ninth digit but the largest difference a hundredfold.
fn assert_close(stage: &str, ours: &Tensor, reference: &str, min_cos: f64) {
    let (shape, want) = load_f32(reference);
    let got = if shape.len() == 1 { ours.flatten_all().unwrap() } else { ours.squeeze(0).unwrap() };
    assert_eq!(got.dims(), &shape[..], "{stage}: shape");
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let cos = cosine(&got, &want);
    let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / peak;
    eprintln!("{stage}: cos {cos:.9}, max diff {diff:.2e} of the peak");
    assert!(cos >= min_cos, "{stage}: cosine {cos} < {min_cos}");
    assert!(diff <= 1e-5, "{stage}: largest difference {diff:.2e} of the peak > 1e-5");
}

fn converted() -> PathBuf {
    let dir = fixtures();
    convert_to(&dir.join("model.safetensors"), Some(dir.join("config.yaml")), "pocket-tts")
}

/// The converter reads the YAML's architecture and embeds the tokenizer.
#[test]
fn converter_writes_the_config_and_the_tokenizer() {
    let gguf = converted();
    let file = ModelFile::open(&gguf).unwrap();
    assert_eq!(file.architecture().unwrap(), ARCH);
    let model = PocketTts::load(&file, &Device::Cpu).unwrap();
    let cfg = &model.config;
    assert_eq!((cfg.sample_rate, cfg.hop(), cfg.latent_dim, cfg.mimi_downsample_stride), (24000, 1920, 8, 16));
    assert_eq!(
        (cfg.mimi_dimension, cfg.mimi_context, cfg.flow_lm_d_model, cfg.flow_lm_dim_feedforward),
        (32, 20, 64, 128)
    );
    assert_eq!(
        (cfg.flow_lm_n_bins, cfg.flow_dim, cfg.flow_depth, cfg.flow_frequency_embedding_size),
        (126, 48, 2, 256)
    );
    assert_eq!((cfg.eos_threshold, cfg.fade_in_samples, cfg.min_frames_before_eos), (-4.0, 120, 6));
    assert!(cfg.flow_lm_insert_bos_before_voice && cfg.mimi_layer_scale);
    let embedded = file.string(TOKENIZER_JSON).unwrap();
    let original = std::fs::read_to_string(fixtures().join("tokenizer.json")).unwrap();
    assert_eq!(embedded, original);
    std::fs::remove_file(gguf).ok();
}

/// Mimi encode (audio → latents) stage by stage against `encode_to_latent`.
#[test]
fn mimi_encode_matches_reference() {
    let gguf = converted();
    let model = PocketTts::load(&ModelFile::open(&gguf).unwrap(), &Device::Cpu).unwrap();
    std::fs::remove_file(gguf).ok();
    let mimi = &model.mimi;
    let (_, samples) = load_f32("input.npy");
    let pcm = Tensor::from_slice(&samples, (1, 1, samples.len()), &Device::Cpu).unwrap();
    let padded = codec::nn::pad_to_multiple(&pcm, mimi.hop).unwrap();
    let x = mimi.encoder.forward(&padded).unwrap();
    assert_close("seanet_out", &x, "mimi_seanet_out.npy", 0.99999);
    let x = mimi.encoder_transformer.forward(&x).unwrap();
    assert_close("enc_transformer_out", &x, "mimi_enc_transformer_out.npy", 0.99999);
    let latent = mimi.encode(&pcm).unwrap();
    // The reference's latents are time first.
    assert_close("latent", &latent.transpose(1, 2).unwrap(), "mimi_latent.npy", 0.99999);
}

/// Mimi decode (latents → audio) stage by stage against `decode_from_latent`, one frame per call in the reference.
#[test]
fn mimi_decode_matches_reference() {
    let gguf = converted();
    let model = PocketTts::load(&ModelFile::open(&gguf).unwrap(), &Device::Cpu).unwrap();
    std::fs::remove_file(gguf).ok();
    let mimi = &model.mimi;
    let latent = reference("mimi_latent.npy").transpose(1, 2).unwrap().contiguous().unwrap();
    let x = mimi.upsample.forward(&mimi.output_proj.forward(&latent).unwrap()).unwrap();
    assert_close("upsampled", &x, "mimi_upsampled.npy", 0.99999);
    let x = mimi.decoder_transformer.forward(&x).unwrap();
    assert_close("dec_transformer_out", &x, "mimi_dec_transformer_out.npy", 0.99999);
    let audio = mimi.decode(&latent).unwrap();
    assert_close("decoded", &audio, "mimi_decoded.npy", 0.99999);
}

fn load_tokens(name: &str) -> Vec<u32> {
    let arr = codec::npy::read(&fixtures().join(name)).unwrap();
    arr.to_i64_vec().unwrap().into_iter().map(|t| u32::try_from(t).unwrap()).collect()
}

/// One Flow-LM step after a text prompt: the backbone output, the EOS logit and the LSD flow (1 and 4 steps, from
/// given noise and from zeros) against the package's.
#[test]
fn flow_lm_step_matches_reference() {
    let gguf = converted();
    let model = PocketTts::load(&ModelFile::open(&gguf).unwrap(), &Device::Cpu).unwrap();
    std::fs::remove_file(gguf).ok();
    let lm = &model.flow_lm;
    let mut state = Default::default();
    lm.prompt(&lm.text_embeddings(&load_tokens("step_tokens.npy")).unwrap(), &mut state).unwrap();
    let hidden = lm.step(None, &mut state).unwrap();
    assert_close("hidden", &hidden, "step_hidden.npy", 0.99999);
    let eos = lm.eos_logit(&hidden).unwrap();
    assert_close("eos logit", &eos, "step_eos_logit.npy", 0.9999);
    let x0 = reference("step_x0.npy");
    assert_close("flow 1 step", &lm.flow.lsd_decode(&hidden, &x0, 1).unwrap(), "step_flow_1.npy", 0.9999);
    assert_close("flow 4 steps", &lm.flow.lsd_decode(&hidden, &x0, 4).unwrap(), "step_flow_4.npy", 0.9999);
    let zeros = x0.zeros_like().unwrap();
    assert_close(
        "flow from zeros",
        &lm.flow.lsd_decode(&hidden, &zeros, 1).unwrap(),
        "step_flow_zero_noise.npy",
        0.9999,
    );
}
