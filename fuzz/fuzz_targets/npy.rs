//! `.npy` arrays: the reader, the dtype conversions, and the codes checks (`npy::read_codes`) the CLI's decode uses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = codec_fuzz::scratch().join("codes.npy");
    codec_fuzz::write(&path, data);
    if let Ok(arr) = codec::npy::read(&path) {
        let _ = arr.to_f32_vec();
        let _ = arr.to_i64_vec();
    }
    let _ = codec::npy::read_codes(&path, 32, 2048);
});
