//! The `Backend` a process gets for a file store: the store itself when this process holds the
//! directory (it then serves the others), or a client of the process that does. When the holder
//! goes away, a client takes the store over (replaying the log the holder left) or connects to
//! whoever did, and carries on with the call it was making.

use std::cell::Cell;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{self, CallError, CallResult, Client};
use super::server::Server;
use super::{protocol, FileBackend, FileOptions};
use crate::backend::{
    Ack, Backend, FetchRequest, NonBlockingPush, QueueCounts, QueueDeclaration, ScheduleRecord,
    Totals,
};
use crate::error::{QueueError, Result};
use crate::job::{Job, JobId, JobState, Timestamp};
use crate::sync::RwLock;

/// How long opening waits for a holder that has the lock but does not answer yet (it may have
/// just died, or be taking the store over itself).
const FIND_HOLDER_FOR: Duration = Duration::from_secs(10);

enum Role {
    Holder {
        store: Arc<FileBackend>,
        server: Arc<Server>,
    },
    Client(Arc<Client>),
}

pub struct FileStore {
    options: FileOptions,
    address: SocketAddr,
    role: RwLock<Arc<Role>>,
    closed: AtomicBool,
}

impl FileStore {
    pub fn open(options: &FileOptions) -> Result<FileStore> {
        std::fs::create_dir_all(&options.path).map_err(|e| {
            super::writer::io_error(&options.path, "could not create the store's directory", e)
        })?;
        let address = protocol::address(&options.path).map_err(|e| {
            super::writer::io_error(&options.path, "could not name the store's socket", e)
        })?;
        let role = find_role(options, &address)?;
        Ok(FileStore {
            options: options.clone(),
            address,
            role: RwLock::new(Arc::new(role)),
            closed: AtomicBool::new(false),
        })
    }

    /// Whether this process holds the store (others are its clients).
    pub fn is_holder(&self) -> bool {
        matches!(**self.role.read(), Role::Holder { .. })
    }

    /// The store, when this process holds it.
    fn holder(&self) -> Option<Arc<FileBackend>> {
        match &**self.role.read() {
            Role::Holder { store, .. } => Some(store.clone()),
            Role::Client(_) => None,
        }
    }

    /// The store held here, if the role can be read without waiting.
    fn held_in_place(&self) -> Option<Arc<FileBackend>> {
        match &**self.role.try_read()? {
            Role::Holder { store, .. } => Some(store.clone()),
            Role::Client(_) => None,
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
            };
            match remote(&client) {
                Ok(value) => return Ok(value),
                Err(CallError::Failed(error)) => return Err(error),
                Err(CallError::Gone(error)) => {
                    tries += 1;
                    if tries > 3 || self.closed.load(std::sync::atomic::Ordering::Acquire) {
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
        if Arc::ptr_eq(&role, seen) {
            let found = Arc::new(find_role(&self.options, &self.address)?);
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
}

/// Holds the store if no process does, else connects to the one that does.
fn find_role(options: &FileOptions, address: &SocketAddr) -> Result<Role> {
    let deadline = Instant::now() + FIND_HOLDER_FOR;
    let mut pause = Duration::from_millis(2);
    loop {
        match super::open_held(options, || bind(address))? {
            super::Opened::Held(store, listener) => {
                let server = Server::start(listener, &store)?;
                return Ok(Role::Holder { store, server });
            }
            super::Opened::Busy(busy) => match Client::connect(address.clone()) {
                Ok(client) => return Ok(Role::Client(Arc::new(client))),
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
            |s| s.push(queue, &mut jobs.clone(), declare).map(|()| true),
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
            |c| c.fetch(queue, request),
        )
    }

    fn settle(&self, queue: &str, acks: Vec<Ack>) -> Result<Option<Timestamp>> {
        if let Some(store) = self.holder() {
            return store.settle(queue, acks);
        }
        self.call(
            |s| s.settle(queue, acks.clone()),
            |c| c.settle(queue, &acks),
        )
    }

    fn release(&self, queue: &str, jobs: &[Job]) -> Result<()> {
        let runs: Vec<(JobId, u32)> = jobs.iter().map(|job| (job.id, job.attempts)).collect();
        self.call(
            |s| s.release_runs(queue, &runs),
            |c| c.release(queue, &runs),
        )
    }

    fn hand_back(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<Vec<JobId>> {
        self.call(|s| s.hand_back(queue, runs), |c| c.hand_back(queue, runs))
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

    fn list_jobs(&self, queue: &str, state: Option<JobState>, limit: usize) -> Result<Vec<Job>> {
        self.call(
            |s| s.list_jobs(queue, state, limit),
            |c| c.list_jobs(queue, state, limit),
        )
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

    fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        match &**self.role.read() {
            Role::Holder { store, server } => {
                server.stop(&self.address);
                store.close();
            }
            Role::Client(client) => client.close(),
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
