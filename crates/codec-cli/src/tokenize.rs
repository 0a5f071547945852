//! `codec tokenize`: a dataset of audio files → Parquet shards of codes, one row per file.
//!
//! Reader threads decode and resample files while the model encodes the previous batch; rows gather into
//! `OUT_DIR/part-NNNNN.parquet`, each written under a temporary name and renamed once complete, so a shard on disk
//! is whole. A rerun skips the files already in shards: a killed run resumes, losing at most the shard in progress.
//! Files that fail go to `OUT_DIR/errors.jsonl` and the run goes on.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use arrow_array::builder::{ListBuilder, UInt16Builder, UInt32Builder};
use arrow_array::{Array, ArrayRef, Float32Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use codec::{Audio, Codec, Codes, Error, Result};

/// Audio files a directory contributes (by extension, case-insensitive).
const AUDIO_EXTENSIONS: &[&str] = &["wav", "flac", "mp3", "ogg"];

/// One file to tokenize: where to read it, and the `path` its row records (as given, or relative to its input
/// directory or manifest).
#[derive(Debug, Clone)]
pub struct Item {
    pub read: PathBuf,
    pub name: String,
}

/// What `codec tokenize` was asked to do: its options, as the command line gives them.
#[derive(clap::Args, Clone)]
pub struct Options {
    /// The directory of the shards (created if missing).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub codebooks: crate::CodebooksArg,
    /// Files per batched model call.
    #[arg(long = "batch-size", default_value_t = 8)]
    pub batch_size: usize,
    /// Rows (files) per shard.
    #[arg(long = "shard-rows", default_value_t = 1000)]
    pub shard_rows: usize,
    /// Threads reading and resampling audio while the model computes (default: 2).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// No progress output (the global `--quiet`, set after parsing).
    #[arg(skip)]
    pub quiet: bool,
}

/// The inputs expanded: directories walked (sorted, so runs list files in the same order), manifests read, files
/// taken as given. A missing input or unreadable manifest is an error before any work.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(input, &mut files)?;
            files.sort();
            for file in files {
                let name = file.strip_prefix(input).unwrap_or(&file).to_string_lossy().into_owned();
                items.push(Item { read: file, name });
            }
        } else if has_extension(input, &["txt", "jsonl"]) {
            items.extend(read_manifest(input)?);
        } else {
            items.push(Item { read: input.clone(), name: input.to_string_lossy().into_owned() });
        }
    }
    Ok(items)
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if has_extension(&path, AUDIO_EXTENSIONS) {
            out.push(path);
        }
    }
    Ok(())
}

/// A manifest: `.txt` one path a line, `.jsonl` one object with a `"path"` string a line (blank lines skipped).
/// Relative paths are relative to the manifest's directory; the row keeps the path as the manifest writes it.
fn read_manifest(manifest: &Path) -> Result<Vec<Item>> {
    let file = File::open(manifest).map_err(|e| Error::io(manifest, e))?;
    let base = manifest.parent().unwrap_or(Path::new(""));
    let jsonl = has_extension(manifest, &["jsonl"]);
    let mut items = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(manifest, e))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |msg: &str| Error::InvalidArgument(format!("{}:{}: {msg}", manifest.display(), n + 1));
        let name = if jsonl {
            let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("not JSON: {e}")))?;
            match value.get("path").and_then(|p| p.as_str()) {
                Some(p) => p.to_string(),
                None => return Err(bad("no \"path\" string")),
            }
        } else {
            line.to_string()
        };
        items.push(Item { read: base.join(&name), name });
    }
    Ok(items)
}

/// A file read for the model: its audio at the model's rate, and what its row records of the original.
struct Clip {
    audio: Audio,
    duration_s: f32,
    orig_sample_rate: u32,
}

/// Reads a file at its own rate and resamples it to `rate` (one decode; the row keeps the original's rate and length).
fn load(path: &Path, rate: u32) -> Result<Clip> {
    let original = codec::audio::read(path)?;
    let (orig_sample_rate, len) = (original.sample_rate, original.samples.len());
    let samples = codec::audio::resample(&original.samples, orig_sample_rate, rate)?;
    Ok(Clip {
        audio: Audio { sample_rate: rate, samples },
        duration_s: len as f32 / orig_sample_rate as f32,
        orig_sample_rate,
    })
}

