//! `codec tokenize` on a generated dataset of 21 files (nested directories; wav at several rates, stereo, flac, ogg,
//! mp3; one corrupt file, one empty): rows equal `codec encode` per file, errors.jsonl names the two bad files,
//! a run killed between shards (a shard deleted, a half-written temporary left behind) resumes with no row lost
//! or duplicated, and manifests (.txt, .jsonl) give the paths they list.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow_array::{Array, Float32Array, Int32Array, ListArray, StringArray, UInt16Array};
use codec::npy;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokenize").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn codec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codec")).args(args).arg("--quiet").output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn model(dir: &Path) -> PathBuf {
    let out = dir.join("mimi.gguf");
    let hub = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mimi/hub");
    let o = codec(&["convert", s(&hub), "-o", s(&out)]);
    assert!(o.status.success(), "convert failed: {}", String::from_utf8_lossy(&o.stderr));
    out
}

fn write_wav(path: &Path, rate: u32, channels: u16, seconds: f64, freq: f64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec =
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let n = (seconds * rate as f64) as usize;
    for i in 0..n {
        let t = i as f64 / rate as f64;
        for c in 0..channels {
            let v = 0.4 * (2.0 * std::f64::consts::PI * freq * (1.0 + c as f64 * 0.5) * t).sin();
            w.write_sample((v * 32767.0) as i16).unwrap();
        }
    }
    w.finalize().unwrap();
}

