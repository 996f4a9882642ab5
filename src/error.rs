//! Engine errors. Each variant maps to one Python exception class (`py/errors.rs`).

use thiserror::Error;

use crate::id::JobId;

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
    /// A setting (of the manager, a queue, or a call such as a wait's timeout) is invalid.
    #[error("{0}")]
    Config(String),
    /// The storage backend is unreachable or failed.
    #[error("{0}")]
    Backend(String),
    /// A command was sent but no answer came (a timeout, a dropped connection): it may or may
    /// not have been carried out.
    #[error("{0}")]
    Indeterminate(String),
    /// A push whose outcome stayed unknown after retries: the jobs may or may not be stored.
    #[error("{message}")]
    PushOutcomeUnknown { message: String, ids: Vec<JobId> },
    /// No job has this id (or it is no longer retained).
    #[error("{0}")]
    JobNotFound(String),
    /// The queue does not exist in the store (deleted, maybe by another process).
    #[error("queue {0:?} does not exist")]
    UnknownQueue(String),
    /// A push of an id the store already holds: never an overwrite.
    #[error("{0}")]
    DuplicateJob(String),
    #[error("the queue manager is closed")]
    Closed,
    /// Misuse that fits no other class (a second handler for one queue, say).
    #[error("{0}")]
    Other(String),
}

impl QueueError {
    /// A failure of the backend, whether or not the command reached it.
    pub fn is_backend(&self) -> bool {
        matches!(
            self,
            QueueError::Backend(_)
                | QueueError::Indeterminate(_)
                | QueueError::PushOutcomeUnknown { .. }
        )
    }

    /// A settings error with this message.
    pub fn config(message: impl Into<String>) -> Self {
        QueueError::Config(message.into())
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;
