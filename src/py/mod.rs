//! The PyO3 boundary: everything that touches Python lives under this folder.

pub mod convert;
pub mod dispatch;
pub mod engine;
pub mod errors;
pub mod job;
