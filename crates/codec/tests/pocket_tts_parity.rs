//! Pocket TTS against the pocket-tts package (4.0.1) on the committed reduced-config fixtures
//! (`tests/fixtures/pocket_tts`, made by `scripts/make_pocket_tts_fixtures.py`): the checkpoint is converted with its
//! YAML and tokenizer.json, then every stage of the Mimi variant must match by cosine similarity.

use std::path::PathBuf;

use candle_core::{Device, Module, Tensor};
use codec::gguf::ModelFile;
use codec::models::pocket_tts::{PocketTts, Sampling, Speech, ARCH, TOKENIZER_JSON};

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
    common::assert_close_to(stage, ours, load_f32(reference), min_cos, Some(1e-5));
}

fn converted() -> PathBuf {
    let dir = fixtures();
    convert_to(&dir.join("model.safetensors"), Some(dir.join("config.yaml")), "pocket-tts")
}

/// The fixture converted and loaded (the file removed once read).
fn loaded() -> PocketTts {
    let gguf = converted();
    let model = PocketTts::load(&ModelFile::open(&gguf).unwrap(), &Device::Cpu).unwrap();
    std::fs::remove_file(gguf).ok();
    model
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
    let model = loaded();
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
    let model = loaded();
    let mimi = &model.mimi;
    let latent = reference("mimi_latent.npy").transpose(1, 2).unwrap().contiguous().unwrap();
    let x = mimi.upsample.forward(&mimi.output_proj.forward(&latent).unwrap()).unwrap();
    assert_close("upsampled", &x, "mimi_upsampled.npy", 0.99999);
    let x = mimi.decoder_transformer.forward(&x).unwrap();
    assert_close("dec_transformer_out", &x, "mimi_dec_transformer_out.npy", 0.99999);
    let audio = mimi.decode(&latent).unwrap();
    assert_close("decoded", &audio, "mimi_decoded.npy", 0.99999);
}

/// Temperature 0 (no noise), one LSD step: the reference generations' settings.
fn greedy(frames_after_eos: usize) -> Sampling {
    Sampling { frames_after_eos, temperature: 0.0, steps: 1 }
}

fn load_tokens(name: &str) -> Vec<u32> {
    let arr = codec::npy::read(&fixtures().join(name)).unwrap();
    arr.to_i64_vec().unwrap().into_iter().map(|t| u32::try_from(t).unwrap()).collect()
}

/// One Flow-LM step after a text prompt: the backbone output, the EOS logit and the LSD flow (1 and 4 steps, from
/// given noise and from zeros) against the package's.
#[test]
fn flow_lm_step_matches_reference() {
    let model = loaded();
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

/// `latents` (1, F, D) against a reference (F, D): the same length, each of the first `exact_frames` frames with
/// cosine ≥ 0.999, every frame ≥ 0.98. The autoregression feeds each latent back in, so f32 rounding differences
/// grow from frame to frame (the fixture's generator keeps the loop gain low so they grow slowly: all 42 frames of
/// the no-voice run stay ≥ 0.999, the last ones at 0.9991); the criterion is the first 20 frames.
fn assert_frames_close(what: &str, latents: &Tensor, reference: &str, exact_frames: usize) {
    let (shape, want) = load_f32(reference);
    let (frames, dim) = (shape[0], shape[1]);
    assert_eq!(latents.dims(), &[1, frames, dim], "{what}: frames generated");
    let got = latents.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let cos: Vec<f64> =
        (0..frames).map(|f| cosine(&got[f * dim..(f + 1) * dim], &want[f * dim..(f + 1) * dim])).collect();
    let shown: Vec<String> = cos.iter().map(|c| format!("{c:.6}")).collect();
    eprintln!("{what}: {frames} frames, cos per frame {}", shown.join(" "));
    assert!(frames >= exact_frames, "{what}: only {frames} frames");
    for (f, c) in cos.iter().enumerate() {
        let min = if f < exact_frames { 0.999 } else { 0.98 };
        assert!(*c >= min, "{what}: frame {f} has cosine {c} < {min}");
    }
}

/// Generated audio (1, 1, S) against the reference's: the same length; the audio of the first `exact_frames` frames
/// (where the latents agree to f32 rounding) with cosine ≥ 0.99999 and no difference above 1e-3 of the peak; the
/// whole with cosine ≥ 0.9999.
fn assert_audio_close(what: &str, audio: &Tensor, reference: &str, exact_frames: usize, hop: usize) {
    let (shape, want) = load_f32(reference);
    let got = audio.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got.len(), shape[0], "{what}: samples");
    let n = exact_frames * hop;
    let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got[..n].iter().zip(&want[..n]).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / peak;
    let (head, whole) = (cosine(&got[..n], &want[..n]), cosine(&got, &want));
    eprintln!(
        "{what}: first {exact_frames} frames cos {head:.9} (max diff {diff:.2e} of the peak), all cos {whole:.9}"
    );
    assert!(head >= 0.99999 && diff <= 1e-3, "{what}: the first {exact_frames} frames' audio differs");
    assert!(whole >= 0.9999, "{what}: cosine {whole}");
}

