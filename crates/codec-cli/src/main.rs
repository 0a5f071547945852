//! `codec`: convert checkpoints, encode audio to codes, decode codes to audio, inspect and benchmark models.
//! Every failure prints one line (`error: <file>: <problem>`) and exits with status 1.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use codec::convert::{ConvertOptions, StorageDtype};
use codec::npy;
use codec::{Audio, Codec, Codes, DeviceKind, Error, Parts, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

mod tokenize;

#[derive(Parser)]
#[command(name = "codec", version, about = "Neural audio codecs: audio → discrete codes → audio")]
struct Cli {
    /// CPU threads (default: the physical cores; SMT siblings share one core's FMA units and only add contention).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// cpu, cuda, metal or auto.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// No progress output.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Arithmetic of the matrix products: f32 (exact, the default), bf16 (AVX-512 BF16 on CPU, up to 1.7x
    /// faster; on AVX2 CPUs bf16 operands multiplied in f32, faster only when streaming) or int8 (AVX-512 VNNI:
    /// linear layers in q8_0 blocks with int8 activations, the rest bf16); in the fast modes codes and audio
    /// differ slightly from the reference.
    #[arg(long, global = true, default_value = "f32")]
    precision: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ModelArg {
    /// A .gguf model file, or a hub model id such as kyutai/mimi (downloaded and converted once).
    #[arg(short = 'm', long = "model")]
    model: String,
}

/// `--n-q` of the commands that encode.
#[derive(Args, Clone, Copy)]
struct CodebooksArg {
    /// Number of codebooks (default: all).
    #[arg(long = "n-q")]
    n_q: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a checkpoint into a GGUF model file: a hub-style directory (config.json + *.safetensors), a
    /// .safetensors file, descript's DAC weights.pth, a WavTokenizer Lightning .ckpt (+ its YAML), or a Pocket TTS
    /// model.safetensors (+ its YAML; its tokenizer.json beside the YAML or the weights is embedded).
    Convert {
        /// The checkpoint: directory, .safetensors, .pth or .ckpt.
        src: PathBuf,
        /// The GGUF file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Architecture (default: detected from config.json or the tensor names).
        #[arg(long)]
        arch: Option<String>,
        /// The architecture's config: a transformers-style config.json, or the YAML of a WavTokenizer or Pocket TTS
        /// checkpoint.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Weight storage: f32, f16 or q8_0 (biases, norms and codebooks stay f32).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Encode audio (wav, flac, mp3, ogg; any rate and channels) into codes (.npy, int32, shape (n_q, frames)).
    Encode {
        #[command(flatten)]
        model: ModelArg,
        /// The audio file(s) to encode.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The codes file to write (.npy); with several inputs (or an existing directory), the directory that
        /// gets one <stem>.npy per input (created if missing).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        codebooks: CodebooksArg,
        #[command(flatten)]
        stream: StreamArg,
        #[command(flatten)]
        batch: BatchArg,
    },
    /// Tokenize a dataset: audio files (directories walked recursively, files, or .txt / .jsonl manifests) into
    /// Parquet shards OUT_DIR/part-NNNNN.parquet, one row per file (path, codes, n_q, n_frames, duration_s,
    /// orig_sample_rate). Failed files go to OUT_DIR/errors.jsonl; rerunning resumes, skipping files already in
    /// complete shards.
    Tokenize {
        #[command(flatten)]
        model: ModelArg,
        /// Directories, audio files and manifests (.txt: one path a line; .jsonl: a "path" field).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        options: tokenize::Options,
    },
    /// Decode codes (.npy, int32 or int64, shape (n_q, frames) or (1, n_q, frames)) into a WAV file.
    Decode {
        #[command(flatten)]
        model: ModelArg,
        /// The codes file(s) (.npy) to decode.
        #[arg(required = true)]
        codes: Vec<PathBuf>,
        /// The WAV file to write; with several inputs (or an existing directory), the directory that gets one
        /// <stem>.wav per input (created if missing).
        #[arg(short, long)]
        output: PathBuf,
        /// Write 16-bit PCM instead of 32-bit float.
        #[arg(long)]
        pcm16: bool,
        #[command(flatten)]
        stream: StreamArg,
        #[command(flatten)]
        batch: BatchArg,
    },
    /// Encode then decode; the output is trimmed to the input's length.
    Roundtrip {
        #[command(flatten)]
        model: ModelArg,
        /// The audio file to encode.
        input: PathBuf,
        /// The WAV file to write (as long as the input).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        codebooks: CodebooksArg,
        /// Write 16-bit PCM instead of 32-bit float.
        #[arg(long)]
        pcm16: bool,
        #[command(flatten)]
        stream: StreamArg,
    },
    /// Speak a text with a Pocket TTS model (`codec convert` makes one from pocket-tts's model.safetensors, its
    /// YAML config and tokenizer.json), optionally in the voice of an audio file.
    Tts {
        #[command(flatten)]
        model: ModelArg,
        /// The text to speak.
        text: String,
        /// The WAV file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// An audio file of the voice to speak in (any format, rate and channel count; the first 30 s are used; a
        /// silent one is an error).
        #[arg(long)]
        voice: Option<PathBuf>,
        /// Sampling temperature: the noise's variance (0: deterministic; default: the model's).
        #[arg(long)]
        temperature: Option<f64>,
        /// Flow steps per frame (LSD).
        #[arg(long, default_value_t = 1)]
        steps: usize,
        /// Seed of the sampling noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write 16-bit PCM instead of 32-bit float.
        #[arg(long)]
        pcm16: bool,
        /// Write each frame's audio as soon as it is made (80 ms at a time) and print the time to the first audio.
        #[arg(long)]
        stream: bool,
    },
    /// Print a model file's architecture, rates, codebooks, parameters and storage.
    Info {
        /// A .gguf model file or a hub model id.
        model: String,
    },
    /// Time encode and decode on synthetic audio and print the real-time factor.
    Bench {
        /// A .gguf model file or a hub model id (or --arch A --random).
        #[arg(short = 'm', long = "model", required_unless_present = "random")]
        model: Option<String>,
        /// Architecture of the random-weight model (with --random).
        #[arg(long, requires = "random")]
        arch: Option<String>,
        /// Build a full-size random-weight model in memory instead of loading one.
        #[arg(long, requires = "arch")]
        random: bool,
        /// Seconds of audio.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Timed runs of each direction (the best is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        codebooks: CodebooksArg,
        /// Clips per batched pass (encode_batch/decode_batch over this many copies of the input); the times are
        /// per batch and "x real time" counts all its audio.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[command(flatten)]
        stream: StreamArg,
    },
}

#[derive(Args, Clone, Copy)]
struct StreamArg {
    /// Run through the streaming API, MS milliseconds of audio per push (decode: the frames covering MS, at
    /// least one); the output equals the run without it. bench: per-push latency and real-time factor.
    #[arg(long = "stream-ms", value_name = "MS")]
    stream_ms: Option<f64>,
}

impl StreamArg {
    /// Samples per push at `rate`, or `None` without --stream-ms.
    fn samples(self, rate: u32) -> Result<Option<usize>> {
        match self.stream_ms {
            None => Ok(None),
            Some(ms) if ms.is_finite() && ms > 0.0 && ms <= 3.6e6 => {
                Ok(Some(((ms * rate as f64 / 1000.0).round() as usize).max(1)))
            }
            Some(ms) => {
                Err(Error::InvalidArgument(format!("--stream-ms must be more than 0 and at most one hour, not {ms}")))
            }
        }
    }

    /// Code frames per push (those covering MS, at least one), or `None` without --stream-ms.
    fn frames(self, codec: &Codec) -> Result<Option<usize>> {
        Ok(self.samples(codec.sample_rate())?.map(|samples| samples.div_ceil(codec.hop()).max(1)))
    }
}

#[derive(Args, Clone, Copy)]
struct BatchArg {
    /// With several inputs: files per model run (batched encode / decode).
    #[arg(long = "batch-size", value_name = "N", default_value_t = 8)]
    batch_size: usize,
}

/// A spinner with elapsed time on stderr; invisible with --quiet or when stderr is not a terminal.
fn spinner(quiet: bool, msg: String) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").unwrap_or(ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Loads the model for `parts`: `encode` and `decode` read only their half of the weights.
fn load(spec: &str, cli: &Cli, parts: Parts) -> Result<Codec> {
    load_file(&model_path(spec, cli)?, cli, parts)
}

/// [`load`] of a MODEL already resolved by [`model_path`].
fn load_file(path: &Path, cli: &Cli, parts: Parts) -> Result<Codec> {
    let device: DeviceKind = cli.device.parse()?;
    let pb = spinner(cli.quiet, format!("loading {}", path.display()));
    let codec = Codec::load_parts(path, device, parts);
    pb.finish_and_clear();
    codec
}

/// MODEL as a GGUF file to map: the file named, or a hub id's converted download. A checkpoint `codec convert` reads
/// (a directory, `.safetensors`, `.pth`, `.ckpt`) is an error that says how to make the GGUF, rather than that the
/// file is not one.
fn model_path(spec: &str, cli: &Cli) -> Result<PathBuf> {
    let path = codec::hub::resolve_model(spec, !cli.quiet)?;
    let checkpoint = path.is_dir()
        || path.extension().is_some_and(|e| ["safetensors", "pth", "ckpt"].iter().any(|c| e.eq_ignore_ascii_case(c)));
    if !checkpoint {
        return Ok(path);
    }
    Err(Error::InvalidArgument(format!(
        "{}: a checkpoint, not a GGUF model file; convert it once with `codec convert {} -o model.gguf` and pass \
         that",
        path.display(),
        path.display()
    )))
}

/// Checks an output path before any work: the format its extension names is the one we write, its directory exists,
/// and it is not a directory itself — so a typo costs nothing and a `.mp3` name never holds WAV data.
fn check_output(path: &Path, extension: &str) -> Result<()> {
    let bad = |problem: String| Err(Error::InvalidArgument(format!("{}: {problem}", path.display())));
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case(extension)) {
        return bad(format!("this command writes .{extension} files; give the output that extension"));
    }
    if path.is_dir() {
        return bad("is a directory".into());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return bad(format!("directory {} does not exist", dir.display()));
    }
    Ok(())
}

/// "wrote FILE (… s at … Hz)" on stderr unless --quiet.
fn wrote_audio(cli: &Cli, output: &Path, seconds: f64, sample_rate: u32) {
    if !cli.quiet {
        eprintln!("{}", wrote_audio_line(output, seconds, sample_rate));
    }
}

fn wrote_audio_line(output: &Path, seconds: f64, sample_rate: u32) -> String {
    format!("wrote {} ({seconds:.2} s at {sample_rate} Hz)", output.display())
}

/// A bar over code frames on stderr, moved after each chunk; invisible like the spinner.
fn frame_bar(quiet: bool, msg: &str, frames: usize) -> ProgressBar {
    let pb = spinner(quiet, msg.to_string());
    pb.set_length(frames as u64);
    let style = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} frames [{elapsed}<{eta}]");
    pb.set_style(style.unwrap_or(ProgressStyle::default_bar()));
    pb
}

/// Reads `input` chunk by chunk at the model's rate and encodes it as it reads, through a stream `push` samples at
/// a time (default: pieces of the codec's chunk length), so memory stays that of a piece however long the file.
/// Returns the codes and the input's length in samples.
/// Samples beyond full scale (|x| > 1, possible in float files) are encoded as they are, as the references do,
/// with a note.
fn encode_file(
    codec: &Codec,
    input: &Path,
    n_q: Option<usize>,
    push: Option<usize>,
    quiet: bool,
) -> Result<(Codes, usize)> {
    let mut reader = codec::audio::Reader::open(input, codec.sample_rate())?;
    let frames = reader.estimated_len().map_or(0, |n| n.div_ceil(codec.hop() as u64));
    // The codec's pieces for the length the file announces (a short clip is one piece, so one model pass).
    let piece = codec.pieces(frames as usize).first().map_or(codec.piece_frames(), |p| p.len());
    let push = push.unwrap_or(piece * codec.hop());
    let pb = frame_bar(quiet, "encoding", frames as usize);
    let mut stream = codec.stream_encoder_without_warm_up(n_q)?;
    let (mut parts, mut pending, mut total, mut peak) = (Vec::new(), Vec::new(), 0usize, 0f32);
    let take = |codes: Codes, parts: &mut Vec<Codes>| -> Result<()> {
        pb.inc(codes.n_frames as u64);
        parts.push(codes);
        Ok(())
    };
    while let Some(chunk) = reader.next_chunk()? {
        total += chunk.len();
        peak = chunk.iter().fold(peak, |m, v| m.max(v.abs()));
        pending.extend_from_slice(&chunk);
        // Whole pushes, keeping at least one sample back: the input's end goes through `finish`, so a clip that
        // fits one push runs the model once.
        let whole = pending.len().saturating_sub(1) / push * push;
        for piece in pending[..whole].chunks(push) {
            take(stream.push(piece)?, &mut parts)?;
        }
        pending.drain(..whole);
    }
    take(stream.finish(&pending)?, &mut parts)?;
    pb.finish_and_clear();
    if peak > 1.0 && !quiet {
        eprintln!("{}", loud_note(input, peak));
    }
    Ok((concat_codes(&parts, stream.n_q()), total))
}

/// The note for an input whose samples go beyond full scale.
fn loud_note(input: &Path, peak: f32) -> String {
    format!(
        "note: {} peaks at {peak:.3}, beyond full scale (1.0); encoding it as it is",
        printable(&input.display().to_string())
    )
}

/// Writes codes as `.npy` int32 `(n_q, n_frames)`; returns the line saying so.
fn save_codes(output: &Path, codes: &Codes) -> Result<String> {
    let data: Vec<i32> = codes.data.iter().map(|&c| c as i32).collect();
    npy::write_i32(output, &[codes.n_q, codes.n_frames], &data)?;
    Ok(format!("wrote {} ({} codebooks × {} frames)", output.display(), codes.n_q, codes.n_frames))
}

/// Several inputs, each written to `<dir>/<stem>.<extension>`, in batches of `batch_size` files per model run.
struct Many {
    jobs: Vec<Job>,
    batch_size: usize,
}

/// One input of [`Many`] and where its output goes.
struct Job {
    input: PathBuf,
    output: PathBuf,
}

impl Many {
    /// `Some` when the command has several inputs, or `-o` is an existing directory; `None` for one input and an
    /// output file (the single-file path). Checked before any work: the batch size, `-o` not naming a file, no
    /// two inputs with the same stem (their outputs would overwrite each other); the directory is created.
    fn plan(
        inputs: &[PathBuf],
        dir: &Path,
        extension: &str,
        stream: StreamArg,
        batch: BatchArg,
    ) -> Result<Option<Many>> {
        if inputs.len() == 1 && !dir.is_dir() {
            return Ok(None);
        }
        if batch.batch_size == 0 {
            return Err(Error::InvalidArgument("--batch-size must be at least 1".into()));
        }
        if stream.stream_ms.is_some() {
            return Err(Error::InvalidArgument("--stream-ms takes one input file (several run in batches)".into()));
        }
        let bad = |problem: String| Err(Error::InvalidArgument(format!("{}: {problem}", dir.display())));
        if dir.exists() && !dir.is_dir() {
            return bad("is not a directory; with several inputs -o names the directory to write to".into());
        }
        if !dir.exists() && dir.extension().is_some_and(|e| e.eq_ignore_ascii_case(extension)) {
            return bad(format!("with several inputs -o names a directory, not a .{extension} file"));
        }
        let mut seen = std::collections::HashMap::new();
        let mut jobs = Vec::with_capacity(inputs.len());
        for input in inputs {
            let stem = input.file_stem().ok_or_else(|| {
                Error::InvalidArgument(format!("{}: names no file", printable(&input.display().to_string())))
            })?;
            // Not `with_extension`, which would cut a stem's own dots (`take.2.wav` → `take.npy`).
            let mut name = stem.to_os_string();
            name.push(format!(".{extension}"));
            let output = dir.join(name);
            if let Some(first) = seen.insert(output.clone(), input) {
                return Err(Error::InvalidArgument(format!(
                    "{} and {} would both be written to {}; rename one",
                    first.display(),
                    input.display(),
                    output.display()
                )));
            }
            jobs.push(Job { input: input.clone(), output });
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(Some(Many { jobs, batch_size: batch.batch_size }))
    }

    /// Runs `batch` on the jobs a batch at a time under one progress bar over files. A file that fails is reported
    /// on one line naming it and the others go on; an error at the end if any failed.
    fn run(&self, cli: &Cli, what: &str, mut batch: impl FnMut(&[Job]) -> Vec<Result<String>>) -> Result<()> {
        let pb = spinner(cli.quiet, what.to_string());
        pb.set_length(self.jobs.len() as u64);
        let style = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} files [{elapsed}<{eta}]");
        pb.set_style(style.unwrap_or(ProgressStyle::default_bar()));
        let mut failed = 0;
        for jobs in self.jobs.chunks(self.batch_size) {
            for (job, result) in jobs.iter().zip(batch(jobs)) {
                match result {
                    Ok(lines) if !cli.quiet => pb.suspend(|| eprintln!("{lines}")),
                    Ok(_) => {}
                    Err(e) => {
                        failed += 1;
                        // Every line names its file: the library's checks of plain data name none.
                        let (msg, file) = (e.to_string(), job.input.display().to_string());
                        let msg = if msg.contains(&file) { msg } else { format!("{file}: {msg}") };
                        pb.suspend(|| eprintln!("error: {}", one_line(&msg)));
                    }
                }
            }
            pb.inc(jobs.len() as u64);
        }
        pb.finish_and_clear();
        match failed {
            0 => Ok(()),
            n => Err(Error::InvalidArgument(format!("{n} of {} files failed (see above)", self.jobs.len()))),
        }
    }
}

/// One batch of [`Many`]: each job's input is `read`; those read go through `run` together (one result each, in
/// order); `finish` writes each result. Returns each job's lines to print, or its error.
fn batched<T, U>(
    jobs: &[Job],
    read: impl Fn(&Job) -> Result<T>,
    run: impl FnOnce(&[T]) -> Vec<Result<U>>,
    finish: impl Fn(&Job, &T, U) -> Result<String>,
) -> Vec<Result<String>> {
    let (mut results, mut items, mut slots) = (Vec::with_capacity(jobs.len()), Vec::new(), Vec::new());
    for job in jobs {
        match read(job) {
            Ok(item) => {
                slots.push(results.len());
                items.push(item);
                results.push(Ok(String::new())); // replaced below
            }
            Err(e) => results.push(Err(e)),
        }
    }
    for ((slot, item), out) in slots.into_iter().zip(&items).zip(run(&items)) {
        results[slot] = out.and_then(|out| finish(&jobs[slot], item, out));
    }
    results
}

/// Encodes a batch of files: each read whole at the model's rate, those read encoded together, each written to its
/// `.npy` (with a note for audio beyond full scale).
fn encode_batch(codec: &Codec, jobs: &[Job], n_q: Option<usize>) -> Vec<Result<String>> {
    batched(
        jobs,
        |job| codec::audio::read_mono_at(&job.input, codec.sample_rate()),
        |audio| encode_each(codec, audio, n_q),
        |job, audio, codes| {
            let wrote = save_codes(&job.output, &codes)?;
            let peak = audio.samples.iter().fold(0f32, |m, v| m.max(v.abs()));
            Ok(if peak > 1.0 { format!("{}\n{wrote}", loud_note(&job.input, peak)) } else { wrote })
        },
    )
}

/// Each clip's codes, through batched passes; if the batch fails, each clip alone, so only the bad one fails.
fn encode_each(codec: &Codec, audio: &[Audio], n_q: Option<usize>) -> Vec<Result<Codes>> {
    match codec.encode_batch(audio, n_q) {
        Ok(codes) => codes.into_iter().map(Ok).collect(),
        Err(_) => audio.iter().map(|clip| codec.encode(clip, n_q)).collect(),
    }
}

/// Decodes a batch of codes files: each read and checked, those read decoded together, each written to its WAV.
fn decode_batch(codec: &Codec, jobs: &[Job], pcm16: bool) -> Vec<Result<String>> {
    batched(
        jobs,
        |job| read_codes(&job.input, codec),
        // Batched passes; if the batch fails, each sequence alone (as for encoding).
        |codes| match codec.decode_batch(codes) {
            Ok(audio) => audio.into_iter().map(Ok).collect(),
            Err(_) => codes.iter().map(|codes| codec.decode(codes)).collect(),
        },
        |job, _, audio| {
            codec::audio::write_wav(&job.output, &audio, pcm16)?;
            Ok(wrote_audio_line(&job.output, audio.samples.len() as f64 / audio.sample_rate as f64, audio.sample_rate))
        },
    )
}

/// Decodes `codes` into the WAV file `output`, written as it is produced: through a stream `push` frames at a time
/// (default: pieces of the codec's chunk length), or, for a model whose decoder cannot stream (WavTokenizer), as
/// the codec cuts its pass (`Codec::decode_to`) unless `push` was asked for. `length`: trim or zero-extend the audio
/// to that many samples. A failed run leaves no output file. Returns the seconds written.
fn decode_to_file(
    codec: &Codec,
    codes: &Codes,
    push: Option<usize>,
    output: &Path,
    pcm16: bool,
    length: Option<usize>,
    quiet: bool,
) -> Result<f64> {
    let mut writer = AudioOut::create(output, codec.sample_rate(), pcm16, length)?;
    let pb = frame_bar(quiet, "decoding", codes.n_frames);
    let result = (|| match codec.stream_decoder_without_warm_up() {
        Ok(mut stream) => {
            let push = push.unwrap_or_else(|| codec.pieces(codes.n_frames).first().map_or(1, |p| p.len()));
            for from in (0..codes.n_frames).step_by(push) {
                let to = (from + push).min(codes.n_frames);
                let piece = frames_of(codes, from..to);
                // The last piece with the flush: a short clip runs the model once.
                writer.write(&if to == codes.n_frames { stream.finish(&piece)? } else { stream.push(&piece)? })?;
                pb.set_position(to as u64);
            }
            Ok(())
        }
        Err(Error::Unsupported(_)) if push.is_none() => {
            codec.decode_to(codes, &mut |pcm| writer.write(pcm), &mut |done, _| pb.set_position(done as u64))
        }
        Err(e) => Err(e),
    })();
    pb.finish_and_clear();
    match result {
        Ok(()) => writer.finish(),
        Err(e) => {
            writer.abandon();
            Err(e)
        }
    }
}

/// A WAV output written as audio comes, optionally held to a fixed length; removed if abandoned.
struct AudioOut {
    writer: codec::audio::WavWriter,
    path: PathBuf,
    sample_rate: u32,
    length: Option<usize>,
}

impl AudioOut {
    fn create(path: &Path, sample_rate: u32, pcm16: bool, length: Option<usize>) -> Result<Self> {
        let writer = codec::audio::WavWriter::create(path, sample_rate, pcm16)?;
        Ok(Self { writer, path: path.to_path_buf(), sample_rate, length })
    }

    fn write(&mut self, samples: &[f32]) -> Result<()> {
        let room = self.length.map_or(usize::MAX, |n| n.saturating_sub(self.writer.samples_written() as usize));
        self.writer.write(&samples[..samples.len().min(room)])
    }

    /// Completes the file (zero-extended to the length, if one was given); returns its duration in seconds.
    fn finish(mut self) -> Result<f64> {
        if let Some(n) = self.length {
            let missing = n.saturating_sub(self.writer.samples_written() as usize);
            self.writer.write(&vec![0.0; missing])?;
        }
        let seconds = self.writer.samples_written() as f64 / self.sample_rate as f64;
        self.writer.finish()?;
        Ok(seconds)
    }

    fn abandon(self) {
        drop(self.writer);
        std::fs::remove_file(&self.path).ok();
    }
}

/// Frames `range` of `codes`.
fn frames_of(codes: &Codes, range: std::ops::Range<usize>) -> Codes {
    let data = (0..codes.n_q).flat_map(|q| &codes.row(q)[range.clone()]).copied().collect();
    Codes { n_q: codes.n_q, n_frames: range.len(), data }
}

/// Consecutive pieces of a stream's codes as one.
fn concat_codes(parts: &[Codes], n_q: usize) -> Codes {
    let n_frames = parts.iter().map(|p| p.n_frames).sum();
    let data = (0..n_q).flat_map(|q| parts.iter().flat_map(move |p| p.row(q).iter().copied())).collect();
    Codes { n_q, n_frames, data }
}

/// Names `file` in a library error that names none: the codec checks what it is given as plain data (lengths,
/// memory needed), without knowing which file it came from.
fn naming(file: &Path) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::InvalidArgument(msg) => Error::InvalidArgument(format!("{}: {msg}", file.display())),
        e => e,
    }
}

