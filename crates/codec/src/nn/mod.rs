//! Building blocks shared by the architectures.

pub mod conv;
pub mod activation;
pub mod lstm;
mod conv_cpu;
pub mod rvq;
pub mod seanet;
pub mod snake;
pub mod transformer;
pub mod vocos;
