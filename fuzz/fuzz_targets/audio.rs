//! Audio files through the front door (`audio::read_mono_at`: symphonia decode, downmix, rate check, resample). The
//! first input byte picks the file extension (the probe's hint): wav, flac, mp3 or ogg; the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

const EXTS: [&str; 4] = ["wav", "flac", "mp3", "ogg"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, file)) = data.split_first() else { return };
    let path = codec_fuzz::scratch().join(format!("in.{}", EXTS[pick as usize % EXTS.len()]));
    codec_fuzz::write(&path, file);
    let _ = codec_fuzz::with_caught_panics(|| codec::audio::read_mono_at(&path, 24_000));
});
