//! The Redis backend: jobs shared by any number of processes and hosts.
//!
//! Every move between states is one Lua script (`lua/`), so a crash never leaves a job half
//! moved. Per queue (all keys share the hash tag `{queue}`, one Cluster slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `waiting` | sorted set | ids, scored priority above a FIFO sequence |
//! | `delayed` | sorted set | ids by due time (ms) |
//! | `leases` | sorted set | worker tokens by lease expiry (ms) |
//! | `active:<token>` | set | the jobs that worker holds |
//! | `completed`, `failed` | list | ids in finishing order, trimmed by count and age |
//! | `meta` | hash | paused, retention, totals, the FIFO sequence |
//! | `wake` | list | markers that wake idle workers blocked in `BLPOP` |
//! | `j:<id>` | hash | the job: its packed body and its run state |
//! | `ticks` | hash | the last cron tick claimed, per schedule |
//!
//! Leases: a fetch leases its jobs to this process's token (one lease per process and queue,
//! not per job, so that renewing costs one command however many jobs run). A keeper thread
//! renews it while the process lives; a sweeper (one per interval across all processes) takes
//! back the jobs of expired tokens, counting the lost run as an attempt. A settle or release
//! must find the job in its own active set on the same attempt, so a worker that lost its lease
//! cannot finish the job afterwards.

mod codec;
mod connection;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis::{Cmd, FromRedisValue, Script, Value};

use self::codec::{
    decode_job, decode_jobs, decode_leased, decode_schedule, encode_body, encode_schedule, millis,
};
use self::connection::{Redis, COMMAND_TIMEOUT};
use super::{
    Ack, Backend, FetchRequest, FinishSignal, QueueCounts, Retention, ScheduleRecord, Settlement,
    Totals,
};
use crate::error::{QueueError, Result};
use crate::job::{now, Job, JobId, JobState, Timestamp};
use crate::sync::{Condvar, Mutex, RwLock};

/// Jobs per push script; a larger batch is several scripts in one MULTI/EXEC round trip.
const PUSH_CHUNK: usize = 1000;
/// How many pushed jobs `remember_pushed` keeps track of (then it starts over).
const PUSHED_HERE_LIMIT: usize = 100_000;
/// How often a wait for a finished job or an idle queue re-reads state that other processes
/// change: the first and the last interval (this process's own settles wake it at once).
const FINISH_POLL: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(25));
/// A leased job this process no longer lists as held is taken back only this long (and a
/// lease) after it was leased: a fetch's reply is used within `COMMAND_TIMEOUT` of the script
/// running or not at all, so it cannot still be on its way then.
const ORPHAN_AFTER: Duration = Duration::from_secs(COMMAND_TIMEOUT.as_secs() + 2);
/// How long `wake` waits for Redis.
const WAKE_TIMEOUT: Duration = Duration::from_millis(250);
/// Waits shorter than this are timed here rather than by a Redis `BLPOP` timeout.
const PRECISE_WAIT: Duration = Duration::from_millis(150);
/// Retention for a queue declared again without settings of its own (the engine's defaults).
const DEFAULT_RETENTION: Retention = Retention {
    ttl: 86_400.0,
    keep_completed: 10_000,
    keep_failed: 100_000,
};
const LEASE_LOST: &str =
    "LeaseExpired: the worker running this job stopped renewing its lease (it died or lost Redis)";

const COMMON: &str = include_str!("lua/common.lua");

struct Scripts {
    push: Script,
    fetch: Script,
    settle: Script,
    release: Script,
    renew: Script,
    sweep: Script,
    tick: Script,
    counts: Script,
    list: Script,
    admin: Script,
}

impl Scripts {
    fn new() -> Self {
        let queue_script = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        Scripts {
            push: queue_script(include_str!("lua/push.lua")),
            fetch: queue_script(include_str!("lua/fetch.lua")),
            settle: queue_script(include_str!("lua/settle.lua")),
            release: queue_script(include_str!("lua/release.lua")),
            renew: queue_script(include_str!("lua/renew.lua")),
            sweep: queue_script(include_str!("lua/sweep.lua")),
            tick: queue_script(include_str!("lua/tick.lua")),
            counts: queue_script(include_str!("lua/counts.lua")),
            list: queue_script(include_str!("lua/list.lua")),
            admin: queue_script(include_str!("lua/admin.lua")),
        }
    }
}

/// Indices into `RedisQueue::keys`, in the order the scripts take them.
const WAKE: usize = 6;
const BASE: usize = 7;

/// What this process knows about one queue.
struct RedisQueue {
    name: Arc<str>,
    /// waiting, delayed, leases, completed, failed, meta, wake, and the key prefix itself.
    keys: [String; 8],
    /// Jobs this process holds a lease on, with the attempt it holds.
    held: Mutex<HashMap<JobId, u32>>,
    /// The retention last declared here, to declare the queue again if another process
    /// deletes it while this one still pushes to it.
    retention: Mutex<Option<Retention>>,
    listen: Mutex<Listen>,
    heard: Condvar,
    /// The connection the listener blocks on, kept between waits.
    blocking: Mutex<Option<connection::Conn>>,
}

/// One thread per process and queue blocks on Redis for a wake-up; the others wait for it here.
#[derive(Default)]
struct Listen {
    listening: bool,
    /// Bumped each time the listener returns.
    generation: u64,
}

