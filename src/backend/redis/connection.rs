//! Connections to one Redis server or a Redis Cluster, driven by a small private tokio runtime.
//!
//! The engine's threads are plain OS threads that may block, so every call here is a
//! `block_on` from the caller's thread; the runtime's one worker thread drives the sockets.
//! Never call these from a tokio thread.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, Script,
    Value,
};

use crate::error::{QueueError, Result};
use crate::sync::Mutex;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A note that cannot be written within this is given up.
const NOTE_WRITE_TIMEOUT: Duration = Duration::from_millis(20);
/// Idle blocking connections kept for `direct` calls.
const IDLE_DIRECT: usize = 16;
/// After a blocking connection could not be opened, `direct` calls go to the shared connection
/// for this long.
const DIRECT_BACK_OFF: Duration = Duration::from_secs(5);
/// How long any command may take, connecting included: a push to a Redis that is down fails
/// within this bound.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(4);

/// A connection for commands: the reconnecting multiplexed manager, or a cluster connection
/// (which reconnects to its nodes by itself). Cloning shares the underlying socket(s).
#[derive(Clone)]
pub enum Conn {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

// One per backend: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(Client),
    /// One client for commands (with a response timeout), one for blocking calls (without).
    Cluster {
        blocking: ClusterClient,
    },
}

pub struct Redis {
    /// Shut down in the background on drop (see `Drop`).
    runtime: ManuallyDrop<tokio::runtime::Runtime>,
    target: Target,
    commands: Conn,
    /// A plain blocking connection with replies switched off, for notes that must leave the
    /// process before the caller's next step (see `note`). One server only; `None` in a cluster
    /// or while it is down.
    notes: Mutex<Option<redis::Connection>>,
    /// Blocking connections for calls made on the caller's own thread (`direct`). A forked
    /// child never uses them: it gets an engine, and so a backend, of its own.
    direct: Mutex<DirectPool>,
    /// The server's major version (script flags need 7).
    major_version: u32,
}

/// The blocking connections of `Redis::direct`.
#[derive(Default)]
struct DirectPool {
    idle: Vec<redis::Connection>,
    /// When opening one last failed: then the shared connection is used for a while (a server
    /// that cannot be reached costs one connection attempt per call, not two).
    failed_at: Option<Instant>,
}

