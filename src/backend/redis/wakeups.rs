//! How idle workers learn that a queue has work, without polling.
//!
//! Scripts that make jobs waiting push a marker on the queue's `wake` list. On one Redis
//! server, one listener thread per process blocks in a single `BLPOP` over the wake lists of
//! the queues where a worker of this process waits right now (and its own list, to be
//! interrupted when that set grows): a few connections however many queues. Only queues with a
//! waiting worker are listened to, so that a marker goes to a process that can use it; one
//! taken for a queue whose workers got busy meanwhile is put back for the others. In a Redis
//! Cluster, one `BLPOP` cannot span slots: the first idle worker of each queue blocks on that
//! queue's list, and the others wait for it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use redis::Value;

use super::connection::{Conn, Redis, COMMAND_TIMEOUT};
use super::keys::RedisQueue;
use crate::error::Result;
use crate::sync::{Condvar, Mutex};

/// Waits shorter than this are timed here rather than by a Redis `BLPOP` timeout (Redis times
/// blocking calls out only every 100 ms when idle).
const PRECISE_WAIT: Duration = Duration::from_millis(150);
/// How long the shared listener blocks per `BLPOP`.
const LISTEN_FOR: Duration = Duration::from_secs(1);
/// The listener thread ends after this long with no queue to listen to.
const IDLE_LISTENER: Duration = Duration::from_secs(30);
/// How long an interruption of the listener waits for Redis.
const WAKE_TIMEOUT: Duration = Duration::from_millis(250);

pub(super) struct Wakeups {
    /// Single-node mode: the shared listener's state. `None` in cluster mode.
    shared: Option<Mutex<Listener>>,
    /// This process's own wake list (single-node mode).
    own_key: String,
    stopping: Mutex<bool>,
    stopped: Condvar,
}

#[derive(Default)]
struct Listener {
    /// Wake key → the queue and how many of this process's workers wait on it now.
    queues: HashMap<String, (Weak<RedisQueue>, usize)>,
    /// The keys of the `BLPOP` under way.
    listening: HashSet<String>,
    running: bool,
}

impl Wakeups {
    pub fn new(cluster: bool, own_key: String) -> Self {
        Wakeups {
            shared: (!cluster).then(|| Mutex::new(Listener::default())),
            own_key,
            stopping: Mutex::new(false),
            stopped: Condvar::new(),
        }
    }

    /// Waits for a wake-up of the queue (a generation other than `seen`), until `until` at
    /// most. `redis` is the backend's connection, `token` its lease token.
    pub fn wait(
        self: &Arc<Self>,
        redis: &Arc<Redis>,
        token: &str,
        queue: &Arc<RedisQueue>,
        seen: u64,
        until: Instant,
    ) -> Result<()> {
        let short = until.saturating_duration_since(Instant::now()) < PRECISE_WAIT;
        match &self.shared {
            Some(listener) if !short => {
                if self.join(listener, redis, queue) {
                    self.interrupt(redis);
                }
                {
                    let listen = queue.listen.lock();
                    if listen.generation == seen {
                        let _ = queue.heard.wait_until(listen, until);
                    }
                }
                self.leave(listener, queue);
                Ok(())
            }
            None if !short => self.block_on_queue(redis, token, queue, seen, until),
            _ => {
                let listen = queue.listen.lock();
                if listen.generation == seen {
                    let _ = queue.heard.wait_until(listen, until);
                }
                Ok(())
            }
        }
    }

    /// A worker waits on the queue: its key joins the listener's set (starting the listener if
    /// needed). True when the listener must be interrupted to take it.
    fn join(
        self: &Arc<Self>,
        listener: &Mutex<Listener>,
        redis: &Arc<Redis>,
        queue: &Arc<RedisQueue>,
    ) -> bool {
        let mut state = listener.lock();
        let key = queue.wake_key().to_string();
        let entry = state
            .queues
            .entry(key.clone())
            .or_insert_with(|| (Arc::downgrade(queue), 0));
        entry.0 = Arc::downgrade(queue);
        entry.1 += 1;
        if !state.running {
            state.running = true;
            let wakeups = self.clone();
            let redis = redis.clone();
            let spawned = thread::Builder::new()
                .name("rnq-redis-listen".into())
                .spawn(move || wakeups.run_listener(&redis));
            if spawned.is_err() {
                state.running = false;
            }
            return false;
        }
        !state.listening.contains(&key)
    }

