//! The C API as C programs use it: `tests/c/capi_test.c` and `examples/c/roundtrip.c` compiled with the system C
//! compiler (`$CC`, else `cc`) against the built `libcodec` and `include/codec.h`, run on the committed fixtures
//! and compared with what the Rust API gives. Also: the header declares exactly what the library exports, the
//! static library links, and one run under AddressSanitizer and one under valgrind (each skipped, with a note, where
//! the tool is missing). Linux: the link flags and library names are its.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use codec_rs::convert::{convert, ConvertOptions};
use codec_rs::{audio, npy, Audio, Codec, DeviceKind};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// The directory holding `libcodec.{so,a}`, built first: `cargo test` builds a cdylib/staticlib crate only as its
/// test harness, so the library itself is built here, by the cargo running this test, into the same target
/// directory and profile as this test (found from its path, `<target>/<profile>/deps/c_api-…`).
fn library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()).unwrap() {
            "debug" => "dev",
            other => other,
        };
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "--quiet", "--lib", "-p", "codec-capi", "--profile", profile, "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // The variables cargo sets for this test describe this crate; build scripts that watch them (ring's) would
        // see them changed and rebuild everything above them, in this build and the next outer one.
        let set_for_crates = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_PACKAGE"];
        for (name, _) in std::env::vars_os() {
            let text = name.to_string_lossy();
            if set_for_crates.iter().any(|p| text.starts_with(p))
                || ["CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "OUT_DIR"].contains(&&*text)
            {
                cargo.env_remove(&name);
            }
        }
        let out = cargo.output().unwrap();
        assert!(out.status.success(), "building libcodec failed:\n{}", String::from_utf8_lossy(&out.stderr));
        for lib in ["libcodec.so", "libcodec.a"] {
            assert!(profile_dir.join(lib).exists(), "no {lib} in {}", profile_dir.display());
        }
        profile_dir
    })
}

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compiler() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// `cc` with warnings as errors and the header's directory; panics with the compiler's output on failure.
fn cc(sources: &[&Path], output: &Path, extra: &[&str]) {
    let out = Command::new(compiler())
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g"])
        .arg(format!("-I{}", repo().join("include").display()))
        .args(sources)
        .args(extra)
        .args(["-o".as_ref(), output.as_os_str()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {}: {e}", compiler()));
    assert!(out.status.success(), "{} failed:\n{}", compiler(), String::from_utf8_lossy(&out.stderr));
}

/// Flags linking the shared library, found at run time through its rpath.
fn shared_link_flags() -> Vec<String> {
    let lib = library_dir();
    vec![format!("-L{}", lib.display()), format!("-Wl,-rpath,{}", lib.display()), "-lcodec".into(), "-lm".into()]
}

/// `tests/c/capi_test.c` linked against libcodec.so with `extra` flags, built once per flavour.
fn capi_test(flavour: &str, extra: &[&str]) -> PathBuf {
    let exe = scratch().join(format!("capi_test{flavour}"));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/capi_test.c");
    let mut flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    flags.push("-pthread".into());
    flags.extend(shared_link_flags());
    cc(&[&source], &exe, &flags.iter().map(String::as_str).collect::<Vec<_>>());
    exe
}

fn plain_test() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| capi_test("", &[]))
}

