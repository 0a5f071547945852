//! Crafted bad inputs for every reader, through the `codec` binary as a user runs it (issue 8): model files (GGUF),
//! audio (WAV, FLAC, MP3, OGG), codes (`.npy`) and checkpoints (`.safetensors`, `.pth`, `.ckpt`). Each case must
//! exit with status 1, print exactly one line on stderr that names the offending file and the problem, never panic,
//! and leave nothing at the output path. Every run has `RUST_BACKTRACE=1`, so a backtrace folded into a message
//! would show as a long line.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::{self, Value};

/// One bad input: the command (`{model}`, `{out}` and file names under the case directory are filled in), the
/// file it must name and what else the message must say.
struct Case {
    what: &'static str,
    args: Vec<String>,
    names: String,
    says: &'static str,
    out: PathBuf,
    env: Option<(&'static str, &'static str)>,
}

/// Scratch files of this test process, removed when it ends.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("codec-bad-inputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mimi")
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

// ---- GGUF ----

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

/// A GGUF v3 file: metadata `(key, type id, value bytes)`, tensor infos `(name, dims, ggml type, offset)`, then
/// `data` at the data section (32-byte aligned).
fn gguf(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)], data: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (key, ty, value) in kvs {
        b.extend(string(key));
        b.extend(ty.to_le_bytes());
        b.extend(value);
    }
    for (name, dims, ty, offset) in tensors {
        b.extend(string(name));
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    b.resize(b.len().next_multiple_of(32), 0);
    b.extend_from_slice(data);
    b
}

const U32: u32 = 4;
const STRING: u32 = 8;

fn arch(name: &str) -> (&'static str, u32, Vec<u8>) {
    ("general.architecture", STRING, string(name))
}