impl RedisQueue {
    fn new(prefix: &str, name: &str) -> Self {
        let base = format!("{prefix}:{{{}}}:", hash_tag(name));
        let key = |suffix: &str| format!("{base}{suffix}");
        RedisQueue {
            name: Arc::from(name),
            keys: [
                key("waiting"),
                key("delayed"),
                key("leases"),
                key("completed"),
                key("failed"),
                key("meta"),
                key("wake"),
                base.clone(),
            ],
            held: Mutex::new(HashMap::new()),
            retention: Mutex::new(None),
            listen: Mutex::new(Listen::default()),
            heard: Condvar::new(),
            blocking: Mutex::new(None),
        }
    }

    fn job_key(&self, id: JobId) -> String {
        format!("{}j:{id}", self.keys[BASE])
    }
}

/// The hash tag of a queue: its name, unless braces in it would end the tag early (then `#`
/// and its bytes in hex, as for a name that starts with `#`, so no two names share a tag), so
/// that all keys of a queue land in one Cluster slot.
fn hash_tag(name: &str) -> String {
    if name.contains(['{', '}']) || name.starts_with('#') {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("#{hex}")
    } else {
        name.to_string()
    }
}

struct Shared {
    redis: Redis,
    prefix: String,
    /// This process's lease token: a fresh one for every backend (and so for a forked child).
    token: String,
    lease: Duration,
    scripts: Scripts,
    queues: RwLock<HashMap<Arc<str>, Arc<RedisQueue>>>,
    /// The queue of each job recently pushed from this process (see `remember_pushed`).
    pushed_here: Mutex<HashMap<JobId, Arc<str>>>,
    finished: FinishSignal,
    stopping: Mutex<bool>,
    stop: Condvar,
}

pub struct RedisBackend {
    shared: Arc<Shared>,
    keeper: Mutex<Option<thread::JoinHandle<()>>>,
}

#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub url: String,
    pub prefix: String,
    /// How long a job stays leased to a worker that stops renewing it.
    pub lease: Duration,
}

impl RedisBackend {
    pub fn connect(options: &RedisOptions) -> Result<Self> {
        if options.prefix.is_empty() || options.prefix.contains(['{', '}']) {
            return Err(QueueError::InvalidJob(format!(
                "the redis prefix must be non-empty and without braces, got {:?}",
                options.prefix
            )));
        }
        let redis = Redis::connect(&options.url)?;
        let shared = Arc::new(Shared {
            redis,
            prefix: options.prefix.clone(),
            token: uuid::Uuid::new_v4().simple().to_string(),
            lease: options.lease.max(Duration::from_millis(10)),
            scripts: Scripts::new(),
            queues: RwLock::new(HashMap::new()),
            pushed_here: Mutex::new(HashMap::new()),
            finished: FinishSignal::default(),
            stopping: Mutex::new(false),
            stop: Condvar::new(),
        });
        let keeper_shared = shared.clone();
        let keeper = thread::Builder::new()
            .name("rnq-redis-leases".into())
            .spawn(move || keeper_shared.keep_leases())
            .map_err(|e| QueueError::Backend(format!("cannot start the lease thread: {e}")))?;
        Ok(RedisBackend {
            shared,
            keeper: Mutex::new(Some(keeper)),
        })
    }

    fn stop_keeper(&self) {
        *self.shared.stopping.lock() = true;
        self.shared.stop.notify_all();
        if let Some(handle) = self.keeper.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.stop_keeper();
    }
}

impl Shared {
    fn global_key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn queue(&self, name: &str) -> Arc<RedisQueue> {
        if let Some(queue) = self.queues.read().get(name) {
            return queue.clone();
        }
        let queue = Arc::new(RedisQueue::new(&self.prefix, name));
        self.queues
            .write()
            .entry(queue.name.clone())
            .or_insert(queue)
            .clone()
    }

    /// Runs a queue script (EVALSHA, loading it first where Redis lost it): the queue's keys,
    /// then the arguments `args` adds.
    fn invoke<T: FromRedisValue>(
        &self,
        script: &Script,
        queue: &RedisQueue,
        args: impl FnOnce(&mut Cmd),
    ) -> Result<T> {
        let mut cmd = eval_cmd(script, &queue.keys);
        args(&mut cmd);
        self.eval(script, cmd)
    }

    fn eval<T: FromRedisValue>(&self, script: &Script, cmd: Cmd) -> Result<T> {
        self.eval_for(COMMAND_TIMEOUT, script, cmd)
    }

