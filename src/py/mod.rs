//! The PyO3 boundary: everything that touches Python lives under this folder.

pub mod args;
pub mod convert;
pub mod dispatch;
pub mod engine;
pub mod errors;
pub mod gil;
pub mod job;
pub mod logging;
pub mod options;
pub mod views;
pub mod waits;
