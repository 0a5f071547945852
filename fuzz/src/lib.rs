//! Helpers shared by the fuzz targets. The readers take paths, so each input is written to a scratch directory of
//! this process (under `$CODEC_FUZZ_TMP`, else `/dev/shm`, else the temp dir) and the library's own front door is
//! called on it. The targets stay thin: the logic being fuzzed is the library's.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's scratch directory (created once).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("CODEC_FUZZ_TMP").map(PathBuf::from).unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            }
        });
        let dir = base.join(format!("codec-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
        dir
    })
}

/// A fresh, empty sub-directory `name` of the scratch directory.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create a fuzz scratch sub-directory");
    dir
}

/// Writes `bytes` to `path` (the fuzz input as a file).
pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("cannot write the fuzz input file");
}

/// Splits an input made of a sibling text file and a main file: `[len: u16 LE][sibling: len bytes][main: rest]`
/// (`len` is clamped to what is there). Seeds are built this way by `scripts/fuzz.sh`.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let len = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    data[2..].split_at(len)
}

/// The committed fixtures (`tests/fixtures`) of the repository this crate lives in.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Runs `f`, for a reader that turns panics inside a third-party decoder into errors itself (the audio reader wraps
/// symphonia in `catch_unwind`). libFuzzer's panic hook would abort on such a caught panic before the library saw
/// it, so this hook only records the message; a panic that escapes the library is reported with it and aborts, so it
/// is still a crash.
pub fn with_caught_panics<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> T {
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if let Ok(mut last) = LAST.lock() {
                *last = info.to_string();
            }
        }))
    });
    match std::panic::catch_unwind(f) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("panic escaped the library: {}", LAST.lock().map(|s| s.clone()).unwrap_or_default());
            std::process::abort();
        }
    }
}

/// A decoded or converted model file is checked by loading it through the normal path, so a converter that writes a
/// file its own loader rejects with a panic is found too.
pub fn load_model(path: &Path) -> codec::Result<codec::Codec> {
    codec::Codec::load(path, codec::DeviceKind::Cpu)
}
