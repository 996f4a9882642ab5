//! The holder of a file store serves it to the other processes that open the directory: a
//! thread per connection answers their `Backend` calls from the one store, so each job runs
//! once whichever process runs it. A client's session is its connections: when the last one
//! closes (the process ended, maybe killed), the runs it had taken and not settled are handed
//! back, to run again with the run counted.

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::codec::{Reader, Writer};
use super::protocol::{self, method};
use super::FileBackend;
use crate::backend::{Backend, FetchRequest, Removal};
use crate::error::{QueueError, Result};
use crate::job::{JobId, JobState, Timestamp};
use crate::sync::Mutex;

/// How long a session without connections is kept before its runs are handed back: a process
/// that reconnects meanwhile (its holder changed, say) keeps them.
const SESSION_GRACE: Duration = Duration::from_secs(1);
/// How often the server looks for ended sessions and orphaned runs.
const REAP_EVERY: Duration = Duration::from_millis(100);

type Runs = HashMap<JobId, (Arc<str>, u32)>;

#[derive(Default)]
struct Session {
    connections: usize,
    /// Runs taken through this session and not settled yet: (queue, attempt) by job.
    runs: Runs,
    /// When its last connection closed.
    ended: Option<Instant>,
}

/// Runs found active when the store was opened: their process may still be running them (a
/// client of the holder that went away), so they are handed back only if no process claims
/// them (`RESUME`) within the grace period.
struct Orphans {
    due: Instant,
    runs: Runs,
}

pub struct Server {
    store: Weak<FileBackend>,
    stopping: AtomicBool,
    /// Open connections, to shut them when the store closes.
    connections: Mutex<HashMap<u64, UnixStream>>,
    next_connection: AtomicU64,
    sessions: Mutex<HashMap<u128, Session>>,
    /// Fetches in progress by queue, with the flag that ends them early (a client's `wake`).
    fetching: Mutex<HashMap<Arc<str>, Vec<Arc<AtomicBool>>>>,
    accepting: Mutex<Option<std::thread::JoinHandle<()>>>,
    orphans: Mutex<Orphans>,
}

impl Server {
    /// Starts answering on `listener` (bound before the log was replayed: clients that came
    /// meanwhile wait in its backlog). `orphans` are the runs found active at opening that this
    /// process does not run itself; those nobody claims within `grace` run again.
    pub fn start(
        listener: UnixListener,
        store: &Arc<FileBackend>,
        orphans: Vec<(Arc<str>, JobId, u32)>,
        grace: Duration,
    ) -> Result<Arc<Server>> {
        let server = Arc::new(Server {
            orphans: Mutex::new(Orphans {
                due: Instant::now() + grace,
                runs: orphans
                    .into_iter()
                    .map(|(queue, id, attempt)| (id, (queue, attempt)))
                    .collect(),
            }),
            store: Arc::downgrade(store),
            stopping: AtomicBool::new(false),
            connections: Mutex::default(),
            next_connection: AtomicU64::new(0),
            sessions: Mutex::default(),
            fetching: Mutex::default(),
            accepting: Mutex::default(),
        });
        let accepting = server.clone();
        let thread = std::thread::Builder::new()
            .name("rnq-file-server".into())
            .spawn(move || accepting.accept(listener))
            .map_err(|e| QueueError::Backend(format!("could not start the store's server: {e}")))?;
        *server.accepting.lock() = Some(thread);
        let reaping = Arc::downgrade(&server);
        std::thread::Builder::new()
            .name("rnq-file-reaper".into())
            .spawn(move || reap(reaping))
            .map_err(|e| QueueError::Backend(format!("could not start the store's server: {e}")))?;
        Ok(server)
    }

