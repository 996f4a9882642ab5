//! Delays between attempts: fixed, exponential (capped, with optional jitter), a custom list, or
//! a function of the user's.

use std::fmt;
use std::sync::Arc;

use crate::error::{QueueError, Result};
use crate::job::{check_setting_seconds, seconds_error};

/// Exponential delays stop growing here unless a queue sets its own cap.
pub const DEFAULT_CAP: f64 = 3600.0;

/// A retry delay computed by user code (a Python function, in `py/`).
pub trait DelayFunction: Send + Sync + fmt::Debug {
    /// Seconds to wait after `failures` failed runs, the last one with `error`; `Err(why)` when
    /// the function failed or gave no usable number.
    fn delay(&self, failures: u32, error: &str) -> std::result::Result<f64, String>;
}

#[derive(Clone, Debug)]
pub enum Backoff {
    /// Always `delay` seconds.
    Fixed { delay: f64 },
    /// `base * 2^(failures-1)`, at most `cap`, then spread by up to `jitter` (a fraction, 0..=1).
    Exponential { base: f64, cap: f64, jitter: f64 },
    /// The n-th retry waits `delays[n-1]`; past the end, the last delay repeats.
    Custom { delays: Vec<f64> },
    /// `function(attempt, error)`; `fallback` (the queue's `retry_delay`) when it fails.
    Function {
        function: Arc<dyn DelayFunction>,
        fallback: f64,
    },
}

impl PartialEq for Backoff {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Backoff::Fixed { delay: a }, Backoff::Fixed { delay: b }) => a == b,
            (
                Backoff::Exponential { base, cap, jitter },
                Backoff::Exponential {
                    base: b,
                    cap: c,
                    jitter: j,
                },
            ) => base == b && cap == c && jitter == j,
            (Backoff::Custom { delays: a }, Backoff::Custom { delays: b }) => a == b,
            (
                Backoff::Function { function, fallback },
                Backoff::Function {
                    function: g,
                    fallback: f,
                },
            ) => Arc::ptr_eq(function, g) && fallback == f,
            _ => false,
        }
    }
}

/// What a queue's backoff settings say, before they are checked.
#[derive(Clone, Debug, Default)]
pub struct BackoffSpec {
    pub kind: String,
    pub base: f64,
    pub cap: Option<f64>,
    pub jitter: Option<f64>,
    pub custom: Option<Vec<f64>>,
    pub function: Option<Arc<dyn DelayFunction>>,
}

