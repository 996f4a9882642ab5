//! The file backend alone: reopening, lost runs, torn and damaged logs, compaction crashes,
//! the directory lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::compact::{compact, Step};
use super::segment::{self, Kind, HEADER_LEN};
use super::{open, FileBackend, FileOptions, Fsync};
use crate::backend::{
    Ack, Backend, FetchRequest, QueueDeclaration, Retention, ScheduleRecord, Settlement,
};
use crate::error::QueueError;
use crate::job::{Job, JobId, JobOptions, JobState, Payload, Priority};

/// A directory of its own, removed when dropped.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "rnq-file-test-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn options(path: &Path) -> FileOptions {
    FileOptions {
        path: path.to_path_buf(),
        fsync: Fsync::Never,
        compact_min_bytes: u64::MAX,
        lost_run_grace: Duration::ZERO,
    }
}

pub(super) fn reopen(path: &Path) -> Arc<FileBackend> {
    open(&options(path)).unwrap()
}

/// Stops the store as a killed process would (its writes are in the page cache).
pub(super) fn crash(backend: Arc<FileBackend>) {
    backend.journal().abandon();
}

pub(super) fn declaration() -> QueueDeclaration {
    QueueDeclaration {
        retention: Retention {
            ttl: 3600.0,
            keep_completed: 1000,
            keep_failed: 1000,
        },
        settings: Payload::from(&b"{\"concurrency\":1}"[..]),
    }
}

pub(super) fn queue() -> Arc<str> {
    Arc::from("q")
}

pub(super) fn push(backend: &FileBackend, n: u32, options: JobOptions) -> JobId {
    let data: Payload = Arc::from(format!("{{\"n\":{n}}}").into_bytes());
    let mut jobs = vec![Job::new(queue(), data, options, 3, 300.0)];
    let id = jobs[0].id;
    backend.push(&queue(), &mut jobs, &declaration).unwrap();
    id
}

fn fetch(backend: &FileBackend, max: usize) -> Vec<Job> {
    let request = FetchRequest {
        max,
        share: 1,
        wait: Duration::ZERO,
        start_all: true,
    };
    backend
        .fetch("q", request, &AtomicBool::new(false))
        .unwrap()
}

pub(super) fn complete(job: &Job, result: Option<&str>) -> Ack {
    Ack {
        id: job.id,
        attempt: job.attempts,
        at: crate::job::now(),
        settlement: Settlement::Completed {
            result: result.map(|r| Payload::from(r.as_bytes())),
        },
    }
}

fn state_of(backend: &FileBackend, id: JobId) -> Option<JobState> {
    backend.get_job(id).unwrap().map(|job| job.state)
}

#[test]
fn a_reopened_store_holds_what_the_last_one_left() {
    let dir = TempDir::new();
    let backend = reopen(&dir.0);
    let done = push(&backend, 1, JobOptions::default());
    let failed = push(&backend, 2, JobOptions::default());
    let waiting = push(
        &backend,
        3,
        JobOptions {
            priority: Priority::High,
            tags: vec!["t".into()],
            metadata: Some(Payload::from(&b"{\"m\":1}"[..])),
            ..Default::default()
        },
    );
    let delayed = push(
        &backend,
        4,
        JobOptions {
            delay: 3600.0,
            ..Default::default()
        },
    );
    let taken = fetch(&backend, 2);
    assert_eq!(taken.len(), 2, "the high-priority job first, then job 1");
    let first = fetch(&backend, 2);
    let acks = vec![
        complete(
            taken.iter().find(|j| j.id == waiting).unwrap(),
            Some("\"ok\""),
        ),
        complete(taken.iter().find(|j| j.id == done).unwrap(), None),
        Ack {
            id: failed,
            attempt: 1,
            at: crate::job::now(),
            settlement: Settlement::Failed {
                error: "ValueError: no".into(),
                traceback: Some("tb".into()),
            },
        },
    ];
    assert_eq!(first.iter().map(|j| j.id).collect::<Vec<_>>(), vec![failed]);
    backend.settle("q", acks).unwrap();
    backend.set_paused("q", true).unwrap();
    let schedule = ScheduleRecord {
        id: Arc::from("nightly"),
        name: Some("nightly".into()),
        queue: queue(),
        cron: "0 3 * * *".into(),
        data: Payload::from(&b"{}"[..]),
        priority: Priority::Low,
        attempts: Some(2),
        timeout: None,
        tags: vec![],
        metadata: None,
    };
    backend.save_schedule(&schedule).unwrap();
    let counts = backend.counts("q").unwrap();
    backend.close();
    drop(backend);

    let again = reopen(&dir.0);
    assert_eq!(again.counts("q").unwrap(), counts);
    assert_eq!(state_of(&again, done), Some(JobState::Completed));
    let job = again.get_job(waiting).unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(
        job.extras().unwrap().result.as_deref(),
        Some(&b"\"ok\""[..])
    );
    assert_eq!(job.extras().unwrap().tags, vec!["t".to_string()]);
    let job = again.get_job(failed).unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.extras().unwrap().traceback.as_deref(), Some("tb"));
    assert_eq!(state_of(&again, delayed), Some(JobState::Delayed));
    assert_eq!(again.load_schedules().unwrap(), vec![schedule]);
    assert_eq!(
        again.stored_declarations(&[queue()]).unwrap(),
        vec![Some(declaration())]
    );
    assert!(again.retry_failed(failed).unwrap());
    again.set_paused("q", false).unwrap();
    crash(again);
    let third = reopen(&dir.0);
    assert_eq!(state_of(&third, failed), Some(JobState::Waiting));
    assert!(!third.counts("q").unwrap().paused);
}

