//! The log's codec: every event reads back as written; damage is an error, never a panic.

use std::sync::Arc;

use proptest::prelude::*;

use super::{codec, segment};
use crate::backend::memory::Event;
use crate::backend::{Ack, QueueDeclaration, Retention, ScheduleRecord, Settlement};
use crate::job::{Job, JobId, JobOptions, JobState, Payload, Priority};

fn arb_text() -> impl Strategy<Value = String> {
    "[a-z0-9 é\\n]{0,12}"
}

fn arb_time() -> impl Strategy<Value = f64> {
    prop_oneof![Just(f64::NAN), 0.0..4e9f64]
}

fn arb_job(queue: Arc<str>) -> impl Strategy<Value = Job> {
    (
        any::<[u8; 16]>(),
        proptest::collection::vec(any::<u8>(), 0..40),
        0usize..4,
        0usize..5,
        (any::<u32>(), any::<u32>(), any::<u64>()),
        (arb_time(), arb_time(), arb_time(), arb_time()),
        proptest::option::of((
            proptest::collection::vec(arb_text(), 0..3),
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text()),
        )),
    )
        .prop_map(
            move |(id, data, priority, state, (attempts, max, seq), times, extras)| {
                let mut job = Job::new(
                    queue.clone(),
                    Payload::from(data),
                    JobOptions::default(),
                    1,
                    1.0,
                );
                job.id = JobId(uuid::Uuid::from_bytes(id));
                job.priority = Priority::ALL[priority];
                job.state = JobState::ALL[state];
                job.attempts = attempts;
                job.max_attempts = max;
                job.seq = seq;
                job.created_at = times.0;
                job.scheduled_at = Some(times.1).filter(|t| !t.is_nan()).into();
                job.started_at = Some(times.2).filter(|t| !t.is_nan()).into();
                job.finished_at = Some(times.3).filter(|t| !t.is_nan()).into();
                job.extras = extras.map(|(tags, error, traceback)| {
                    Box::new(crate::job::JobExtras {
                        tags,
                        error,
                        traceback,
                        metadata: Some(Payload::from(&b"{}"[..])),
                        ..Default::default()
                    })
                });
                job
            },
        )
}

fn arb_event() -> impl Strategy<Value = Event<'static>> {
    use std::borrow::Cow;
    let runs =
        proptest::collection::vec((any::<[u8; 16]>(), any::<u32>()), 0..4).prop_map(|runs| {
            runs.into_iter()
                .map(|(id, attempt)| (JobId(uuid::Uuid::from_bytes(id)), attempt))
                .collect::<Vec<_>>()
        });
    let ack = (
        any::<[u8; 16]>(),
        any::<u32>(),
        0usize..3,
        arb_text(),
        proptest::option::of(arb_text()),
    )
        .prop_map(|(id, attempt, kind, error, traceback)| Ack {
            id: JobId(uuid::Uuid::from_bytes(id)),
            attempt,
            at: 1.5,
            settlement: match kind {
                0 => Settlement::Completed {
                    result: traceback.map(|t| Payload::from(t.as_bytes())),
                },
                1 => Settlement::Retry {
                    due: 2.5,
                    error,
                    traceback,
                },
                _ => Settlement::Failed { error, traceback },
            },
        });
    prop_oneof![
        (arb_text(), proptest::option::of((arb_text(), 0.0..1e9f64))).prop_flat_map(
            |(queue, tick)| {
                let name: Arc<str> = Arc::from(queue.as_str());
                proptest::collection::vec(arb_job(name), 0..4).prop_map(move |jobs| Event::Push {
                    queue: Cow::Owned(queue.clone()),
                    jobs: Cow::Owned(jobs),
                    tick: tick.clone().map(|(s, at)| (Cow::Owned(s), at)),
                })
            }
        ),
        (arb_text(), runs.clone(), any::<bool>()).prop_map(|(queue, runs, lost)| {
            let (queue, runs) = (Cow::Owned(queue), Cow::Owned(runs));
            if lost {
                Event::Lost {
                    queue,
                    at: 3.0,
                    runs,
                }
            } else {
                Event::Claim {
                    queue,
                    at: 3.0,
                    runs,
                }
            }
        }),
        (arb_text(), runs).prop_map(|(queue, runs)| Event::Release {
            queue: Cow::Owned(queue),
            runs: Cow::Owned(runs),
        }),
        (arb_text(), proptest::collection::vec(ack, 0..4)).prop_map(|(queue, acks)| {
            Event::Settle {
                queue: Cow::Owned(queue),
                acks: Cow::Owned(acks),
            }
        }),
        (arb_text(), any::<bool>(), 0usize..6, any::<u64>()).prop_map(|(queue, flag, kind, n)| {
            let queue = Cow::Owned(queue);
            match kind {
                5 => Event::RemoveJob {
                    queue,
                    id: JobId(uuid::Uuid::from_u64_pair(n, n / 3)),
                },
                0 => Event::Paused {
                    queue,
                    paused: flag,
                },
                1 => Event::Clear { queue },
                2 => Event::Delete { queue },
                3 => Event::Totals {
                    queue,
                    completed: n,
                    failed: n / 2,
                },
                _ => Event::Declare {
                    queue,
                    declaration: Cow::Owned(QueueDeclaration {
                        retention: Retention {
                            ttl: n as f64,
                            keep_completed: n as usize,
                            keep_failed: usize::MAX,
                        },
                        settings: Payload::from(&b"{\"a\":1}"[..]),
                    }),
                },
            }
        }),
        (
            arb_text(),
            proptest::option::of(arb_text()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(id, name, attempts)| Event::SaveSchedule(Cow::Owned(
                ScheduleRecord {
                    id: Arc::from(id.as_str()),
                    name,
                    queue: Arc::from("q"),
                    cron: "* * * * *".into(),
                    data: Payload::from(&b"[1]"[..]),
                    priority: Priority::High,
                    attempts,
                    timeout: Some(2.0),
                    tags: vec![id.clone()],
                    metadata: None,
                }
            ))),
        arb_text().prop_map(|id| Event::RemoveSchedule(Cow::Owned(id))),
    ]
}

fn encoded(event: &Event<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode(event, &mut out);
    out
}

proptest! {
    #[test]
    fn events_read_back_as_written(event in arb_event()) {
        let bytes = encoded(&event);
        let decoded = codec::decode(&bytes).expect("decodes");
        // Byte equality: times that are NaN ("none") do not compare equal as floats.
        prop_assert_eq!(encoded(&decoded), bytes.clone());
        if let (Event::Push { jobs, .. }, Event::Push { jobs: back, .. }) = (&event, &decoded) {
            for (job, back) in jobs.iter().zip(back.iter()) {
                prop_assert_eq!((job.id, &job.data, job.state), (back.id, &back.data, back.state));
            }
        }
        // Every prefix is an error, never a panic or a different event.
        for cut in 0..bytes.len() {
            prop_assert!(codec::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = codec::decode(&bytes);
        let _ = segment::scan(&bytes);
    }
}
