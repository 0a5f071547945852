//! `--precision bf16` (its own test binary: the precision is process-wide). On the committed reduced fixtures of
//! every architecture, bf16 products must stay close to the f32 reference — decoded audio cos ≥ 0.999 — and switching
//! back to f32 must give the exact codes again. Skipped, with a note, on CPUs without AVX-512 BF16.

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
fn bf16_stays_close_and_f32_stays_exact() {
    if !codec::nn::gemm::bf16_supported() {
        eprintln!("this CPU has no AVX-512 BF16: skipped");
        return;
    }
    for (dir, src, config, sample_rate) in models() {
        let gguf = convert_to(&src, config, "precision");
        let codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
        let (_, samples) = load_f32(&dir.join("input.npy"));
        let input = Audio { sample_rate, samples };
        let want = load_codes(&dir.join("codes.npy"));
        let (_, reference) = load_f32(&dir.join("decoded.npy"));

        assert!(codec::set_precision(Precision::Bf16));
        let codes = codec.encode(&input, None).unwrap();
        let audio = codec.decode(&want).unwrap();
        let cos = cosine(&audio.samples[..reference.len()], &reference);
        let mismatch = mismatch_fraction(&codes, &want);
        eprintln!("{}: bf16 codes differ {:.1} %, decoded cos {cos:.6}", dir.display(), mismatch * 100.0);
        assert!(cos >= 0.999, "{}: bf16 decoded cos {cos}", dir.display());
        assert!(mismatch < 0.5, "{}: bf16 changed {:.1} % of codes", dir.display(), mismatch * 100.0);

        codec::set_precision(Precision::F32);
        assert_eq!(mismatch_fraction(&codec.encode(&input, None).unwrap(), &want), 0.0, "{}", dir.display());
        std::fs::remove_file(gguf).ok();
    }
}