#[test]
fn runs_of_a_killed_process_run_again_with_the_run_counted() {
    let dir = TempDir::new();
    let backend = reopen(&dir.0);
    let once = {
        let data: Payload = Arc::from(&b"1"[..]);
        let options = JobOptions {
            attempts: Some(1),
            ..Default::default()
        };
        let mut jobs = vec![Job::new(queue(), data, options, 1, 300.0)];
        let id = jobs[0].id;
        backend.push(&queue(), &mut jobs, &declaration).unwrap();
        id
    };
    let twice = push(&backend, 2, JobOptions::default());
    assert_eq!(fetch(&backend, 10).len(), 2);
    crash(backend);

    let again = reopen(&dir.0);
    let job = again.get_job(twice).unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Waiting, 1));
    let job = again.get_job(once).unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed, "its only attempt was lost");
    assert!(job
        .extras()
        .unwrap()
        .error
        .as_deref()
        .unwrap()
        .starts_with("WorkerLost"));
    let taken = fetch(&again, 10);
    assert_eq!(
        taken.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(),
        vec![(twice, 2)]
    );
    crash(again);
    // The recovery was recorded: a second replay agrees with the first.
    let third = reopen(&dir.0);
    let job = third.get_job(twice).unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Waiting, 2));
}

/// A store with a few events in one segment; returns the segment's bytes (up to the end of the
/// last frame), the frames' end offsets, and for each push its job and the frame that stored it.
fn small_log() -> (Vec<u8>, Vec<usize>, Vec<(JobId, usize)>) {
    let dir = TempDir::new();
    let backend = reopen(&dir.0);
    let mut pushed = Vec::new();
    for n in 0..4 {
        pushed.push(push(&backend, n, JobOptions::default()));
    }
    let taken = fetch(&backend, 1);
    backend
        .settle("q", vec![complete(&taken[0], None)])
        .unwrap();
    pushed.push(push(&backend, 9, JobOptions::default()));
    crash(backend);
    let path = dir.0.join(segment::file_name(Kind::Log, 1));
    let bytes = std::fs::read(path).unwrap();
    let (frames, end, _) = segment::scan(&bytes);
    let mut ends = Vec::new();
    let mut at = HEADER_LEN;
    for frame in &frames {
        at += segment::FRAME_OVERHEAD + frame.len();
        ends.push(at);
    }
    assert_eq!(at, end);
    // Frame 0 declares the queue; pushes are frames 1..=4 and 7 (5: claim, 6: settle).
    let push_frames = [1, 2, 3, 4, 7];
    let pushes = pushed.into_iter().zip(push_frames).collect();
    (bytes[..end].to_vec(), ends, pushes)
}

/// Opens a store whose only segment holds `bytes`; returns the jobs it recovered.
fn recovered_from(bytes: &[u8]) -> Vec<JobId> {
    let dir = TempDir::new();
    std::fs::write(dir.0.join(segment::file_name(Kind::Log, 1)), bytes).unwrap();
    let backend = reopen(&dir.0);
    let mut ids: Vec<JobId> = ["q"]
        .iter()
        .filter_map(|q| backend.list_jobs(q, None, 0, usize::MAX).ok())
        .flatten()
        .map(|job| job.id)
        .collect();
    ids.sort();
    // The store stays usable after a repair.
    push(&backend, 100, JobOptions::default());
    backend.close();
    ids
}

#[test]
fn every_truncation_point_recovers_every_whole_record_before_it() {
    let (bytes, ends, pushes) = small_log();
    for cut in HEADER_LEN..=bytes.len() {
        let recovered = recovered_from(&bytes[..cut]);
        for (id, frame) in &pushes {
            let whole = ends[*frame] <= cut;
            assert_eq!(recovered.contains(id), whole, "cut at {cut}");
        }
    }
}

