//! Building blocks shared by the architectures.

pub mod activation;
pub mod conv;
mod conv_cpu;
pub mod lstm;
pub mod rvq;
pub mod seanet;
pub mod snake;
pub mod transformer;
pub mod vocos;