/// The shard schema: codes as list<list<uint16>> (uint32 for codebooks above 65536 entries).
fn schema(wide: bool) -> Arc<Schema> {
    let code = if wide { DataType::UInt32 } else { DataType::UInt16 };
    let inner = DataType::List(Arc::new(Field::new("item", code, true)));
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("codes", DataType::List(Arc::new(Field::new("item", inner, true))), false),
        Field::new("n_q", DataType::Int32, false),
        Field::new("n_frames", DataType::Int32, false),
        Field::new("duration_s", DataType::Float32, false),
        Field::new("orig_sample_rate", DataType::Int32, false),
    ]))
}

/// One finished row.
struct Row {
    name: String,
    codes: Codes,
    duration_s: f32,
    orig_sample_rate: u32,
}

fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} does not fit the int32 column")))
}

fn record_batch(schema: &Arc<Schema>, rows: &[Row], wide: bool) -> Result<RecordBatch> {
    let codes: ArrayRef = if wide {
        let mut b = ListBuilder::new(ListBuilder::new(UInt32Builder::new()));
        for row in rows {
            for q in 0..row.codes.n_q {
                b.values().values().append_slice(row.codes.row(q));
                b.values().append(true);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    } else {
        let mut b = ListBuilder::new(ListBuilder::new(UInt16Builder::new()));
        for row in rows {
            for q in 0..row.codes.n_q {
                // Codes are below the codebook size (≤ 65536 here), checked by the model's quantiser.
                b.values().values().extend(row.codes.row(q).iter().map(|&c| Some(c as u16)));
                b.values().append(true);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    };
    let int_column = |f: &dyn Fn(&Row) -> usize, what: &str| -> Result<ArrayRef> {
        Ok(Arc::new(Int32Array::from(rows.iter().map(|r| to_i32(f(r), what)).collect::<Result<Vec<_>>>()?)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.name.as_str()))),
        codes,
        int_column(&|r| r.codes.n_q, "n_q")?,
        int_column(&|r| r.codes.n_frames, "n_frames")?,
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.duration_s))),
        int_column(&|r| r.orig_sample_rate as usize, "orig_sample_rate")?,
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::InvalidArgument(format!("shard rows: {e}")))
}

fn shard_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// The `path` column of every complete shard in `dir`, and the next shard number. Leftover temporary shards of a
/// killed run are removed.
fn scan_shards(dir: &Path) -> Result<(HashSet<String>, usize)> {
    let mut done = HashSet::new();
    let mut next = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.starts_with(".part-") && name.ends_with(".tmp") {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            continue;
        }
        let Some(number) = name.strip_prefix("part-").and_then(|n| n.strip_suffix(".parquet")) else { continue };
        let Ok(number) = number.parse::<usize>() else { continue };
        next = next.max(number + 1);
        let bad = |e: String| Error::Codes { path: path.clone(), msg: format!("cannot read this shard: {e}") };
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build()).map_err(|e| bad(e.to_string()))?;
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            let paths = batch
                .column_by_name("path")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| bad("no string column `path`".into()))?;
            done.extend((0..paths.len()).map(|i| paths.value(i).to_string()));
        }
    }
    Ok((done, next))
}

/// The shard being filled: written to `.part-NNNNN.parquet.tmp`, renamed to `part-NNNNN.parquet` when closed.
struct Shard {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    rows: usize,
}

struct Sink {
    dir: PathBuf,
    schema: Arc<Schema>,
    wide: bool,
    metadata: Vec<KeyValue>,
    shard_rows: usize,
    next: usize,
    shard: Option<Shard>,
    written: usize,
}