/// 21 files: 16 wav (rates 16–48 kHz, mono and stereo, 0.2–1.3 s, in nested directories), flac, ogg, mp3, a corrupt
/// wav and an empty flac.
fn dataset(root: &Path) {
    let rates = [16000, 22050, 24000, 44100, 48000, 8000, 32000, 24000];
    for i in 0..16 {
        let dir = root.join(["", "a", "a/b", "c"][i % 4]);
        write_wav(
            &dir.join(format!("clip{i:02}.wav")),
            rates[i % 8],
            1 + (i % 3 == 0) as u16,
            0.2 + 0.07 * i as f64,
            110.0 * (i + 1) as f64,
        );
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../codec/tests/data");
    for f in ["sine440_16k_mono.flac", "sine440_22k_stereo.ogg", "sine440_24k_mono.mp3"] {
        std::fs::copy(data.join(f), root.join("c").join(f)).unwrap();
    }
    std::fs::write(root.join("a/corrupt.wav"), b"RIFF\x10\0\0\0WAVEnot really").unwrap();
    std::fs::write(root.join("c/empty.flac"), b"").unwrap();
}

struct Row {
    codes: Vec<Vec<u16>>,
    n_q: i32,
    n_frames: i32,
    duration_s: f32,
    orig_sample_rate: i32,
}

/// Every row of every complete shard, by path (a duplicate path fails), and each shard's key-value metadata.
fn read_shards(dir: &Path) -> (BTreeMap<String, Row>, Vec<BTreeMap<String, String>>) {
    let mut rows = BTreeMap::new();
    let mut metadata = Vec::new();
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    shards.sort();
    for shard in shards {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&shard).unwrap()).unwrap();
        let kv = builder.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
        metadata.push(kv.into_iter().map(|k| (k.key, k.value.unwrap_or_default())).collect());
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            let col = |name: &str| batch.column_by_name(name).unwrap().clone();
            let path = col("path");
            let path = path.as_any().downcast_ref::<StringArray>().unwrap();
            let codes = col("codes");
            let codes = codes.as_any().downcast_ref::<ListArray>().unwrap();
            let int = |name: &str| col(name).as_any().downcast_ref::<Int32Array>().unwrap().clone();
            let (n_q, n_frames, rate) = (int("n_q"), int("n_frames"), int("orig_sample_rate"));
            let duration = col("duration_s");
            let duration = duration.as_any().downcast_ref::<Float32Array>().unwrap();
            for i in 0..batch.num_rows() {
                let per_q = codes.value(i);
                let per_q = per_q.as_any().downcast_ref::<ListArray>().unwrap();
                let codes = (0..per_q.len())
                    .map(|q| per_q.value(q).as_any().downcast_ref::<UInt16Array>().unwrap().values().to_vec())
                    .collect();
                let row = Row {
                    codes,
                    n_q: n_q.value(i),
                    n_frames: n_frames.value(i),
                    duration_s: duration.value(i),
                    orig_sample_rate: rate.value(i),
                };
                let name = path.value(i).to_string();
                assert!(rows.insert(name.clone(), row).is_none(), "{name} is in two rows");
            }
        }
    }
    (rows, metadata)
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tokenize_a_dataset_and_resume() {
    let dir = tmp("dataset");
    let (root, out) = (dir.join("audio"), dir.join("out"));
    dataset(&root);
    let model = model(&dir);
    let o = codec(&["tokenize", "-m", s(&model), s(&root), "-o", s(&out), "--shard-rows", "5", "--batch-size", "4"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "two files fail: {err}");
    assert!(err.contains("19 files done, 0 skipped") && err.contains("2 failed"), "{err}");

    let (rows, metadata) = read_shards(&out);
    assert_eq!(rows.len(), 19);
    assert_eq!(metadata.len(), 4, "19 rows in shards of 5");
    for kv in &metadata {
        assert_eq!(kv["codec.arch"], "mimi");
        assert_eq!(kv["codec.sample_rate"], "24000");
        assert_eq!(kv["codec.hop"], "1920");
        assert_eq!(kv["codec.n_q"], "8");
        assert_eq!(kv["codec.model_sha256"], sha256_hex(&model));
        assert!(kv["codec.tool"].starts_with("codec-rs "));
    }
    // Every row is what `codec encode` gives for its file.
    for (name, row) in &rows {
        let file = root.join(name);
        let npy_out = dir.join("one.npy");
        let o = codec(&["encode", "-m", s(&model), s(&file), "-o", s(&npy_out)]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let want = npy::read(&npy_out).unwrap();
        let (n_q, n_frames) = (want.shape[0], want.shape[1]);
        assert_eq!((row.n_q as usize, row.n_frames as usize), (n_q, n_frames), "{name}");
        let want: Vec<u16> = want.to_i64_vec().unwrap().iter().map(|&c| c as u16).collect();
        assert_eq!(row.codes.concat(), want, "{name}: codes differ from codec encode");
        assert_eq!(row.codes.len(), n_q);
        let original = codec::audio::read(&file).unwrap();
        assert_eq!(row.orig_sample_rate as u32, original.sample_rate, "{name}");
        let seconds = original.samples.len() as f32 / original.sample_rate as f32;
        assert!((row.duration_s - seconds).abs() < 1e-6, "{name}: {} vs {seconds}", row.duration_s);
    }
    assert!(rows.contains_key("a/b/clip02.wav") && rows.contains_key("c/sine440_22k_stereo.ogg"));
    let errors = std::fs::read_to_string(out.join("errors.jsonl")).unwrap();
    let failed: Vec<String> = errors
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed, ["a/corrupt.wav", "c/empty.flac"]);

    // Killed while writing its last shard: that shard never renamed into place, a partial temporary left behind.
    std::fs::remove_file(out.join("part-00003.parquet")).unwrap();
    std::fs::write(out.join(".part-00003.parquet.tmp"), b"PAR1 half written").unwrap();
    let o = codec(&["tokenize", "-m", s(&model), s(&root), "-o", s(&out), "--shard-rows", "5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("4 files done, 15 skipped") && err.contains("2 failed"), "{err}");
    let (resumed, _) = read_shards(&out);
    assert_eq!(resumed.len(), 19, "no row lost or duplicated");
    for (name, row) in &rows {
        assert_eq!(resumed[name].codes, row.codes, "{name}");
    }
    assert!(!out.join(".part-00003.parquet.tmp").exists());
}

#[test]
fn tokenize_from_manifests() {
    let dir = tmp("manifest");
    let root = dir.join("audio");
    write_wav(&root.join("x/one.wav"), 24000, 1, 0.3, 220.0);
    write_wav(&root.join("two.wav"), 16000, 2, 0.5, 330.0);
    std::fs::write(root.join("list.txt"), "x/one.wav\n\ntwo.wav\n").unwrap();
    std::fs::write(root.join("list.jsonl"), "{\"path\": \"two.wav\", \"text\": \"hi\"}\n").unwrap();
    let model = model(&dir);
    for (manifest, want) in [("list.txt", vec!["two.wav", "x/one.wav"]), ("list.jsonl", vec!["two.wav"])] {
        let out = dir.join(format!("out-{manifest}"));
        let o = codec(&["tokenize", "-m", s(&model), s(&root.join(manifest)), "-o", s(&out)]);
        assert!(o.status.success(), "{manifest}: {}", String::from_utf8_lossy(&o.stderr));
        let (rows, _) = read_shards(&out);
        assert_eq!(rows.keys().collect::<Vec<_>>(), want, "{manifest}");
    }
    let o = codec(&["tokenize", "-m", s(&model), s(&root.join("missing.txt")), "-o", s(&dir.join("o"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.txt"));
}