/// Reads codes per DESIGN.md (the checks live in the library, [`npy::read_codes`]).
fn read_codes(path: &Path, codec: &Codec) -> Result<Codes> {
    npy::read_codes(path, codec.max_n_q(), codec.codebook_size())
}

fn precision_name(p: codec::Precision) -> &'static str {
    match p {
        codec::Precision::F32 => "f32",
        codec::Precision::Bf16 => "bf16",
        codec::Precision::Int8 => "int8",
    }
}

fn run(cli: &Cli) -> Result<()> {
    let threads = match cli.threads {
        Some(0) => return Err(Error::InvalidArgument("--threads must be at least 1".into())),
        Some(n) if n > MAX_THREADS_PER_CPU * logical_cpus() => {
            let max = MAX_THREADS_PER_CPU * logical_cpus();
            if !cli.quiet {
                eprintln!("note: --threads {n} is more than {max} ({MAX_THREADS_PER_CPU} per CPU); using {max}");
            }
            max
        }
        Some(n) => n,
        None => physical_cores(),
    };
    // One pool for every kernel (see `init_thread_pool`); it cannot exist yet, nothing has run.
    codec::nn::init_thread_pool(threads).map_err(|e| Error::InvalidArgument(format!("--threads {threads}: {e}")))?;
    let precision = match cli.precision.as_str() {
        "f32" => codec::Precision::F32,
        "bf16" => codec::Precision::Bf16,
        "int8" => codec::Precision::Int8,
        other => return Err(Error::InvalidArgument(format!("--precision must be f32, bf16 or int8, not '{other}'"))),
    };
    if !codec::set_precision(precision) && !cli.quiet {
        let missing = if precision == codec::Precision::Int8 { "AVX-512 VNNI" } else { "AVX-512 BF16 or AVX2" };
        eprintln!("note: this CPU has no {missing}; computing in {}", precision_name(codec::nn::gemm::precision()));
    }
    match &cli.command {
        Command::Convert { src, output, arch, config, dtype } => {
            let opts = ConvertOptions {
                arch: arch.clone(),
                config: config.clone(),
                dtype: dtype.parse::<StorageDtype>()?,
                name: None,
            };
            let pb = spinner(cli.quiet, format!("converting {}", src.display()));
            let mut notes = Vec::new();
            let res = codec::convert::convert_with_notes(src, output, &opts, &mut notes);
            pb.finish_and_clear();
            if !cli.quiet {
                notes.iter().for_each(|n| eprintln!("note: {}", printable(n)));
            }
            res?;
            if !cli.quiet {
                eprintln!("wrote {}", output.display());
            }
            Ok(())
        }
        Command::Encode { model, inputs, output, codebooks: CodebooksArg { n_q }, stream, batch } => {
            let Some(outputs) = Many::plan(inputs, output, "npy", *stream, *batch)? else {
                check_output(output, "npy")?;
                let codec = load(&model.model, cli, Parts::Encoder)?;
                codec.check_n_q(*n_q)?;
                let push = stream.samples(codec.sample_rate())?;
                let (codes, _) = encode_file(&codec, &inputs[0], *n_q, push, cli.quiet).map_err(naming(&inputs[0]))?;
                let wrote = save_codes(output, &codes)?;
                if !cli.quiet {
                    eprintln!("{wrote}");
                }
                return Ok(());
            };
            let codec = load(&model.model, cli, Parts::Encoder)?;
            codec.check_n_q(*n_q)?;
            outputs.run(cli, "encoding", |batch| encode_batch(&codec, batch, *n_q))
        }
        Command::Decode { model, codes, output, pcm16, stream, batch } => {
            let Some(outputs) = Many::plan(codes, output, "wav", *stream, *batch)? else {
                check_output(output, "wav")?;
                let codec = load(&model.model, cli, Parts::Decoder)?;
                let push = stream.frames(&codec)?;
                let data = read_codes(&codes[0], &codec)?;
                let seconds =
                    decode_to_file(&codec, &data, push, output, *pcm16, None, cli.quiet).map_err(naming(&codes[0]))?;
                wrote_audio(cli, output, seconds, codec.sample_rate());
                return Ok(());
            };
            let codec = load(&model.model, cli, Parts::Decoder)?;
            outputs.run(cli, "decoding", |batch| decode_batch(&codec, batch, *pcm16))
        }
        Command::Roundtrip { model, input, output, codebooks: CodebooksArg { n_q }, pcm16, stream } => {
            check_output(output, "wav")?;
            // Each half loaded apart, the encoder dropped before decoding: its packed weights (a long input's pieces
            // pack them) are not held beside the decoder's. DAC 44.1 kHz, 2 min: peak RSS 655 → 487 MB.
            let (encoder, decoder) =
                (load(&model.model, cli, Parts::Encoder)?, load(&model.model, cli, Parts::Decoder)?);
            encoder.check_n_q(*n_q)?;
            let (push, push_frames) = (stream.samples(encoder.sample_rate())?, stream.frames(&decoder)?);
            if push.is_some() {
                // Before any work: a model whose decoder cannot stream fails now, not after encoding.
                decoder.stream_decoder_without_warm_up()?;
            }
            let (codes, length) = encode_file(&encoder, input, *n_q, push, cli.quiet).map_err(naming(input))?;
            drop(encoder);
            // As long as the input: trimmed, or zero-extended where a model's decoder returns a few samples fewer
            // than frames × hop (DAC with odd strides).
            let seconds = decode_to_file(&decoder, &codes, push_frames, output, *pcm16, Some(length), cli.quiet)
                .map_err(naming(input))?;
            wrote_audio(cli, output, seconds, decoder.sample_rate());
            Ok(())
        }
        Command::Tts { model, text, output, voice, temperature, steps, seed, pcm16, stream } => {
            check_output(output, "wav")?;
            let path = model_path(&model.model, cli)?;
            let file = codec::gguf::ModelFile::open(&path)?;
            let device = cli.device.parse::<DeviceKind>()?.device()?;
            let tts = codec::models::pocket_tts::PocketTts::load(&file, &device)?;
            let rate = tts.config.sample_rate as u32;
            // Text problems first: they need no audio read. Characters outside the vocabulary are spoken as the
            // model's unknown piece (as the package does), with a warning; a text with nothing else fails in the
            // library.
            tts.text_chunks(text)?;
            let unknown = tts.unknown_characters(text)?;
            if !unknown.is_empty() && !cli.quiet {
                eprintln!(
                    "warning: the model's vocabulary has no {}; read as its unknown piece",
                    codec::models::pocket_tts::quote_characters(&unknown)
                );
            }
            let voice = match voice {
                Some(v) => {
                    let audio = tts.read_voice(v)?;
                    if audio.truncated && !cli.quiet {
                        let length = audio.file_seconds.map(|s| format!(" of {s:.1} s")).unwrap_or_default();
                        eprintln!(
                            "note: {}: using the first {} s{length} as the voice",
                            v.display(),
                            tts.config.voice_max_seconds
                        );
                    }
                    Some(tts.voice_state_from_audio(&audio.samples).map_err(naming(v))?)
                }
                None => None,
            };
            let temperature = temperature.unwrap_or(tts.config.default_temperature);
            let how = codec::models::pocket_tts::Speech { temperature, steps: *steps, seed: *seed };
            let start = std::time::Instant::now();
            let mut first_audio = None;
            let samples = if *stream {
                let mut wav = codec::audio::WavWriter::create(output, rate, *pcm16)?;
                let mut written = 0usize;
                tts.synthesize_stream(text, voice.as_ref(), how, &mut |pcm| {
                    first_audio.get_or_insert_with(|| start.elapsed());
                    written += pcm.len();
                    wav.write(pcm)
                })?;
                wav.finish()?;
                written
            } else {
                let samples = tts.synthesize(text, voice.as_ref(), how)?;
                let n = samples.len();
                codec::audio::write_wav(output, &Audio { sample_rate: rate, samples }, *pcm16)?;
                n
            };
            let seconds = samples as f64 / rate as f64;
            if !cli.quiet {
                let took = start.elapsed().as_secs_f64();
                if let Some(first) = first_audio {
                    eprintln!("first audio after {:.0} ms", first.as_secs_f64() * 1000.0);
                }
                eprintln!(
                    "generated {seconds:.2} s of speech in {took:.2} s ({:.2}× real time)",
                    seconds / took.max(1e-9)
                );
            }
            wrote_audio(cli, output, seconds, rate);
            Ok(())
        }
        Command::Info { model } => info(model, cli),
        Command::Tokenize { model, inputs, options } => {
            let tokenize::Options { output, batch_size, shard_rows, jobs, .. } = options;
            for (value, flag) in [(*batch_size, "--batch-size"), (*shard_rows, "--shard-rows"), (*jobs, "--jobs")] {
                if value == 0 {
                    return Err(Error::InvalidArgument(format!("{flag} must be at least 1")));
                }
            }
            if output.exists() && !output.is_dir() {
                return Err(Error::InvalidArgument(format!("{}: is not a directory", output.display())));
            }
            let items = tokenize::collect_inputs(inputs)?;
            let path = model_path(&model.model, cli)?;
            let codec = load_file(&path, cli, Parts::Encoder)?;
            let opts = tokenize::Options { quiet: cli.quiet, ..options.clone() };
            let s = tokenize::run(&codec, &path, items, &opts)?;
            eprintln!(
                "tokenize: {} files done, {} skipped (already in shards), {} failed{}; {:.3} h of audio in {:.1} s ({:.0} h/h)",
                s.done,
                s.skipped,
                s.failed,
                if s.failed > 0 { format!(" (see {})", output.join("errors.jsonl").display()) } else { String::new() },
                s.hours,
                s.seconds,
                s.hours * 3600.0 / s.seconds.max(1e-9)
            );
            match s.failed {
                0 => Ok(()),
                n => Err(Error::InvalidArgument(format!(
                    "{n} files failed (see {})",
                    output.join("errors.jsonl").display()
                ))),
            }
        }
        Command::Bench { model, arch, random, seconds, runs, codebooks: CodebooksArg { n_q }, batch, stream } => {
            if model.is_some() && *random {
                return Err(Error::InvalidArgument("bench takes -m MODEL or --arch A --random, not both".into()));
            }
            let codec = match (model, arch) {
                (_, Some(arch)) if *random => {
                    let device = cli.device.parse::<DeviceKind>()?.device()?;
                    Codec::from_model(codec::models::random(arch, &device)?, device)
                }
                (Some(m), _) => load(m, cli, Parts::All)?,
                _ => return Err(Error::InvalidArgument("bench needs -m MODEL or --arch A --random".into())),
            };
            if *runs == 0 {
                return Err(Error::InvalidArgument("--runs must be at least 1".into()));
            }
            if !(1..=4096).contains(batch) {
                return Err(Error::InvalidArgument("--batch must be between 1 and 4096".into()));
            }
            match stream.samples(codec.sample_rate())? {
                Some(_) if *batch > 1 => {
                    Err(Error::InvalidArgument("--batch and --stream-ms cannot be combined".into()))
                }
                Some(push) => bench_stream(&codec, *seconds, push, *n_q, *runs),
                None => bench(&codec, *seconds, *runs, *n_q, *batch),
            }
        }
    }
}

