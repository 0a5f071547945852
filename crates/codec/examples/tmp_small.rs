use codec::nn::gemm::{gemm, Epilogue, Output, Packed, Strided};
use std::time::Instant;
fn main() {
    codec::nn::on_pool(main2);
}
fn main2() {
    let prec = std::env::var("P").unwrap_or("f32".into());
    codec::set_precision(if prec == "bf16" { codec::Precision::Bf16 } else { codec::Precision::F32 });
    for &(k, n) in &[(512usize, 512usize), (512, 2048), (2048, 512)] {
        let count = (64 << 20) / (4 * k * n);
        let mats: Vec<Packed> = (0..count)
            .map(|s| {
                let b: Vec<f32> = (0..k * n).map(|i| ((i * 7919 + s * 13) % 1000) as f32 * 1e-3 - 0.5).collect();
                Packed::b(&Strided::row_major(&b, k, n).unwrap(), k, n)
            })
            .collect();
        let m = 2;
        let a: Vec<f32> = (0..m * k).map(|i| (i % 97) as f32 * 0.01).collect();
        let am = Strided::row_major(&a, m, k).unwrap();
        let mut c = vec![0f32; m * n];
        let mut best = f64::INFINITY;
        for r in 0..8 {
            let t = Instant::now();
            for b in &mats {
                gemm(m, n, k, &am, b, &mut Output::row_major(&mut c, m, n).unwrap(), &Epilogue::default());
            }
            if r > 1 {
                best = best.min(t.elapsed().as_secs_f64() / count as f64);
            }
        }
        let bytes = (k * n * if prec == "bf16" { 2 } else { 4 }) as f64;
        println!("{prec} m {m} k {k} n {n}: {:7.1} us per product, {:5.1} GB/s", best * 1e6, bytes / best * 1e-9);
    }
}