fn write_f32(path: &Path, data: &[f32]) {
    std::fs::write(path, data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

fn write_u32(path: &Path, data: &[u32]) {
    std::fs::write(path, data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

/// The C test's data, made once with the Rust API: for each model its GGUF, the fixture input, the Rust API's
/// codes of it and its decoded audio (Mimi's codes also checked against the reference's); Mimi's input at 16 kHz
/// and its codes; junk model files.
fn data() -> &'static Path {
    static DATA: OnceLock<PathBuf> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = scratch().join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let models = [
            ("mimi", fixtures().join("mimi/hub"), fixtures().join("mimi/input.npy")),
            ("dac", fixtures().join("dac/24khz/original/weights.pth"), fixtures().join("dac/24khz/input.npy")),
            (
                "wavtokenizer",
                fixtures().join("wavtokenizer/frame75/original/model.ckpt"),
                fixtures().join("wavtokenizer/frame75/input.npy"),
            ),
        ];
        for (name, checkpoint, input) in models {
            let gguf = dir.join(format!("{name}.gguf"));
            convert(&checkpoint, &gguf, &ConvertOptions::default()).unwrap();
            let codec = Codec::load(&gguf, DeviceKind::Cpu).unwrap();
            let samples = npy::read(&input).unwrap().to_f32_vec();
            let audio = Audio { sample_rate: codec.sample_rate(), samples };
            let codes = codec.encode(&audio, None).unwrap();
            write_f32(&dir.join(format!("{name}_input.f32")), &audio.samples);
            write_u32(&dir.join(format!("{name}_codes.u32")), &codes.data);
            if name != "wavtokenizer" {
                let decoded = codec.decode(&codes).unwrap();
                write_f32(&dir.join(format!("{name}_decoded.f32")), &decoded.samples);
            }
            if name == "mimi" {
                let want = npy::read(&fixtures().join("mimi/codes.npy")).unwrap().to_i64_vec().unwrap();
                assert!(codes.data.iter().map(|&c| c as i64).eq(want), "Rust codes differ from the reference");
                let samples = audio::resample(&audio.samples, 24000, 16000).unwrap();
                let codes = codec.encode(&Audio { sample_rate: 16000, samples: samples.clone() }, None).unwrap();
                write_f32(&dir.join("mimi_input16k.f32"), &samples);
                write_u32(&dir.join("mimi_codes16k.u32"), &codes.data);
            }
        }
        std::fs::write(dir.join("garbage.gguf"), b"GGUF but nothing a model file holds").unwrap();
        std::fs::write(dir.join("garbage.safetensors"), b"no tensors here").unwrap();
        dir
    })
}

/// Runs `exe` on one case of capi_test.c (`prefix`: a tool to run it under).
fn run_case(prefix: &[&str], exe: &Path, case: &str) -> Output {
    let (program, tool_args) = match prefix {
        [tool, args @ ..] => (Path::new(tool), args),
        [] => (exe, &[][..]),
    };
    let mut command = Command::new(program);
    if !prefix.is_empty() {
        command.args(tool_args).arg(exe);
    }
    command
        .arg(case)
        .arg(data())
        .arg(fixtures().join("mimi/hub"))
        .arg(fixtures().join("wavtokenizer/frame75/original/model.ckpt"))
        .output()
        .unwrap()
}

fn assert_case(case: &str) {
    let out = run_case(&[], plain_test(), case);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "capi_test {case} failed ({}):\n{stdout}{stderr}", out.status);
    assert_eq!(stdout.trim(), format!("ok {case}"));
    assert_eq!(stderr, "", "the library wrote to stderr");
}

#[test]
fn reference_codes_and_audio() {
    assert_case("reference");
}

#[test]
fn checkpoints_load_directly() {
    assert_case("checkpoints");
}

#[test]
fn batch_equals_single() {
    assert_case("batch");
}

#[test]
fn streaming_equals_offline() {
    assert_case("stream");
}

#[test]
fn every_error_status() {
    assert_case("errors");
}

#[test]
fn one_model_many_threads() {
    assert_case("threads");
}

/// Every case, built with AddressSanitizer on the C side (the Rust library is not instrumented, but ASan's
/// allocator serves its heap too): no report, including leaks. Skipped where the compiler has no ASan runtime.
#[test]
fn address_sanitizer_finds_nothing() {
    let probe = scratch().join("asan_probe");
    let probe_source = scratch().join("asan_probe.c");
    std::fs::write(&probe_source, "int main(void) { return 0; }\n").unwrap();
    let works = Command::new(compiler())
        .args(["-fsanitize=address".as_ref(), probe_source.as_os_str(), "-o".as_ref(), probe.as_os_str()])
        .output()
        .is_ok_and(|o| o.status.success() && Command::new(&probe).status().is_ok_and(|s| s.success()));
    if !works {
        eprintln!("note: skipped, {} cannot build with -fsanitize=address here", compiler());
        return;
    }
    let exe = capi_test("_asan", &["-fsanitize=address", "-fno-omit-frame-pointer"]);
    let out = run_case(&[], &exe, "all");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "AddressSanitizer ({}):\n{stderr}", out.status);
}

/// The error and batch cases under valgrind's memcheck: no invalid access, no use of uninitialised memory, no
/// definite leak. Skipped where valgrind is not installed. (Threads and streams of every model take minutes
/// there; the AddressSanitizer run covers them.)
#[test]
fn valgrind_finds_nothing() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("note: skipped, valgrind is not installed");
        return;
    }
    let args = [
        "valgrind",
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--show-leak-kinds=definite",
        "-q",
    ];
    for case in ["errors", "batch"] {
        let out = run_case(&args, plain_test(), case);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "valgrind, case {case} ({}):\n{stderr}", out.status);
    }
}