    fn eval_for<T: FromRedisValue>(&self, limit: Duration, script: &Script, cmd: Cmd) -> Result<T> {
        let mut conn = self.redis.conn();
        self.redis.run_for(limit, async move {
            match cmd.query_async(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.load_async(&mut conn).await?;
                    cmd.query_async(&mut conn).await
                }
                other => other,
            }
        })
    }

    fn command<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T> {
        let mut conn = self.redis.conn();
        self.redis
            .run(async move { cmd.query_async(&mut conn).await })
    }

    fn queue_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> =
            self.command(redis::Cmd::smembers(self.global_key("queues")))?;
        names.sort();
        Ok(names)
    }

    fn counts(&self, queue: &RedisQueue) -> Result<(QueueCounts, u64)> {
        let c: Vec<u64> = self.invoke(&self.scripts.counts, queue, |_| {})?;
        let at = |i: usize| c.get(i).copied().unwrap_or(0);
        Ok((
            QueueCounts {
                waiting: at(0),
                delayed: at(1),
                active: at(2),
                completed: at(3),
                failed: at(4),
                paused: at(6) == 1,
            },
            at(5),
        ))
    }

    /// The leased jobs of one fetch, and when the next delayed job is due (ms, or -1).
    fn take(&self, queue: &RedisQueue, request: FetchRequest) -> Result<(i64, Vec<Job>)> {
        let at = now();
        let reply: Value = self.invoke(&self.scripts.fetch, queue, |cmd| {
            cmd.arg(millis(at))
                .arg(at.to_string())
                .arg(request.max.max(1))
                .arg(request.share.max(1))
                .arg(&self.token)
                .arg(self.lease.as_millis() as u64);
        })?;
        let Value::Array(parts) = reply else {
            return Err(QueueError::Backend("redis: unexpected fetch reply".into()));
        };
        let next_due = match parts.first() {
            Some(Value::Int(due)) => *due,
            _ => -1,
        };
        let jobs = match parts.get(1) {
            Some(list) => decode_leased(&queue.name, list, at)?,
            None => Vec::new(),
        };
        Ok((next_due, jobs))
    }

    /// Waits for a wake-up of the queue, until `until` at most. One thread per queue blocks on
    /// Redis (`BLPOP` on the queue's wake list and this process's own); the others wait for it.
    fn await_signal(
        &self,
        queue: &RedisQueue,
        seen: u64,
        until: Instant,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let mut listen = queue.listen.lock();
        if listen.generation != seen || cancel.load(Ordering::Acquire) {
            return Ok(());
        }
        // Redis times blocking calls out at its own pace (every 100 ms when idle): a delayed
        // job due within that is waited for here, to start on time.
        if listen.listening || until.saturating_duration_since(Instant::now()) < PRECISE_WAIT {
            let _ = queue.heard.wait_until(listen, until);
            return Ok(());
        }
        listen.listening = true;
        drop(listen);
        let heard = self.block_on_wake(queue, until);
        let mut listen = queue.listen.lock();
        listen.listening = false;
        listen.generation += 1;
        queue.heard.notify_all();
        heard
    }

    fn block_on_wake(&self, queue: &RedisQueue, until: Instant) -> Result<()> {
        let wait = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        let taken = queue.blocking.lock().take();
        let mut conn = match taken {
            Some(conn) => conn,
            None => self.redis.dedicated()?,
        };
        let own = format!("{}wake:{}", queue.keys[BASE], self.token);
        let mut blpop = redis::cmd("BLPOP");
        blpop
            .arg(&queue.keys[WAKE])
            .arg(&own)
            .arg(wait.as_secs_f64());
        let heard: Result<Value> = self.redis.run_for(wait + COMMAND_TIMEOUT, async {
            blpop.query_async(&mut conn).await
        });
        // A connection that failed is dropped; the next wait opens a new one.
        if heard.is_ok() {
            *queue.blocking.lock() = Some(conn);
        }
        heard.map(|_| ())
    }

    fn settle_acks(&self, queue: &RedisQueue, acks: &[Ack]) -> Result<i64> {
        let at = now();
        self.invoke(&self.scripts.settle, queue, |cmd| {
            cmd.arg(millis(at)).arg(&self.token).arg(acks.len());
            for ack in acks {
                cmd.arg(ack.id.to_string())
                    .arg(ack.attempt)
                    .arg(match ack.settlement {
                        Settlement::Completed { .. } => "c",
                        Settlement::Retry { .. } => "r",
                        Settlement::Failed { .. } => "f",
                    })
                    .arg(ack.at.to_string());
                match &ack.settlement {
                    Settlement::Completed { result } => {
                        match result {
                            Some(result) => cmd.arg("1").arg(&**result),
                            None => cmd.arg("0").arg(""),
                        };
                    }
                    Settlement::Retry {
                        due,
                        error,
                        traceback,
                    } => {
                        cmd.arg(millis(*due)).arg(due.to_string()).arg(error);
                        optional_text(cmd, traceback.as_deref());
                    }
                    Settlement::Failed { error, traceback } => {
                        cmd.arg(error);
                        optional_text(cmd, traceback.as_deref());
                    }
                }
            }
        })
    }

    /// Renews this process's leases and, every sweep interval, takes back expired ones.
    fn keep_leases(self: Arc<Self>) {
        let renew_every = self.lease / 3;
        let sweep_every = (self.lease / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut next_sweep = Instant::now();
        let mut next_renew = Instant::now() + renew_every;
        loop {
            {
                let until = next_sweep.min(next_renew);
                let mut stopping = self.stopping.lock();
                while !*stopping && Instant::now() < until {
                    stopping = self.stop.wait_until(stopping, until).0;
                }
                if *stopping {
                    return;
                }
            }
            let now_instant = Instant::now();
            if now_instant >= next_renew {
                self.renew_leases();
                next_renew = now_instant + renew_every;
            }
            if now_instant >= next_sweep {
                self.sweep(sweep_every);
                next_sweep = now_instant + sweep_every;
            }
        }
    }

    fn renew_leases(&self) {
        let queues: Vec<Arc<RedisQueue>> = self.queues.read().values().cloned().collect();
        for queue in queues {
            if *self.stopping.lock() {
                return;
            }
            let held: Vec<(JobId, u32)> = queue
                .held
                .lock()
                .iter()
                .map(|(id, attempt)| (*id, *attempt))
                .collect();
            if held.is_empty() {
                continue;
            }
            let at = now();
            let renewed: Result<i64> = self.invoke(&self.scripts.renew, &queue, |cmd| {
                cmd.arg(&self.token)
                    .arg(self.lease.as_millis() as u64)
                    .arg(at.to_string())
                    .arg(LEASE_LOST)
                    .arg(ORPHAN_AFTER.as_millis() as u64);
                for (id, _) in &held {
                    cmd.arg(id.to_string());
                }
            });
            if let Ok(0) = renewed {
                // Expired and swept: those runs are someone else's now (a fetch made since
                // then holds a new lease and stays).
                let mut current = queue.held.lock();
                for (id, attempt) in held {
                    if current.get(&id) == Some(&attempt) {
                        current.remove(&id);
                    }
                }
            }
        }
    }

    fn sweep(&self, every: Duration) {
        let Ok(names) = self.queue_names() else {
            return;
        };
        for name in names {
            if *self.stopping.lock() {
                return;
            }
            let queue = self.queue(&name);
            let _: Result<i64> = self.invoke(&self.scripts.sweep, &queue, |cmd| {
                cmd.arg(now().to_string())
                    .arg(&self.token)
                    .arg(every.as_millis() as u64)
                    .arg(LEASE_LOST);
            });
        }
    }

    /// Whether the queue (or every queue) has no waiting, delayed or active job.
    fn all_idle(&self, queue: Option<&str>) -> Result<bool> {
        let names = match queue {
            Some(name) => vec![name.to_string()],
            None => self.queue_names()?,
        };
        for name in names {
            let (counts, _) = self.counts(&self.queue(&name))?;
            if counts.waiting + counts.delayed + counts.active > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Finds a job in whichever queue holds it.
    fn find_job(&self, id: JobId) -> Result<Option<Job>> {
        let pushed_to = self.pushed_here.lock().get(&id).cloned();
        if let Some(name) = &pushed_to {
            if let Some(job) = self.read_job(&self.queue(name), id)? {
                return Ok(Some(job));
            }
        }
        for name in self.queue_names()? {
            if pushed_to.as_deref() == Some(name.as_str()) {
                continue;
            }
            if let Some(job) = self.read_job(&self.queue(&name), id)? {
                return Ok(Some(job));
            }
        }
        Ok(None)
    }

    fn read_job(&self, queue: &RedisQueue, id: JobId) -> Result<Option<Job>> {
        let hash: Value = self.command(redis::Cmd::hgetall(queue.job_key(id)))?;
        decode_job(&queue.name, id.to_string().as_bytes(), &hash)
    }

    /// Remembers which queue jobs pushed here went to: `get_job` and `wait_for`, which a web
    /// process typically calls on what it pushed, then take one round trip, not one per queue.
    fn remember_pushed(&self, queue: &Arc<str>, jobs: &[Job]) {
        let mut pushed = self.pushed_here.lock();
        if pushed.len() + jobs.len() > PUSHED_HERE_LIMIT {
            pushed.clear();
        }
        if jobs.len() <= PUSHED_HERE_LIMIT {
            pushed.extend(jobs.iter().map(|job| (job.id, queue.clone())));
        }
    }

    /// Stores jobs; with a cron tick, only if that tick was not claimed yet.
    fn store(
        &self,
        queue: &RedisQueue,
        jobs: &[Job],
        tick: Option<(&str, Timestamp)>,
    ) -> Result<bool> {
        // A queue deleted by another process while this one still knew it is declared again;
        // a few times, since deletions may keep racing with this push.
        for _ in 0..3 {
            let stored = self.store_once(queue, jobs, tick)?;
            if stored >= 0 {
                return Ok(stored == 1);
            }
            let retention = queue.retention.lock().unwrap_or(DEFAULT_RETENTION);
            self.declare(queue, retention, false)?;
        }
        Err(QueueError::Backend(format!(
            "redis: queue {:?} kept being deleted while this push declared it again",
            &*queue.name
        )))
    }

    /// One attempt of `store`: 1 stored, 0 the tick was claimed before, -1 the queue is gone.
    fn store_once(
        &self,
        queue: &RedisQueue,
        jobs: &[Job],
        tick: Option<(&str, Timestamp)>,
    ) -> Result<i64> {
        let add_args = |cmd: &mut Cmd, chunk: &[Job], tick: Option<(&str, Timestamp)>| {
            cmd.arg(chunk.len());
            match tick {
                Some((schedule, at)) => cmd.arg(schedule).arg(at.to_string()),
                None => cmd.arg("").arg("0"),
            };
            for job in chunk {
                let delayed = if job.state == JobState::Delayed {
                    "1"
                } else {
                    "0"
                };
                cmd.arg(job.id.to_string())
                    .arg(delayed)
                    .arg(millis(job.due_at()))
                    .arg(job.priority as u8)
                    .arg(job.max_attempts)
                    .arg(encode_body(job));
                match job.scheduled_at.get() {
                    Some(due) => cmd.arg(due.to_string()),
                    None => cmd.arg(""),
                };
            }
        };
        if jobs.len() <= PUSH_CHUNK {
            return self.invoke(&self.scripts.push, queue, |cmd| add_args(cmd, jobs, tick));
        }
        // Several chunks, all or none: one MULTI/EXEC of EVALSHAs, the script loaded first.
        let mut conn = self.redis.conn();
        let script = &self.scripts.push;
        self.redis
            .run(async { script.load_async(&mut conn).await })?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (n, chunk) in jobs.chunks(PUSH_CHUNK).enumerate() {
            let mut cmd = eval_cmd(script, &queue.keys);
            add_args(&mut cmd, chunk, if n == 0 { tick } else { None });
            pipe.add_command(cmd);
        }
        let stored: Vec<i64> = self
            .redis
            .run(async move { pipe.query_async(&mut conn).await })?;
        Ok(stored.first().copied().unwrap_or(0))
    }

    /// The queue's record first, then its name in the list: a `delete` (which unlists first,
    /// then removes the record) racing with this either removes the record after both steps,
    /// so the next push declares it again, or is over before the name is listed. The other
    /// order could leave a record, and jobs, under a name nobody lists.
    fn declare(&self, queue: &RedisQueue, retention: Retention, replace: bool) -> Result<()> {
        let ttl_ms = (retention.ttl * 1000.0).round() as i64;
        let _: i64 = self.invoke(&self.scripts.admin, queue, |cmd| {
            cmd.arg("declare")
                .arg(if replace { "1" } else { "0" })
                .arg(ttl_ms)
                .arg(retention.keep_completed)
                .arg(retention.keep_failed);
        })?;
        let _: i64 = self.command(redis::Cmd::sadd(self.global_key("queues"), &*queue.name))?;
        *queue.retention.lock() = Some(retention);
        Ok(())
    }
}

/// `EVALSHA` of a script with these keys; arguments follow.
fn eval_cmd(script: &Script, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(key);
    }
    cmd
}

fn optional_text(cmd: &mut Cmd, text: Option<&str>) {
    match text {
        Some(text) => cmd.arg("1").arg(text),
        None => cmd.arg("0").arg(""),
    };
}

fn next_event(ms: i64) -> Option<Timestamp> {
    (ms >= 0).then(|| ms as f64 / 1000.0)
}

impl Backend for RedisBackend {
    fn shared(&self) -> bool {
        true
    }

    fn declare_queue(&self, queue: &Arc<str>, retention: Retention, replace: bool) -> Result<()> {
        let s = &self.shared;
        s.declare(&s.queue(queue), retention, replace)
    }

    fn push(&self, queue: &Arc<str>, jobs: &mut Vec<Job>, may_block: bool) -> Result<bool> {
        if !may_block {
            return Ok(false);
        }
        let handle = self.shared.queue(queue);
        self.shared.store(&handle, jobs, None)?;
        self.shared.remember_pushed(&handle.name, jobs);
        jobs.clear();
        Ok(true)
    }

    fn push_tick(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        schedule: &str,
        tick: Timestamp,
    ) -> Result<bool> {
        let handle = self.shared.queue(queue);
        let stored = self.shared.store(&handle, jobs, Some((schedule, tick)))?;
        jobs.clear();
        Ok(stored)
    }

    fn fetch(&self, queue: &str, request: FetchRequest, cancel: &AtomicBool) -> Result<Vec<Job>> {
        let s = &self.shared;
        let handle = s.queue(queue);
        let deadline = Instant::now() + request.wait;
        loop {
            if cancel.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
            let seen = handle.listen.lock().generation;
            let (next_due, jobs) = s.take(&handle, request)?;
            if !jobs.is_empty() {
                let leased = jobs.iter().map(|job| (job.id, job.attempts));
                handle.held.lock().extend(leased);
                return Ok(jobs);
            }
            let now_instant = Instant::now();
            if now_instant >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if next_due >= 0 {
                let due_in = (next_due - millis(now())).max(1) as u64;
                until = until.min(now_instant + Duration::from_millis(due_in));
            }
            s.await_signal(&handle, seen, until, cancel)?;
        }
    }

    fn settle(&self, queue: &str, acks: Vec<Ack>) -> Result<Option<Timestamp>> {
        if acks.is_empty() {
            return Ok(None);
        }
        let s = &self.shared;
        let handle = s.queue(queue);
        // Redis may be away for a moment: keep trying for part of the lease (an ack that never
        // lands leaves the job to the sweeper, which runs it again).
        let give_up = Instant::now() + s.lease / 2;
        let result = loop {
            match s.settle_acks(&handle, &acks) {
                Err(QueueError::Backend(_)) if Instant::now() < give_up => {
                    thread::sleep(Duration::from_millis(200));
                }
                other => break other,
            }
        };
        {
            // Only the run acked: a newer run of the same job in this process keeps its lease.
            let mut held = handle.held.lock();
            for ack in &acks {
                if held.get(&ack.id) == Some(&ack.attempt) {
                    held.remove(&ack.id);
                }
            }
        }
        s.finished.notify();
        result.map(next_event)
    }

    fn release(&self, queue: &str, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let handle = s.queue(queue);
        let released: Result<i64> = s.invoke(&s.scripts.release, &handle, |cmd| {
            cmd.arg(&s.token).arg(jobs.len());
            for job in jobs {
                cmd.arg(job.id.to_string()).arg(job.attempts);
            }
        });
        let mut held = handle.held.lock();
        for job in jobs {
            if held.get(&job.id) == Some(&job.attempts) {
                held.remove(&job.id);
            }
        }
        released.map(|_| ())
    }

    fn tick(&self, queue: &str, now: Timestamp) -> Result<Option<Timestamp>> {
        let s = &self.shared;
        let handle = s.queue(queue);
        let next: i64 = s.invoke(&s.scripts.tick, &handle, |cmd| {
            cmd.arg(millis(now));
        })?;
        Ok(next_event(next))
    }

    fn wake(&self, queue: &str) {
        let s = &self.shared;
        let Some(handle) = s.queues.read().get(queue).cloned() else {
            return;
        };
        if handle.listen.lock().listening {
            // Best effort and brief: a stop must not wait for a Redis that does not answer
            // (the listener's BLPOP then ends by its own timeout).
            let mut cmd = eval_cmd(&s.scripts.admin, &handle.keys);
            cmd.arg("wake").arg(&s.token);
            let _: Result<i64> = s.eval_for(WAKE_TIMEOUT, &s.scripts.admin, cmd);
        }
        let _listen = handle.listen.lock();
        handle.heard.notify_all();
    }

    fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.shared.find_job(id)
    }

    fn list_jobs(&self, queue: &str, state: Option<JobState>, limit: usize) -> Result<Vec<Job>> {
        let s = &self.shared;
        let handle = s.queue(queue);
        let order = [
            (JobState::Active, 3),
            (JobState::Waiting, 1),
            (JobState::Delayed, 2),
            (JobState::Completed, 4),
            (JobState::Failed, 5),
        ];
        let mut jobs = Vec::new();
        for (listed, index) in order {
            if state.is_some_and(|wanted| wanted != listed) || jobs.len() >= limit {
                continue;
            }
            let reply: Value = s.invoke(&s.scripts.list, &handle, |cmd| {
                cmd.arg(index).arg(limit - jobs.len());
            })?;
            jobs.extend(decode_jobs(&handle.name, &reply)?);
        }
        jobs.truncate(limit);
        Ok(jobs)
    }

    fn retry_failed(&self, id: JobId) -> Result<bool> {
        let s = &self.shared;
        for name in s.queue_names()? {
            let handle = s.queue(&name);
            let outcome: i64 = s.invoke(&s.scripts.admin, &handle, |cmd| {
                cmd.arg("retry").arg(id.to_string());
            })?;
            if outcome >= 0 {
                return Ok(outcome == 1);
            }
        }
        Ok(false)
    }

    fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let s = &self.shared;
        let handle = s.queue(queue);
        let _: i64 = s.invoke(&s.scripts.admin, &handle, |cmd| {
            cmd.arg("pause").arg(if paused { "1" } else { "0" });
        })?;
        Ok(())
    }

    fn clear(&self, queue: &str) -> Result<usize> {
        let s = &self.shared;
        let handle = s.queue(queue);
        let mut removed = 0;
        loop {
            let chunk: usize = s.invoke(&s.scripts.admin, &handle, |cmd| {
                cmd.arg("clear");
            })?;
            removed += chunk;
            if chunk < 1000 {
                break;
            }
        }
        s.finished.notify();
        Ok(removed)
    }

    fn delete(&self, queue: &str) -> Result<bool> {
        let s = &self.shared;
        let handle = s.queue(queue);
        // Unlisted first: a push that lands meanwhile is either deleted by a later chunk or
        // finds the queue gone and declares (and lists) it again.
        let listed: i64 = s.command(redis::Cmd::srem(s.global_key("queues"), queue))?;
        let mut removed = 0;
        loop {
            let chunk: usize = s.invoke(&s.scripts.admin, &handle, |cmd| {
                cmd.arg("delete");
            })?;
            removed += chunk;
            if chunk < 1000 {
                break;
            }
        }
        s.queues.write().remove(queue);
        {
            let _listen = handle.listen.lock();
            handle.heard.notify_all();
        }
        s.finished.notify();
        Ok(listed > 0 || removed > 0)
    }

    fn counts(&self, queue: &str) -> Result<QueueCounts> {
        let s = &self.shared;
        Ok(s.counts(&s.queue(queue))?.0)
    }

    fn queue_names(&self) -> Result<Vec<String>> {
        self.shared.queue_names()
    }

    fn totals(&self) -> Result<Totals> {
        let s = &self.shared;
        let mut totals = Totals::default();
        for name in s.queue_names()? {
            let (counts, retried) = s.counts(&s.queue(&name))?;
            totals.processed += counts.completed;
            totals.failed += counts.failed;
            totals.retried += retried;
        }
        Ok(totals)
    }

    fn wait_finished(&self, id: JobId, timeout: Option<Duration>) -> Result<Option<Job>> {
        let s = &self.shared;
        // A finished job, an unknown one, or an error ends the wait.
        let found = s
            .finished
            .wait_until(timeout, Some(FINISH_POLL), || match s.find_job(id) {
                Ok(Some(job)) if !job.state.is_finished() => None,
                other => Some(other),
            });
        found.unwrap_or(Ok(None))
    }

    fn wait_idle(&self, queue: Option<&str>, timeout: Option<Duration>) -> Result<bool> {
        let s = &self.shared;
        let idle = s
            .finished
            .wait_until(timeout, Some(FINISH_POLL), || match s.all_idle(queue) {
                Ok(false) => None,
                other => Some(other),
            });
        idle.unwrap_or(Ok(false))
    }

    fn save_schedule(&self, schedule: &ScheduleRecord) -> Result<()> {
        let s = &self.shared;
        let text = encode_schedule(schedule)?;
        let _: i64 = s.command(redis::Cmd::hset(
            s.global_key("schedules"),
            &*schedule.id,
            text,
        ))?;
        Ok(())
    }

    fn remove_schedule(&self, id: &str) -> Result<bool> {
        let s = &self.shared;
        let removed: i64 = s.command(redis::Cmd::hdel(s.global_key("schedules"), id))?;
        Ok(removed > 0)
    }

    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let s = &self.shared;
        let stored: HashMap<String, Vec<u8>> =
            s.command(redis::Cmd::hgetall(s.global_key("schedules")))?;
        // An entry this version cannot read (written by another one) must not stop every
        // process from starting: it is skipped, and stays for `unschedule` to remove.
        Ok(stored
            .values()
            .filter_map(|text| decode_schedule(text).ok())
            .collect())
    }

    fn has_schedule(&self, id: &str) -> Result<bool> {
        let s = &self.shared;
        s.command(redis::Cmd::hexists(s.global_key("schedules"), id))
    }

    fn close(&self) {
        self.stop_keeper();
    }
}

