//! Delays between attempts: fixed, exponential (capped, with optional jitter) or a custom list.

use crate::error::{QueueError, Result};

/// Exponential delays stop growing here unless a queue sets its own cap.
pub const DEFAULT_CAP: f64 = 3600.0;

#[derive(Clone, Debug, PartialEq)]
pub enum Backoff {
    /// Always `delay` seconds.
    Fixed { delay: f64 },
    /// `base * 2^(failures-1)`, at most `cap`, then spread by up to `jitter` (a fraction, 0..=1).
    Exponential { base: f64, cap: f64, jitter: f64 },
    /// The n-th retry waits `delays[n-1]`; past the end, the last delay repeats.
    Custom { delays: Vec<f64> },
}

impl Backoff {
    pub fn parse(
        kind: &str,
        base: f64,
        cap: Option<f64>,
        jitter: Option<f64>,
        custom: Option<Vec<f64>>,
    ) -> Result<Self> {
        let check = |what: &str, v: f64| crate::job::check_seconds(what, v).map(|()| v);
        check("retry_delay", base)?;
        let jitter = jitter.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&jitter) {
            return Err(QueueError::InvalidJob(format!(
                "jitter must be between 0 and 1, got {jitter}"
            )));
        }
        match kind {
            "fixed" => Ok(Backoff::Fixed { delay: base }),
            "exponential" => Ok(Backoff::Exponential {
                base,
                cap: check("backoff_cap", cap.unwrap_or(DEFAULT_CAP))?,
                jitter,
            }),
            "custom" => {
                let delays = custom.unwrap_or_default();
                if delays.is_empty() {
                    return Err(QueueError::InvalidJob(
                        "backoff=\"custom\" needs custom_delays=[seconds, ...]".into(),
                    ));
                }
                for d in &delays {
                    check("custom_delays", *d)?;
                }
                Ok(Backoff::Custom { delays })
            }
            other => Err(QueueError::InvalidJob(format!(
                "unknown backoff {other:?}: use \"fixed\", \"exponential\" or \"custom\""
            ))),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Backoff::Fixed { .. } => "fixed",
            Backoff::Exponential { .. } => "exponential",
            Backoff::Custom { .. } => "custom",
        }
    }

    /// Seconds to wait before the next run, after `failures` failed runs (1 for the first).
    pub fn delay(&self, failures: u32) -> f64 {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_is_constant() {
        let b = Backoff::parse("fixed", 2.5, None, None, None).unwrap();
        assert_eq!(b.delay(1), 2.5);
        assert_eq!(b.delay(7), 2.5);
    }

    #[test]
    fn exponential_doubles_and_caps() {
        let b = Backoff::parse("exponential", 1.0, Some(10.0), None, None).unwrap();
        let delays: Vec<f64> = (1..=6).map(|n| b.delay(n)).collect();
        assert_eq!(delays, vec![1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
        // A huge attempt count neither overflows nor exceeds the cap.
        assert_eq!(b.delay(u32::MAX), 10.0);
        let default_cap = Backoff::parse("exponential", 1.0, None, None, None).unwrap();
        assert_eq!(default_cap.delay(40), DEFAULT_CAP);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::parse("exponential", 4.0, None, Some(0.5), None).unwrap();
        for _ in 0..1000 {
            let d = b.delay(2);
            assert!((4.0..=8.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn custom_repeats_its_last_delay() {
        let b = Backoff::parse("custom", 0.0, None, None, Some(vec![1.0, 5.0, 30.0])).unwrap();
        let delays: Vec<f64> = (1..=5).map(|n| b.delay(n)).collect();
        assert_eq!(delays, vec![1.0, 5.0, 30.0, 30.0, 30.0]);
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(Backoff::parse("linear", 1.0, None, None, None).is_err());
        assert!(Backoff::parse("custom", 1.0, None, None, None).is_err());
        assert!(Backoff::parse("custom", 1.0, None, None, Some(vec![-1.0])).is_err());
        assert!(Backoff::parse("fixed", f64::NAN, None, None, None).is_err());
        assert!(Backoff::parse("exponential", 1.0, None, Some(2.0), None).is_err());
    }
}
