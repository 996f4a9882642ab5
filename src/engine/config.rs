//! A queue's settings: what they are, their defaults, their checks, and how a store keeps them
//! for the processes that did not declare the queue.

use crate::backend::{QueueDeclaration, Retention};
use crate::backoff::{Backoff, BackoffSpec};
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
            retention: Retention {
                ttl: 86_400.0,
                keep_completed: 10_000,
                keep_failed: 100_000,
            },
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
