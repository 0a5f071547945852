//! descript's DAC `.pth` (zip + pickle): `convert` reads the state dict and `metadata.kwargs`, checks the tensors build
//! the model and writes a GGUF, which is then loaded back through the normal path.
#![no_main]

use codec::convert::{convert, ConvertOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = codec_fuzz::fresh_dir("pth");
    let src = dir.join("weights.pth");
    codec_fuzz::write(&src, data);
    let out = dir.join("out.gguf");
    if convert(&src, &out, &ConvertOptions::default()).is_ok() {
        let _ = codec_fuzz::load_model(&out);
    }
});