    /// Hands back the runs of sessions ended more than `SESSION_GRACE` ago, and the orphans
    /// nobody claimed in time. Returns false once the server stopped.
    fn reap_once(&self) -> bool {
        if self.stopping.load(Ordering::Acquire) {
            return false;
        }
        let Some(store) = self.store.upgrade() else {
            return false;
        };
        let mut lost: Vec<(Arc<str>, JobId, u32)> = Vec::new();
        self.sessions.lock().retain(|_, session| {
            let expired = session
                .ended
                .is_some_and(|ended| ended.elapsed() >= SESSION_GRACE);
            if expired {
                lost.extend(session.runs.drain().map(|(id, (q, a))| (q, id, a)));
            }
            !expired
        });
        let gone = !lost.is_empty();
        {
            let mut orphans = self.orphans.lock();
            if !orphans.runs.is_empty() && Instant::now() >= orphans.due {
                lost.extend(orphans.runs.drain().map(|(id, (q, a))| (q, id, a)));
            }
        }
        if lost.is_empty() {
            return true;
        }
        match store.recover_lost_runs(&lost) {
            Ok(0) => {}
            Ok(count) => log::warn!(
                target: "rnode_queue",
                "file store: {count} running job(s) of {} went away with their process; they \
                 run again (the lost run counts as an attempt) or failed, out of attempts",
                if gone { "a process that shared it" } else { "a process that held it" }
            ),
            Err(error) => log::error!(
                target: "rnode_queue",
                "file store: {} job(s) whose process went away could not be handed back \
                 ({error}); they run again when the store is next opened",
                lost.len()
            ),
        }
        true
    }

    /// Runs a client still runs (`RESUME`): its session's, not orphans.
    pub fn adopt(&self, session: u128, runs: &[(Arc<str>, JobId, u32)]) {
        {
            let mut orphans = self.orphans.lock();
            for (_, id, _) in runs {
                orphans.runs.remove(id);
            }
        }
        if let Some(entry) = self.sessions.lock().get_mut(&session) {
            for (queue, id, attempt) in runs {
                entry.runs.insert(*id, (queue.clone(), *attempt));
            }
        }
    }

    fn accept(self: Arc<Self>, listener: UnixListener) {
        use std::os::fd::AsRawFd;
        for stream in listener.incoming() {
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            let Ok(stream) = stream else {
                continue;
            };
            let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
            if let Ok(copy) = stream.try_clone() {
                super::fork::close_in_child(&copy);
                self.connections.lock().insert(id, copy);
            }
            super::fork::close_in_child(&stream);
            let server = self.clone();
            let fd = stream.as_raw_fd();
            let spawned = std::thread::Builder::new()
                .name("rnq-file-client".into())
                .spawn(move || server.serve(id, stream));
            if spawned.is_err() {
                log::error!(target: "rnode_queue", "file store: a connection was refused (no thread)");
                if let Some(copy) = self.connections.lock().remove(&id) {
                    super::fork::forget(copy.as_raw_fd());
                }
                super::fork::forget(fd);
            }
        }
        super::fork::forget(listener.as_raw_fd());
    }

