//! A process that finds a file store held by another talks to the holder (`server.rs`): each
//! `Backend` call is a request on one of a few pooled connections.

use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use super::codec::{Decoded, Reader, Writer};
use super::protocol::{self, method};
use crate::backend::{
    Ack, FetchRequest, QueueCounts, QueueDeclaration, Removal, ScheduleRecord, Totals,
};
use crate::error::QueueError;
use crate::job::{Job, JobId, JobState, Payload, Timestamp};
use crate::sync::Mutex;

/// How long a new connection waits for the holder to greet it (it may be replaying its log).
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call got no answer.
pub enum CallError {
    /// The holder went away (or closed the store): someone else may hold it now.
    Gone(std::io::Error),
    /// The holder answered with an error.
    Failed(QueueError),
}

impl From<QueueError> for CallError {
    fn from(error: QueueError) -> Self {
        CallError::Failed(error)
    }
}

pub type CallResult<T> = std::result::Result<T, CallError>;

pub struct Client {
    address: SocketAddr,
    session: u128,
    pool: Mutex<Vec<UnixStream>>,
    /// The idle connection `watch` waits on (shut by `close`).
    watched: Mutex<Option<UnixStream>>,
    /// The holder's pid, for messages.
    pub holder: u32,
}

impl Client {
    /// Connects to the holder of the store at `address`, for `session` (one per process and
    /// store: the holder hands back the session's runs only once all its connections are
    /// gone for a while).
    pub fn connect(address: SocketAddr, session: u128) -> std::io::Result<Client> {
        let mut client = Client {
            address,
            session,
            pool: Mutex::default(),
            watched: Mutex::default(),
            holder: 0,
        };
        let (stream, holder) = client.open_connection()?;
        client.holder = holder;
        client.pool.lock().push(stream);
        Ok(client)
    }

    fn open_connection(&self) -> std::io::Result<(UnixStream, u32)> {
        let mut stream = UnixStream::connect_addr(&self.address)?;
        super::fork::close_in_child(&stream);
        let greeted = (|| {
            let mut hello = protocol::HELLO.to_vec();
            hello.extend_from_slice(&self.session.to_le_bytes());
            protocol::write_frame(&mut stream, &hello)?;
            stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
            let mut reply = Vec::new();
            protocol::read_frame(&mut stream, &mut reply)?;
            stream.set_read_timeout(None)?;
            let pid = reply
                .get(..4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| std::io::Error::other("a bad greeting"))?;
            Ok(pid)
        })();
        match greeted {
            Ok(pid) => Ok((stream, pid)),
            Err(error) => {
                use std::os::fd::AsRawFd;
                super::fork::forget(stream.as_raw_fd());
                Err(error)
            }
        }
    }