/// The server does not know the script (flushed, or restarted): it is loaded, then run again.
pub fn is_no_script(error: &RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// A failed command: `Indeterminate` when it may have been carried out (no answer came: a
/// timeout, a connection lost after sending), `Backend` when it certainly was not (refused
/// connection, an error reply).
pub fn backend_error(error: RedisError) -> QueueError {
    let text = error.to_string();
    if text.contains("OOM command not allowed") {
        return QueueError::Backend(
            "redis is out of memory (maxmemory reached with a noeviction policy): the write \
             was refused"
                .into(),
        );
    }
    if error.is_timeout() || (error.is_io_error() && !error.is_connection_refusal()) {
        QueueError::Indeterminate(format!("redis: {text}"))
    } else {
        QueueError::Backend(format!("redis: {text}"))
    }
}

/// `redis_version:7.0.15` in an `INFO` reply: 7.
fn major_version(info: &str) -> u32 {
    info.lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .and_then(|version| version.trim().split('.').next()?.parse().ok())
        .unwrap_or(0)
}

impl Redis {
    /// Connects to `url` (`redis://` or `rediss://`, with user, password and db), or to a
    /// cluster: a server that reports cluster mode, or several comma-separated node URLs.
    pub fn connect(url: &str) -> Result<Redis> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rnq-redis-io")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| QueueError::Backend(format!("cannot start the redis I/O thread: {e}")))?;
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let Some(first) = urls.first() else {
            return Err(QueueError::Backend("the redis url is empty".into()));
        };
        let client = Client::open(*first).map_err(|e| bad_url(url, e))?;
        let handle = runtime.handle().clone();
        let (target, commands, major_version) = handle.block_on(async {
            let probe = tokio::time::timeout(COMMAND_TIMEOUT, async {
                let mut probe = client
                    .get_multiplexed_async_connection_with_config(&direct_config(Some(
                        COMMAND_TIMEOUT,
                    )))
                    .await?;
                let info: String = redis::cmd("INFO").query_async(&mut probe).await?;
                Ok::<(bool, u32), RedisError>((
                    info.contains("cluster_enabled:1"),
                    major_version(&info),
                ))
            })
            .await;
            let (clustered, major_version) = match probe {
                Ok(result) => result.map_err(|e| unreachable_error(url, e))?,
                Err(_) => return Err(timed_out(url)),
            };
            if clustered || urls.len() > 1 {
                let cluster = cluster_client(&urls, Some(COMMAND_TIMEOUT))?;
                let conn = tokio::time::timeout(COMMAND_TIMEOUT, cluster.get_async_connection())
                    .await
                    .map_err(|_| timed_out(url))?
                    .map_err(|e| unreachable_error(url, e))?;
                let blocking = cluster_client(&urls, None)?;
                Ok((
                    Target::Cluster { blocking },
                    Conn::Cluster(conn),
                    major_version,
                ))
            } else {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let manager = tokio::time::timeout(
                    COMMAND_TIMEOUT,
                    ConnectionManager::new_with_config(client.clone(), config),
                )
                .await
                .map_err(|_| timed_out(url))?
                .map_err(|e| unreachable_error(url, e))?;
                Ok((
                    Target::Single(client),
                    Conn::Managed(manager),
                    major_version,
                ))
            }
        })?;
        let redis = Redis {
            runtime: ManuallyDrop::new(runtime),
            target,
            commands,
            notes: Mutex::new(None),
            direct: Mutex::new(DirectPool::default()),
            major_version,
        };
        redis.open_notes(CONNECT_TIMEOUT);
        Ok(redis)
    }

    /// Runs `script`'s call `cmd` on a blocking connection, from the calling thread: no hand-off
    /// to the I/O thread and back (two thread switches per call, most of a push's latency on an
    /// idle server). `None` in a cluster, whose connections are the I/O thread's, and when no
    /// connection can be opened (the caller uses the shared one). Errors are those of `run`
    /// (`Indeterminate` when the command may have been carried out).
    pub fn direct<T: FromRedisValue>(&self, script: &Script, cmd: &Cmd) -> Option<Result<T>> {
        let Target::Single(client) = &self.target else {
            return None;
        };
        let pooled = {
            let mut pool = self.direct.lock();
            if pool
                .failed_at
                .is_some_and(|failed| failed.elapsed() < DIRECT_BACK_OFF)
            {
                return None;
            }
            pool.idle.pop()
        };
        let opened = match pooled {
            Some(conn) => Ok(conn),
            None => client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .and_then(|conn| {
                    conn.set_read_timeout(Some(COMMAND_TIMEOUT))?;
                    conn.set_write_timeout(Some(COMMAND_TIMEOUT))?;
                    Ok(conn)
                }),
        };
        let mut conn = match opened {
            Ok(conn) => conn,
            // Nothing was sent: the shared connection tries (and tells a Redis that is down).
            Err(_) => {
                self.direct.lock().failed_at = Some(Instant::now());
                return None;
            }
        };
        let reply = match cmd.query::<T>(&mut conn) {
            Err(e) if is_no_script(&e) => script
                .prepare_invoke()
                .load(&mut conn)
                .and_then(|_| cmd.query::<T>(&mut conn)),
            other => other,
        };
        match &reply {
            // A connection that failed may be half read: never reused.
            Err(error) if error.is_io_error() || error.is_timeout() => {}
            _ => {
                let mut pool = self.direct.lock();
                if pool.idle.len() < IDLE_DIRECT {
                    pool.idle.push(conn);
                }
            }
        }
        Some(reply.map_err(backend_error))
    }

    /// (Re)opens the notes connection, where there is none; true when it did. Blocks for a
    /// connection attempt of `timeout` at most: never with the GIL held.
    pub fn open_notes(&self, timeout: Duration) -> bool {
        let Target::Single(client) = &self.target else {
            return false;
        };
        if self.notes.lock().is_some() {
            return false;
        }
        let opened = client
            .get_connection_with_timeout(timeout)
            .and_then(|mut conn| {
                // A write that cannot go out at once is given up (the note is best effort).
                conn.set_write_timeout(Some(NOTE_WRITE_TIMEOUT))?;
                conn.set_read_timeout(Some(timeout))?;
                // Replies off, checked: were they not (an ACL without CLIENT, say), they would pile
                // up unread in Redis. With replies off the PING gets none, so the one reply read is
                // the OK of turning them on again — or the error of turning them off.
                let client_reply = |on: &str| {
                    redis::cmd("CLIENT")
                        .arg("REPLY")
                        .arg(on)
                        .get_packed_command()
                };
                conn.send_packed_command(&client_reply("OFF"))?;
                conn.send_packed_command(&redis::cmd("PING").get_packed_command())?;
                conn.send_packed_command(&client_reply("ON"))?;
                match conn.recv_response()? {
                    Value::Okay => {}
                    Value::SimpleString(text) if text == "OK" => {}
                    other => {
                        return Err(RedisError::from((
                            redis::ErrorKind::Client,
                            "CLIENT REPLY OFF is not available",
                            format!("{other:?}"),
                        )))
                    }
                }
                conn.send_packed_command(&client_reply("OFF"))?;
                Ok(conn)
            });
        match opened {
            Ok(conn) => {
                *self.notes.lock() = Some(conn);
                true
            }
            Err(error) => {
                log::debug!(
                    target: "rnode_queue",
                    "no connection for start notes ({error}): they are sent in the background"
                );
                false
            }
        }
    }

    /// Hands `cmd` to the kernel now, not waiting for Redis (whose replies are off): once this
    /// returns true the command reaches Redis even if the process dies the next instant. False
    /// when it could not be sent that way (a cluster, the connection busy or down): the caller
    /// falls back to `send_and_forget`. Holds no lock it waits for, and writes a few hundred
    /// bytes into a socket buffer, so it may run with the GIL held.
    pub fn note(&self, cmd: &Cmd) -> bool {
        let Some(mut notes) = self.notes.try_lock() else {
            return false;
        };
        let Some(conn) = notes.as_mut() else {
            return false;
        };
        if conn.send_packed_command(&cmd.get_packed_command()).is_ok() {
            return true;
        }
        // Half written or broken: never reused (the keeper opens a new one).
        *notes = None;
        false
    }

    /// Whether scripts may carry flags (`#!lua flags=...`): Redis 7 and newer.
    pub fn supports_script_flags(&self) -> bool {
        self.major_version >= 7
    }

    /// A Redis Cluster: keys of different slots cannot be used in one command.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// The shared connection for commands.
    pub fn conn(&self) -> Conn {
        self.commands.clone()
    }

    /// Runs `future` to its end, or fails after `COMMAND_TIMEOUT`.
    pub fn run<T, F>(&self, future: F) -> Result<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.run_for(COMMAND_TIMEOUT, future)
    }

    pub fn run_for<T, F>(&self, limit: Duration, future: F) -> Result<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.runtime
            .handle()
            .block_on(async { tokio::time::timeout(limit, future).await })
            .map_err(|_| {
                QueueError::Indeterminate(format!(
                    "redis: no answer within {} s",
                    limit.as_secs_f64()
                ))
            })?
            .map_err(backend_error)
    }

    /// Sends `cmd` without waiting for its answer (nothing is logged from the I/O thread, which
    /// must never wait for the GIL): for best-effort notes.
    pub fn send_and_forget(&self, cmd: Cmd) {
        let mut conn = self.conn();
        self.runtime.spawn(async move {
            let _ =
                tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<Value>(&mut conn)).await;
        });
    }

    /// A connection of its own, for a blocking command that would stall the shared one.
    pub fn dedicated(&self) -> Result<Conn> {
        self.run(async {
            match &self.target {
                Target::Single(client) => client
                    .get_multiplexed_async_connection_with_config(&direct_config(None))
                    .await
                    .map(Conn::Direct),
                Target::Cluster { blocking } => {
                    blocking.get_async_connection().await.map(Conn::Cluster)
                }
            }
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks; the reconnect tasks need not finish.
        // SAFETY: the runtime is taken once, here, and never used again.
        unsafe { ManuallyDrop::take(&mut self.runtime) }.shutdown_background();
    }
}

fn direct_config(response_timeout: Option<Duration>) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(response_timeout)
}

