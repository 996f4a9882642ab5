//! How processes that open one file store talk to the one that holds it: over a Unix socket
//! (Linux's abstract namespace, named after the directory), one request and one reply at a
//! time per connection, each a u32 length and a body in `codec.rs`'s encoding. A request is a
//! `Backend` method's tag and arguments; a reply is `Ok` and the result, or the error.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::Path;

use super::codec::{DecodeError, Decoded, Reader, Writer};
use crate::backend::{QueueCounts, Totals};
use crate::error::QueueError;
use crate::job::JobId;

/// Sent first on every connection, with the client's session and the directory's path.
/// The `2`: `LIST_JOBS` takes an offset, `REMOVE_JOB` exists. Processes of another version
/// sharing a directory fail at once rather than misread each other.
pub const HELLO: &[u8; 8] = b"RNQFILE2";
/// A request larger than this is damage (jobs are bounded by `max_job_bytes` far below it).
const MAX_FRAME: usize = 1 << 30;

pub mod method {
    pub const DECLARE_QUEUE: u8 = 1;
    pub const STORED_DECLARATIONS: u8 = 2;
    pub const PUSH: u8 = 3;
    pub const PUSH_TICK: u8 = 4;
    pub const FETCH: u8 = 5;
    pub const SETTLE: u8 = 6;
    pub const RELEASE: u8 = 7;
    pub const HAND_BACK: u8 = 8;
    pub const TICK: u8 = 9;
    pub const WAKE: u8 = 10;
    pub const GET_JOB: u8 = 11;
    pub const LIST_JOBS: u8 = 12;
    pub const RETRY_FAILED: u8 = 13;
    pub const SET_PAUSED: u8 = 14;
    pub const CLEAR: u8 = 15;
    pub const DELETE: u8 = 16;
    pub const COUNTS_OF: u8 = 17;
    pub const QUEUE_NAMES: u8 = 18;
    pub const TOTALS: u8 = 19;
    pub const IS_IDLE: u8 = 20;
    pub const SAVE_SCHEDULE: u8 = 21;
    pub const REMOVE_SCHEDULE: u8 = 22;
    pub const LOAD_SCHEDULES: u8 = 23;
    pub const HAS_SCHEDULE: u8 = 24;
    pub const RESUME: u8 = 25;
    pub const BEAT: u8 = 26;
    pub const WORKERS: u8 = 27;
    pub const LEAVE: u8 = 28;
    pub const REMOVE_JOB: u8 = 29;
}

/// The socket of the store in `dir`: one per directory (its canonical path), on this host.
pub fn address(dir: &Path) -> std::io::Result<SocketAddr> {
    let canonical = dir.canonicalize()?;
    let digest = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        canonical.as_os_str().as_encoded_bytes(),
    );
    SocketAddr::from_abstract_name(format!("rnode-queue/{}", digest.simple()).as_bytes())
}

pub fn write_frame(stream: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out)
}

pub fn read_frame(stream: &mut UnixStream, body: &mut Vec<u8>) -> std::io::Result<()> {
    read_frame_within(stream, body, MAX_FRAME)
}

/// `read_frame`, refusing a frame longer than `max` before reading it.
pub fn read_frame_within(
    stream: &mut UnixStream,
    body: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes"),
        ));
    }
    body.clear();
    body.resize(len, 0);
    stream.read_exact(body)
}

/// Whether the peer of `stream` runs as this process's user: the socket's name is not secret
/// (abstract sockets have no file permissions), so the holder serves only its own user.
pub fn same_user(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut credentials = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `credentials` is a `ucred` of `len` bytes, as SO_PEERCRED fills.
    let code = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: a plain syscall.
    code == 0 && credentials.uid == unsafe { libc::geteuid() }
}

pub fn write_error(w: &mut Writer<'_>, error: &QueueError) {
    let (code, message) = match error {
        QueueError::InvalidJob(m) => (1, m.clone()),
        QueueError::JobTooLarge { size, limit } => {
            w.u8(2);
            w.u64(*size as u64);
            w.u64(*limit as u64);
            return;
        }
        QueueError::InvalidQueueName(m) => (3, m.clone()),
        QueueError::InvalidCron(m) => (4, m.clone()),
        QueueError::Config(m) => (5, m.clone()),
        QueueError::Backend(m) => (6, m.clone()),
        QueueError::Indeterminate(m) => (7, m.clone()),
        QueueError::PushOutcomeUnknown { message, ids } => {
            w.u8(8);
            w.str(message);
            w.u32(ids.len() as u32);
            for id in ids {
                w.id(*id);
            }
            return;
        }
        QueueError::JobNotFound(m) => (9, m.clone()),
        QueueError::UnknownQueue(m) => (10, m.clone()),
        QueueError::DuplicateJob(m) => (11, m.clone()),
        QueueError::Closed => (12, String::new()),
        QueueError::Other(m) => (13, m.clone()),
    };
    w.u8(code);
    w.str(&message);
}

pub fn read_error(r: &mut Reader<'_>) -> Decoded<QueueError> {
    let code = r.u8()?;
    Ok(match code {
        2 => QueueError::JobTooLarge {
            size: r.u64()? as usize,
            limit: r.u64()? as usize,
        },
        8 => {
            let message = r.str()?.to_string();
            let count = r.count(16)?;
            let ids = (0..count)
                .map(|_| r.id())
                .collect::<Decoded<Vec<JobId>>>()?;
            QueueError::PushOutcomeUnknown { message, ids }
        }
        _ => {
            let m = r.str()?.to_string();
            match code {
                1 => QueueError::InvalidJob(m),
                3 => QueueError::InvalidQueueName(m),
                4 => QueueError::InvalidCron(m),
                5 => QueueError::Config(m),
                6 => QueueError::Backend(m),
                7 => QueueError::Indeterminate(m),
                9 => QueueError::JobNotFound(m),
                10 => QueueError::UnknownQueue(m),
                11 => QueueError::DuplicateJob(m),
                12 => QueueError::Closed,
                13 => QueueError::Other(m),
                other => return Err(DecodeError(format!("unknown error code {other}"))),
            }
        }
    })
}

pub fn write_counts(w: &mut Writer<'_>, counts: &QueueCounts) {
    for n in [
        counts.waiting,
        counts.delayed,
        counts.active,
        counts.completed,
        counts.failed,
    ] {
        w.u64(n);
    }
    w.u8(u8::from(counts.paused));
}

pub fn read_counts(r: &mut Reader<'_>) -> Decoded<QueueCounts> {
    Ok(QueueCounts {
        waiting: r.u64()?,
        delayed: r.u64()?,
        active: r.u64()?,
        completed: r.u64()?,
        failed: r.u64()?,
        paused: r.flag()?,
    })
}

pub fn write_totals(w: &mut Writer<'_>, totals: &Totals) {
    w.u64(totals.processed);
    w.u64(totals.failed);
    w.u64(totals.retried);
}

pub fn read_totals(r: &mut Reader<'_>) -> Decoded<Totals> {
    Ok(Totals {
        processed: r.u64()?,
        failed: r.u64()?,
        retried: r.u64()?,
    })
}
