//! A queue's settings: what they are, their defaults, their checks, and how a store keeps them
//! for the processes that did not declare the queue.

use std::sync::Arc;

use crate::backend::{QueueDeclaration, Retention};
use crate::backoff::{Backoff, BackoffSpec, DelayFunction};
use crate::error::{QueueError, Result};
use crate::job::{check_setting_seconds, Payload};

/// A queue's settings. Also the engine's defaults for queues nobody configured.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConfig {
    pub concurrency: usize,
    /// Retries after the first run: a job runs at most `max_retries + 1` times by default.
    pub max_retries: u32,
    pub timeout: f64,
    pub backoff: Backoff,
    pub retention: Retention,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            concurrency: 5,
            max_retries: 3,
            timeout: 300.0,
            backoff: Backoff::Exponential {
                base: 1.0,
                cap: crate::backoff::DEFAULT_CAP,
                jitter: 0.0,
            },
            retention: Retention::default(),
        }
    }
}

/// A queue's settings as the store keeps them (JSON), so that processes that did not declare
/// the queue use them. A function backoff cannot be stored: others see its `retry_delay`.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct StoredSettings {
    concurrency: Option<usize>,
    max_retries: Option<u32>,
    timeout: Option<f64>,
    backoff: Option<String>,
    retry_delay: Option<f64>,
    backoff_cap: Option<f64>,
    jitter: Option<f64>,
    custom_delays: Option<Vec<f64>>,
}

impl QueueConfig {
    pub fn validate(&self) -> Result<()> {
        check_concurrency(self.concurrency)?;
        check_setting_seconds("timeout", self.timeout)?;
        if self.timeout == 0.0 {
            return Err(QueueError::config("timeout must be > 0 seconds"));
        }
        check_setting_seconds("ttl", self.retention.ttl)?;
        Ok(())
    }

    /// The declaration a backend stores for this queue.
    pub fn declaration(&self) -> QueueDeclaration {
        let (cap, jitter, custom) = match &self.backoff {
            Backoff::Exponential { cap, jitter, .. } => (Some(*cap), Some(*jitter), None),
            Backoff::Custom { delays } => (None, None, Some(delays.clone())),
            _ => (None, None, None),
        };
        let kind = match &self.backoff {
            Backoff::Function { .. } => "fixed",
            other => other.kind(),
        };
        let stored = StoredSettings {
            concurrency: Some(self.concurrency),
            max_retries: Some(self.max_retries),
            timeout: Some(self.timeout),
            backoff: Some(kind.into()),
            retry_delay: Some(self.backoff.base()),
            backoff_cap: cap,
            jitter,
            custom_delays: custom,
        };
        QueueDeclaration {
            retention: self.retention,
            settings: Payload::from(serde_json::to_vec(&stored).unwrap_or_default()),
        }
    }

    /// The settings a store holds, completed with `defaults` where it says nothing (or says
    /// something this version cannot read).
    pub fn from_declaration(declaration: &QueueDeclaration, defaults: &QueueConfig) -> Self {
        let stored: StoredSettings =
            serde_json::from_slice(&declaration.settings).unwrap_or_else(|error| {
                if !declaration.settings.is_empty() {
                    log::warn!(
                        target: "rnode_queue",
                        "stored queue settings cannot be read ({error}); using the defaults"
                    );
                }
                StoredSettings::default()
            });
        let backoff = match stored.backoff {
            Some(kind) => Backoff::parse(BackoffSpec {
                kind,
                base: stored.retry_delay.unwrap_or(defaults.backoff.base()),
                cap: stored.backoff_cap,
                jitter: stored.jitter,
                custom: stored.custom_delays,
                function: None,
            })
            .unwrap_or_else(|_| defaults.backoff.clone()),
            None => defaults.backoff.clone(),
        };
        let config = QueueConfig {
            concurrency: stored.concurrency.unwrap_or(defaults.concurrency),
            max_retries: stored.max_retries.unwrap_or(defaults.max_retries),
            timeout: stored.timeout.unwrap_or(defaults.timeout),
            backoff,
            retention: declaration.retention,
        };
        if config.validate().is_ok() {
            config
        } else {
            QueueConfig {
                retention: declaration.retention,
                ..defaults.clone()
            }
        }
    }
}

/// A queue's settings as a user gives them (`create_queue`, or the manager's defaults): `None`
/// is the base's value.
#[derive(Clone, Default)]
pub struct QueueSettings {
    pub concurrency: Option<usize>,
    pub max_retries: Option<u32>,
    pub timeout: Option<f64>,
    pub retry_delay: Option<f64>,
    pub backoff: Option<BackoffChoice>,
    pub custom_delays: Option<Vec<f64>>,
    pub backoff_cap: Option<f64>,
    pub jitter: Option<f64>,
    pub ttl: Option<f64>,
    pub keep_completed: Option<usize>,
    pub keep_failed: Option<usize>,
}

/// A backoff as a user names it.
#[derive(Clone)]
pub enum BackoffChoice {
    /// `"fixed"`, `"exponential"` or `"custom"`.
    Named(String),
    /// A function `(attempt, error) -> seconds`.
    Function(Arc<dyn DelayFunction>),
}

impl QueueSettings {
    /// These settings over `base` (the manager's defaults), checked. A setting left out is the
    /// base's, also for a queue configured before: a declaration says everything about the
    /// queue. A base function backoff carries over unless another kind is named.
    pub fn over(self, base: &QueueConfig) -> Result<QueueConfig> {
        let (kind, function) = match self.backoff {
            None => match &base.backoff {
                Backoff::Function { function, .. } => ("function".into(), Some(function.clone())),
                other => (other.kind().to_string(), None),
            },
            Some(BackoffChoice::Named(kind)) => (kind, None),
            Some(BackoffChoice::Function(function)) => ("function".into(), Some(function)),
        };
        let backoff = Backoff::parse(BackoffSpec {
            kind,
            base: self.retry_delay.unwrap_or_else(|| base.backoff.base()),
            cap: self.backoff_cap,
            jitter: self.jitter,
            custom: self.custom_delays,
            function,
        })?;
        let config = QueueConfig {
            concurrency: self.concurrency.unwrap_or(base.concurrency),
            max_retries: self.max_retries.unwrap_or(base.max_retries),
            timeout: self.timeout.unwrap_or(base.timeout),
            backoff,
            retention: Retention {
                ttl: self.ttl.unwrap_or(base.retention.ttl),
                keep_completed: self.keep_completed.unwrap_or(base.retention.keep_completed),
                keep_failed: self.keep_failed.unwrap_or(base.retention.keep_failed),
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// Each sync slot is an OS thread with a Python thread state: keep their number sane.
pub const MAX_CONCURRENCY: usize = 1024;

pub(crate) fn check_concurrency(concurrency: usize) -> Result<()> {
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(QueueError::config(format!(
            "concurrency must be from 1 to {MAX_CONCURRENCY}, got {concurrency}"
        )));
    }
    Ok(())
}