fn info(spec: &str, cli: &Cli) -> Result<()> {
    let path = model_path(spec, cli)?;
    let file = codec::gguf::ModelFile::open(&path)?;
    let arch = file.architecture()?.to_string();
    // A TTS model is no codec: it is checked by building it, and described by its own line.
    let (codec, tts_line) = if arch == codec::models::pocket_tts::ARCH {
        let tts = codec::models::pocket_tts::PocketTts::load(&file, &DeviceKind::Cpu.device()?)?;
        let cfg = &tts.config;
        let frame_rate = cfg.sample_rate as f64 / cfg.hop() as f64;
        (
            None,
            Some(format!(
                "{} Hz audio from {frame_rate} latent frames of {} per second",
                cfg.sample_rate, cfg.latent_dim
            )),
        )
    } else {
        (Some(Codec::load(&path, DeviceKind::Cpu)?), None)
    };
    let tensors = file.tensor_list();
    let params: usize = tensors.iter().map(|(_, s, _)| s.iter().product::<usize>()).sum();
    let mut dtypes: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, _, d) in &tensors {
        *dtypes.entry(format!("{d:?}")).or_default() += 1;
    }
    println!("file:           {}", printable(&path.display().to_string()));
    println!("architecture:   {}", printable(&arch));
    if let Ok(name) = file.string(codec::gguf::keys::NAME) {
        println!("name:           {}", printable(name));
    }
    if let Some(line) = &tts_line {
        println!("text-to-speech: {line}");
    }
    if let Some(codec) = &codec {
        println!("sample rate:    {} Hz", codec.sample_rate());
        println!("hop:            {} samples", codec.hop());
        println!("frame rate:     {} Hz", codec.frame_rate());
        println!("max n_q:        {}", codec.max_n_q());
        println!("codebook size:  {}", codec.codebook_size());
    }
    println!("parameters:     {params} ({:.1} M)", params as f64 / 1e6);
    let dtypes: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} × {n}")).collect();
    println!("tensors:        {} ({})", tensors.len(), dtypes.join(", "));
    println!("file size:      {} bytes ({:.1} MiB)", file.file_size, file.file_size as f64 / (1 << 20) as f64);
    println!("metadata:");
    for (k, v) in file.metadata_lines() {
        // Embedded documents (a tokenizer.json) are named, not printed.
        let v = if v.len() > 200 { format!("({} bytes)", v.len()) } else { v };
        println!("  {} = {}", printable(&k), printable(&v));
    }
    Ok(())
}

