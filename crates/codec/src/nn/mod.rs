//! Building blocks shared by the architectures.

pub mod conv;
pub mod rvq;
pub mod seanet;
pub mod transformer;