    /// Sends a request (`write` after the method's tag) and reads the reply with `read`.
    fn call<T>(
        &self,
        kind: u8,
        write: impl FnOnce(&mut Writer<'_>),
        read: impl FnOnce(&mut Reader<'_>) -> Decoded<T>,
    ) -> CallResult<T> {
        let pooled = self.pool.lock().pop();
        let mut stream = match pooled {
            Some(stream) => stream,
            None => self.open_connection().map_err(CallError::Gone)?.0,
        };
        let mut body = vec![kind];
        write(&mut Writer(&mut body));
        let exchanged = protocol::write_frame(&mut stream, &body)
            .and_then(|()| protocol::read_frame(&mut stream, &mut body));
        if let Err(error) = exchanged {
            use std::os::fd::AsRawFd;
            super::fork::forget(stream.as_raw_fd());
            return Err(CallError::Gone(error));
        }
        self.pool.lock().push(stream);
        let mut r = Reader(&body);
        let bad = |e: super::codec::DecodeError| {
            CallError::Failed(QueueError::Backend(format!(
                "a bad reply from the file store's holder: {}",
                e.0
            )))
        };
        match r.u8().map_err(bad)? {
            0 => read(&mut r).map_err(bad),
            _ => Err(CallError::Failed(
                protocol::read_error(&mut r).map_err(bad)?,
            )),
        }
    }

    /// A connection that stays open and idle: it keeps the session alive, and `watch` on it
    /// returns when the holder goes away.
    pub fn watch_connection(&self) -> std::io::Result<UnixStream> {
        let stream = self.open_connection()?.0;
        *self.watched.lock() = Some(stream.try_clone()?);
        Ok(stream)
    }

    /// Blocks until the holder closes `stream` (it went away, or closed the store).
    pub fn watch(mut stream: UnixStream) {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut byte = [0u8; 1];
        // The holder never writes on it unasked: any return is its end.
        let _ = stream.read(&mut byte);
        super::fork::forget(stream.as_raw_fd());
    }

    /// Tells a new holder which runs this process still runs (taken from the one before).
    pub fn resume(&self, runs: &[(Arc<str>, JobId, u32)]) -> CallResult<()> {
        self.call(
            method::RESUME,
            |w| {
                w.u32(runs.len() as u32);
                for (queue, id, attempt) in runs {
                    w.str(queue);
                    w.id(*id);
                    w.u32(*attempt);
                }
            },
            |_| Ok(()),
        )
    }

    /// Ends the session: the holder hands back whatever this process still held.
    pub fn close(&self) {
        use std::os::fd::AsRawFd;
        if let Some(watched) = self.watched.lock().take() {
            let _ = watched.shutdown(std::net::Shutdown::Both);
        }
        for stream in self.pool.lock().drain(..) {
            super::fork::forget(stream.as_raw_fd());
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn declare_queue(
        &self,
        queue: &str,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> CallResult<QueueDeclaration> {
        self.call(
            method::DECLARE_QUEUE,
            |w| {
                w.str(queue);
                w.declaration(declaration);
                w.u8(u8::from(replace));
            },
            |r| r.declaration(),
        )
    }

    pub fn stored_declarations(
        &self,
        queues: &[Arc<str>],
    ) -> CallResult<Vec<Option<QueueDeclaration>>> {
        self.call(
            method::STORED_DECLARATIONS,
            |w| {
                w.u32(queues.len() as u32);
                queues.iter().for_each(|q| w.str(q));
            },
            |r| {
                let count = r.count(1)?;
                (0..count).map(|_| r.opt(Reader::declaration)).collect()
            },
        )
    }

    /// `push`, or `push_tick` when `tick` is given (then whether the tick was new).
    pub fn push(
        &self,
        queue: &str,
        jobs: &[Job],
        declaration: &QueueDeclaration,
        tick: Option<(&str, Timestamp)>,
    ) -> CallResult<bool> {
        let kind = if tick.is_some() {
            method::PUSH_TICK
        } else {
            method::PUSH
        };
        self.call(
            kind,
            |w| {
                w.str(queue);
                w.declaration(declaration);
                if let Some((schedule, at)) = tick {
                    w.str(schedule);
                    w.f64(at);
                }
                w.u32(jobs.len() as u32);
                jobs.iter().for_each(|job| w.job(job));
            },
            |r| if tick.is_some() { r.flag() } else { Ok(true) },
        )
    }

    pub fn fetch(&self, queue: &str, request: FetchRequest) -> CallResult<Vec<Job>> {
        let name: Arc<str> = Arc::from(queue);
        self.call(
            method::FETCH,
            |w| {
                w.str(queue);
                w.u32(request.max.min(u32::MAX as usize) as u32);
                w.u32(request.share.min(u32::MAX as usize) as u32);
                w.f64(request.wait.as_secs_f64());
                w.u8(u8::from(request.start_all));
            },
            |r| {
                let count = r.count(1)?;
                (0..count).map(|_| r.job(&name)).collect()
            },
        )
    }

    pub fn settle(&self, queue: &str, acks: &[Ack]) -> CallResult<Option<Timestamp>> {
        self.call(
            method::SETTLE,
            |w| {
                w.str(queue);
                w.acks(acks);
            },
            |r| r.opt(Reader::f64),
        )
    }

    pub fn release(&self, queue: &str, runs: &[(JobId, u32)]) -> CallResult<()> {
        self.call(
            method::RELEASE,
            |w| {
                w.str(queue);
                w.runs(runs);
            },
            |_| Ok(()),
        )
    }

    pub fn hand_back(&self, queue: &str, runs: &[(JobId, u32)]) -> CallResult<Vec<JobId>> {
        self.call(
            method::HAND_BACK,
            |w| {
                w.str(queue);
                w.runs(runs);
            },
            |r| {
                let count = r.count(16)?;
                (0..count).map(|_| r.id()).collect()
            },
        )
    }

    pub fn tick(&self, queue: &str, now: Timestamp) -> CallResult<Option<Timestamp>> {
        self.call(
            method::TICK,
            |w| {
                w.str(queue);
                w.f64(now);
            },
            |r| r.opt(Reader::f64),
        )
    }

    pub fn wake(&self, queue: &str) -> CallResult<()> {
        self.call(method::WAKE, |w| w.str(queue), |_| Ok(()))
    }

    pub fn get_job(&self, id: JobId) -> CallResult<Option<Job>> {
        self.call(
            method::GET_JOB,
            |w| w.id(id),
            |r| Ok(r.jobs_with_queues()?.pop()),
        )
    }

    pub fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> CallResult<Vec<Job>> {
        self.call(
            method::LIST_JOBS,
            |w| {
                w.str(queue);
                w.opt(state.map(JobState::as_str), Writer::str);
                w.u64(offset as u64);
                w.u64(limit as u64);
            },
            |r| r.jobs_with_queues(),
        )
    }

    pub fn remove_job(&self, id: JobId) -> CallResult<Removal> {
        self.call(
            method::REMOVE_JOB,
            |w| w.id(id),
            |r| {
                Ok(match r.u8()? {
                    0 => Removal::Removed,
                    1 => Removal::Running,
                    _ => Removal::NotFound,
                })
            },
        )
    }

    pub fn retry_failed(&self, id: JobId) -> CallResult<bool> {
        self.call(method::RETRY_FAILED, |w| w.id(id), |r| r.flag())
    }

    pub fn set_paused(&self, queue: &str, paused: bool) -> CallResult<()> {
        self.call(
            method::SET_PAUSED,
            |w| {
                w.str(queue);
                w.u8(u8::from(paused));
            },
            |_| Ok(()),
        )
    }

    pub fn clear(&self, queue: &str) -> CallResult<usize> {
        self.call(method::CLEAR, |w| w.str(queue), |r| Ok(r.u64()? as usize))
    }

    pub fn delete(&self, queue: &str) -> CallResult<bool> {
        self.call(method::DELETE, |w| w.str(queue), |r| r.flag())
    }

    pub fn counts_of(&self, queues: &[String]) -> CallResult<Vec<Option<QueueCounts>>> {
        self.call(
            method::COUNTS_OF,
            |w| w.strs(queues),
            |r| {
                let count = r.count(1)?;
                (0..count).map(|_| r.opt(protocol::read_counts)).collect()
            },
        )
    }

    pub fn queue_names(&self) -> CallResult<Vec<String>> {
        self.call(method::QUEUE_NAMES, |_| {}, |r| r.strs())
    }

    pub fn totals(&self) -> CallResult<Totals> {
        self.call(method::TOTALS, |_| {}, protocol::read_totals)
    }

    pub fn is_idle(&self, queue: Option<&str>) -> CallResult<bool> {
        self.call(method::IS_IDLE, |w| w.opt(queue, Writer::str), |r| r.flag())
    }

    pub fn save_schedule(&self, schedule: &ScheduleRecord) -> CallResult<()> {
        self.call(method::SAVE_SCHEDULE, |w| w.schedule(schedule), |_| Ok(()))
    }

    pub fn remove_schedule(&self, id: &str) -> CallResult<bool> {
        self.call(method::REMOVE_SCHEDULE, |w| w.str(id), |r| r.flag())
    }

    pub fn load_schedules(&self) -> CallResult<Vec<ScheduleRecord>> {
        self.call(
            method::LOAD_SCHEDULES,
            |_| {},
            |r| {
                let count = r.count(1)?;
                (0..count).map(|_| r.schedule()).collect()
            },
        )
    }

    pub fn has_schedule(&self, id: &str) -> CallResult<bool> {
        self.call(method::HAS_SCHEDULE, |w| w.str(id), |r| r.flag())
    }

    pub fn beat(&self, worker: &str, info: &Payload, ttl: f64) -> CallResult<()> {
        self.call(
            method::BEAT,
            |w| {
                w.str(worker);
                w.bytes(info);
                w.f64(ttl);
            },
            |_| Ok(()),
        )
    }

    pub fn workers(&self) -> CallResult<Vec<Payload>> {
        self.call(
            method::WORKERS,
            |_| {},
            |r| {
                let count = r.count(4)?;
                (0..count).map(|_| r.payload()).collect()
            },
        )
    }

    pub fn leave(&self, worker: &str) -> CallResult<()> {
        self.call(method::LEAVE, |w| w.str(worker), |_| Ok(()))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

pub fn gone(error: &std::io::Error, holder: u32) -> QueueError {
    QueueError::Backend(format!(
        "the process holding the file store (pid {holder}) went away: {error}"
    ))
}