/// The fixture model with metadata `key` set to `value` (or removed), written as `name`.
fn model_with(model: &Path, dir: &Dir, name: &str, key: &str, value: Option<Value>) -> PathBuf {
    let mut reader = std::io::BufReader::new(std::fs::File::open(model).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut metadata = content.metadata.clone();
    match value {
        Some(v) => metadata.insert(key.to_string(), v),
        None => metadata.remove(key),
    };
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .map(|n| (n.clone(), content.tensor(&mut reader, n, &candle_core::Device::Cpu).unwrap()))
        .collect();
    let path = dir.path(name);
    let mut out = std::fs::File::create(&path).unwrap();
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    path
}

// ---- audio ----

/// A WAV file: `fmt ` chunk fields as given, then a data chunk of `data`.
fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block = channels * bits.div_ceil(8);
    let mut b = b"RIFF".to_vec();
    b.extend((36 + data.len() as u32).to_le_bytes());
    b.extend(b"WAVEfmt ");
    b.extend(16u32.to_le_bytes());
    b.extend(tag.to_le_bytes());
    b.extend(channels.to_le_bytes());
    b.extend(rate.to_le_bytes());
    b.extend((rate * block as u32).to_le_bytes());
    b.extend(block.to_le_bytes());
    b.extend(bits.to_le_bytes());
    b.extend(b"data");
    b.extend((data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    b
}

fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---- npy ----

fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend_from_slice(data);
    b
}

fn ints(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = Dir::new();
    let bin = env!("CARGO_BIN_EXE_codec");
    let model = dir.path("mimi.gguf");
    let o = Command::new(bin).args(["-q", "convert", &s(&fixtures().join("hub")), "-o", &s(&model)]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let input = fixtures().join("input.wav");
    let codes_out = dir.path("out.npy");
    let wav_out = dir.path("out.wav");
    let gguf_out = dir.path("out.gguf");
    let mut cases = Vec::new();

    // Model files, through `encode` (nothing may be written).
    let mut model_case = |what, path: PathBuf, says| {
        let args = vec!["encode".into(), "-m".into(), s(&path), s(&input), "-o".into(), s(&codes_out)];
        let names = path.file_name().unwrap().to_str().unwrap().to_string();
        cases.push(Case { what, args, names, says, out: codes_out.clone(), env: None });
    };
    let bytes = std::fs::read(&model).unwrap();
    // A checkpoint given as MODEL: say how to convert it, not only that it is not GGUF.
    model_case("checkpoint directory as MODEL", fixtures().join("hub"), "codec convert");
    model_case("safetensors as MODEL", fixtures().join("hub/model.safetensors"), "codec convert");
    model_case("empty GGUF", dir.file("empty.gguf", b""), "not a valid GGUF");
    model_case("text GGUF", dir.file("text.gguf", b"just some text, not a model file at all"), "not a valid GGUF");
    model_case("magic only", dir.file("magic.gguf", b"GGUF"), "not a valid GGUF");
    let mut v99 = gguf(&[arch("mimi")], &[], &[]);
    v99[4] = 99;
    model_case("unknown version", dir.file("v99.gguf", &v99), "not a valid GGUF");
    let mut many = gguf(&[], &[], &[]);
    many[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    model_case("2^60 tensors claimed", dir.file("many.gguf", &many), "not a valid GGUF");
    let mut kvs = gguf(&[], &[], &[]);
    kvs[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    model_case("2^60 metadata entries claimed", dir.file("kvs.gguf", &kvs), "not a valid GGUF");
    let mut long_key = gguf(&[arch("mimi")], &[], &[]);
    long_key[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    model_case("2^62-byte key", dir.file("longkey.gguf", &long_key), "not a valid GGUF");
    let align0 = gguf(&[arch("mimi"), ("general.alignment", U32, 0u32.to_le_bytes().to_vec())], &[], &[]);
    model_case("alignment 0", dir.file("align0.gguf", &align0), "alignment");
    let huge_dim = gguf(&[arch("mimi")], &[("w", &[1 << 62, 4], 0, 0)], &[0; 64]);
    model_case("tensor dim 2^62", dir.file("hugedim.gguf", &huge_dim), "too large");
    let past_end = gguf(&[arch("mimi")], &[("w", &[16], 0, 1 << 20)], &[0; 64]);
    model_case("tensor data past the end", dir.file("pastend.gguf", &past_end), "truncated or corrupt");
    let bad_type = gguf(&[arch("mimi")], &[("w", &[16], 99, 0)], &[0; 64]);
    model_case("unknown tensor type", dir.file("badtype.gguf", &bad_type), "not a valid GGUF");
    model_case("unknown architecture", dir.file("arch.gguf", &gguf(&[arch("encodec")], &[], &[])), "not supported");
    model_case("no architecture", dir.file("noarch.gguf", &gguf(&[], &[], &[])), "general.architecture");
    model_case("truncated model", dir.file("truncated.gguf", &bytes[..bytes.len() / 2]), "truncated");
    model_case("model header only", dir.file("header.gguf", &bytes[..100]), "not a valid GGUF");
    model_case("missing model file", dir.path("missing.gguf"), "missing.gguf");
    let metadata = [
        ("n_q = 0", "nq0.gguf", "codec.n_q", Some(Value::U32(0)), "at least 1"),
        ("sliding_window = 0", "window0.gguf", "codec.mimi.sliding_window", Some(Value::U32(0)), "at least 1"),
        ("sample rate 0", "rate0.gguf", "codec.sample_rate", Some(Value::U32(0)), "codec.sample_rate"),
        ("rope theta NaN", "theta.gguf", "codec.mimi.rope_theta", Some(Value::F32(f32::NAN)), "above 0"),
        (
            "zero upsampling ratio",
            "ratio0.gguf",
            "codec.mimi.upsampling_ratios",
            Some(Value::Array(vec![Value::U32(4), Value::U32(0)])),
            "codec.mimi.upsampling_ratios",
        ),
        (
            "hop overflow",
            "hop.gguf",
            "codec.mimi.downsample_stride",
            Some(Value::U32(u32::MAX)),
            "codec.mimi.downsample_stride",
        ),
        ("semantic > n_q", "semantic.gguf", "codec.mimi.num_semantic_quantizers", Some(Value::U32(99)), "codebooks"),
        ("missing key", "nokey.gguf", "codec.mimi.head_dim", None, "codec.mimi.head_dim"),
        ("key of the wrong type", "type.gguf", "codec.n_q", Some(Value::String("8".into())), "codec.n_q"),
    ];
    for (what, name, key, value, says) in metadata {
        model_case(what, model_with(&model, &dir, name, key, value), says);
    }

    // Audio, through `encode`.
    let mut audio_case = |what, path: PathBuf, says| {
        let args = vec!["encode".into(), "-m".into(), s(&model), s(&path), "-o".into(), s(&codes_out)];
        let names = path.file_name().unwrap().to_str().unwrap().to_string();
        cases.push(Case { what, args, names, says, out: codes_out.clone(), env: None });
    };
    audio_case("empty WAV file", dir.file("empty.wav", b""), "empty.wav");
    audio_case("WAV without samples", dir.file("nosamples.wav", &wav(1, 1, 24000, 16, &[])), "no audio samples");
    audio_case("WAV rate 0", dir.file("rate0.wav", &wav(1, 1, 0, 16, &[0; 200])), "rate0.wav");
    audio_case("WAV at 1 Hz", dir.file("hz1.wav", &wav(1, 1, 1, 16, &[0; 2000])), "1 Hz");
    audio_case("WAV at 10 MHz", dir.file("mhz.wav", &wav(1, 1, 10_000_000, 16, &[0; 2000])), "outside");
    audio_case("WAV with 0 channels", dir.file("ch0.wav", &wav(1, 0, 24000, 16, &[0; 200])), "ch0.wav");
    audio_case("WAV with 7-bit samples", dir.file("bits7.wav", &wav(1, 1, 24000, 7, &[0; 200])), "bits7.wav");
    audio_case("WAV in an unknown format", dir.file("tag.wav", &wav(0x1234, 1, 24000, 16, &[0; 200])), "tag.wav");
    let mut nan = vec![0.1f32; 480];
    nan[100] = f32::NAN;
    audio_case("NaN sample", dir.file("nan.wav", &wav(3, 1, 24000, 32, &floats(&nan))), "sample 100");
    let inf = [0.0, f32::INFINITY];
    audio_case("infinite sample", dir.file("inf.wav", &wav(3, 1, 24000, 32, &floats(&inf))), "finite");
    audio_case("text as WAV", dir.file("text.wav", b"RIFF....WAVEjunkjunkjunkjunk"), "text.wav");
    audio_case("garbage MP3", dir.file("noise.mp3", &[0x5a; 4096]), "noise.mp3");
    audio_case("garbage FLAC", dir.file("noise.flac", b"fLaC\0\0\0\x22garbage garbage garbage"), "noise.flac");
    audio_case("garbage OGG", dir.file("noise.ogg", b"OggS\0\x02garbage garbage garbage garbage"), "noise.ogg");
    audio_case("unknown extension", dir.file("audio.xyz", &[1; 64]), "audio.xyz");
    audio_case("missing audio file", dir.path("missing.wav"), "missing.wav");
    std::fs::create_dir_all(dir.path("folder.wav")).unwrap();
    audio_case("a directory", dir.path("folder.wav"), "folder.wav");

    // Codes, through `decode` (the fixture model: 8 codebooks of 64 entries).
    let mut codes_case = |what, path: PathBuf, says, env| {
        let args = vec!["decode".into(), "-m".into(), s(&model), s(&path), "-o".into(), s(&wav_out)];
        let names = path.file_name().unwrap().to_str().unwrap().to_string();
        cases.push(Case { what, args, names, says, out: wav_out.clone(), env });
    };
    let i4 = "{'descr': '<i4', 'fortran_order': False, 'shape': ";
    codes_case("empty .npy", dir.file("empty.npy", b""), "empty.npy", None);
    codes_case("missing codes file", dir.path("missing.npy"), "missing.npy", None);
    codes_case("bad magic", dir.file("magic.npy", b"\x93NUMPX\x01\x00garbage"), "magic.npy", None);
    let float = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", &floats(&[0.0, 1.0]));
    codes_case("float codes", dir.file("float.npy", &float), "int32 or int64", None);
    codes_case("1-D codes", dir.file("flat.npy", &npy(&format!("{i4}(6,), }}"), &ints(&[0; 6]))), "shape", None);
    let four_d = npy(&format!("{i4}(1, 1, 2, 3), }}"), &ints(&[0; 6]));
    codes_case("4-D codes", dir.file("4d.npy", &four_d), "shape", None);
    let batch = npy(&format!("{i4}(2, 1, 3), }}"), &ints(&[0; 6]));
    codes_case("a batch of two", dir.file("batch.npy", &batch), "shape", None);
    let short = npy(&format!("{i4}(2, 100), }}"), &ints(&[0; 6]));
    codes_case("data shorter than the shape", dir.file("short.npy", &short), "short.npy", None);
    let huge = npy(&format!("{i4}(8, 1099511627776), }}"), &ints(&[0; 6]));
    codes_case("shape of 2^43 values", dir.file("huge.npy", &huge), "huge.npy", None);
    let range = npy(&format!("{i4}(2, 3), }}"), &ints(&[0, 1, 2, 3, 64, 5]));
    codes_case("code past the codebook", dir.file("range.npy", &range), "out of range", None);
    let negative = npy(&format!("{i4}(1, 2), }}"), &ints(&[0, -1]));
    codes_case("negative code", dir.file("neg.npy", &negative), "out of range", None);
    let nine = npy(&format!("{i4}(9, 2), }}"), &ints(&[0; 18]));
    codes_case("more codebooks than the model", dir.file("nine.npy", &nine), "9 codebooks", None);
    codes_case("zero frames", dir.file("zero.npy", &npy(&format!("{i4}(8, 0), }}"), &[])), "zero.npy", None);
    let long = npy(&format!("{i4}(1, 100000), }}"), &ints(&[0; 100000]));
    let limit = Some(("CODEC_MEMORY_LIMIT", "1M"));
    codes_case("more than the memory limit", dir.file("long.npy", &long), "limit", limit);
    codes_case("header that is not a dict", dir.file("header.npy", &npy("[1, 2, 3]", &[])), "header.npy", None);

    // A malformed setting names the variable, not a file.
    let fine = dir.file("fine.npy", &npy(&format!("{i4}(1, 4), }}"), &ints(&[0; 4])));
    cases.push(Case {
        what: "malformed memory limit",
        args: vec!["decode".into(), "-m".into(), s(&model), s(&fine), "-o".into(), s(&wav_out)],
        names: "CODEC_MEMORY_LIMIT='8Q'".into(),
        says: "is not a size",
        out: wav_out.clone(),
        env: Some(("CODEC_MEMORY_LIMIT", "8Q")),
    });

    // Checkpoints, through `convert`.
    let mut convert_case = |what, path: PathBuf, says| {
        let args = vec!["convert".into(), s(&path), "-o".into(), s(&gguf_out)];
        let names = path.file_name().unwrap().to_str().unwrap().to_string();
        cases.push(Case { what, args, names, says, out: gguf_out.clone(), env: None });
    };
    convert_case("garbage safetensors", dir.file("junk.safetensors", &[7; 100]), "junk.safetensors");
    let huge_header = [&(1u64 << 62).to_le_bytes()[..], b"{}"].concat();
    convert_case("safetensors header of 2^62 bytes", dir.file("big.safetensors", &huge_header), "big.safetensors");
    convert_case("garbage .pth", dir.file("junk.pth", b"not a zip"), "not a PyTorch zip checkpoint");
    let ckpt_dir = dir.path("ckpt");
    std::fs::create_dir_all(&ckpt_dir).unwrap();
    std::fs::write(ckpt_dir.join("model.yaml"), b"model: {init_args: {}}").unwrap();
    std::fs::write(ckpt_dir.join("model.ckpt"), b"not a zip").unwrap();
    convert_case("garbage .ckpt", ckpt_dir.join("model.ckpt"), "model.ckpt");
    std::fs::create_dir_all(dir.path("emptydir")).unwrap();
    convert_case("empty directory", dir.path("emptydir"), "emptydir");

    let count = cases.len();
    for case in cases {
        let _ = std::fs::remove_file(&case.out);
        let mut cmd = Command::new(bin);
        cmd.args(&case.args).env("RUST_BACKTRACE", "1");
        if let Some((k, v)) = case.env {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let what = case.what;
        assert_eq!(o.status.code(), Some(1), "{what}: exit {:?}, stderr {err}", o.status);
        assert!(!err.contains("panicked") && !err.contains("internal error"), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: not one line: {err}");
        assert!(err.len() < 400, "{what}: {} bytes: {err}", err.len());
        assert!(err.contains(&case.names), "{what}: does not name {}: {err}", case.names);
        assert!(err.contains(case.says), "{what}: does not say {:?}: {err}", case.says);
        assert!(!case.out.exists(), "{what}: wrote {}", case.out.display());
    }
    assert!(count >= 50, "{count} cases");
}