impl Sink {
    fn write(&mut self, rows: &[Row]) -> Result<()> {
        let mut rest = rows;
        while !rest.is_empty() {
            let shard = match &mut self.shard {
                Some(shard) => shard,
                None => {
                    let name = shard_name(self.next);
                    self.next += 1;
                    let tmp = self.dir.join(format!(".{name}.tmp"));
                    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
                    let props = WriterProperties::builder().set_key_value_metadata(Some(self.metadata.clone())).build();
                    let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(props))
                        .map_err(|e| Error::Codes { path: tmp.clone(), msg: e.to_string() })?;
                    self.shard.insert(Shard { writer, tmp, path: self.dir.join(name), rows: 0 })
                }
            };
            let take = (self.shard_rows - shard.rows).min(rest.len());
            let batch = record_batch(&self.schema, &rest[..take], self.wide)?;
            shard.writer.write(&batch).map_err(|e| Error::Codes { path: shard.tmp.clone(), msg: e.to_string() })?;
            shard.rows += take;
            self.written += take;
            rest = &rest[take..];
            if shard.rows == self.shard_rows {
                self.close()?;
            }
        }
        Ok(())
    }

    /// Finishes the shard in progress (if any): written, synced, then renamed into place.
    fn close(&mut self) -> Result<()> {
        let Some(shard) = self.shard.take() else { return Ok(()) };
        let file =
            shard.writer.into_inner().map_err(|e| Error::Codes { path: shard.tmp.clone(), msg: e.to_string() })?;
        file.sync_all().map_err(|e| Error::io(&shard.tmp, e))?;
        std::fs::rename(&shard.tmp, &shard.path).map_err(|e| Error::io(&shard.path, e))
    }
}

/// sha256 of the model file, hex.
fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The run's totals, for the summary line.
pub struct Summary {
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    pub hours: f64,
    pub seconds: f64,
}

/// The model loop's state: the shard sink, the errors file and the running totals.
struct Run<'a> {
    codec: &'a Codec,
    n_q: usize,
    sink: Sink,
    errors: File,
    errors_path: PathBuf,
    failed: usize,
    hours: f64,
    started: Instant,
    pb: indicatif::ProgressBar,
}

impl Run<'_> {
    /// Records a file that failed in `errors.jsonl` (flushed at once: a kill keeps it).
    fn fail(&mut self, item: &Item, e: &Error) -> Result<()> {
        self.failed += 1;
        self.pb.inc(1);
        // Written by hand so `path` comes first; the values are JSON-escaped strings.
        let (path, reason) = (serde_json::Value::from(item.name.as_str()), e.to_string().replace('\n', " "));
        let line = format!("{{\"path\": {path}, \"error\": {}}}", serde_json::Value::from(reason));
        writeln!(self.errors, "{line}").and_then(|()| self.errors.flush()).map_err(|e| Error::io(&self.errors_path, e))
    }

    /// Encodes the files read so far (`(index into todo, clip)`) in batched calls and writes their rows.
    fn encode(&mut self, todo: &[Item], batch: &mut Vec<(usize, Clip)>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (clips, audio): (Vec<_>, Vec<Audio>) =
            batch.drain(..).map(|(index, clip)| ((index, clip.duration_s, clip.orig_sample_rate), clip.audio)).unzip();
        let mut rows = Vec::with_capacity(clips.len());
        for ((index, duration_s, orig_sample_rate), result) in
            clips.into_iter().zip(crate::encode_each(self.codec, &audio, Some(self.n_q)))
        {
            let item = &todo[index];
            match result {
                Ok(codes) => {
                    self.hours += duration_s as f64 / 3600.0;
                    rows.push(Row { name: item.name.clone(), codes, duration_s, orig_sample_rate });
                }
                Err(e) => self.fail(item, &e)?,
            }
        }
        self.sink.write(&rows)?;
        self.pb.inc(rows.len() as u64);
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        self.pb.set_message(format!("{:.2} h of audio, {:.0} h/h", self.hours, self.hours * 3600.0 / elapsed));
        Ok(())
    }
}

