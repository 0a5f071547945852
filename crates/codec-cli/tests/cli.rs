//! The `codec` binary as a user runs it: the happy paths on the reduced-config Mimi fixture, and every kind of bad
//! input giving one line on stderr that names the file and the problem, with a non-zero exit and no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use codec::npy;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mimi")
}

/// A scratch file under cargo's per-target temporary directory, reused by every run (nothing piles up in /tmp).
fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn codec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codec")).args(args).arg("--quiet").output().unwrap()
}

/// `codec convert SRC --config CONFIG -o OUT`, which must succeed.
fn convert_with_config(src: &Path, config: &Path, out: &Path) {
    let o = codec(&["convert", s(src), "--config", s(config), "-o", s(out)]);
    assert!(o.status.success(), "convert failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The hub-layout fixture converted once through the CLI.
fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let out = tmp("mimi.gguf");
        let o = codec(&["convert", s(&fixtures().join("hub")), "-o", s(&out)]);
        assert!(o.status.success(), "convert failed: {}", String::from_utf8_lossy(&o.stderr));
        out
    })
}

/// Asserts a failure: exit status 1, exactly one stderr line containing every `needles` entry, no panic.
fn assert_fails(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, got {:?}; stderr: {err}", o.status);
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "expected one line, got: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr {err:?} does not mention {n:?}");
    }
}