fn cluster_client(urls: &[&str], response_timeout: Option<Duration>) -> Result<ClusterClient> {
    let mut builder = ClusterClient::builder(urls.iter().copied())
        .connection_timeout(CONNECT_TIMEOUT)
        .retries(2);
    if let Some(timeout) = response_timeout {
        builder = builder.response_timeout(timeout);
    }
    builder
        .build()
        .map_err(|e| QueueError::Backend(format!("redis cluster: {e}")))
}

fn bad_url(url: &str, error: RedisError) -> QueueError {
    QueueError::Backend(format!("invalid redis url {}: {error}", redacted(url)))
}

fn unreachable_error(url: &str, error: RedisError) -> QueueError {
    QueueError::Backend(format!(
        "cannot connect to redis at {}: {error}",
        redacted(url)
    ))
}

fn timed_out(url: &str) -> QueueError {
    QueueError::Backend(format!(
        "cannot connect to redis at {}: no answer within {} s",
        redacted(url),
        COMMAND_TIMEOUT.as_secs()
    ))
}

/// The url without its password, for error messages: `user:***@`, a lone userinfo (read as a
/// password) as `***@`, and a `pass=` or `password=` query value (unix-socket urls) as `***`.
fn redacted(url: &str) -> String {
    url.split(',')
        .map(redacted_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redacted_one(url: &str) -> String {
    let (address, query) = match url.split_once('?') {
        Some((address, query)) => (address, Some(query)),
        None => (url, None),
    };
    let mut out = match (address.find("://"), address.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let hidden = match address[scheme + 3..at].split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{}{hidden}{}", &address[..scheme + 3], &address[at..])
        }
        _ => address.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key == "pass" || key == "password" => format!("{key}=***"),
                _ => param.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_info() {
        assert_eq!(
            major_version("# Server\r\nredis_version:7.0.15\r\nredis_mode:x"),
            7
        );
        assert_eq!(major_version("redis_version:6.2.1\n"), 6);
        assert_eq!(major_version("nothing"), 0);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://app:secret@host:6379/2"),
            "redis://app:***@host:6379/2"
        );
        assert_eq!(redacted("rediss://host:1/0"), "rediss://host:1/0");
        assert_eq!(redacted("redis://secret@host/0"), "redis://***@host/0");
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=0&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=0&pass=***"
        );
        assert_eq!(
            redacted("unix:///tmp/r.sock?password=x,redis://u:p@h"),
            "unix:///tmp/r.sock?password=***,redis://u:***@h"
        );
    }
}
