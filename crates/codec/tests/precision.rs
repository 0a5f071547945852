//! The fast modes, `--precision bf16` and `int8` (their own test binary: the precision is process-wide, so each
//! test holds [`PRECISION`]). On the committed reduced fixtures of every architecture, their products must stay close
//! to the f32 reference — decoded audio cos ≥ 0.999 — streams must give what one pass gives in the same mode, and
//! switching back to f32 must give the exact codes again. Each is skipped, with a note, on CPUs without its
//! instructions (bf16: AVX-512 BF16 or AVX2 + FMA; int8: AVX-512 VNNI).

use std::path::PathBuf;
use std::sync::Mutex;

use codec::{Audio, Codec, DeviceKind, Precision};

mod common;
use common::{check_cuts, convert_to, cosine, dac, fixture_dir, load_codes, load_f32, mimi, mismatch_fraction};

/// Held by each test while it sets the process's precision.
static PRECISION: Mutex<()> = Mutex::new(());

/// (fixture dir, model source, config, sample rate).
fn models() -> Vec<(PathBuf, PathBuf, Option<PathBuf>, u32)> {
    let mimi = fixture_dir("mimi", "MIMI_FIXTURES");
    let dac = fixture_dir("dac", "DAC_FIXTURES").join("44khz");
    let wt = fixture_dir("wavtokenizer", "WAVTOKENIZER_FIXTURES").join("frame75");
    vec![
        (mimi.clone(), mimi.join("hub"), None, 24000),
        (dac.clone(), dac.join("hub"), None, 44100),
        (wt.clone(), wt.join("original/model.ckpt"), Some(wt.join("original/config.yaml")), 24000),
    ]
}

#[test]
fn fast_modes_stay_close_and_f32_stays_exact() {
    let _precision = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    for (dir, src, config, sample_rate) in models() {
        let gguf = convert_to(&src, config, "precision");
        let codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
        let (_, samples) = load_f32(&dir.join("input.npy"));
        let input = Audio { sample_rate, samples };
        let want = load_codes(&dir.join("codes.npy"));
        let (_, reference) = load_f32(&dir.join("decoded.npy"));

        let mut decoded = Vec::new();
        for precision in [Precision::Bf16, Precision::Int8] {
            if !codec::set_precision(precision) {
                eprintln!("this CPU cannot run {precision:?}: skipped");
                continue;
            }
            let codes = codec.encode(&input, None).unwrap();
            let audio = codec.decode(&want).unwrap();
            let cos = cosine(&audio.samples[..reference.len()], &reference);
            let mismatch = mismatch_fraction(&codes, &want);
            eprintln!("{}: {precision:?} codes differ {:.1} %, decoded cos {cos:.6}", dir.display(), mismatch * 100.0);
            assert!(cos >= 0.999, "{}: {precision:?} decoded cos {cos}", dir.display());
            assert!(mismatch < 0.5, "{}: {precision:?} changed {:.1} % of codes", dir.display(), mismatch * 100.0);
            decoded.push(audio.samples);
        }
        // int8 changes the products of the models with linear layers (Mimi's transformers, WavTokenizer's ConvNeXt
        // blocks), so it is not bf16 under another name there; DAC has none.
        if decoded.len() == 2 && !dir.ends_with("44khz") {
            assert_ne!(decoded[0], decoded[1], "{}: int8 decoded exactly as bf16", dir.display());
        }

        codec::set_precision(Precision::F32);
        assert_eq!(mismatch_fraction(&codec.encode(&input, None).unwrap(), &want), 0.0, "{}", dir.display());
        std::fs::remove_file(gguf).ok();
    }
}

/// In bf16, a stream's products are a few rows each — on AVX2 the kernel that reads the weights as bf16 pairs —
/// where one pass's are wide: every cut still gives one pass's codes, and its audio (cos ≥ 0.99999).
#[test]
fn bf16_streams_like_one_pass() {
    let _precision = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    if !codec::set_precision(Precision::Bf16) {
        codec::set_precision(Precision::F32);
        eprintln!("this CPU cannot run bf16: skipped");
        return;
    }
    let (codec, audio) = mimi();
    let hop = codec.hop();
    check_cuts("mimi bf16", &codec, &audio, &[1919, hop, 24000], &[1, 7]);
    let (codec, audio) = dac("16khz");
    check_cuts("dac 16 kHz bf16", &codec, &audio, &[997, 16000], &[3]);
    codec::set_precision(Precision::F32);
}
