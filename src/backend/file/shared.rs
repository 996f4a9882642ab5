//! The `Backend` a process gets for a file store: the store itself when this process holds the
//! directory (it then serves the others), or a client of the process that does. When the holder
//! goes away, a client takes the store over (replaying the log the holder left) or connects to
//! whoever did, and carries on with the call it was making.

use std::cell::Cell;
use std::collections::HashMap;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::client::{self, CallError, CallResult, Client};
use super::server::Server;
use super::{protocol, FileBackend, FileOptions};
use crate::backend::{
    Ack, Backend, FetchRequest, NonBlockingPush, QueueCounts, QueueDeclaration, Removal,
    ScheduleRecord, Totals,
};
use crate::error::{QueueError, Result};
use crate::job::{Job, JobId, JobState, Payload, Timestamp};
use crate::sync::{Mutex, RwLock};

/// How long opening waits for a holder that has the lock but does not answer yet (it may have
/// just died, or be taking the store over itself).
const FIND_HOLDER_FOR: Duration = Duration::from_secs(10);

enum Role {
    Holder {
        store: Arc<FileBackend>,
        server: Arc<Server>,
    },
    Client(Arc<Client>),
    /// While the store is being opened (never seen by a call).
    Opening,
}

pub struct FileStore {
    options: FileOptions,
    address: SocketAddr,
    /// This process's session with whichever process holds the store (kept across holders).
    session: u128,
    role: RwLock<Arc<Role>>,
    closed: AtomicBool,
    /// Runs taken through a holder and not yet settled: told to the next holder, so that it
    /// does not run them again (`RESUME`).
    in_flight: Mutex<HashMap<JobId, (Arc<str>, u32)>>,
    me: Weak<FileStore>,
}

impl FileStore {
    pub fn open(options: &FileOptions) -> Result<Arc<FileStore>> {
        std::fs::create_dir_all(&options.path).map_err(|e| {
            super::writer::io_error(&options.path, "could not create the store's directory", e)
        })?;
        let address = protocol::address(&options.path).map_err(|e| {
            super::writer::io_error(&options.path, "could not name the store's socket", e)
        })?;
        let store = Arc::new_cyclic(|me| FileStore {
            options: options.clone(),
            address,
            session: u128::from_le_bytes(*uuid::Uuid::new_v4().as_bytes()),
            role: RwLock::new(Arc::new(Role::Opening)),
            closed: AtomicBool::new(false),
            in_flight: Mutex::default(),
            me: me.clone(),
        });
        let role = store.find_role()?;
        *store.role.write() = Arc::new(role);
        Ok(store)
    }

    /// Whether this process holds the store (others are its clients).
    pub fn is_holder(&self) -> bool {
        matches!(**self.role.read(), Role::Holder { .. })
    }

    /// The store, when this process holds it.
    fn holder(&self) -> Option<Arc<FileBackend>> {
        match &**self.role.read() {
            Role::Holder { store, .. } => Some(store.clone()),
            _ => None,
        }
    }

    /// The store held here, if the role can be read without waiting.
    fn held_in_place(&self) -> Option<Arc<FileBackend>> {
        match &**self.role.try_read()? {
            Role::Holder { store, .. } => Some(store.clone()),
            _ => None,
        }
    }

    /// Runs `local` on the store held here, or `remote` through the holder; when the holder
    /// went away, finds the new one (maybe this process) and tries again.
    fn call<T>(
        &self,
        local: impl Fn(&FileBackend) -> Result<T>,
        remote: impl Fn(&Client) -> CallResult<T>,
    ) -> Result<T> {
        let mut role = self.role.read().clone();
        let mut tries = 0;
        loop {
            let client = match &*role {
                Role::Holder { store, .. } => return local(store),
                Role::Client(client) => client.clone(),
                Role::Opening => return Err(QueueError::Backend("the store is opening".into())),
            };
            match remote(&client) {
                Ok(value) => return Ok(value),
                Err(CallError::Failed(error)) => return Err(error),
                Err(CallError::Gone(error)) => {
                    tries += 1;
                    if tries > 3 || self.closed.load(Ordering::Acquire) {
                        return Err(client::gone(&error, client.holder));
                    }
                    role = self.replace_holder(&role)?;
                }
            }
        }
    }

