//! The hub layout: a directory with `config.json` and `model.safetensors` (Mimi and DAC converters). Input:
//! `[len: u16 LE][config.json: len bytes][model.safetensors: rest]`; an empty config part means no config.json. The
//! converted GGUF is loaded back through the normal path.
#![no_main]

use codec::convert::{convert, ConvertOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (config, weights) = codec_fuzz::split(data);
    let dir = codec_fuzz::fresh_dir("safetensors");
    let src = dir.join("model");
    std::fs::create_dir_all(&src).expect("cannot create the model directory");
    if !config.is_empty() {
        codec_fuzz::write(&src.join("config.json"), config);
    }
    codec_fuzz::write(&src.join("model.safetensors"), weights);
    let out = dir.join("out.gguf");
    if convert(&src, &out, &ConvertOptions::default()).is_ok() {
        let _ = codec_fuzz::load_model(&out);
    }
});
