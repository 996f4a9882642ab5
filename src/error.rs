//! Engine errors. Each variant maps to one Python exception class in `lib.rs`.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum QueueError {
    /// Job data or options are invalid.
    #[error("{0}")]
    InvalidJob(String),
    #[error("job is {size} bytes, more than max_job_bytes ({limit})")]
    JobTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    InvalidQueueName(String),
    #[error("{0}")]
    InvalidCron(String),
    /// The storage backend is unreachable or failed.
    #[error("{0}")]
    Backend(String),
    #[error("the queue manager is closed")]
    Closed,
    /// Misuse that fits no other class (a second handler for one queue, say).
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;