#[test]
fn flipped_bytes_lose_nothing_before_the_damage() {
    let (bytes, ends, pushes) = small_log();
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        let recovered = recovered_from(&damaged);
        for (id, frame) in &pushes {
            if ends[*frame] <= at {
                assert!(
                    recovered.contains(id),
                    "flip at {at}: lost a record before it"
                );
            }
            let starts = if *frame == 0 {
                HEADER_LEN
            } else {
                ends[frame - 1]
            };
            if starts > at {
                // A record after the damage is never trusted: it may build on what was lost.
                assert!(
                    !recovered.contains(id),
                    "flip at {at}: kept a record after it"
                );
            }
        }
    }
}

#[test]
fn a_log_of_a_newer_format_is_refused_untouched() {
    let dir = TempDir::new();
    let backend = reopen(&dir.0);
    push(&backend, 1, JobOptions::default());
    backend.close();
    drop(backend);
    let path = dir.0.join(segment::file_name(Kind::Log, 1));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&(segment::FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let error = open(&options(&dir.0)).err().expect("refused");
    assert!(
        matches!(&error, QueueError::Backend(m) if m.contains("newer")),
        "{error}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no segment was added: {names:?}");
}

#[test]
fn a_second_opener_is_told_who_holds_the_store() {
    let dir = TempDir::new();
    let backend = reopen(&dir.0);
    let error = open(&options(&dir.0)).err().expect("refused");
    let pid = std::process::id().to_string();
    assert!(
        matches!(&error, QueueError::Backend(m) if m.contains(&pid)),
        "{error}"
    );
    backend.close();
    // Closed: the directory is free again.
    drop(reopen(&dir.0));
}

#[test]
fn a_crash_at_any_step_of_a_compaction_loses_nothing() {
    // `None`: the crash comes after the last step.
    for step in [
        Some(Step::Cut),
        Some(Step::Written),
        Some(Step::Renamed),
        None,
    ] {
        let dir = TempDir::new();
        let backend = reopen(&dir.0);
        let ids: Vec<JobId> = (0..50)
            .map(|n| push(&backend, n, JobOptions::default()))
            .collect();
        let taken = fetch(&backend, 10);
        let acks = taken[..5]
            .iter()
            .map(|job| complete(job, Some("1")))
            .collect();
        backend.settle("q", acks).unwrap();
        compact(&backend, step).unwrap();
        let late = push(&backend, 99, JobOptions::default());
        crash(backend);

        let again = reopen(&dir.0);
        let states: Vec<JobState> = ids
            .iter()
            .map(|id| state_of(&again, *id).unwrap())
            .collect();
        let completed = states.iter().filter(|s| **s == JobState::Completed).count();
        assert_eq!(completed, 5, "{step:?}");
        // The five taken but unfinished ran in the dead process: waiting again, run counted.
        assert_eq!(
            states.iter().filter(|s| **s == JobState::Waiting).count(),
            45,
            "{step:?}"
        );
        assert_eq!(state_of(&again, late), Some(JobState::Waiting), "{step:?}");
        assert_eq!(again.counts("q").unwrap().completed, 5, "{step:?}");
        again.close();
    }
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn compaction_keeps_the_log_proportional_to_what_is_live() {
    let dir = TempDir::new();
    let backend = open(&FileOptions {
        compact_min_bytes: 1 << 20,
        ..options(&dir.0)
    })
    .unwrap();
    let retention = QueueDeclaration {
        retention: Retention {
            ttl: 3600.0,
            keep_completed: 100,
            keep_failed: 100,
        },
        ..declaration()
    };
    backend.declare_queue(&queue(), &retention, true).unwrap();
    let mut peak = 0;
    for round in 0..2000 {
        let mut jobs: Vec<Job> = (0..500)
            .map(|n| {
                let data: Payload =
                    Arc::from(format!("{{\"round\":{round},\"n\":{n}}}").into_bytes());
                Job::new(queue(), data, JobOptions::default(), 1, 300.0)
            })
            .collect();
        backend.push(&queue(), &mut jobs, &declaration).unwrap();
        let taken = fetch(&backend, 500);
        backend
            .settle("q", taken.iter().map(|job| complete(job, None)).collect())
            .unwrap();
        if backend.journal().since_snapshot() >= 1 << 20 {
            compact(&backend, None).unwrap();
        }
        peak = peak.max(dir_bytes(&dir.0));
    }
    assert_eq!(backend.counts("q").unwrap().completed, 1_000_000);
    // A million jobs went through (about 100 MB of log); what stays is bounded by the
    // threshold and the segments' preallocation (4 MiB each), not by the traffic.
    assert!(peak < 16 << 20, "{peak} bytes on disk");
    backend.close();
    let again = reopen(&dir.0);
    assert_eq!(again.counts("q").unwrap().completed, 1_000_000);
    assert_eq!(
        again
            .list_jobs("q", Some(JobState::Completed), 0, usize::MAX)
            .unwrap()
            .len(),
        100
    );
}
