//! f32 GEMM throughput on the shapes our models multiply: our packed GEMM (`nn::gemm`) against candle's matmul (the
//! `gemm` crate), `C (M × N) = A (M × K) · B (K × N)`, all row-major. A benchmark, not a test: it prints and never
//! fails on time. Compare with OpenBLAS on the same shapes: `python scripts/gemm_reference.py` (numpy).
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p codec --example gemm_bench

use std::time::Instant;

use candle_core::{Device, Tensor};
use codec::nn::gemm::{gemm, gemm_int8, Epilogue, Output, Packed, PackedQ8, Strided};

/// (what, M, N, K): convs are M = C_out, K = C_in · kernel, N = output samples (10 s of audio, one chunk of them
/// for the long SEANet rows); linear layers are M = frames, K = d_in, N = d_out (a stream's step: the 2 frames of
/// an 80 ms push).
pub const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("mimi seanet res k3 64->32", 32, 60000, 192),
    ("mimi seanet k1 32->64", 64, 60000, 32),
    ("mimi down 64->128 k8/4", 128, 60000, 512),
    ("mimi down 256->512 k12/6", 512, 2000, 3072),
    ("mimi down 512->1024 k16/8", 1024, 250, 8192),
    ("mimi stream step qkv", 2, 1536, 512),
    ("mimi stream step fc2", 2, 512, 2048),
    ("mimi transformer qkv/o", 250, 512, 512),
    ("mimi transformer fc1", 250, 2048, 512),
    ("mimi transformer fc2", 250, 512, 2048),
    ("dac res k7 512", 512, 5512, 3584),
    ("dac res k7 96", 96, 60000, 672),
    ("wavtokenizer pwconv1", 750, 2304, 768),
    ("wavtokenizer pwconv2", 750, 768, 2304),
    ("wavtokenizer istft", 750, 1280, 642),
];

/// CPU seconds used by the whole process: on a loaded machine, single-threaded, the fairer clock.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best of `runs` after a warm-up; wall seconds, or process CPU seconds with `CODEC_BENCH_CPU_TIME=1`.
fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    let cpu = std::env::var_os("CODEC_BENCH_CPU_TIME").is_some();
    f();
    (0..runs)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_seconds());
            f();
            if cpu {
                cpu_seconds() - c
            } else {
                t.elapsed().as_secs_f64()
            }
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    println!("threads {}, kernel {:?}", rayon::current_num_threads(), codec::nn::gemm::isa());
    println!(
        "{:28} {:>5} {:>6} {:>5}  {:>9} {:>9} {:>9}  ratio",
        "shape", "M", "N", "K", "ours", "prepacked", "candle"
    );
    let (mut ours_total, mut candle_total, mut flop_total) = (0.0, 0.0, 0.0);
    for &(what, m, n, k) in SHAPES {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu).unwrap();
        let (av, bv) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let mut c = vec![0f32; m * n];
        let runs = 5;
        let ours = best_of(runs, || {
            let mut out = Output::row_major(&mut c, m, n).unwrap();
            let (am, bm) = (Strided::row_major(&av, m, k).unwrap(), Strided::row_major(&bv, k, n).unwrap());
            gemm(m, n, k, &am, &bm, &mut out, &Epilogue::default());
        });
        // The weight (A for convs, B for linear layers) packed ahead of time, as the models do.
        let weight_is_a = !["transformer", "stream step", "wavtokenizer"].iter().any(|linear| what.contains(linear));
        let (am, bm) = (Strided::row_major(&av, m, k).unwrap(), Strided::row_major(&bv, k, n).unwrap());
        let (pa, pb) = (Packed::a(&am, m, k), Packed::b(&bm, k, n));
        let mut prepacked_run = || {
            let mut out = Output::row_major(&mut c, m, n).unwrap();
            if weight_is_a {
                gemm(m, n, k, &pa, &bm, &mut out, &Epilogue::default())
            } else {
                gemm(m, n, k, &am, &pb, &mut out, &Epilogue::default())
            }
        };
        let prepacked = best_of(runs, &mut prepacked_run);
        let bf16 = codec::set_precision(codec::Precision::Bf16).then(|| best_of(runs, &mut prepacked_run));
        codec::set_precision(codec::Precision::F32);
        // int8 serves linear layers (weights the right factor), quantised once like the layers do.
        let int8 = (!weight_is_a && codec::nn::gemm::int8_supported()).then(|| {
            let q = PackedQ8::b(&bm, k, n);
            best_of(runs, || {
                gemm_int8(m, n, &av, &q, &mut Output::row_major(&mut c, m, n).unwrap(), &Epilogue::default())
            })
        });
        let stock = best_of(runs, || {
            a.matmul(&b).unwrap();
        });
        let gflop = 2.0 * (m * n * k) as f64 / 1e9;
        ours_total += prepacked;
        candle_total += stock;
        flop_total += gflop;
        println!(
            "{what:28} {m:5} {n:6} {k:5}  {:6.1} GF {:6.1} GF {:6.1} GF  {:.2}x  bf16 {:6.1} GF{}",
            gflop / ours,
            gflop / prepacked,
            gflop / stock,
            stock / prepacked,
            bf16.map_or(0.0, |t| gflop / t),
            int8.map_or(String::new(), |t| format!("  int8 {:6.1} GF", gflop / t))
        );
    }
    println!(
        "all shapes: ours (weights prepacked) {:.1} GFLOP/s, candle {:.1} GFLOP/s",
        flop_total / ours_total,
        flop_total / candle_total
    );
}
