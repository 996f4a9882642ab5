//! Which store an engine keeps its jobs in, from the user's settings, and opening it.

use std::sync::Arc;
use std::time::Duration;

use super::file::{self, FileOptions, Fsync, DEFAULT_COMPACT_MIN_BYTES};
use super::memory::MemoryBackend;
use super::redis::{RedisBackend, RedisOptions};
use super::spill::SpillingBackend;
use super::Backend;
use crate::error::{QueueError, Result};

/// How long a Redis job stays leased to a worker process that stops renewing it.
pub const DEFAULT_LEASE: f64 = 30.0;
/// The key prefix of a Redis store.
pub const DEFAULT_PREFIX: &str = "rnode:queue";
/// When a file store syncs its log to disk.
pub const DEFAULT_FSYNC: &str = "everysec";

/// The store settings a user gives (`QueueManager(backend=..., url=..., path=..., ...)`).
#[derive(Clone, Debug, Default)]
pub struct StoreSettings<'a> {
    pub backend: Option<&'a str>,
    pub url: Option<&'a str>,
    pub path: Option<&'a str>,
    pub prefix: Option<&'a str>,
    /// Seconds.
    pub lease: Option<f64>,
    pub fsync: Option<&'a str>,
    /// Redis: the directory pushes go to while Redis cannot be reached.
    pub spill_path: Option<&'a str>,
}

/// A checked choice of store; kept to open it again (a forked child opens its own).
#[derive(Clone, Debug)]
pub enum StoreConfig {
    Memory,
    /// With the spill's directory, if any.
    Redis(RedisOptions, Option<String>),
    File(FileOptions),
}

impl StoreConfig {
    /// `backend` when given, else the one `url` (redis) or `path` (file) implies, else memory.
    /// A setting that belongs to another backend is an error, and so is a Redis store without
    /// a url: a forgotten url must not reach whatever Redis happens to listen on this host.
    pub fn choose(settings: &StoreSettings<'_>) -> Result<Self> {
        let implied = match (settings.url.is_some(), settings.path.is_some()) {
            (true, true) => {
                return Err(QueueError::config(
                    "url (redis) and path (file) select different backends: give one",
                ))
            }
            (true, false) => Some("redis"),
            (false, true) => Some("file"),
            (false, false) => None,
        };
        let chosen = match settings.backend {
            None => implied.unwrap_or("memory"),
            Some(name @ ("memory" | "redis" | "file")) => name,
            Some(other) => {
                return Err(QueueError::config(format!(
                    "unknown backend {other:?}: use \"memory\", \"redis\" or \"file\""
                )))
            }
        };
        if let Some(implied) = implied.filter(|implied| *implied != chosen) {
            let given = if implied == "redis" { "url" } else { "path" };
            return Err(QueueError::config(format!(
                "{given} is a setting of the {implied} backend, but backend={chosen:?} was given"
            )));
        }
        let fsync = Fsync::parse(settings.fsync.unwrap_or(DEFAULT_FSYNC))?;
        if settings.spill_path.is_some() && chosen != "redis" {
            return Err(QueueError::config(format!(
                "spill_path is a setting of the redis backend (where pushes go while Redis \
                 cannot be reached), but the {chosen} backend was chosen"
            )));
        }
        let lease = settings.lease.unwrap_or(DEFAULT_LEASE);
        if !(lease.is_finite() && lease > 0.0) {
            return Err(QueueError::config(format!(
                "lease must be > 0 seconds, got {lease}"
            )));
        }
        Ok(match chosen {
            "redis" => StoreConfig::Redis(
                RedisOptions {
                    url: settings
                        .url
                        .ok_or_else(|| {
                            QueueError::config(
                                "backend=\"redis\" needs url=\"redis://host:port/db\" (or \
                             QueueManager.from_env() with REDIS_URL set)",
                            )
                        })?
                        .to_string(),
                    prefix: settings.prefix.unwrap_or(DEFAULT_PREFIX).to_string(),
                    lease: Duration::from_secs_f64(lease.min(1e9)),
                },
                settings.spill_path.map(str::to_string),
            ),
            "file" => StoreConfig::File(FileOptions {
                path: settings
                    .path
                    .ok_or_else(|| {
                        QueueError::config(
                            "backend=\"file\" needs path=\"./queue-data\" (the directory that \
                             holds the log)",
                        )
                    })?
                    .into(),
                fsync,
                compact_min_bytes: DEFAULT_COMPACT_MIN_BYTES,
                lost_run_grace: file::DEFAULT_LOST_RUN_GRACE,
            }),
            _ => StoreConfig::Memory,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            StoreConfig::Memory => "memory",
            StoreConfig::Redis(..) => "redis",
            StoreConfig::File(_) => "file",
        }
    }

    /// Opens the store: connects to Redis (and loads its scripts), replays a file store's log,
    /// or makes an empty memory one.
    pub fn open(&self) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            StoreConfig::Memory => Arc::new(MemoryBackend::new()),
            StoreConfig::Redis(options, None) => Arc::new(RedisBackend::connect(options)?),
            StoreConfig::Redis(options, Some(spill)) => SpillingBackend::open(options, spill)?,
            StoreConfig::File(options) => file::FileStore::open(options)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(settings: StoreSettings<'_>) -> Result<&'static str> {
        StoreConfig::choose(&settings).map(|store| store.name())
    }

    #[test]
    fn the_store_follows_the_settings_given() {
        assert_eq!(choose(StoreSettings::default()).unwrap(), "memory");
        let url = Some("redis://127.0.0.1:1/0");
        let redis = StoreSettings {
            url,
            ..Default::default()
        };
        assert_eq!(choose(redis).unwrap(), "redis");
        let file = StoreSettings {
            path: Some("./data"),
            ..Default::default()
        };
        assert_eq!(choose(file).unwrap(), "file");
    }

    #[test]
    fn settings_of_another_store_and_a_redis_without_url_are_refused() {
        for settings in [
            StoreSettings {
                backend: Some("redis"),
                ..Default::default()
            },
            StoreSettings {
                backend: Some("memory"),
                url: Some("redis://127.0.0.1:1/0"),
                ..Default::default()
            },
            StoreSettings {
                url: Some("redis://127.0.0.1:1/0"),
                path: Some("./data"),
                ..Default::default()
            },
            StoreSettings {
                backend: Some("sqlite"),
                ..Default::default()
            },
            StoreSettings {
                fsync: Some("sometimes"),
                ..Default::default()
            },
            StoreSettings {
                lease: Some(0.0),
                ..Default::default()
            },
        ] {
            let chosen = StoreConfig::choose(&settings);
            assert!(
                matches!(chosen, Err(QueueError::Config(_))),
                "{settings:?}: {chosen:?}"
            );
        }
    }
}