    /// Stops answering: every connection is shut, so clients notice at once.
    pub fn stop(&self, address: &std::os::unix::net::SocketAddr) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wakes the accepting thread, which then sees `stopping` and lets go of the socket's
        // name (a store opened again at once binds it anew).
        let _ = UnixStream::connect_addr(address);
        if let Some(thread) = self.accepting.lock().take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        for stream in self.connections.lock().values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for flags in self.fetching.lock().values() {
            flags
                .iter()
                .for_each(|flag| flag.store(true, Ordering::Release));
        }
    }

    fn serve(self: Arc<Self>, id: u64, mut stream: UnixStream) {
        let mut body = Vec::new();
        let session = match self.hello(&mut stream, &mut body) {
            Some(session) => session,
            None => {
                self.close_connection(id, &stream);
                return;
            }
        };
        let mut reply = Vec::new();
        while !self.stopping.load(Ordering::Acquire) {
            if protocol::read_frame(&mut stream, &mut body).is_err() {
                break;
            }
            let Some(store) = self.store.upgrade() else {
                break;
            };
            reply.clear();
            let mut w = Writer(&mut reply);
            // A request that trips a bug fails alone: the connection and its session go on.
            let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.answer(&store, session, &body, &mut w)
            }))
            .unwrap_or_else(|_| {
                log::error!(target: "rnode_queue", "file store: a request from another process failed (a bug)");
                Err(QueueError::Backend(
                    "the store's holder failed on this request".into(),
                ))
            });
            if let Err(error) = answered {
                reply.clear();
                let mut w = Writer(&mut reply);
                w.u8(1);
                protocol::write_error(&mut w, &error);
            }
            if protocol::write_frame(&mut stream, &reply).is_err() {
                break;
            }
        }
        self.close_connection(id, &stream);
        self.end_connection(session);
    }

    fn close_connection(&self, id: u64, stream: &UnixStream) {
        use std::os::fd::AsRawFd;
        if let Some(copy) = self.connections.lock().remove(&id) {
            super::fork::forget(copy.as_raw_fd());
        }
        super::fork::forget(stream.as_raw_fd());
    }

    fn hello(&self, stream: &mut UnixStream, body: &mut Vec<u8>) -> Option<u128> {
        if !protocol::same_user(stream) {
            log::warn!(target: "rnode_queue", "file store: a process of another user tried to connect; refused");
            return None;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        protocol::read_frame_within(stream, body, 64).ok()?;
        let _ = stream.set_read_timeout(None);
        if body.len() != 24 || &body[..8] != protocol::HELLO {
            return None;
        }
        let session = u128::from_le_bytes(body[8..24].try_into().expect("16 bytes"));
        let mut sessions = self.sessions.lock();
        let entry = sessions.entry(session).or_default();
        entry.connections += 1;
        entry.ended = None;
        drop(sessions);
        let pid = std::process::id().to_le_bytes();
        protocol::write_frame(stream, &pid).ok()?;
        Some(session)
    }

    /// A session without connections left ends: its unsettled runs are handed back after
    /// `SESSION_GRACE`, unless it comes back. When the server stops, they stay as they are:
    /// their process goes on with the store's next holder.
    fn end_connection(&self, session: u128) {
        if let Some(entry) = self.sessions.lock().get_mut(&session) {
            entry.connections -= 1;
            if entry.connections == 0 && !self.stopping.load(Ordering::Acquire) {
                entry.ended = Some(Instant::now());
            }
        }
    }

    fn track(&self, session: u128, queue: &Arc<str>, runs: impl IntoIterator<Item = (JobId, u32)>) {
        if let Some(entry) = self.sessions.lock().get_mut(&session) {
            for (id, attempt) in runs {
                entry.runs.insert(id, (queue.clone(), attempt));
            }
        }
    }

    fn untrack(&self, session: u128, ids: impl IntoIterator<Item = JobId>) {
        if let Some(entry) = self.sessions.lock().get_mut(&session) {
            for id in ids {
                entry.runs.remove(&id);
            }
        }
    }

    fn answer(
        &self,
        store: &FileBackend,
        session: u128,
        body: &[u8],
        w: &mut Writer<'_>,
    ) -> Result<()> {
        let mut r = Reader(body);
        let bad =
            |e: super::codec::DecodeError| QueueError::Backend(format!("a bad request: {}", e.0));
        let kind = r.u8().map_err(bad)?;
        let queue =
            |r: &mut Reader<'_>| -> Result<Arc<str>> { Ok(Arc::from(r.str().map_err(bad)?)) };
        // `Ok` first; the result follows.
        w.u8(0);
        match kind {
            method::DECLARE_QUEUE => {
                let name = queue(&mut r)?;
                let declaration = r.declaration().map_err(bad)?;
                let replace = r.flag().map_err(bad)?;
                w.declaration(&store.declare_queue(&name, &declaration, replace)?);
            }
            method::STORED_DECLARATIONS => {
                let count = r.count(4).map_err(bad)?;
                let names = (0..count)
                    .map(|_| queue(&mut r))
                    .collect::<Result<Vec<_>>>()?;
                let stored = store.stored_declarations(&names)?;
                w.u32(stored.len() as u32);
                for declaration in &stored {
                    w.opt(declaration.as_ref(), Writer::declaration);
                }
            }
            method::PUSH | method::PUSH_TICK => {
                let name = queue(&mut r)?;
                let declaration = r.declaration().map_err(bad)?;
                let tick = if kind == method::PUSH_TICK {
                    Some((r.str().map_err(bad)?.to_string(), r.f64().map_err(bad)?))
                } else {
                    None
                };
                let count = r.count(1).map_err(bad)?;
                let jobs = (0..count)
                    .map(|_| r.job(&name))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let mut jobs = new_jobs(jobs)?;
                let declare = || declaration.clone();
                match tick {
                    Some((schedule, at)) => {
                        let pushed = store.push_tick(&name, &mut jobs, &schedule, at, &declare)?;
                        w.u8(u8::from(pushed));
                    }
                    None => store.push(&name, &mut jobs, &declare)?,
                }
            }
            method::FETCH => {
                let name = queue(&mut r)?;
                let (max, share) = (r.u32().map_err(bad)?, r.u32().map_err(bad)?);
                let wait = r.f64().map_err(bad)?;
                if !wait.is_finite() {
                    return Err(QueueError::Backend(format!("a bad fetch wait {wait}")));
                }
                let request = FetchRequest {
                    max: max as usize,
                    share: share as usize,
                    wait: Duration::from_secs_f64(wait.clamp(0.0, 60.0)),
                    start_all: r.flag().map_err(bad)?,
                };
                let cancel = Arc::new(AtomicBool::new(self.stopping.load(Ordering::Acquire)));
                self.fetching
                    .lock()
                    .entry(name.clone())
                    .or_default()
                    .push(cancel.clone());
                let fetched = store.fetch(&name, request, &cancel);
                if let Some(flags) = self.fetching.lock().get_mut(&name) {
                    flags.retain(|flag| !Arc::ptr_eq(flag, &cancel));
                }
                let jobs = fetched?;
                // Tracked before the reply goes: a client that dies now still gets them back.
                self.track(
                    session,
                    &name,
                    jobs.iter().map(|job| (job.id, job.attempts)),
                );
                w.u32(jobs.len() as u32);
                for job in &jobs {
                    w.job(job);
                }
            }
            method::SETTLE => {
                let name = queue(&mut r)?;
                let acks = r.acks().map_err(bad)?;
                let ids: Vec<JobId> = acks.iter().map(|ack| ack.id).collect();
                let next = store.settle(&name, acks)?;
                self.untrack(session, ids);
                w.opt(next, Writer::f64);
            }
            method::RELEASE | method::HAND_BACK => {
                let name = queue(&mut r)?;
                let runs = r.runs().map_err(bad)?;
                if kind == method::RELEASE {
                    store.release_runs(&name, &runs)?;
                } else {
                    let lost = store.hand_back(&name, &runs)?;
                    w.u32(lost.len() as u32);
                    lost.iter().for_each(|id| w.id(*id));
                }
                self.untrack(session, runs.iter().map(|(id, _)| *id));
            }
            method::TICK => {
                let name = queue(&mut r)?;
                let now: Timestamp = r.f64().map_err(bad)?;
                w.opt(store.tick(&name, now)?, Writer::f64);
            }
            method::WAKE => {
                let name = queue(&mut r)?;
                if let Some(flags) = self.fetching.lock().get(&name) {
                    flags
                        .iter()
                        .for_each(|flag| flag.store(true, Ordering::Release));
                }
                store.wake(&name);
            }
            method::GET_JOB => {
                let job = store.get_job(r.id().map_err(bad)?)?;
                w.jobs_with_queues(job.as_slice());
            }
            method::LIST_JOBS => {
                let name = queue(&mut r)?;
                let state = r
                    .opt(|r| r.str().map(str::to_string))
                    .map_err(bad)?
                    .map(|s| s.parse::<JobState>())
                    .transpose()?;
                let offset = r.u64().map_err(bad)? as usize;
                let limit = r.u64().map_err(bad)? as usize;
                w.jobs_with_queues(&store.list_jobs(&name, state, offset, limit)?);
            }
            method::RETRY_FAILED => {
                w.u8(u8::from(store.retry_failed(r.id().map_err(bad)?)?));
            }
            method::SET_PAUSED => {
                let name = queue(&mut r)?;
                store.set_paused(&name, r.flag().map_err(bad)?)?;
            }
            method::CLEAR => w.u64(store.clear(&queue(&mut r)?)? as u64),
            method::DELETE => w.u8(u8::from(store.delete(&queue(&mut r)?)?)),
            method::COUNTS_OF => {
                let count = r.count(4).map_err(bad)?;
                let names = (0..count)
                    .map(|_| r.str().map(str::to_string))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let counts = store.counts_of(&names)?;
                w.u32(counts.len() as u32);
                for counts in &counts {
                    w.opt(counts.as_ref(), protocol::write_counts);
                }
            }
            method::QUEUE_NAMES => w.strs(&store.queue_names()?),
            method::TOTALS => protocol::write_totals(w, &store.totals()?),
            method::IS_IDLE => {
                let name = r.opt(|r| r.str().map(str::to_string)).map_err(bad)?;
                w.u8(u8::from(store.is_idle(name.as_deref())?));
            }
            method::SAVE_SCHEDULE => store.save_schedule(&r.schedule().map_err(bad)?)?,
            method::REMOVE_SCHEDULE => {
                w.u8(u8::from(store.remove_schedule(r.str().map_err(bad)?)?));
            }
            method::LOAD_SCHEDULES => {
                let schedules = store.load_schedules()?;
                w.u32(schedules.len() as u32);
                schedules.iter().for_each(|s| w.schedule(s));
            }
            method::RESUME => {
                let count = r.count(20).map_err(bad)?;
                let runs = (0..count)
                    .map(|_| Ok((queue(&mut r)?, r.id().map_err(bad)?, r.u32().map_err(bad)?)))
                    .collect::<Result<Vec<_>>>()?;
                self.adopt(session, &runs);
            }
            method::HAS_SCHEDULE => {
                w.u8(u8::from(store.has_schedule(r.str().map_err(bad)?)?));
            }
            method::BEAT => {
                let worker = r.str().map_err(bad)?;
                let info = r.payload().map_err(bad)?;
                let ttl = r.f64().map_err(bad)?;
                if !(ttl.is_finite() && ttl > 0.0) {
                    return Err(QueueError::Backend(format!("a heartbeat lasting {ttl} s")));
                }
                store.beat(worker, &info, ttl)?;
            }
            method::WORKERS => {
                let workers = store.workers()?;
                w.u32(workers.len() as u32);
                workers.iter().for_each(|info| w.bytes(info));
            }
            method::LEAVE => store.leave(r.str().map_err(bad)?)?,
            method::REMOVE_JOB => w.u8(match store.remove_job(r.id().map_err(bad)?)? {
                Removal::Removed => 0,
                Removal::Running => 1,
                Removal::NotFound => 2,
            }),
            other => return Err(QueueError::Backend(format!("unknown request {other}"))),
        }
        Ok(())
    }
}