/// Whole generations at temperature 0 (no noise): every frame's latent, the length EOS gives, and the audio; without
/// a voice and with one.
#[test]
fn generation_at_temperature_zero_matches_reference() {
    let model = loaded();
    // Both texts have more than 4 words: the package decodes 1 + 2 frames after EOS.
    let frames_after_eos = 3;

    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let latents = model
        .generate_latents(&load_tokens("gen_tokens.npy"), &Default::default(), greedy(frames_after_eos), &mut rng)
        .unwrap();
    assert_frames_close("no voice", &latents, "gen_latents.npy", 20);
    let hop = model.config.hop();
    assert_audio_close("no voice audio", &model.decode_latents(&latents).unwrap(), "gen_audio.npy", 20, hop);

    let (_, voice) = load_f32("voice_cut.npy");
    let pcm = Tensor::from_slice(&voice, (1, 1, voice.len()), &Device::Cpu).unwrap();
    let voice_latents = model.mimi.encode(&pcm).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let conditioning = model.flow_lm.voice_prompt(&voice_latents).unwrap().narrow(1, 1, voice_latents.dim(1).unwrap());
    assert_close("voice conditioning", &conditioning.unwrap(), "voice_conditioning.npy", 0.99999);
    let state = model.voice_state(&pcm).unwrap();
    let voice_tokens = load_tokens("voice_gen_tokens.npy");
    let latents = model.generate_latents(&voice_tokens, &state, greedy(frames_after_eos), &mut rng).unwrap();
    assert_frames_close("voice", &latents, "voice_gen_latents.npy", 20);
    assert_audio_close("voice audio", &model.decode_latents(&latents).unwrap(), "voice_gen_audio.npy", 20, hop);
}

/// Text preparation and chunking (`split_into_best_sentences`, `prepare_text_prompt`) and the tokenizer (the
/// `tokenizers` crate on the embedded tokenizer.json) against the package: the chunk texts, their token ids and
/// frames after EOS, for texts that exercise every rule (capitalisation, the final period after closing quotes, weak
/// punctuation, character rewrites, decimal points, chunks over 50 pieces, clause splits).
#[test]
fn text_chunks_match_reference() {
    let model = loaded();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("text_chunks.json")).unwrap()).unwrap();
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = model.text_chunks(text).unwrap();
        let want = case["chunks"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{text:?}: chunks {got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.text, w["text"].as_str().unwrap(), "{text:?}");
            let tokens: Vec<u32> = w["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            assert_eq!(g.tokens, tokens, "{text:?}: tokens of {:?}", g.text);
            assert_eq!(g.frames_after_eos as u64, w["frames_after_eos"].as_u64().unwrap(), "{text:?}");
        }
    }
    assert_eq!(
        model.text_chunks("Hello world. The quick brown fox jumps over the lazy dog.").unwrap()[0].tokens,
        load_tokens("gen_tokens.npy")
    );
    assert!(model.text_chunks("  \n ").is_err(), "empty text");
}

