use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;
use codec::nn::conv::{Conv1d, ConvConfig, PadMode};
use std::collections::HashMap;
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    // (c_in, c_out, k, stride, T)
    for &(ci, co, k, s, t) in &[(1usize, 64usize, 7usize, 1usize, 240000usize), (64, 32, 3, 1, 240000), (32, 64, 1, 1, 240000), (64, 128, 8, 4, 240000), (128, 64, 3, 1, 60000), (128, 256, 10, 5, 60000), (256, 512, 12, 6, 12000), (512, 1024, 16, 8, 2000), (1024, 512, 3, 1, 250)] {
        let mut m = HashMap::new();
        m.insert("weight".to_string(), Tensor::randn(0f32, 0.1, (co, ci, k), &dev).unwrap());
        m.insert("bias".to_string(), Tensor::zeros(co, candle_core::DType::F32, &dev).unwrap());
        let vb = VarBuilder::from_tensors(m, candle_core::DType::F32, &dev);
        let conv = Conv1d::new(ci, co, ConvConfig::new(k, true, PadMode::Constant).stride(s), vb).unwrap();
        let x = Tensor::randn(0f32, 1., (1, ci, t), &dev).unwrap();
        let _ = conv.forward(&x).unwrap();
        let n = 3;
        let st = Instant::now();
        for _ in 0..n { let _ = conv.forward(&x).unwrap(); }
        let dt = st.elapsed().as_secs_f64() / n as f64;
        let flops = 2.0 * (ci * co * k) as f64 * (t / s) as f64;
        let st = Instant::now();
        let xp = x.pad_with_zeros(2, k - s, 0).unwrap();
        for _ in 0..n { let _ = xp.conv1d(conv_w(&conv), 0, s, 1, 1).unwrap(); }
        let dc = st.elapsed().as_secs_f64() / n as f64;
        println!("{ci:5}->{co:5} k{k:2} s{s} T{t:6}: ours {:7.2} ms {:6.1} GFLOP/s | candle {:7.2} ms {:6.1} GFLOP/s", dt * 1e3, flops / dt / 1e9, dc * 1e3, flops / dc / 1e9);
    }
}
fn conv_w(c: &Conv1d) -> &Tensor { c.weight() }