    /// The worker stopped waiting on the queue.
    fn leave(&self, listener: &Mutex<Listener>, queue: &RedisQueue) {
        let mut state = listener.lock();
        let key = queue.wake_key();
        if let Some(entry) = state.queues.get_mut(key) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                state.queues.remove(key);
            }
        }
    }

    /// Makes the listener start its `BLPOP` over (best effort and brief).
    fn interrupt(&self, redis: &Redis) {
        let mut conn = redis.conn();
        let mut push = redis::cmd("RPUSH");
        push.arg(&self.own_key).arg("1");
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&self.own_key).arg(60_000);
        let _: Result<Value> = redis.run_for(WAKE_TIMEOUT, async move {
            push.query_async::<Value>(&mut conn).await?;
            expire.query_async(&mut conn).await
        });
    }

    fn run_listener(&self, redis: &Redis) {
        let Some(listener) = &self.shared else { return };
        let mut conn: Option<Conn> = None;
        let mut idle_since = Instant::now();
        while !*self.stopping.lock() {
            let (keys, queues) = {
                let mut state = listener.lock();
                state.queues.retain(|_, (weak, _)| weak.strong_count() > 0);
                let queues: HashMap<String, Weak<RedisQueue>> = state
                    .queues
                    .iter()
                    .map(|(key, (weak, _))| (key.clone(), weak.clone()))
                    .collect();
                if queues.is_empty() {
                    if idle_since.elapsed() >= IDLE_LISTENER {
                        state.running = false;
                        state.listening.clear();
                        return;
                    }
                } else {
                    idle_since = Instant::now();
                }
                state.listening = queues.keys().cloned().collect();
                let mut keys: Vec<String> = queues.keys().cloned().collect();
                keys.push(self.own_key.clone());
                (keys, queues)
            };
            let mut connection = match conn.take() {
                Some(c) => c,
                None => match redis.dedicated() {
                    Ok(c) => c,
                    Err(error) => {
                        log::warn!(
                            target: "rnode_queue",
                            "the redis wake-up listener cannot connect ({error}); idle \
                             workers look for jobs every second meanwhile"
                        );
                        wake_all(&queues);
                        self.pause(LISTEN_FOR);
                        continue;
                    }
                },
            };
            let mut blpop = redis::cmd("BLPOP");
            blpop.arg(&keys).arg(LISTEN_FOR.as_secs_f64());
            let heard: Result<Value> = redis.run_for(LISTEN_FOR + COMMAND_TIMEOUT, async {
                blpop.query_async(&mut connection).await
            });
            match heard {
                Ok(Value::Array(pair)) => {
                    conn = Some(connection);
                    let key = match pair.first() {
                        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into(),
                        _ => String::new(),
                    };
                    if key == self.own_key {
                        continue;
                    }
                    let waiting = listener.lock().queues.get(&key).is_some_and(|e| e.1 > 0);
                    match queues.get(&key).and_then(Weak::upgrade) {
                        Some(queue) if waiting => queue.heard(),
                        _ => {
                            // Its workers got busy meanwhile: the marker goes back for another
                            // process's idle workers.
                            let mut push = redis::cmd("RPUSH");
                            push.arg(&key).arg("1");
                            let mut commands = redis.conn();
                            let _: Result<Value> = redis.run_for(WAKE_TIMEOUT, async move {
                                push.query_async(&mut commands).await
                            });
                        }
                    }
                }
                Ok(_) => conn = Some(connection),
                Err(error) => {
                    // A connection that failed is dropped; the next round opens a new one.
                    // The workers look for themselves meanwhile.
                    log::debug!(target: "rnode_queue", "redis wake-up listener: {error}");
                    wake_all(&queues);
                    self.pause(Duration::from_millis(500));
                }
            }
        }
        if let Some(listener) = &self.shared {
            let mut state = listener.lock();
            state.running = false;
            state.listening.clear();
        }
    }

    fn pause(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let mut stopping = self.stopping.lock();
        while !*stopping && Instant::now() < deadline {
            stopping = self.stopped.wait_until(stopping, deadline).0;
        }
    }

    /// Cluster mode: one thread per queue and process blocks on Redis (`BLPOP` on the queue's
    /// wake list and this process's own list for it); the others wait for it.
    fn block_on_queue(
        &self,
        redis: &Redis,
        token: &str,
        queue: &RedisQueue,
        seen: u64,
        until: Instant,
    ) -> Result<()> {
        let mut listen = queue.listen.lock();
        if listen.generation != seen {
            return Ok(());
        }
        if listen.listening {
            let _ = queue.heard.wait_until(listen, until);
            return Ok(());
        }
        listen.listening = true;
        drop(listen);
        let wait = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        let taken = queue.blocking.lock().take();
        let heard = (|| {
            let mut conn = match taken {
                Some(conn) => conn,
                None => redis.dedicated()?,
            };
            let mut blpop = redis::cmd("BLPOP");
            blpop
                .arg(queue.wake_key())
                .arg(queue.own_wake_key(token))
                .arg(wait.as_secs_f64());
            let heard: Result<Value> = redis.run_for(wait + COMMAND_TIMEOUT, async {
                blpop.query_async(&mut conn).await
            });
            // A connection that failed is dropped; the next wait opens a new one.
            if heard.is_ok() {
                *queue.blocking.lock() = Some(conn);
            }
            heard.map(|_| ())
        })();
        queue.listen.lock().listening = false;
        queue.heard();
        heard
    }

    /// Wakes the queue's idle workers so that they see a stop.
    pub fn wake(&self, redis: &Redis, token: &str, queue: &RedisQueue, admin: &redis::Script) {
        if self.shared.is_none() && queue.listen.lock().listening {
            // Cluster mode: interrupt the thread blocked on Redis (best effort and brief; its
            // BLPOP otherwise ends by its own timeout).
            let mut cmd = super::scripts::eval_cmd(admin, &queue.keys);
            cmd.arg("wake").arg(token);
            let mut conn = redis.conn();
            let _: Result<Value> =
                redis.run_for(
                    WAKE_TIMEOUT,
                    async move { cmd.query_async(&mut conn).await },
                );
        }
        queue.heard();
    }

    /// The backend is closing: the listener ends within a `BLPOP` timeout.
    pub fn stop(&self, redis: &Redis) {
        *self.stopping.lock() = true;
        self.stopped.notify_all();
        if self.shared.is_some() {
            self.interrupt(redis);
        }
    }
}

fn wake_all(queues: &HashMap<String, Weak<RedisQueue>>) {
    for queue in queues.values().filter_map(Weak::upgrade) {
        queue.heard();
    }
}