/// The whole path from a text and a voice WAV, as `codec tts` runs it: the WAV read (16-bit), its trailing silence
/// cut (`end_on_pause`), the text chunked and tokenized, generated at temperature 0 and decoded.
#[test]
fn synthesize_from_text_and_voice_wav_matches_reference() {
    let model = loaded();
    let voice = codec::audio::read(&fixtures().join("voice.wav")).unwrap();
    assert_eq!(voice.sample_rate, 24000);
    let cut = model.config.end_on_pause(&voice.samples);
    let (_, want) = load_f32("voice_cut.npy");
    assert_eq!(cut.len(), want.len(), "end_on_pause: length");
    let cos = cosine(&cut, &want);
    assert!(cos >= 0.99999, "end_on_pause: cosine {cos}");
    let state = model.voice_state_from_audio(&voice.samples).unwrap();
    let audio = model
        .synthesize("Hello there, how are you today?", Some(&state), Speech { temperature: 0.0, steps: 1, seed: 0 })
        .unwrap();
    let n = audio.len();
    assert_audio_close(
        "voice speech",
        &Tensor::from_vec(audio, (1, 1, n), &Device::Cpu).unwrap(),
        "voice_gen_audio.npy",
        20,
        1920,
    );
    let audio = model
        .synthesize(
            "Hello world. The quick brown fox jumps over the lazy dog.",
            None,
            Speech { temperature: 0.0, steps: 1, seed: 0 },
        )
        .unwrap();
    let n = audio.len();
    assert_audio_close("speech", &Tensor::from_vec(audio, (1, 1, n), &Device::Cpu).unwrap(), "gen_audio.npy", 20, 1920);
    // Noise: the same seed gives the same speech, another seed other speech.
    let a = model.synthesize("Hello world.", None, Speech { temperature: 0.7, steps: 1, seed: 1 }).unwrap();
    let b = model.synthesize("Hello world.", None, Speech { temperature: 0.7, steps: 1, seed: 1 }).unwrap();
    let c = model.synthesize("Hello world.", None, Speech { temperature: 0.7, steps: 1, seed: 2 }).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(model.synthesize("", None, Speech { temperature: 0.0, steps: 1, seed: 0 }).is_err());
}

/// Bad input through the library: nothing to speak, letters outside the vocabulary, a silent voice, a long voice
/// file (only its first `voice_max_seconds` read).
#[test]
fn bad_input_is_refused_or_reported() {
    let model = loaded();
    let message = |r: codec::Result<Vec<codec::models::pocket_tts::TextChunk>>| r.unwrap_err().to_string();
    assert_eq!(message(model.text_chunks(" \t ")), "the text is empty");
    assert!(message(model.text_chunks("... ?!")).contains("nothing to speak"));
    assert!(message(model.text_chunks("жук")).contains("none of the text's letters are in the model's vocabulary"));
    assert!(model.synthesize("?", None, Speech { temperature: 0.0, steps: 1, seed: 0 }).is_err());
    // The fixture's vocabulary is ASCII; the reference reads these as `<unk>` (id 0) and so do we.
    assert_eq!(model.unknown_characters("Héllo wörld € and é").unwrap(), vec!['é', 'ö', '€']);
    assert_eq!(model.unknown_characters("Hello world.").unwrap(), Vec::<char>::new());
    let chunk = &model.text_chunks("Héllo").unwrap()[0];
    assert!(chunk.tokens.contains(&0), "{:?}", chunk.tokens);

    let err = model.voice_state_from_audio(&vec![0.0; 24000]).unwrap_err().to_string();
    assert!(err.contains("the voice is silent"), "{err}");
    let quiet: Vec<f32> = (0..24000).map(|i| 1e-4 * (i as f32 * 0.1).sin()).collect();
    assert!(model.voice_state_from_audio(&quiet).is_err(), "−83 dBFS is silence");
    let soft: Vec<f32> = quiet.iter().map(|x| x * 100.0).collect();
    assert!(model.voice_state_from_audio(&soft).is_ok(), "−43 dBFS is a voice");
    assert!(model.voice_state_from_audio(&[]).is_err());

    // 40 s of a tone in a file: 30 s read, the rest reported.
    let path = std::env::temp_dir().join(format!("pocket-tts-long-voice-{}.wav", std::process::id()));
    let long: Vec<f32> = (0..24000 * 40).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
    codec::audio::write_wav(&path, &codec::Audio { sample_rate: 24000, samples: long.clone() }, false).unwrap();
    let voice = model.read_voice(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(voice.samples.len(), 24000 * 30);
    assert!(voice.truncated);
    assert_eq!(voice.file_seconds, Some(40.0));
    assert_eq!(voice.samples[..100], long[..100]);
}