impl Backoff {
    /// Checks the settings of `spec`: a setting that the kind does not use is refused rather than
    /// silently ignored.
    pub fn parse(spec: BackoffSpec) -> Result<Self> {
        let base = check_setting_seconds("retry_delay", spec.base)?;
        let kind = if spec.function.is_some() {
            "function"
        } else {
            spec.kind.as_str()
        };
        let unused = |what: &str| {
            Err(QueueError::config(format!(
                "{what} only applies to backoff=\"{}\", not {kind:?}",
                if what == "custom_delays" {
                    "custom"
                } else {
                    "exponential"
                }
            )))
        };
        if kind != "exponential" {
            if spec.cap.is_some() {
                return unused("backoff_cap");
            }
            if spec.jitter.is_some() {
                return unused("jitter");
            }
        }
        if kind != "custom" && spec.custom.is_some() {
            return unused("custom_delays");
        }
        match kind {
            "fixed" => Ok(Backoff::Fixed { delay: base }),
            "exponential" => {
                let jitter = spec.jitter.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&jitter) {
                    return Err(QueueError::config(format!(
                        "jitter must be between 0 and 1, got {jitter}"
                    )));
                }
                Ok(Backoff::Exponential {
                    base,
                    cap: check_setting_seconds("backoff_cap", spec.cap.unwrap_or(DEFAULT_CAP))?,
                    jitter,
                })
            }
            "custom" => {
                let delays = spec.custom.unwrap_or_default();
                if delays.is_empty() {
                    return Err(QueueError::config(
                        "backoff=\"custom\" needs custom_delays=[seconds, ...]",
                    ));
                }
                for d in &delays {
                    check_setting_seconds("custom_delays", *d)?;
                }
                Ok(Backoff::Custom { delays })
            }
            "function" => match spec.function {
                Some(function) => Ok(Backoff::Function {
                    function,
                    fallback: base,
                }),
                None => Err(QueueError::config(
                    "backoff=\"function\" is set by passing the function itself as backoff",
                )),
            },
            other => Err(QueueError::config(format!(
                "unknown backoff {other:?}: use \"fixed\", \"exponential\", \"custom\" or a \
                 function (attempt, error) -> seconds"
            ))),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Backoff::Fixed { .. } => "fixed",
            Backoff::Exponential { .. } => "exponential",
            Backoff::Custom { .. } => "custom",
            Backoff::Function { .. } => "function",
        }
    }

    /// The base delay: the fixed one, the first exponential one, the function's fallback.
    pub fn base(&self) -> f64 {
        match self {
            Backoff::Fixed { delay } => *delay,
            Backoff::Exponential { base, .. } => *base,
            Backoff::Custom { delays } => delays.first().copied().unwrap_or(1.0),
            Backoff::Function { fallback, .. } => *fallback,
        }
    }

    /// Seconds to wait before the next run, after `failures` failed runs (1 for the first), the
    /// last one with `error`.
    pub fn delay(&self, failures: u32, error: &str) -> f64 {
        let n = failures.max(1);
        match self {
            Backoff::Fixed { delay } => *delay,
            Backoff::Exponential { base, cap, jitter } => {
                let raw = base * 2f64.powi(n.saturating_sub(1).min(1023) as i32);
                let capped = raw.min(*cap);
                if *jitter > 0.0 {
                    // Spread retries of jobs that failed together: [capped*(1-j), capped].
                    capped * (1.0 - jitter * fastrand::f64())
                } else {
                    capped
                }
            }
            Backoff::Custom { delays } => {
                let i = (n as usize - 1).min(delays.len() - 1);
                delays[i]
            }
            Backoff::Function { function, fallback } => {
                let failure = match function.delay(n, error) {
                    Ok(seconds) => match seconds_error("the backoff function's delay", seconds) {
                        None => return seconds,
                        Some(why) => why,
                    },
                    Err(why) => why,
                };
                log::warn!(
                    target: "rnode_queue",
                    "backoff function {function:?} failed for attempt {n} ({failure}); \
                     retrying after retry_delay = {fallback} s instead"
                );
                *fallback
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, base: f64) -> BackoffSpec {
        BackoffSpec {
            kind: kind.into(),
            base,
            ..BackoffSpec::default()
        }
    }

    #[test]
    fn fixed_is_constant() {
        let b = Backoff::parse(spec("fixed", 2.5)).unwrap();
        assert_eq!(b.delay(1, ""), 2.5);
        assert_eq!(b.delay(7, ""), 2.5);
    }

    #[test]
    fn exponential_doubles_and_caps() {
        let b = Backoff::parse(BackoffSpec {
            cap: Some(10.0),
            ..spec("exponential", 1.0)
        })
        .unwrap();
        let delays: Vec<f64> = (1..=6).map(|n| b.delay(n, "")).collect();
        assert_eq!(delays, vec![1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
        // A huge attempt count neither overflows nor exceeds the cap.
        assert_eq!(b.delay(u32::MAX, ""), 10.0);
        let default_cap = Backoff::parse(spec("exponential", 1.0)).unwrap();
        assert_eq!(default_cap.delay(40, ""), DEFAULT_CAP);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::parse(BackoffSpec {
            jitter: Some(0.5),
            ..spec("exponential", 4.0)
        })
        .unwrap();
        for _ in 0..1000 {
            let d = b.delay(2, "");
            assert!((4.0..=8.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn custom_repeats_its_last_delay() {
        let b = Backoff::parse(BackoffSpec {
            custom: Some(vec![1.0, 5.0, 30.0]),
            ..spec("custom", 0.0)
        })
        .unwrap();
        let delays: Vec<f64> = (1..=5).map(|n| b.delay(n, "")).collect();
        assert_eq!(delays, vec![1.0, 5.0, 30.0, 30.0, 30.0]);
    }

    #[derive(Debug)]
    struct Doubling;

    impl DelayFunction for Doubling {
        fn delay(&self, failures: u32, error: &str) -> std::result::Result<f64, String> {
            match error {
                "raise" => Err("ValueError: no".into()),
                "negative" => Ok(-1.0),
                "nan" => Ok(f64::NAN),
                _ => Ok(f64::from(failures) * 2.0),
            }
        }
    }

    #[test]
    fn functions_fall_back_to_retry_delay_when_they_fail() {
        let b = Backoff::parse(BackoffSpec {
            function: Some(Arc::new(Doubling)),
            ..spec("exponential", 0.5)
        })
        .unwrap();
        assert_eq!(b.kind(), "function");
        assert_eq!(b.delay(3, "boom"), 6.0);
        for error in ["raise", "negative", "nan"] {
            assert_eq!(b.delay(3, error), 0.5, "{error}");
        }
    }

    #[test]
    fn bad_settings_are_rejected() {
        let bad = [
            spec("linear", 1.0),
            spec("custom", 1.0),
            BackoffSpec {
                custom: Some(vec![-1.0]),
                ..spec("custom", 1.0)
            },
            spec("fixed", f64::NAN),
            BackoffSpec {
                jitter: Some(2.0),
                ..spec("exponential", 1.0)
            },
            // Settings the kind would ignore.
            BackoffSpec {
                jitter: Some(0.1),
                ..spec("fixed", 1.0)
            },
            BackoffSpec {
                cap: Some(10.0),
                ..spec("fixed", 1.0)
            },
            BackoffSpec {
                custom: Some(vec![1.0]),
                ..spec("exponential", 1.0)
            },
            spec("function", 1.0),
        ];
        for spec in bad {
            let error = Backoff::parse(spec.clone()).unwrap_err();
            assert!(
                matches!(error, QueueError::Config(_)),
                "{spec:?}: {error:?}"
            );
        }
    }
}
