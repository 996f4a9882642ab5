//! Regressions found in review: moves racing a delete, a failed sync, a takeover while other
//! processes run jobs, and requests from a garbled or hostile peer.

use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::codec::Writer;
use super::protocol::{self, method};
use super::tests::{complete, crash, declaration, options, push, queue, reopen, TempDir};
use super::FileStore;
use crate::backend::{Backend, FetchRequest};
use crate::error::QueueError;
use crate::job::{Job, JobOptions, JobState, Payload};

#[test]
fn moves_racing_a_delete_happen_before_it_or_not_at_all() {
    for _ in 0..20 {
        let dir = TempDir::new();
        let backend = reopen(&dir.0);
        push(&backend, 0, JobOptions::default());
        let hold = backend.hold_queue("q");
        // A push and a clear look the queue up, then wait for its lock; the delete comes next.
        let pusher = {
            let backend = backend.clone();
            std::thread::spawn(move || push(&backend, 1, JobOptions::default()))
        };
        let clearer = {
            let backend = backend.clone();
            std::thread::spawn(move || backend.clear("q"))
        };
        std::thread::sleep(Duration::from_millis(20));
        let deleter = {
            let backend = backend.clone();
            std::thread::spawn(move || backend.delete("q"))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(hold);
        let raced = pusher.join().unwrap();
        match clearer.join().unwrap() {
            Ok(_) | Err(QueueError::UnknownQueue(_)) => {}
            Err(error) => panic!("{error}"),
        }
        assert!(deleter.join().unwrap().unwrap());
        let fresh = push(&backend, 2, JobOptions::default());
        let live = [raced, fresh].map(|id| backend.get_job(id).unwrap().map(|j| j.state));
        assert_eq!(live[1], Some(JobState::Waiting));
        crash(backend);
        let again = reopen(&dir.0);
        let replayed = [raced, fresh].map(|id| again.get_job(id).unwrap().map(|j| j.state));
        assert_eq!(replayed, live, "the log replays what happened, in order");
    }
}

#[test]
fn after_a_failed_sync_the_log_takes_nothing_more() {
    let dir = TempDir::new();
    let backend = super::open(&super::FileOptions {
        fsync: super::Fsync::Always,
        ..options(&dir.0)
    })
    .unwrap();
    push(&backend, 0, JobOptions::default());
    backend
        .journal()
        .fail_next_sync
        .store(true, std::sync::atomic::Ordering::Release);
    let data: Payload = Arc::from(&b"1"[..]);
    let mut jobs = vec![Job::new(queue(), data, JobOptions::default(), 1, 1.0)];
    let id = jobs[0].id;
    let failed = backend.push(&queue(), &mut jobs, &declaration);
    match failed {
        Err(QueueError::PushOutcomeUnknown { ids, .. }) => assert_eq!(ids, vec![id]),
        other => panic!("{other:?}"),
    }
    // A later push is not reported durable on the strength of a sync that did not cover it.
    let data: Payload = Arc::from(&b"2"[..]);
    let mut jobs = vec![Job::new(queue(), data, JobOptions::default(), 1, 1.0)];
    assert!(matches!(
        backend.push(&queue(), &mut jobs, &declaration),
        Err(QueueError::Backend(_))
    ));
}

#[test]
fn a_takeover_leaves_the_jobs_other_processes_run_to_them() {
    let dir = TempDir::new();
    let opts = super::FileOptions {
        lost_run_grace: super::DEFAULT_LOST_RUN_GRACE,
        ..options(&dir.0)
    };
    let holder = FileStore::open(&opts).unwrap();
    let client = FileStore::open(&opts).unwrap();
    assert!(holder.is_holder() && !client.is_holder());
    let data: Payload = Arc::from(&b"{}"[..]);
    let mut jobs = vec![Job::new(queue(), data, JobOptions::default(), 1, 300.0)];
    let id = jobs[0].id;
    client.push(&queue(), &mut jobs, &declaration).unwrap();
    let request = FetchRequest {
        max: 1,
        share: 1,
        wait: Duration::ZERO,
        start_all: true,
    };
    let taken = client.fetch("q", request, &AtomicBool::new(false)).unwrap();
    assert_eq!(taken.len(), 1);
    // The holder closes while the client runs the job; the client finishes it.
    holder.close();
    drop(holder);
    client.settle("q", vec![complete(&taken[0], None)]).unwrap();
    assert!(client.is_holder(), "the client took the store over");
    let job = client.get_job(id).unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Completed, 1));
    client.close();
}

/// A raw connection to a holder, greeted.
fn raw_connection(dir: &std::path::Path) -> UnixStream {
    let mut stream = UnixStream::connect_addr(&protocol::address(dir).unwrap()).unwrap();
    let mut hello = protocol::HELLO.to_vec();
    hello.extend_from_slice(&7u128.to_le_bytes());
    protocol::write_frame(&mut stream, &hello).unwrap();
    let mut reply = Vec::new();
    protocol::read_frame(&mut stream, &mut reply).unwrap();
    stream
}

fn request(stream: &mut UnixStream, kind: u8, write: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
    let mut body = vec![kind];
    write(&mut Writer(&mut body));
    protocol::write_frame(stream, &body).unwrap();
    let mut reply = Vec::new();
    protocol::read_frame(stream, &mut reply).unwrap();
    reply
}

#[test]
fn a_garbled_request_is_refused_and_the_connection_goes_on() {
    let dir = TempDir::new();
    let holder = FileStore::open(&options(&dir.0)).unwrap();
    let mut stream = raw_connection(&dir.0);
    let reply = request(&mut stream, method::FETCH, |w| {
        w.str("q");
        w.u32(1);
        w.u32(1);
        w.f64(f64::NAN);
        w.u8(0);
    });
    assert_eq!(reply[0], 1, "an error reply");
    let reply = request(&mut stream, method::QUEUE_NAMES, |_| {});
    assert_eq!(reply[0], 0, "the connection still answers");

    // A pushed job is stored as a new push makes it, whatever the peer says of it.
    let mut job = Job::new(
        queue(),
        Payload::from(&b"1"[..]),
        JobOptions::default(),
        3,
        1.0,
    );
    job.state = JobState::Active;
    job.attempts = 0;
    let reply = request(&mut stream, method::PUSH, |w| {
        w.str("q");
        w.declaration(&declaration());
        w.u32(1);
        w.job(&job);
    });
    assert_eq!(reply[0], 0);
    let stored = holder.get_job(job.id).unwrap().unwrap();
    assert_eq!((stored.state, stored.attempts), (JobState::Waiting, 0));
    holder.close();
}
