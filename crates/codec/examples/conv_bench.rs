//! Micro-benchmark of our CPU convolutions against candle's stock ones, on the shapes of full-size Mimi's SEANet
//! (10 s at 24 kHz). `RAYON_NUM_THREADS=2 cargo run --release -p codec --example conv_bench`
//! A benchmark, not a test: it prints times and never fails on them.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use codec::nn::conv::{Conv1d, ConvConfig, ConvTranspose1d, PadMode, Padding};

const RUNS: usize = 3;

/// A random weight of `shape` and a VarBuilder holding it (and a zero bias), for building a layer from it.
fn weights(shape: (usize, usize, usize), c_out: usize) -> (Tensor, VarBuilder<'static>) {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.1, shape, &dev).unwrap();
    let mut m = HashMap::new();
    m.insert("weight".to_string(), w.clone());
    m.insert("bias".to_string(), Tensor::zeros(c_out, DType::F32, &dev).unwrap());
    (w, VarBuilder::from_tensors(m, DType::F32, &dev))
}

/// Mean seconds per call after one warm-up.
fn time(f: impl Fn() -> Tensor) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..RUNS {
        f();
    }
    start.elapsed().as_secs_f64() / RUNS as f64
}

fn main() {
    // As the `codec` binary does: keep freed blocks on the heap, or every call pays page faults on its output.
    // SAFETY: plain mallopt calls before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    let dev = Device::Cpu;
    println!("conv1d (c_in -> c_out, kernel, stride, input length): ours vs candle");
    for &(ci, co, k, s, t) in &[
        (1, 64, 7, 1, 240000),
        (64, 1, 7, 1, 240000),
        (64, 32, 3, 1, 240000),
        (32, 64, 1, 1, 240000),
        (64, 128, 8, 4, 240000),
        (128, 256, 10, 5, 60000),
        (256, 512, 12, 6, 12000),
        (512, 1024, 16, 8, 2000),
        (1024, 512, 3, 1, 250),
    ] {
        let (w, vb) = weights((co, ci, k), co);
        let conv =
            Conv1d::new(ci, co, ConvConfig::new(k, Padding::Causal, PadMode::Constant).stride(s), vb.into()).unwrap();
        let x = Tensor::randn(0f32, 1., (1, ci, t), &dev).unwrap();
        let ours = time(|| conv.forward(&x).unwrap());
        let padded = x.pad_with_zeros(2, k - s, 0).unwrap();
        let stock = time(|| padded.conv1d(&w, 0, s, 1, 1).unwrap());
        let gflop = 2.0 * (ci * co * k) as f64 * (t / s) as f64 / 1e9;
        println!(
            "{ci:5} -> {co:5} k{k:2} s{s} T{t:6}: ours {:7.2} ms {:6.1} GFLOP/s | candle {:7.2} ms {:6.1} GFLOP/s",
            ours * 1e3,
            gflop / ours,
            stock * 1e3,
            gflop / stock
        );
    }
    println!("3-tap convs (WavTokenizer's pos_net at 75 and 40 Hz), direct vs Winograd F(4, 3); direct-conv FLOPs");
    for &(ci, co, t) in &[(768, 768, 750), (768, 768, 400), (512, 256, 2000)] {
        let (_, vb) = weights((co, ci, 3), co);
        let direct = Conv1d::new(ci, co, ConvConfig::torch(3, 1), vb.clone().into()).unwrap();
        let winograd = Conv1d::new(ci, co, ConvConfig::torch(3, 1).winograd(), vb.into()).unwrap();
        let x = Tensor::randn(0f32, 1., (1, ci, t), &dev).unwrap();
        let gflop = 2.0 * (ci * co * 3) as f64 * t as f64 / 1e9;
        let ours = time(|| direct.forward(&x).unwrap());
        let fast = time(|| winograd.forward(&x).unwrap());
        println!(
            "{ci:5} -> {co:5} k 3 s1 T{t:6}: direct {:7.2} ms {:6.1} GFLOP/s | Winograd {:7.2} ms {:6.1} GFLOP/s",
            ours * 1e3,
            gflop / ours,
            fast * 1e3,
            gflop / fast
        );
    }
    println!("conv-transpose1d (causal trim): ours");
    for &(ci, co, k, s, t) in
        &[(1024, 512, 16, 8, 250), (512, 256, 12, 6, 2000), (256, 128, 10, 5, 12000), (128, 64, 8, 4, 60000)]
    {
        let cfg = ConvConfig::new(k, Padding::Causal, PadMode::Constant).stride(s);
        let conv = ConvTranspose1d::new(ci, co, cfg, weights((ci, co, k), co).1.into()).unwrap();
        let x = Tensor::randn(0f32, 1., (1, ci, t), &dev).unwrap();
        let ours = time(|| conv.forward(&x).unwrap());
        let gflop = 2.0 * (ci * co * k) as f64 * t as f64 / 1e9;
        println!("{ci:5} -> {co:5} k{k:2} s{s} T{t:6}: ours {:7.2} ms {:6.1} GFLOP/s", ours * 1e3, gflop / ours);
    }
}