/// Tokenizes `items` with `codec` (loaded from `model_path`) into `opts.output`.
pub fn run(codec: &Codec, model_path: &Path, items: Vec<Item>, opts: &Options) -> Result<Summary> {
    let started = Instant::now();
    let dir = &opts.output;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let n_q = codec.check_n_q(opts.codebooks.n_q)?;
    let (done, next) = scan_shards(dir)?;
    // Files already in complete shards are skipped; a name twice in the inputs is tokenized once.
    let skipped = items.iter().filter(|item| done.contains(&item.name)).count();
    let mut seen = done;
    let todo: Vec<Item> = items.into_iter().filter(|item| seen.insert(item.name.clone())).collect();

    let wide = codec.codebook_size() > 1 << 16;
    let metadata = vec![
        KeyValue::new("codec.arch".into(), codec.arch().to_string()),
        KeyValue::new("codec.sample_rate".into(), codec.sample_rate().to_string()),
        KeyValue::new("codec.hop".into(), codec.hop().to_string()),
        KeyValue::new("codec.model_sha256".into(), sha256_file(model_path)?),
        KeyValue::new("codec.n_q".into(), n_q.to_string()),
        KeyValue::new("codec.tool".into(), format!("codec-rs {}", env!("CARGO_PKG_VERSION"))),
    ];
    // In the file's key-value metadata and in the Arrow schema it embeds (which pyarrow and pandas read back).
    let arrow_metadata: std::collections::HashMap<_, _> =
        metadata.iter().map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default())).collect();
    let sink = Sink {
        dir: dir.clone(),
        schema: Arc::new(schema(wide).as_ref().clone().with_metadata(arrow_metadata)),
        wide,
        metadata,
        shard_rows: opts.shard_rows,
        next,
        shard: None,
        written: 0,
    };
    // Failures of this run only: earlier runs' failed files are in no shard, so they are tried again.
    let errors_path = dir.join("errors.jsonl");
    let errors = File::create(&errors_path).map_err(|e| Error::io(&errors_path, e))?;
    let pb = progress_bar(opts.quiet, todo.len());
    let mut run = Run { codec, n_q, sink, errors, errors_path, failed: 0, hours: 0.0, started, pb };

    // Readers: `jobs` threads take files in order of a shared counter and send them, read and resampled, to the
    // model loop; the bounded channel keeps a few batches read ahead, no more.
    let todo = Arc::new(todo);
    let (tx, rx) = mpsc::sync_channel::<(usize, Result<Clip>)>(opts.batch_size * 2);
    let counter = Arc::new(AtomicUsize::new(0));
    let rate = codec.sample_rate();
    let readers: Vec<_> = (0..opts.jobs.max(1))
        .map(|_| {
            let (todo, counter, tx) = (todo.clone(), counter.clone(), tx.clone());
            std::thread::spawn(move || loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let Some(item) = todo.get(i) else { break };
                if tx.send((i, load(&item.read, rate))).is_err() {
                    break;
                }
            })
        })
        .collect();
    drop(tx);

    // Files arrive out of order; rows are written in input order, so reruns and shards are deterministic.
    let mut pending = std::collections::BTreeMap::new();
    let (mut next_index, mut batch) = (0, Vec::with_capacity(opts.batch_size));
    for (i, result) in rx {
        pending.insert(i, result);
        while let Some(result) = pending.remove(&next_index) {
            match result {
                Ok(clip) => batch.push((next_index, clip)),
                Err(e) => run.fail(&todo[next_index], &e)?,
            }
            next_index += 1;
            if batch.len() == opts.batch_size {
                run.encode(&todo, &mut batch)?;
            }
        }
    }
    run.encode(&todo, &mut batch)?;
    for reader in readers {
        reader.join().map_err(|_| Error::InvalidArgument("a reader thread panicked".into()))?;
    }
    run.sink.close()?;
    run.pb.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(Summary { done: run.sink.written, skipped, failed: run.failed, hours: run.hours, seconds })
}

fn progress_bar(quiet: bool, files: usize) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(files as u64);
    let style =
        indicatif::ProgressStyle::with_template("tokenize [{bar:30}] {pos}/{len} files, {msg} [{elapsed}<{eta}]");
    pb.set_style(style.unwrap_or(indicatif::ProgressStyle::default_bar()));
    pb
}