#[test]
fn encode_decode_roundtrip_match_reference() {
    let codes = tmp("codes.npy");
    let o = codec(&["encode", "-m", s(model()), s(&fixtures().join("input.wav")), "-o", s(&codes)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = npy::read(&codes).unwrap();
    let want = npy::read(&fixtures().join("codes.npy")).unwrap();
    assert!(matches!(got.data, npy::NpyData::I32(_)), "codes must be int32");
    assert_eq!(got.shape, want.shape);
    assert_eq!(got.to_i64_vec().unwrap(), want.to_i64_vec().unwrap());

    let nq3 = tmp("codes3.npy");
    let o = codec(&["encode", "-m", s(model()), s(&fixtures().join("input.wav")), "-o", s(&nq3), "--n-q", "3"]);
    assert!(o.status.success());
    let want3 = npy::read(&fixtures().join("codes_nq3.npy")).unwrap();
    assert_eq!(npy::read(&nq3).unwrap().to_i64_vec().unwrap(), want3.to_i64_vec().unwrap());

    // decode accepts the reference's int64 codes
    let wav = tmp("decoded.wav");
    let o = codec(&["decode", "-m", s(model()), s(&fixtures().join("codes.npy")), "-o", s(&wav)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let audio = codec::audio::read(&wav).unwrap();
    let want = npy::read(&fixtures().join("decoded.npy")).unwrap().to_f32_vec();
    let dot: f64 = audio.samples.iter().zip(&want).map(|(a, b)| *a as f64 * *b as f64).sum();
    let na: f64 = audio.samples.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    assert_eq!(audio.samples.len(), want.len());
    assert!(dot / (na * nb) > 0.9999, "decoded cos {}", dot / (na * nb));

    // roundtrip trims to the input length; --pcm16 writes 16-bit
    let input = npy::read(&fixtures().join("input_odd.npy")).unwrap().to_f32_vec();
    let odd_wav = tmp("odd.wav");
    codec::audio::write_wav(&odd_wav, &codec::Audio { sample_rate: 24000, samples: input.clone() }, false).unwrap();
    let out = tmp("rt.wav");
    let o = codec(&["roundtrip", "-m", s(model()), s(&odd_wav), "-o", s(&out), "--pcm16"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let spec = hound::WavReader::open(&out).unwrap().spec();
    assert_eq!(spec.bits_per_sample, 16);
    assert_eq!(codec::audio::read(&out).unwrap().samples.len(), input.len());
}

/// Release checkpoints through the CLI: convert (DAC's .pth; WavTokenizer's .ckpt with the YAML found beside it),
/// codes equal to the reference's, roundtrip output as long as the input.
#[test]
fn release_checkpoints() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    for (dir, checkpoint) in [("dac/24khz", "original/weights.pth"), ("wavtokenizer/frame40", "original/model.ckpt")] {
        let dir = fixtures.join(dir);
        let gguf = tmp(&format!("{}.gguf", checkpoint.replace('/', "_")));
        let o = codec(&["convert", s(&dir.join(checkpoint)), "-o", s(&gguf)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let codes = tmp("release_codes.npy");
        let o = codec(&["encode", "-m", s(&gguf), s(&dir.join("input.wav")), "-o", s(&codes)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want = npy::read(&dir.join("codes.npy")).unwrap().to_i64_vec().unwrap();
        assert_eq!(npy::read(&codes).unwrap().to_i64_vec().unwrap(), want, "{}", dir.display());
        let out = tmp("release_rt.wav");
        let o = codec(&["roundtrip", "-m", s(&gguf), s(&dir.join("input.wav")), "-o", s(&out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let input = codec::audio::read(&dir.join("input.wav")).unwrap();
        assert_eq!(codec::audio::read(&out).unwrap().samples.len(), input.samples.len());
    }
}

#[test]
fn info_describes_the_model() {
    let o = codec(&["info", s(model())]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "architecture:   mimi",
        "sample rate:    24000 Hz",
        "hop:            1920",
        "frame rate:     12.5 Hz",
        "max n_q:        8",
        "codebook size:  64",
        "parameters:",
        "file size:",
    ] {
        assert!(out.contains(want), "info output lacks {want:?}:\n{out}");
    }
}

#[test]
fn bad_arguments() {
    let src = fixtures().join("hub");
    assert_fails(
        &codec(&["convert", s(&src), "-o", s(&tmp("x.gguf")), "--arch", "nope"]),
        &["unknown architecture 'nope'"],
    );
    assert_fails(&codec(&["convert", s(&src), "-o", s(&tmp("x.gguf")), "--dtype", "q4"]), &["unknown dtype 'q4'"]);
    assert_fails(&codec(&["convert", "/nonexistent/dir", "-o", s(&tmp("x.gguf"))]), &["/nonexistent/dir"]);
    let input = fixtures().join("input.wav");
    assert_fails(
        &codec(&["encode", "-m", s(model()), s(&input), "-o", s(&tmp("c.npy")), "--n-q", "9"]),
        &["--n-q 9 exceeds the model's maximum of 8"],
    );
    assert_fails(&codec(&["roundtrip", "-m", s(model()), s(&input), "-o", s(&tmp("c.wav")), "--n-q", "0"]), &["--n-q"]);
    assert_fails(&codec(&["info", "not-a-file-nor-id"]), &["not-a-file-nor-id"]);
    assert_fails(
        &codec(&["encode", "-m", s(model()), s(&input), "-o", s(&tmp("c.npy")), "--precision", "fp8"]),
        &["--precision must be f32, bf16 or int8, not 'fp8'"],
    );
    assert_fails(
        &codec(&["encode", "-m", s(model()), s(&input), "-o", s(&tmp("c.npy")), "--threads", "0"]),
        &["--threads"],
    );
    let pth = tmp("garbage.pth");
    std::fs::write(&pth, b"not a zip").unwrap();
    assert_fails(
        &codec(&["convert", s(&pth), "-o", s(&tmp("x.gguf"))]),
        &["garbage.pth", "not a PyTorch zip checkpoint"],
    );
    let ckpt_dir = tmp("ckpt");
    std::fs::create_dir_all(&ckpt_dir).unwrap();
    let ckpt = ckpt_dir.join("model.ckpt");
    std::fs::write(&ckpt, b"not a zip").unwrap();
    assert_fails(&codec(&["convert", s(&ckpt), "-o", s(&tmp("x.gguf"))]), &["model.ckpt", "needs its YAML config"]);
}

#[test]
fn file_text_is_escaped() {
    let out = tmp("evil.gguf");
    let opts = codec::convert::ConvertOptions { name: Some("evil\u{1b}[31m\0name".into()), ..Default::default() };
    codec::convert::convert(&fixtures().join("hub"), &out, &opts).unwrap();
    let info = codec(&["info", s(&out)]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    assert!(!text.contains('\u{1b}') && !text.contains('\0'), "raw control bytes: {text:?}");
    assert!(text.contains("evil\\u{1b}[31m\\u{0}name"), "{text}");
}

/// Resource-minded arguments: an absurd thread count is clamped (not 10000 threads), zero runs is an error, a model
/// and a random one at once is an error; success says what was written.
#[test]
fn thread_and_run_counts() {
    let input = fixtures().join("input.wav");
    let out = Command::new(env!("CARGO_BIN_EXE_codec"))
        .args(["encode", "-m", s(model()), s(&input), "-o", s(&tmp("t.npy")), "--threads", "10000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--threads 10000 is more than"), "no clamping note: {err}");
    assert!(err.contains("wrote") && err.contains("frames"), "success says nothing: {err}");
    assert_fails(&codec(&["bench", "-m", s(model()), "--runs", "0", "--seconds", "0.1"]), &["--runs"]);
    assert_fails(&codec(&["bench", "-m", s(model()), "--arch", "mimi", "--random"]), &["not both"]);
    // A stream bench runs --runs streams and reports one: 0.4 s in 80 ms pushes is 5 of them each way.
    let o = codec(&["bench", "-m", s(model()), "--stream-ms", "80", "--runs", "2", "--seconds", "0.4"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.lines().next().is_some_and(|l| l.ends_with("best of 2")), "{text}");
    for way in ["encode: 5 pushes, latency p50", "decode: 5 pushes, latency p50"] {
        assert_eq!(text.matches(way).count(), 1, "{text}");
    }
    // Output paths are checked before any work.
    let codes = fixtures().join("codes.npy");
    assert_fails(&codec(&["decode", "-m", s(model()), s(&codes), "-o", s(&tmp("out.mp3"))]), &["out.mp3", ".wav"]);
    assert_fails(
        &codec(&["encode", "-m", s(model()), s(&input), "-o", "/nonexistent/dir/c.npy"]),
        &["/nonexistent/dir"],
    );
    assert_fails(&codec(&["encode", "-m", s(model()), s(&input), "-o", s(&tmp("codes.txt"))]), &["codes.txt", ".npy"]);
}

/// Samples beyond full scale are encoded as they are (as the references do), not silently: a note says so.
#[test]
fn loud_audio_is_encoded_with_a_note() {
    let loud = tmp("loud.wav");
    let samples: Vec<f32> = (0..4800).map(|i| 3.0 * (i as f32 * 0.05).sin()).collect();
    codec::audio::write_wav(&loud, &codec::Audio { sample_rate: 24000, samples }, false).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_codec"))
        .args(["encode", "-m", s(model()), s(&loud), "-o", s(&tmp("loud.npy"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("loud.wav peaks at 3.000, beyond full scale"), "{err}");
}

/// `--stream-ms` runs through the streaming API with the same results: codes identical, audio equal.
#[test]
fn streaming_flag_gives_the_same_output() {
    let input = fixtures().join("input.wav");
    let (plain, streamed) = (tmp("plain.npy"), tmp("streamed.npy"));
    let o = codec(&["encode", "-m", s(model()), s(&input), "-o", s(&plain)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for ms in ["1", "80", "333.3", "100000"] {
        let o = codec(&["encode", "-m", s(model()), s(&input), "-o", s(&streamed), "--stream-ms", ms]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (a, b) = (npy::read(&plain).unwrap(), npy::read(&streamed).unwrap());
        assert_eq!((&a.shape, a.to_i64_vec().unwrap()), (&b.shape, b.to_i64_vec().unwrap()), "--stream-ms {ms}");
    }
    let (wav, wav_streamed) = (tmp("plain.wav"), tmp("streamed.wav"));
    assert!(codec(&["decode", "-m", s(model()), s(&plain), "-o", s(&wav)]).status.success());
    for (command, src) in [("decode", &plain), ("roundtrip", &input)] {
        let o = codec(&[command, "-m", s(model()), s(src), "-o", s(&wav_streamed), "--stream-ms", "80"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (a, b) = (codec::audio::read(&wav).unwrap().samples, codec::audio::read(&wav_streamed).unwrap().samples);
        let b = if command == "roundtrip" { b } else { b[..a.len().min(b.len())].to_vec() };
        let n = a.len().min(b.len());
        let dot: f64 = a[..n].iter().zip(&b[..n]).map(|(x, y)| *x as f64 * *y as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(dot / (norm(&a[..n]) * norm(&b[..n])) >= 0.99999, "{command}");
        if command == "decode" {
            assert_eq!(a.len(), b.len());
        }
    }
    let o = codec(&["encode", "-m", s(model()), s(&input), "-o", s(&streamed), "--stream-ms", "0"]);
    assert_fails(&o, &["--stream-ms"]);
}

/// WavTokenizer's decoder cannot stream: one clear line and exit 1, no output file.
#[test]
fn wavtokenizer_decode_does_not_stream() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wavtokenizer/frame75");
    let gguf = tmp("wt75.gguf");
    convert_with_config(&dir.join("original/model.ckpt"), &dir.join("original/config.yaml"), &gguf);
    let out = tmp("wt-stream.wav");
    std::fs::remove_file(&out).ok();
    let o = codec(&["decode", "-m", s(&gguf), s(&dir.join("codes.npy")), "-o", s(&out), "--stream-ms", "80"]);
    assert_fails(&o, &["cannot stream", "attention"]);
    assert!(!out.exists(), "a failed decode left {}", out.display());
    // Without the flag it decodes (in one pass), and encode streams.
    let o = codec(&["decode", "-m", s(&gguf), s(&dir.join("codes.npy")), "-o", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let codes = tmp("wt-stream.npy");
    let o = codec(&["encode", "-m", s(&gguf), s(&dir.join("input.wav")), "-o", s(&codes), "--stream-ms", "80"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = npy::read(&dir.join("codes.npy")).unwrap().to_i64_vec().unwrap();
    assert_eq!(npy::read(&codes).unwrap().to_i64_vec().unwrap(), want);
}

/// Several inputs: one `<stem>.npy` / `<stem>.wav` each in the output directory (created), in batches; a bad file
/// is one error line naming it while the others complete (exit 1 at the end); clashing stems, a file-like `-o`,
/// `--batch-size 0` and `--stream-ms` are errors before any work.
#[test]
fn several_inputs_go_to_a_directory() {
    let dir = tmp("many");
    std::fs::remove_dir_all(&dir).ok();
    let inputs = tmp("many-inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let (speech, odd, bad) = (inputs.join("speech.wav"), inputs.join("odd.take.wav"), inputs.join("bad.wav"));
    std::fs::copy(fixtures().join("input.wav"), &speech).unwrap();
    let samples = npy::read(&fixtures().join("input_odd.npy")).unwrap().to_f32_vec();
    codec::audio::write_wav(&odd, &codec::Audio { sample_rate: 24000, samples }, false).unwrap();
    std::fs::write(&bad, b"RIFF but not audio").unwrap();

    let codes = dir.join("codes");
    let o = codec(&["encode", "-m", s(model()), s(&speech), s(&bad), s(&odd), "-o", s(&codes), "--batch-size", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with(&format!("error: {}: ", s(&bad))), "{err}");
    assert_eq!(lines[1], "error: 1 of 3 files failed (see above)");
    assert!(!codes.join("bad.npy").exists());
    for (file, want) in [("speech.npy", "codes.npy"), ("odd.take.npy", "codes_odd.npy")] {
        let (got, want) = (npy::read(&codes.join(file)).unwrap(), npy::read(&fixtures().join(want)).unwrap());
        assert_eq!((&got.shape, got.to_i64_vec().unwrap()), (&want.shape, want.to_i64_vec().unwrap()), "{file}");
    }

    let wavs = dir.join("wavs");
    let (a, b) = (codes.join("speech.npy"), codes.join("odd.take.npy"));
    let o = codec(&["decode", "-m", s(model()), s(&a), s(&b), "-o", s(&wavs)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (file, want) in [("speech.wav", "decoded.npy"), ("odd.take.wav", "decoded_odd.npy")] {
        let got = codec::audio::read(&wavs.join(file)).unwrap().samples;
        let want = npy::read(&fixtures().join(want)).unwrap().to_f32_vec();
        assert_eq!(got.len(), want.len(), "{file}");
        let dot: f64 = got.iter().zip(&want).map(|(x, y)| *x as f64 * *y as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(dot / (norm(&got) * norm(&want)) > 0.9999, "{file}");
    }

    // One input and an existing directory: <stem>.npy in it.
    let o = codec(&["encode", "-m", s(model()), s(&speech), "-o", s(&wavs)]);
    assert!(o.status.success() && wavs.join("speech.npy").exists(), "{}", String::from_utf8_lossy(&o.stderr));

    let clash = dir.join("clash");
    assert_fails(
        &codec(&["encode", "-m", s(model()), s(&speech), s(&inputs.join("speech.flac")), "-o", s(&clash)]),
        &["speech.flac", "speech.wav", "would both be written to"],
    );
    assert!(!clash.exists(), "a refused run created its directory");
    let two = [s(&speech), s(&odd)];
    for (extra, needle) in [
        (vec!["-o", s(&dir.join("codes.npy"))], "names a directory, not a .npy file"),
        (vec!["-o", s(&speech)], "is not a directory"),
        (vec!["-o", s(&clash), "--batch-size", "0"], "--batch-size must be at least 1"),
        (vec!["-o", s(&clash), "--stream-ms", "80"], "--stream-ms takes one input file"),
    ] {
        let args: Vec<&str> = ["encode", "-m", s(model()), two[0], two[1]].into_iter().chain(extra).collect();
        assert_fails(&codec(&args), &[needle]);
    }
}

/// `codec convert` on the Pocket TTS fixture (model.safetensors + config.yaml, tokenizer.json beside), then `codec
/// tts` with the fixture's voice at temperature 0: the package's speech, sample for sample in length; `codec info`
/// describes it; empty text and an unreadable voice fail with one line.
#[test]
fn tts_speaks_like_the_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pocket_tts");
    let model = tmp("pocket-tts.gguf");
    convert_with_config(&dir.join("model.safetensors"), &dir.join("config.yaml"), &model);
    let out = tmp("speech.wav");
    let text = "Hello there, how are you today?";
    let voice = dir.join("voice.wav");
    let o = codec(&["tts", "-m", s(&model), text, "--voice", s(&voice), "--temperature", "0", "-o", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<f32> = hound::WavReader::open(&out).unwrap().samples::<f32>().map(|x| x.unwrap()).collect();
    let want = npy::read(&dir.join("voice_gen_audio.npy")).unwrap().to_f32_vec();
    assert_eq!(got.len(), want.len(), "speech length");
    let dot: f64 = got.iter().zip(&want).map(|(a, b)| *a as f64 * *b as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cos = dot / (norm(&got) * norm(&want));
    assert!(cos >= 0.9999, "speech cosine {cos}");

    // --stream writes the same speech frame by frame.
    let streamed = tmp("speech-streamed.wav");
    let o = codec(&[
        "tts",
        "-m",
        s(&model),
        text,
        "--voice",
        s(&voice),
        "--temperature",
        "0",
        "--stream",
        "-o",
        s(&streamed),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again: Vec<f32> = hound::WavReader::open(&streamed).unwrap().samples::<f32>().map(|x| x.unwrap()).collect();
    assert_eq!(again, got, "--stream changed the speech");

    let o = codec(&["info", s(&model)]);
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && info.contains("pocket-tts") && info.contains("text-to-speech"), "{info}");
    assert_fails(&codec(&["tts", "-m", s(&model), " ", "-o", s(&out)]), &["text is empty"]);
    let missing = tmp("no-such-voice.wav");
    assert_fails(
        &codec(&["tts", "-m", s(&model), text, "--voice", s(&missing), "-o", s(&out)]),
        &["no-such-voice.wav"],
    );
}

/// `codec tts` on bad input (README, Pocket TTS): text with nothing to speak and a silent or non-audio voice fail
/// with one line; characters outside the vocabulary are spoken as the unknown piece with a warning naming them; a
/// 10-minute voice is cut to its first 30 s with a note.
#[test]
fn tts_bad_inputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pocket_tts");
    let model = tmp("pocket-tts-bad-inputs.gguf");
    convert_with_config(&dir.join("model.safetensors"), &dir.join("config.yaml"), &model);
    let out = tmp("bad-inputs-speech.wav");
    let tts = |text: &str, extra: &[&str]| {
        let mut args = vec!["tts", "-m", s(&model), text, "--temperature", "0", "-o", s(&out)];
        args.extend(extra);
        codec(&args)
    };
    assert_fails(&tts("", &[]), &["the text is empty"]);
    assert_fails(&tts(" \n\t ", &[]), &["the text is empty"]);
    assert_fails(&tts("?! ... --", &[]), &["nothing to speak", "no letters or digits"]);
    // The fixture's vocabulary is ASCII: Cyrillic alone has no piece; the first letter is capitalised first.
    assert_fails(&tts("жук", &[]), &["none of the text's letters are in the model's vocabulary", "'Ж', 'у', 'к'"]);

    let write = |name: &str, rate: u32, samples: &[f32]| {
        let path = tmp(name);
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        samples.iter().for_each(|x| w.write_sample((x * 32767.0) as i16).unwrap());
        w.finalize().unwrap();
        path
    };
    let silent = write("silent-voice.wav", 24000, &vec![0.0; 24000]);
    assert_fails(&tts("Hello there.", &["--voice", s(&silent)]), &["silent-voice.wav", "the voice is silent"]);
    // −80 dBFS hum: below the −60 dBFS floor, so silent too.
    let hum: Vec<f32> = (0..24000).map(|i| 1e-4 * (i as f32 * 0.1).sin()).collect();
    let hum = write("hum-voice.wav", 24000, &hum);
    assert_fails(&tts("Hello there.", &["--voice", s(&hum)]), &["hum-voice.wav", "the voice is silent"]);
    let not_audio = tmp("not-audio-voice.wav");
    std::fs::write(&not_audio, "this is not audio\n").unwrap();
    assert_fails(
        &tts("Hello there.", &["--voice", s(&not_audio)]),
        &["not-audio-voice.wav", "not a supported audio file"],
    );

    // Without --quiet, to see the warning and the note; both runs succeed.
    let loud = |text: &str, extra: &[&str]| {
        let mut args = vec!["tts", "-m", s(&model), text, "--temperature", "0", "-o", s(&out)];
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_codec")).args(&args).output().unwrap()
    };
    let o = loud("Héllo wörld €", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: the model's vocabulary has no 'é', 'ö', '€'"), "{err}");
    let spoken = hound::WavReader::open(&out).unwrap().len();
    assert!(spoken >= 1920, "{spoken} samples");
    // Ten minutes of noise at 8 kHz (9.6 MB): only the first 30 s are read.
    let mut state = 1u32;
    let noise: Vec<f32> = (0..8000 * 600)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 * 0.2 - 0.1
        })
        .collect();
    let long = write("ten-minute-voice.wav", 8000, &noise);
    let o = loud("Hello there.", &["--voice", s(&long)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("ten-minute-voice.wav: using the first 30 s of 600.0 s as the voice"), "{err}");
    std::fs::remove_file(&long).ok();
}