#[cfg(test)]
mod tests {
    //! Against a private `redis-server` on a free port (skipped with a note when none can be
    //! started, a failure under `RNQ_REQUIRE_REDIS=1`).
    use super::*;
    use crate::job::{JobOptions, Payload, Priority};
    use std::process::{Child, Command, Stdio};

    struct Server {
        child: Child,
        url: String,
        _dir: std::path::PathBuf,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn server() -> Option<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        let dir = std::env::temp_dir().join(format!("rnq-redis-test-{port}"));
        let _ = std::fs::create_dir_all(&dir);
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) => return unavailable(&format!("redis-server cannot start: {error}")),
        };
        let server = Server {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            thread::sleep(Duration::from_millis(20));
        }
        unavailable("redis-server did not answer")
    }

    fn unavailable(reason: &str) -> Option<Server> {
        if std::env::var("RNQ_REQUIRE_REDIS").as_deref() == Ok("1") {
            panic!("RNQ_REQUIRE_REDIS=1 but {reason}");
        }
        eprintln!("skipped: {reason}");
        None
    }

    fn backend(server: &Server, lease: Duration) -> RedisBackend {
        RedisBackend::connect(&RedisOptions {
            url: server.url.clone(),
            prefix: "test".into(),
            lease,
        })
        .expect("connect")
    }

    const RETENTION: Retention = Retention {
        ttl: 3600.0,
        keep_completed: 2,
        keep_failed: 10,
    };

    fn job(queue: &Arc<str>, n: u32, priority: Priority) -> Job {
        let options = JobOptions {
            priority,
            ..JobOptions::default()
        };
        let data: Payload = Arc::from(n.to_string().into_bytes());
        Job::new(queue.clone(), data, options, 2, 30.0)
    }

    fn request(max: usize) -> FetchRequest {
        FetchRequest {
            max,
            share: 1,
            wait: Duration::from_millis(50),
        }
    }

    fn completed(job: &Job) -> Ack {
        Ack {
            id: job.id,
            attempt: job.attempts,
            at: now(),
            settlement: Settlement::Completed { result: None },
        }
    }

    #[test]
    fn jobs_run_by_priority_then_fifo_and_finished_ones_are_trimmed() {
        let Some(server) = server() else { return };
        let redis = backend(&server, Duration::from_secs(30));
        let queue: Arc<str> = Arc::from("order");
        redis.declare_queue(&queue, RETENTION, true).unwrap();
        let mut jobs = vec![
            job(&queue, 1, Priority::Low),
            job(&queue, 2, Priority::Critical),
            job(&queue, 3, Priority::Normal),
            job(&queue, 4, Priority::Critical),
        ];
        redis.push(&queue, &mut jobs, true).unwrap();
        let cancel = AtomicBool::new(false);
        let taken = redis.fetch(&queue, request(10), &cancel).unwrap();
        let data: Vec<&[u8]> = taken.iter().map(|j| &*j.data).collect();
        assert_eq!(data, [b"2", b"4", b"3", b"1"]);
        assert!(taken
            .iter()
            .all(|j| j.attempts == 1 && j.state == JobState::Active));
        let counts = redis.counts(&queue).unwrap();
        assert_eq!((counts.waiting, counts.active), (0, 4));
        redis
            .settle(&queue, taken.iter().map(completed).collect())
            .unwrap();
        let counts = redis.counts(&queue).unwrap();
        assert_eq!((counts.active, counts.completed), (0, 4));
        // keep_completed = 2: the two oldest are gone, the newest listed first.
        let listed = redis
            .list_jobs(&queue, Some(JobState::Completed), 10)
            .unwrap();
        let ids: Vec<JobId> = listed.iter().map(|j| j.id).collect();
        assert_eq!(ids, [taken[3].id, taken[2].id]);
        assert!(redis.get_job(taken[0].id).unwrap().is_none());
    }

    #[test]
    fn a_lost_lease_returns_the_job_and_the_old_ack_is_ignored() {
        let Some(server) = server() else { return };
        let lease = Duration::from_millis(200);
        let dead = backend(&server, lease);
        let queue: Arc<str> = Arc::from("lease");
        dead.declare_queue(&queue, RETENTION, true).unwrap();
        dead.push(&queue, &mut vec![job(&queue, 1, Priority::Normal)], true)
            .unwrap();
        let cancel = AtomicBool::new(false);
        let first = dead.fetch(&queue, request(1), &cancel).unwrap();
        // The worker stops renewing (as if it died); another process's sweeper takes the job.
        dead.close();
        let rescuer = backend(&server, lease);
        let second = rescuer
            .fetch(
                &queue,
                FetchRequest {
                    wait: Duration::from_secs(5),
                    ..request(1)
                },
                &cancel,
            )
            .unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].id, first[0].id);
        assert_eq!(second[0].attempts, 2, "the lost run counts");
        assert!(second[0]
            .extras()
            .and_then(|e| e.error.as_deref())
            .is_some());
        // The first worker's late ack changes nothing.
        dead.settle(&queue, vec![completed(&first[0])]).unwrap();
        let job = rescuer.get_job(first[0].id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Active);
        rescuer.settle(&queue, vec![completed(&second[0])]).unwrap();
        let job = rescuer.get_job(first[0].id).unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Completed, 2));
    }

    #[test]
    fn a_live_worker_keeps_its_lease() {
        let Some(server) = server() else { return };
        let lease = Duration::from_millis(150);
        let worker = backend(&server, lease);
        let other = backend(&server, lease);
        let queue: Arc<str> = Arc::from("renew");
        worker.declare_queue(&queue, RETENTION, true).unwrap();
        worker
            .push(&queue, &mut vec![job(&queue, 1, Priority::Normal)], true)
            .unwrap();
        let cancel = AtomicBool::new(false);
        let held = worker.fetch(&queue, request(1), &cancel).unwrap();
        // Five leases long: renewals keep it; the other process's sweeps find nothing.
        let stolen = other
            .fetch(
                &queue,
                FetchRequest {
                    wait: 5 * lease,
                    ..request(1)
                },
                &cancel,
            )
            .unwrap();
        assert!(stolen.is_empty());
        worker.settle(&queue, vec![completed(&held[0])]).unwrap();
        let job = worker.get_job(held[0].id).unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Completed, 1));
    }

    #[test]
    fn a_leased_job_the_worker_lost_track_of_is_taken_back() {
        let Some(server) = server() else { return };
        let lease = Duration::from_millis(200);
        let worker = backend(&server, lease);
        let other = backend(&server, lease);
        let queue: Arc<str> = Arc::from("orphan");
        worker.declare_queue(&queue, RETENTION, true).unwrap();
        let mut jobs = vec![
            job(&queue, 1, Priority::Normal),
            job(&queue, 2, Priority::Normal),
        ];
        worker.push(&queue, &mut jobs, true).unwrap();
        let cancel = AtomicBool::new(false);
        let taken = worker.fetch(&queue, request(2), &cancel).unwrap();
        assert_eq!(taken.len(), 2);
        // As if the reply for the first job had been lost: the worker holds (and renews)
        // only the second.
        let handle = worker.shared.queue(&queue);
        handle.held.lock().remove(&taken[0].id);
        let wait = FetchRequest {
            wait: ORPHAN_AFTER + Duration::from_secs(4),
            ..request(2)
        };
        let rescued = other.fetch(&queue, wait, &cancel).unwrap();
        assert_eq!(rescued.len(), 1);
        assert_eq!((rescued[0].id, rescued[0].attempts), (taken[0].id, 2));
        // The job it does hold is still its own.
        worker.settle(&queue, vec![completed(&taken[1])]).unwrap();
        let job = worker.get_job(taken[1].id).unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Completed, 1));
    }

    #[test]
    fn each_cron_tick_is_pushed_once() {
        let Some(server) = server() else { return };
        let one = backend(&server, Duration::from_secs(30));
        let two = backend(&server, Duration::from_secs(30));
        let queue: Arc<str> = Arc::from("cron");
        one.declare_queue(&queue, RETENTION, true).unwrap();
        let tick = 1_800_000_000.0;
        let pushed: Vec<bool> = [&one, &two, &one]
            .iter()
            .map(|b| {
                let mut jobs = vec![job(&queue, 1, Priority::Normal)];
                b.push_tick(&queue, &mut jobs, "every-second", tick)
                    .unwrap()
            })
            .collect();
        assert_eq!(pushed, [true, false, false]);
        let mut later = vec![job(&queue, 2, Priority::Normal)];
        assert!(two
            .push_tick(&queue, &mut later, "every-second", tick + 1.0)
            .unwrap());
        assert_eq!(one.counts(&queue).unwrap().waiting, 2);
    }

    #[test]
    fn released_jobs_keep_their_place_and_attempt() {
        let Some(server) = server() else { return };
        let redis = backend(&server, Duration::from_secs(30));
        let queue: Arc<str> = Arc::from("release");
        redis.declare_queue(&queue, RETENTION, true).unwrap();
        let mut jobs: Vec<Job> = (1..=3).map(|n| job(&queue, n, Priority::Normal)).collect();
        redis.push(&queue, &mut jobs, true).unwrap();
        let cancel = AtomicBool::new(false);
        let taken = redis.fetch(&queue, request(2), &cancel).unwrap();
        redis.release(&queue, &taken).unwrap();
        let again = redis.fetch(&queue, request(3), &cancel).unwrap();
        let data: Vec<&[u8]> = again.iter().map(|j| &*j.data).collect();
        assert_eq!(data, [b"1", b"2", b"3"]);
        assert!(again.iter().all(|j| j.attempts == 1));
    }
}