    /// The holder that `seen` named went away: finds the new one, unless another call did.
    fn replace_holder(&self, seen: &Arc<Role>) -> Result<Arc<Role>> {
        let mut role = self.role.write();
        if Arc::ptr_eq(&role, seen) && !self.closed.load(Ordering::Acquire) {
            let found = Arc::new(self.find_role()?);
            if let Role::Holder { .. } = &*found {
                log::warn!(
                    target: "rnode_queue",
                    "file store {}: the process that held it went away; this process (pid \
                     {}) holds it now",
                    self.options.path.display(),
                    std::process::id()
                );
            }
            *role = found;
        }
        Ok(role.clone())
    }

    /// Holds the store if no process does, else connects to the one that does; either way
    /// the runs this process took from an earlier holder stay its own.
    fn find_role(&self) -> Result<Role> {
        let mine: Vec<(Arc<str>, JobId, u32)> = self
            .in_flight
            .lock()
            .iter()
            .map(|(id, (queue, attempt))| (queue.clone(), *id, *attempt))
            .collect();
        let deadline = Instant::now() + FIND_HOLDER_FOR;
        let mut pause = Duration::from_millis(2);
        loop {
            match super::open_held(&self.options, || bind(&self.address))? {
                super::Opened::Held(store, listener) => {
                    let mut orphans: Vec<_> = store
                        .active_runs()
                        .into_iter()
                        .filter(|(_, id, _)| !mine.iter().any(|(_, own, _)| own == id))
                        .collect();
                    let grace = self.options.lost_run_grace;
                    if grace.is_zero() {
                        let lost = store.recover_lost_runs(&orphans)?;
                        super::log_lost(&self.options.path, lost);
                        orphans.clear();
                    }
                    let server = Server::start(listener, &store, orphans, grace)?;
                    return Ok(Role::Holder { store, server });
                }
                super::Opened::Busy(busy) => match self.connect(&mine) {
                    Ok(client) => return Ok(Role::Client(client)),
                    Err(error) if Instant::now() >= deadline => {
                        return Err(QueueError::Backend(format!(
                            "{busy}, which does not answer on the store's socket ({error})"
                        )))
                    }
                    // Between its lock and its socket, or gone and its lock not yet let go.
                    Err(_) => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(100));
                    }
                },
            }
        }
    }

    /// A client of the holder, told of the runs this process still runs, with a thread that
    /// notices at once when the holder goes away.
    fn connect(&self, mine: &[(Arc<str>, JobId, u32)]) -> std::io::Result<Arc<Client>> {
        let client = Arc::new(Client::connect(self.address.clone(), self.session)?);
        if !mine.is_empty() {
            client
                .resume(mine)
                .map_err(|_| std::io::Error::other("the holder did not take the runs back"))?;
        }
        let watched = client.watch_connection()?;
        let me = self.me.clone();
        let seen = Arc::downgrade(&client);
        let spawned = std::thread::Builder::new()
            .name("rnq-file-watch".into())
            .spawn(move || {
                Client::watch(watched);
                // The holder is gone: find the next one now, so that a process busy with a
                // long job is not taken for dead.
                let (Some(store), Some(client)) = (me.upgrade(), seen.upgrade()) else {
                    return;
                };
                let role = store.role.read().clone();
                if matches!(&*role, Role::Client(c) if Arc::ptr_eq(c, &client)) {
                    if let Err(error) = store.replace_holder(&role) {
                        log::error!(target: "rnode_queue", "file store: {error}");
                    }
                }
            });
        spawned.map_err(|e| std::io::Error::other(format!("no thread: {e}")))?;
        Ok(client)
    }

    fn track(&self, queue: &str, jobs: &[Job]) {
        if jobs.is_empty() {
            return;
        }
        let queue: Arc<str> = Arc::from(queue);
        let mut in_flight = self.in_flight.lock();
        for job in jobs {
            in_flight.insert(job.id, (queue.clone(), job.attempts));
        }
    }

    fn untrack(&self, ids: impl IntoIterator<Item = JobId>) {
        let mut in_flight = self.in_flight.lock();
        if !in_flight.is_empty() {
            for id in ids {
                in_flight.remove(&id);
            }
        }
    }
}

