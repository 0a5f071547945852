//! Codes validation before decode, on the tiny fixture models (converted once per process from tests/fixtures).
//! First byte: model (`% 3`: Mimi, DAC 16 kHz, WavTokenizer 40 tokens/s) and mode (`/ 3 % 2`):
//! - 0: the rest is a `.npy` read by `npy::read_codes` (the CLI's decode path), then decoded;
//! - 1: raw `Codes` given straight to `Codec::decode` (which must check them itself): `n_q` = byte 1,
//!   `n_frames` = byte 2, values = the rest as u16 LE (so lengths and ranges may not match).
//!
//! Decodes are capped at `MAX_FRAMES` frames so one exec stays fast.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use codec::convert::{convert, ConvertOptions, StorageDtype};
use codec::{Codec, Codes};
use libfuzzer_sys::fuzz_target;

const MAX_FRAMES: usize = 32;

fn models() -> &'static [Codec; 3] {
    static MODELS: OnceLock<[Codec; 3]> = OnceLock::new();
    MODELS.get_or_init(|| {
        let fx = codec_fuzz::fixtures();
        // Each in another storage type, so decode runs over all three (and `scripts/fuzz.sh` seeds the gguf target
        // with these files).
        let sources: [(&str, StorageDtype, PathBuf, Option<PathBuf>); 3] = [
            ("mimi", StorageDtype::F16, fx.join("mimi/hub"), None),
            ("dac", StorageDtype::Q8_0, fx.join("dac/16khz/hub"), None),
            (
                "wavtokenizer",
                StorageDtype::F32,
                fx.join("wavtokenizer/frame40/original/model.ckpt"),
                Some(fx.join("wavtokenizer/frame40/original/config.yaml")),
            ),
        ];
        sources.map(|(name, dtype, src, config)| {
            let out = codec_fuzz::scratch().join(format!("codes-{name}.gguf"));
            convert(&src, &out, &ConvertOptions { config, dtype, ..Default::default() })
                .unwrap_or_else(|e| panic!("cannot convert the fixture {}: {e}", src.display()));
            codec_fuzz::load_model(&out).unwrap_or_else(|e| panic!("cannot load {}: {e}", out.display()))
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let codec = &models()[pick as usize % 3];
    let codes = if (pick / 3) % 2 == 0 {
        let path = codec_fuzz::scratch().join("codes.npy");
        codec_fuzz::write(&path, rest);
        match codec::npy::read_codes(&path, codec.max_n_q(), codec.codebook_size()) {
            Ok(codes) => codes,
            Err(_) => return,
        }
    } else {
        let [n_q, n_frames, values @ ..] = rest else { return };
        let data = values.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect();
        Codes { n_q: *n_q as usize, n_frames: *n_frames as usize, data }
    };
    if codes.n_frames > MAX_FRAMES {
        return;
    }
    let _ = codec.decode(&codes);
});
