//! The fast modes, `--precision bf16` and `int8` (their own test binary: the precision is process-wide). On the
//! committed reduced fixtures of every architecture, their products must stay close to the f32 reference — decoded
//! audio cos ≥ 0.999 — and switching back to f32 must give the exact codes again. Each is skipped, with a note, on
//! CPUs without its instructions (AVX-512 BF16, AVX-512 VNNI).

use std::path::PathBuf;

use codec::{Audio, Codec, DeviceKind, Precision};

mod common;
use common::{convert_to, cosine, fixture_dir, load_codes, load_f32, mismatch_fraction};

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