/// An error message as one printable line.
fn one_line(msg: &str) -> String {
    printable(&msg.replace('\n', " "))
}

/// `s` with control characters (NULs, terminal escape sequences from a hostile file, newlines) escaped, so text
/// taken from files cannot drive the terminal or break the one-line error format.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// `seconds` of a chirp with harmonics at the model's rate: deterministic, non-trivial bench input.
fn bench_input(codec: &Codec, seconds: f64) -> Result<Audio> {
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86400.0 {
        return Err(Error::InvalidArgument("--seconds must be positive (and at most a day)".into()));
    }
    let sr = codec.sample_rate();
    let len = (seconds * sr as f64).round() as usize;
    let samples: Vec<f32> = (0..len)
        .map(|i| {
            let t = i as f64 / sr as f64;
            let f = 110.0 + 400.0 * t / seconds;
            (0.3 * (2.0 * std::f64::consts::PI * f * t).sin() + 0.1 * (6.0 * std::f64::consts::PI * f * t).sin()) as f32
        })
        .collect();
    Ok(Audio { sample_rate: sr, samples })
}

/// Streams `seconds` of audio through the encoder `push` samples at a time, then its codes through the decoder a
/// push's worth of frames at a time, and prints each direction's per-push latency (p50 / p99 / max) and real-time
/// factor, after a warm-up stream.
fn bench_stream(codec: &Codec, seconds: f64, push: usize, n_q: Option<usize>, runs: usize) -> Result<()> {
    let n_q = codec.check_n_q(n_q)?;
    let audio = bench_input(codec, seconds)?;
    let ms = push as f64 * 1000.0 / codec.sample_rate() as f64;
    println!(
        "bench --stream-ms {ms:.1}: {seconds} s, n_q {n_q}, {} threads, {push} samples a push, best of {runs}",
        candle_core_threads()
    );
    // Warm-up: a model's first runs read its weights in place and a later one packs them (a one-time cost, see
    // `nn::weight`); the timed streams see the packed weights a long-lived stream works with.
    let warm_up = &audio.samples[..(4 * push).min(audio.samples.len())];
    let mut enc = codec.stream_encoder(Some(n_q))?;
    let mut parts = warm_up.chunks(push).map(|piece| enc.push(piece)).collect::<Result<Vec<_>>>()?;
    parts.push(enc.flush()?);
    let codes = concat_codes(&parts, n_q);
    if let Ok(mut dec) = codec.stream_decoder() {
        for frame in 0..codes.n_frames {
            dec.push(&frames_of(&codes, frame..frame + 1))?;
        }
    }
    // Each timed run is a new stream over the whole input; the run with the least total time is reported (as the
    // whole-clip bench reports its best run), its pushes' latencies with it.
    let mut best = Vec::new();
    let mut codes = Codes { n_q, n_frames: 0, data: Vec::new() };
    for _ in 0..runs {
        let mut enc = codec.stream_encoder(Some(n_q))?;
        let (mut times, mut parts) = (Vec::new(), Vec::new());
        for piece in audio.samples.chunks(push) {
            let t = Instant::now();
            parts.push(enc.push(piece)?);
            times.push(t.elapsed().as_secs_f64());
        }
        parts.push(enc.flush()?);
        keep_best(&mut best, times);
        codes = concat_codes(&parts, n_q);
    }
    print_latency("encode", &mut best, seconds);
    let frames = push.div_ceil(codec.hop()).max(1);
    let mut best = Vec::new();
    for _ in 0..runs {
        let mut dec = match codec.stream_decoder() {
            Ok(dec) => dec,
            Err(Error::Unsupported(why)) => {
                println!("decode: does not stream ({why})");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut times = Vec::new();
        for from in (0..codes.n_frames).step_by(frames) {
            let piece = frames_of(&codes, from..(from + frames).min(codes.n_frames));
            let t = Instant::now();
            dec.push(&piece)?;
            times.push(t.elapsed().as_secs_f64());
        }
        dec.flush()?;
        keep_best(&mut best, times);
    }
    print_latency("decode", &mut best, seconds);
    Ok(())
}

/// Keeps in `best` whichever of it and `times` (one run's per-push seconds) took less in all; `best` empty = none yet.
fn keep_best(best: &mut Vec<f64>, times: Vec<f64>) {
    if best.is_empty() || times.iter().sum::<f64>() < best.iter().sum::<f64>() {
        *best = times;
    }
}

/// One line of per-push latencies (sorted in place) and the real-time factor over `seconds` of audio.
fn print_latency(what: &str, times: &mut [f64], seconds: f64) {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times.get(((times.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0) * 1e3;
    let total: f64 = times.iter().sum();
    println!(
        "{what}: {} pushes, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; RTF {:.4} ({:.1}x real time)",
        times.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        total / seconds,
        seconds / total
    );
}

fn bench(codec: &Codec, seconds: f64, runs: usize, n_q: Option<usize>, batch: usize) -> Result<()> {
    let n_q = codec.check_n_q(n_q)?;
    let audio = bench_input(codec, seconds)?;
    let sr = codec.sample_rate();
    let on_cpu = codec.device().is_cpu();
    let device = if on_cpu { format!("{} threads", candle_core_threads()) } else { format!("{:?}", codec.device()) };
    println!(
        "bench: {seconds} s at {sr} Hz, batch {batch}, n_q {n_q}, {device}, precision {}, best of {runs}",
        precision_name(codec::nn::gemm::precision())
    );
    // A batch of one is a single run (`encode_batch` passes a lone clip to `encode`).
    let clips = vec![audio.clone(); batch];
    let encode = || codec.encode_batch(&clips, Some(n_q));
    let decode = |codes: &[Codes]| codec.decode_batch(codes).map(drop);
    if !on_cpu {
        // A GPU's first pass loads kernels and sizes its allocator: not what a long-running user sees.
        decode(&encode()?)?;
    }
    let mut codes = Vec::new();
    let mut best_enc = f64::INFINITY;
    let flops = codec::nn::gemm::flops_done();
    for _ in 0..runs {
        let t = Instant::now();
        codes = encode()?;
        best_enc = best_enc.min(t.elapsed().as_secs_f64());
    }
    let enc_flops = (codec::nn::gemm::flops_done() - flops) as f64 / runs.max(1) as f64;
    let mut best_dec = f64::INFINITY;
    let flops = codec::nn::gemm::flops_done();
    for _ in 0..runs {
        let t = Instant::now();
        decode(&codes)?;
        best_dec = best_dec.min(t.elapsed().as_secs_f64());
    }
    let dec_flops = (codec::nn::gemm::flops_done() - flops) as f64 / runs.max(1) as f64;
    let audio_seconds = seconds * batch as f64;
    for (what, t, flops) in [("encode", best_enc, enc_flops), ("decode", best_dec, dec_flops)] {
        // The GEMM counter sees the CPU kernels only.
        let gemm = if flops > 0.0 {
            format!("  GEMM {:.1} GFLOP, {:.1} GFLOP/s", flops / 1e9, flops / 1e9 / t)
        } else {
            String::new()
        };
        println!(
            "{what}: {:8.1} ms  RTF {:.4}  ({:.1}x real time){gemm}",
            t * 1e3,
            t / audio_seconds,
            audio_seconds / t,
        );
    }
    // Stage times read the host clock between asynchronous GPU launches: meaningful on the CPU only.
    let stages = if on_cpu && batch == 1 { codec.stage_times(&audio, n_q)? } else { Vec::new() };
    if !stages.is_empty() {
        println!("stages (one more run; GEMM GFLOP/s counts the matrix products only):");
        for s in stages {
            let secs = s.time.as_secs_f64();
            let rate = if s.gemm_flops > 0 {
                format!("{:7.1} GFLOP/s", s.gemm_flops as f64 / 1e9 / secs)
            } else {
                String::new()
            };
            println!("  {:24} {:8.1} ms  {rate}", s.name, secs * 1e3);
        }
    }
    Ok(())
}

/// More threads than this per logical CPU only add contention (and `--threads 10000` would start 10000 threads).
const MAX_THREADS_PER_CPU: usize = 4;

fn logical_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Physical cores (distinct core ids per package in sysfs), or the logical CPUs where that is unreadable.
fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let read = |cpu: usize, what: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{what}")).ok()
    };
    let cores: Option<std::collections::HashSet<(String, String)>> =
        (0..logical).map(|cpu| Some((read(cpu, "physical_package_id")?, read(cpu, "core_id")?))).collect();
    // Inside a CPU-limited container the affinity mask can be smaller than the core count: take the smaller.
    cores.map_or(logical, |c| c.len().clamp(1, logical))
}

fn candle_core_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Freed blocks kept on the heap for the next layer ([`codec::keep_freed_memory`]: without it 18 % of a Mimi run in
/// `perf` went to page faults and page zeroing).
///
/// The heap's first [`HUGE_HEAP`] bytes are then reserved and advised as transparent huge pages: a one-shot command
/// still faults in every page of its activations once (a 10 s Mimi encode: 57 000 faults, a tenth of its CPU time in
/// the kernel), and a 2 MiB page takes one fault where 4 KiB pages take 512. Address space only: nothing is resident
/// until touched. Where THP is off (or `never`), the advice is refused and pages fault in as before.
fn prepare_heap() {
    codec::keep_freed_memory();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: the block is freed at once and only advised (MADV_HUGEPAGE changes how its pages are backed, never
    // their contents) within its own page-aligned range.
    unsafe {
        const HUGE_PAGE: usize = 2 << 20;
        let block = libc::malloc(HUGE_HEAP);
        if !block.is_null() {
            let start = (block as usize).next_multiple_of(HUGE_PAGE);
            let end = (block as usize + HUGE_HEAP) / HUGE_PAGE * HUGE_PAGE;
            if end > start {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
            // Below the trim threshold: the block stays the heap's top, advised, for the model's allocations.
            libc::free(block);
        }
    }
}

/// Heap reserved as transparent huge pages at start-up (address space; see [`prepare_heap`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_HEAP: usize = 1 << 29;

/// The last panic's message and place, kept by the panic hook instead of printed: a panic the library turns into
/// an error (a hostile file in a third-party decoder) prints nothing, and one that escapes is reported by `main`
/// as one line, never a backtrace.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn main() -> ExitCode {
    prepare_heap();
    // Errors stay one line: candle attaches a backtrace to its errors whenever RUST_BACKTRACE is set, which our
    // message then carries. RUST_LIB_BACKTRACE (which wins over RUST_BACKTRACE for errors, not for panics) turns
    // that off unless the user sets it explicitly. Set before any thread starts.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // Like any Unix filter, end quietly when the reader of our output goes away (`codec bench | head`); Rust
    // ignores SIGPIPE, which turns the next print into a panic.
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition before any threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::panic::set_hook(Box::new(|info| {
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(format!("{msg}{place}"));
        }
    }));
    let cli = Cli::parse();
    let result = std::panic::catch_unwind(|| run(&cli)).unwrap_or_else(|_| {
        let what = LAST_PANIC.lock().ok().and_then(|mut p| p.take()).unwrap_or_default();
        Err(Error::InvalidArgument(format!("internal error (please report): {what}")))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