/// Pushed jobs as a new push makes them, whatever the peer sent: waiting or delayed, never
/// run, with a usable timeout and ids unique in the batch.
fn new_jobs(mut jobs: Vec<crate::job::Job>) -> Result<Vec<crate::job::Job>> {
    use crate::job::{JobState, MaybeTime};
    let now = crate::job::now();
    let mut ids = std::collections::HashSet::with_capacity(jobs.len());
    for job in &mut jobs {
        if !ids.insert(job.id) {
            return Err(QueueError::DuplicateJob(format!(
                "job id {} appears twice in one push: nothing was pushed",
                job.id
            )));
        }
        if !(job.timeout.is_finite() && job.timeout > 0.0) || job.max_attempts == 0 {
            return Err(QueueError::InvalidJob(format!(
                "job {} has a timeout of {} s and {} attempts",
                job.id, job.timeout, job.max_attempts
            )));
        }
        job.state = if job.due_at() > now && job.scheduled_at.get().is_some() {
            JobState::Delayed
        } else {
            JobState::Waiting
        };
        job.attempts = 0;
        job.seq = 0;
        job.started_at = MaybeTime::NONE;
        job.finished_at = MaybeTime::NONE;
    }
    Ok(jobs)
}

fn reap(server: Weak<Server>) {
    loop {
        std::thread::sleep(REAP_EVERY);
        match server.upgrade() {
            Some(server) if server.reap_once() => {}
            _ => return,
        }
    }
}