fn bind(address: &SocketAddr) -> std::io::Result<UnixListener> {
    let listener = UnixListener::bind_addr(address)?;
    super::fork::close_in_child(&listener);
    Ok(listener)
}

impl NonBlockingPush for FileStore {
    /// In place only where this process holds the store and its log needs no sync per push.
    fn try_push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        match self.held_in_place() {
            Some(store) => store.try_push(queue, jobs, declare),
            None => Ok(false),
        }
    }

    fn try_push_uncommitted(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<Option<u64>> {
        match self.held_in_place() {
            Some(store) => store.try_push_uncommitted(queue, jobs, declare),
            None => Ok(None),
        }
    }

    fn commit(&self, ticket: u64) -> Result<()> {
        // Tickets come from the store this process holds (a holder stays one until it closes).
        match self.holder() {
            Some(store) => NonBlockingPush::commit(&*store, ticket),
            None => Ok(()),
        }
    }
}

impl Backend for FileStore {
    fn shared(&self) -> bool {
        // Other processes may share the store at any time.
        true
    }

    fn declare_queue(
        &self,
        queue: &Arc<str>,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> Result<QueueDeclaration> {
        self.call(
            |s| s.declare_queue(queue, declaration, replace),
            |c| c.declare_queue(queue, declaration, replace),
        )
    }

    fn stored_declarations(&self, queues: &[Arc<str>]) -> Result<Vec<Option<QueueDeclaration>>> {
        self.call(
            |s| s.stored_declarations(queues),
            |c| c.stored_declarations(queues),
        )
    }

    fn push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<()> {
        if let Some(store) = self.holder() {
            return store.push(queue, jobs, declare);
        }
        let resent = Cell::new(false);
        self.call(
            |s| match s.push(queue, &mut jobs.clone(), declare) {
                // Sent again after taking the store over: the log had it.
                Err(QueueError::DuplicateJob(_)) if resent.get() => Ok(true),
                other => other.map(|()| true),
            },
            |c| match c.push(queue, jobs, &declare(), None) {
                // Sent again after its holder went away: it had landed the first time.
                Err(CallError::Failed(QueueError::DuplicateJob(_))) if resent.get() => Ok(true),
                Err(CallError::Gone(error)) => {
                    resent.set(true);
                    Err(CallError::Gone(error))
                }
                other => other,
            },
        )?;
        jobs.clear();
        Ok(())
    }

    fn push_tick(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        schedule: &str,
        tick: Timestamp,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        if let Some(store) = self.holder() {
            return store.push_tick(queue, jobs, schedule, tick, declare);
        }
        // Sent again after its holder went away, a tick that landed is found claimed.
        let pushed = self.call(
            |s| s.push_tick(queue, &mut jobs.clone(), schedule, tick, declare),
            |c| c.push(queue, jobs, &declare(), Some((schedule, tick))),
        )?;
        jobs.clear();
        Ok(pushed)
    }

    fn nonblocking(&self) -> Option<&dyn NonBlockingPush> {
        Some(self)
    }

    fn fetch(&self, queue: &str, request: FetchRequest, cancel: &AtomicBool) -> Result<Vec<Job>> {
        self.call(
            |s| s.fetch(queue, request, cancel),
            |c| {
                let jobs = c.fetch(queue, request)?;
                self.track(queue, &jobs);
                Ok(jobs)
            },
        )
    }

    fn settle(&self, queue: &str, acks: Vec<Ack>) -> Result<Option<Timestamp>> {
        if let Some(store) = self.holder() {
            return store.settle(queue, acks);
        }
        let ids: Vec<JobId> = acks.iter().map(|ack| ack.id).collect();
        let next = self.call(
            |s| s.settle(queue, acks.clone()),
            |c| c.settle(queue, &acks),
        )?;
        self.untrack(ids);
        Ok(next)
    }

    fn release(&self, queue: &str, jobs: &[Job]) -> Result<()> {
        let runs: Vec<(JobId, u32)> = jobs.iter().map(|job| (job.id, job.attempts)).collect();
        self.call(
            |s| s.release_runs(queue, &runs),
            |c| c.release(queue, &runs),
        )?;
        self.untrack(runs.iter().map(|(id, _)| *id));
        Ok(())
    }

    fn hand_back(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<Vec<JobId>> {
        let lost = self.call(|s| s.hand_back(queue, runs), |c| c.hand_back(queue, runs))?;
        self.untrack(runs.iter().map(|(id, _)| *id));
        Ok(lost)
    }

    fn tick(&self, queue: &str, now: Timestamp) -> Result<Option<Timestamp>> {
        self.call(|s| s.tick(queue, now), |c| c.tick(queue, now))
    }

    fn wake(&self, queue: &str) {
        let _ = self.call(
            |s| {
                s.wake(queue);
                Ok(())
            },
            |c| c.wake(queue),
        );
    }

    fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.call(|s| s.get_job(id), |c| c.get_job(id))
    }

    fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>> {
        self.call(
            |s| s.list_jobs(queue, state, offset, limit),
            |c| c.list_jobs(queue, state, offset, limit),
        )
    }

    fn remove_job(&self, id: JobId) -> Result<Removal> {
        self.call(|s| s.remove_job(id), |c| c.remove_job(id))
    }

    fn retry_failed(&self, id: JobId) -> Result<bool> {
        self.call(|s| s.retry_failed(id), |c| c.retry_failed(id))
    }

    fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.call(
            |s| s.set_paused(queue, paused),
            |c| c.set_paused(queue, paused),
        )
    }

