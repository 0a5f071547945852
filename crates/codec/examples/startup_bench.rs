//! Start-up cost of loading a model file (issue 7, item 4).
//!
//! ```sh
//! # full-size, published-shape Mimi with random weights, in the three storage dtypes
//! cargo run --release -p codec --example startup_bench -- make /tmp/mimi-full
//! #   → /tmp/mimi-full-f32.gguf, /tmp/mimi-full-f16.gguf, /tmp/mimi-full-q8_0.gguf
//! # time open / load_tensors / model build (best of RUNS), and candle's QTensor path for comparison
//! cargo run --release -p codec --example startup_bench -- load /tmp/mimi-full-f32.gguf [RUNS]
//! # one fresh process, as `codec encode` runs it: open, build the encoder, then three encodes of IN_AUDIO
//! cargo run --release -p codec --example startup_bench -- phases /tmp/mimi-full-f32.gguf short.wav
//! ```
//! The weights are meaningless; only their names, shapes and storage dtypes match a converted kyutai/mimi (files
//! converted from `scripts/make_fixtures.py --full-size` time the same).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use codec::convert::StorageDtype;
use codec::gguf::{ModelFile, Writer};
use codec::models::mimi::{Mimi, MimiConfig};

/// Hands the model random tensors of whatever shape it asks for and records them.
struct Recorder(Arc<Mutex<Vec<(String, Tensor)>>>);

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)?;
        self.0.lock().unwrap().push((name.to_string(), t.clone()));
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("no shape for '{name}'")
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

fn make(prefix: &str) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = MimiConfig::published(32);
    let rec = Arc::new(Mutex::new(Vec::new()));
    let vb = VarBuilder::from_backend(Box::new(Recorder(rec.clone())), DType::F32, Device::Cpu);
    Mimi::new(cfg.clone(), vb.into())?;
    let tensors = std::mem::take(&mut *rec.lock().unwrap());
    let n: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    println!("{} tensors, {n} parameters", tensors.len());
    for (dtype, suffix) in [(StorageDtype::F32, "f32"), (StorageDtype::F16, "f16"), (StorageDtype::Q8_0, "q8_0")] {
        let mut w = Writer::new("mimi", "mimi-random-full-size");
        cfg.to_gguf(&mut w);
        for (name, t) in &tensors {
            // As the converter does: codebooks stay f32.
            w.tensor(name, t, dtype, name.ends_with("codebook.embed"))?;
        }
        let out = format!("{prefix}-{suffix}.gguf");
        w.write(Path::new(&out))?;
        println!("wrote {out} ({} bytes)", std::fs::metadata(&out)?.len());
    }
    Ok(())
}

/// The loader before issue 7: candle's `Content::tensor` through a BufReader → QTensor → dequantize → f32.
fn load_qtensor_path(path: &Path) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut reader = BufReader::new(File::open(path)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let mut out = HashMap::new();
    for name in content.tensor_infos.keys() {
        let q = content.tensor(&mut reader, name, &Device::Cpu)?;
        out.insert(name.clone(), q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?);
    }
    Ok(out)
}

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            drop(std::hint::black_box(f()));
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn load(path: &str, runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let path = Path::new(path);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let t_open = best(runs, || ModelFile::open(path).unwrap());
    let file = ModelFile::open(path)?;
    let t_load = best(runs, || file.load_tensors(&Device::Cpu).unwrap());
    let t_model = best(runs, || codec::models::load(&file, &Device::Cpu, codec::Parts::All).unwrap());
    let t_old = best(runs, || load_qtensor_path(path).unwrap());
    println!(
        "{}: open {:.1} ms, load_tensors {:.1} ms, open+load+build model {:.1} ms (best of {runs}); \
         candle QTensor path {:.1} ms",
        path.display(),
        ms(t_open),
        ms(t_load),
        ms(t_open + t_model),
        ms(t_old)
    );
    Ok(())
}

/// `codec encode`'s steps, each timed once, in a process set up as the CLI sets itself up.
fn phases(path: &str, audio: &str) -> Result<(), Box<dyn std::error::Error>> {
    // What the CLI's keep_freed_memory does.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    let (path, dev) = (Path::new(path), Device::Cpu);
    // Wall time, and CPU time of the process (all threads; steadier than wall time on a busy machine).
    let cpu = || -> f64 {
        #[cfg(target_os = "linux")]
        unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut u);
            let t = |v: libc::timeval| v.tv_sec as f64 * 1e3 + v.tv_usec as f64 / 1e3;
            t(u.ru_utime) + t(u.ru_stime)
        }
        #[cfg(not(target_os = "linux"))]
        0.0
    };
    let mut c = cpu();
    let mut ms = |t: Instant| {
        let now = cpu();
        let s = format!("{:.1} ms (cpu {:.1})", t.elapsed().as_secs_f64() * 1e3, now - c);
        c = now;
        s
    };
    let t = Instant::now();
    let file = ModelFile::open(path)?;
    print!("open {}", ms(t));
    let t = Instant::now();
    let model = codec::models::load(&file, &dev, codec::Parts::Encoder)?;
    print!(", build encoder {}", ms(t));
    let codec = codec::Codec::from_model(model, dev);
    let t = Instant::now();
    let input = codec::audio::read_mono_at(Path::new(audio), codec.sample_rate())?;
    print!(", read audio {}", ms(t));
    for i in 0..3 {
        let t = Instant::now();
        codec.encode(&input, None)?;
        print!(", encode #{i} {}", ms(t));
    }
    println!();
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["make", prefix] => make(prefix),
        ["load", path] => load(path, 3),
        ["load", path, runs] => load(path, runs.parse()?),
        ["phases", path, audio] => phases(path, audio),
        _ => Err("usage: startup_bench make PREFIX | load FILE.gguf [RUNS] | phases FILE.gguf AUDIO".into()),
    }
}