/// The header declares exactly the functions the library exports (its `#[no_mangle]` functions; capi_test.c,
/// which calls every one of them, links), and compiles as C++ too.
#[test]
fn header_declares_every_export() {
    let header = std::fs::read_to_string(repo().join("include/codec.h")).unwrap();
    let code = strip_comments(&header);
    let declared = names_before(&code, "codec_", "(");
    let mut exported = std::collections::BTreeSet::new();
    for file in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src")).unwrap() {
        let source = std::fs::read_to_string(file.unwrap().path()).unwrap();
        for export in source.split("#[no_mangle]").skip(1) {
            let name = export.split("fn ").nth(1).and_then(|rest| rest.split('(').next()).unwrap();
            exported.insert(name.trim().to_string());
        }
    }
    assert_eq!(declared, exported, "include/codec.h and the library's exports disagree");
    assert_eq!(exported.len(), 23, "{exported:?}");
    plain_test(); // links every declared function

    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let source = scratch().join("header.cpp");
    std::fs::write(&source, "#include \"codec.h\"\nint main() { return codec_default_params().n_threads; }\n").unwrap();
    match Command::new(&cxx)
        .args(["-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg(format!("-I{}", repo().join("include").display()))
        .arg(&source)
        .output()
    {
        Ok(out) => assert!(out.status.success(), "codec.h in C++:\n{}", String::from_utf8_lossy(&out.stderr)),
        Err(_) => eprintln!("note: no C++ compiler ({cxx}); the header was checked as C only"),
    }
}

/// `text` without its /* */ comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..].split_once("*/").map_or("", |(_, after)| after);
    }
    out + rest
}

/// Identifiers starting with `prefix` that `open` follows (spaces between allowed).
fn names_before(code: &str, prefix: &str, open: &str) -> std::collections::BTreeSet<String> {
    let words = code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty());
    let mut names = std::collections::BTreeSet::new();
    let mut at = 0;
    for word in words {
        let pos = at + code[at..].find(word).unwrap();
        at = pos + word.len();
        if word.starts_with(prefix) && code[at..].trim_start().starts_with(open) {
            names.insert(word.to_string());
        }
    }
    names
}

/// examples/c/roundtrip.c, linked statically against libcodec.a as the README says, on the fixture's WAV: the
/// output is the Rust API's roundtrip, as long as the input.
#[test]
fn example_roundtrip_links_statically() {
    let exe = scratch().join("roundtrip");
    let static_lib = library_dir().join("libcodec.a");
    let native = ["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];
    cc(&[&repo().join("examples/c/roundtrip.c"), &static_lib], &exe, &native);
    let (input, output) = (fixtures().join("mimi/input.wav"), scratch().join("roundtrip.wav"));
    let model = data().join("mimi.gguf");
    let out = Command::new(&exe).args([&model, &input, &output]).output().unwrap();
    assert!(out.status.success(), "roundtrip failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let codec = Codec::load(&model, DeviceKind::Cpu).unwrap();
    let audio = audio::read_mono_at(&input, codec.sample_rate()).unwrap();
    let mut want = codec.decode(&codec.encode(&audio, None).unwrap()).unwrap().samples;
    want.truncate(audio.samples.len());
    let got = audio::read(&output).unwrap();
    assert_eq!((got.sample_rate, got.samples.len()), (codec.sample_rate(), want.len()));
    let dot: f64 = got.samples.iter().zip(&want).map(|(a, b)| *a as f64 * *b as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cos = dot / (norm(&got.samples) * norm(&want));
    assert!(cos >= 0.99999, "roundtrip cos {cos}");
}

/// An install as the README describes it (header, libraries, `codec.pc` from `codec.pc.in`) into a scratch prefix:
/// pkg-config gives the library's version and the flags that build the example. Skipped without pkg-config.
#[test]
fn pkg_config_file_builds_the_example() {
    if Command::new("pkg-config").arg("--version").output().is_err() {
        eprintln!("note: skipped, pkg-config is not installed");
        return;
    }
    let prefix = scratch().join("prefix");
    std::fs::remove_dir_all(&prefix).ok();
    for dir in ["include", "lib/pkgconfig"] {
        std::fs::create_dir_all(prefix.join(dir)).unwrap();
    }
    std::fs::copy(repo().join("include/codec.h"), prefix.join("include/codec.h")).unwrap();
    std::fs::copy(library_dir().join("libcodec.so"), prefix.join("lib/libcodec.so")).unwrap();
    let template = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("codec.pc.in")).unwrap();
    std::fs::write(prefix.join("lib/pkgconfig/codec.pc"), template.replace("@PREFIX@", prefix.to_str().unwrap()))
        .unwrap();
    let pkg_config = |args: &[&str]| {
        let out = Command::new("pkg-config").args(args).env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")).output();
        let out = out.unwrap();
        assert!(out.status.success(), "pkg-config {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(pkg_config(&["--modversion", "codec"]), env!("CARGO_PKG_VERSION"), "codec.pc.in's Version is stale");
    let flags = pkg_config(&["--cflags", "--libs", "codec"]);
    let rpath = format!("-Wl,-rpath,{}", prefix.join("lib").display());
    let mut args: Vec<&str> = flags.split_whitespace().collect();
    args.push(&rpath);
    let exe = scratch().join("roundtrip_pkg_config");
    cc(&[&repo().join("examples/c/roundtrip.c")], &exe, &args);
    let output = scratch().join("roundtrip_pkg_config.wav");
    let model = data().join("mimi.gguf");
    let out = Command::new(&exe).args([&model, &fixtures().join("mimi/input.wav"), &output]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mimi, 8 codebooks x 25 frames, 48000 samples"));
}