    fn clear(&self, queue: &str) -> Result<usize> {
        self.call(|s| s.clear(queue), |c| c.clear(queue))
    }

    fn delete(&self, queue: &str) -> Result<bool> {
        self.call(|s| s.delete(queue), |c| c.delete(queue))
    }

    fn counts(&self, queue: &str) -> Result<QueueCounts> {
        match self.counts_of(&[queue.to_string()])?.pop().flatten() {
            Some(counts) => Ok(counts),
            None => Err(QueueError::UnknownQueue(queue.to_string())),
        }
    }

    fn counts_of(&self, queues: &[String]) -> Result<Vec<Option<QueueCounts>>> {
        self.call(|s| s.counts_of(queues), |c| c.counts_of(queues))
    }

    fn queue_names(&self) -> Result<Vec<String>> {
        self.call(|s| s.queue_names(), |c| c.queue_names())
    }

    fn totals(&self) -> Result<Totals> {
        self.call(|s| s.totals(), |c| c.totals())
    }

    fn is_idle(&self, queue: Option<&str>) -> Result<bool> {
        self.call(|s| s.is_idle(queue), |c| c.is_idle(queue))
    }

    fn save_schedule(&self, schedule: &ScheduleRecord) -> Result<()> {
        self.call(|s| s.save_schedule(schedule), |c| c.save_schedule(schedule))
    }

    fn remove_schedule(&self, id: &str) -> Result<bool> {
        self.call(|s| s.remove_schedule(id), |c| c.remove_schedule(id))
    }

    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.call(|s| s.load_schedules(), |c| c.load_schedules())
    }

    fn has_schedule(&self, id: &str) -> Result<bool> {
        self.call(|s| s.has_schedule(id), |c| c.has_schedule(id))
    }

    fn beat(&self, worker: &str, info: &Payload, ttl: f64) -> Result<()> {
        self.call(|s| s.beat(worker, info, ttl), |c| c.beat(worker, info, ttl))
    }

    fn workers(&self) -> Result<Vec<Payload>> {
        self.call(|s| s.workers(), |c| c.workers())
    }

    fn leave(&self, worker: &str) -> Result<()> {
        self.call(|s| s.leave(worker), |c| c.leave(worker))
    }

    fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        match &**self.role.read() {
            Role::Holder { store, server } => {
                server.stop(&self.address);
                store.close();
            }
            Role::Client(client) => client.close(),
            Role::Opening => {}
        }
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        if let Role::Holder { server, .. } = &**self.role.read() {
            server.stop(&self.address);
        }
    }
}
