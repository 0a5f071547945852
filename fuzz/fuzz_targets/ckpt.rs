//! WavTokenizer's Lightning `.ckpt` (zip + pickle) with its LightningCLI YAML beside it. Input:
//! `[len: u16 LE][config.yaml: len bytes][model.ckpt: rest]` (see `codec_fuzz::split`). The converted GGUF is loaded
//! back through the normal path.
#![no_main]

use codec::convert::{convert, ConvertOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (yaml, ckpt) = codec_fuzz::split(data);
    let dir = codec_fuzz::fresh_dir("ckpt");
    let src = dir.join("model.ckpt");
    codec_fuzz::write(&dir.join("config.yaml"), yaml);
    codec_fuzz::write(&src, ckpt);
    let out = dir.join("out.gguf");
    if convert(&src, &out, &ConvertOptions::default()).is_ok() {
        let _ = codec_fuzz::load_model(&out);
    }
});
