//! GGUF model files: open (header, metadata, tensor directory), read the metadata, load every tensor, then build the
//! model through the normal path (`Codec::load`) and run a tiny decode and encode on it (hyper-parameters come from
//! the metadata, so a lying file must fail there with an error, not a panic).
#![no_main]

use codec::gguf::ModelFile;
use codec::{Audio, Codes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = codec_fuzz::scratch().join("model.gguf");
    codec_fuzz::write(&path, data);
    let Ok(file) = ModelFile::open(&path) else { return };
    let _ = file.metadata_lines();
    let _ = file.tensor_list();
    let _ = file.architecture();
    let _ = file.load_tensors(&candle_core::Device::Cpu);
    drop(file);
    let Ok(codec) = codec_fuzz::load_model(&path) else { return };
    let n_frames = 2;
    let codes = Codes { n_q: 1, n_frames, data: vec![0; n_frames] };
    let _ = codec.decode(&codes);
    // A short clip: two hops, bounded so a huge hop in the metadata does not make one exec slow.
    let len = codec.hop().saturating_mul(2).clamp(1, 8192);
    let audio = Audio { sample_rate: codec.sample_rate(), samples: vec![0.1; len] };
    let _ = codec.encode(&audio, Some(1));
});
