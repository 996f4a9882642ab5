//! The Redis backend: jobs shared by any number of processes and hosts.
//!
//! Every move between states is one Lua script (`lua/`, one per move, `common.lua` prepended),
//! so a crash never leaves a job half moved. The files of this folder:
//!
//! - `keys.rs`: the key layout (all keys of a queue in one Cluster slot);
//! - `scripts.rs`: the script registry;
//! - `connection.rs`: redis-rs on a private tokio runtime, timeouts, cluster, TLS;
//! - `codec.rs`: jobs and schedules as Redis stores them;
//! - `leases.rs`: leases, their renewal and the sweeper, the worker-process registry;
//! - `wakeups.rs`: how idle workers hear of new jobs;
//! - this file: storage and look-ups (the `Backend` trait).

mod codec;
mod connection;
mod keys;
mod leases;
mod scripts;
mod wakeups;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis::{Cmd, FromRedisValue, Script, Value};

use self::codec::{
    bytes_of, decode_job, decode_jobs, decode_leased, decode_schedule, encode_body,
    encode_schedule, millis, Leased,
};
use self::connection::{Redis, COMMAND_TIMEOUT};
use self::keys::{GlobalKeys, RedisQueue};
use self::scripts::{eval_cmd, Scripts};
use self::wakeups::Wakeups;
use super::{
    Ack, Backend, FetchRequest, FinishSignal, QueueCounts, QueueDeclaration, Retention,
    ScheduleRecord, Settlement, Totals,
};
use crate::error::{QueueError, Result};
use crate::job::{now, Job, JobId, JobState, Payload, Timestamp};
use crate::sync::{Condvar, Mutex, RwLock};

/// Jobs per push script; a larger batch is several scripts in one MULTI/EXEC round trip.
const PUSH_CHUNK: usize = 1000;
/// A push whose reply never came is tried again (with the same ids: a try that landed is found,
/// never stored twice) for this long; then its outcome is reported as unknown.
const PUSH_RETRY_FOR: Duration = Duration::from_secs(10);
/// How many pushed jobs `remember_pushed` keeps track of (then it starts over).
const PUSHED_HERE_LIMIT: usize = 100_000;
/// How often a wait for a finished job or an idle queue re-reads state that other processes
/// change: the first and the last interval (this process's own settles wake it at once).
const FINISH_POLL: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(25));
/// The queue records kept here beyond this many, unused, are dropped (and made again on use).
const QUEUE_HANDLES: usize = 1024;
/// How long closing waits for the lease thread.
const KEEPER_STOP: Duration = Duration::from_millis(500);
/// Commands per pipelined round trip when many queues are read at once.
const PIPELINE_CHUNK: usize = 500;
/// The error a job whose stored record cannot be read fails with.
const UNREADABLE: &str = "BackendError: the stored job cannot be read";
/// The error of a run handed back at exit (its worker's shutdown timeout expired).
const HANDED_BACK: &str = "WorkerStopped: the worker process was stopped while this job ran \
     (its shutdown timeout expired); the run was lost";

struct Shared {
    redis: Arc<Redis>,
    prefix: String,
    keys: GlobalKeys,
    /// This process's lease token: a fresh one for every backend (and so for a forked child).
    token: String,
    lease: Duration,
    scripts: Scripts,
    queues: RwLock<HashMap<Arc<str>, Arc<RedisQueue>>>,
    /// The queue of each job recently pushed from this process (see `remember_pushed`).
    pushed_here: Mutex<HashMap<JobId, Arc<str>>>,
    finished: FinishSignal,
    wakeups: Arc<Wakeups>,
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
            return Err(QueueError::config(format!(
                "the redis prefix must be non-empty and without braces, got {:?}",
                options.prefix
            )));
        }
        let redis = Arc::new(Redis::connect(&options.url)?);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let keys = GlobalKeys::new(&options.prefix, &token);
        let wakeups = Arc::new(Wakeups::new(redis.is_cluster(), keys.own_wake.clone()));
        let shared = Arc::new(Shared {
            scripts: Scripts::new(redis.supports_script_flags()),
            redis,
            prefix: options.prefix.clone(),
            keys,
            token,
            lease: options.lease.max(Duration::from_millis(10)),
            queues: RwLock::new(HashMap::new()),
            pushed_here: Mutex::new(HashMap::new()),
            finished: FinishSignal::default(),
            wakeups,
            stopping: Mutex::new(false),
            stop: Condvar::new(),
        });
        shared.load_scripts()?;
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

    /// Stops the lease thread, waiting `KEEPER_STOP` at most: one busy with a Redis that does
    /// not answer finishes by itself (it renews nothing more).
    fn stop_keeper(&self) {
        *self.shared.stopping.lock() = true;
        self.shared.stop.notify_all();
        if let Some(handle) = self.keeper.lock().take() {
            let deadline = Instant::now() + KEEPER_STOP;
            let mut stopping = self.shared.stopping.lock();
            while !handle.is_finished() && Instant::now() < deadline {
                // Woken by the thread as it returns (`keep_leases`), or at the deadline.
                stopping = self
                    .shared
                    .stop
                    .wait_until(stopping, deadline.min(Instant::now() + KEEPER_STOP / 10))
                    .0;
            }
            drop(stopping);
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.stop_keeper();
        self.shared.wakeups.stop(&self.shared.redis);
    }
}

impl Shared {
    fn queue(&self, name: &str) -> Arc<RedisQueue> {
        if let Some(queue) = self.queues.read().get(name) {
            return queue.clone();
        }
        let queue = Arc::new(RedisQueue::new(&self.prefix, name));
        let mut queues = self.queues.write();
        if queues.len() >= QUEUE_HANDLES {
            // Bounded: records nobody uses now (no held jobs, no waiters) are dropped; they
            // hold nothing that cannot be made again.
            queues.retain(|_, q| {
                Arc::strong_count(q) > 1
                    || !q.held.lock().is_empty()
                    || q.unsure.load(Ordering::Acquire)
                    || q.registered.load(Ordering::Acquire)
            });
        }
        queues.entry(queue.name.clone()).or_insert(queue).clone()
    }

    pub(super) fn load_scripts(&self) -> Result<()> {
        let mut conn = self.redis.conn();
        let scripts = self.scripts.all();
        self.redis.run(async move {
            for script in scripts {
                script.load_async(&mut conn).await?;
            }
            Ok(())
        })
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

    /// Commands in pipelined round trips (`script` loaded first when they run it).
    fn pipelined(&self, script: Option<&Script>, cmds: Vec<Cmd>) -> Result<Vec<Value>> {
        let mut replies = Vec::with_capacity(cmds.len());
        if cmds.is_empty() {
            return Ok(replies);
        }
        if let Some(script) = script {
            let mut conn = self.redis.conn();
            self.redis
                .run(async move { script.load_async(&mut conn).await })?;
        }
        for chunk in cmds.chunks(PIPELINE_CHUNK) {
            let chunk_replies: Vec<Value> = if self.redis.is_cluster() {
                // A cluster pipeline cannot span slots: the commands go out at once, each to
                // its node, and are awaited together.
                let conn = self.redis.conn();
                let script = script.cloned();
                self.redis.run(async move {
                    let mut running = tokio::task::JoinSet::new();
                    for (index, cmd) in chunk.iter().cloned().enumerate() {
                        let mut conn = conn.clone();
                        let script = script.clone();
                        running.spawn(async move {
                            let reply = match cmd.query_async::<Value>(&mut conn).await {
                                // A node that lost the script loads it again.
                                Err(e)
                                    if e.kind()
                                        == redis::ErrorKind::Server(
                                            redis::ServerErrorKind::NoScript,
                                        ) =>
                                {
                                    match &script {
                                        Some(script) => match script.load_async(&mut conn).await {
                                            Ok(_) => cmd.query_async(&mut conn).await,
                                            Err(e) => Err(e),
                                        },
                                        None => Err(e),
                                    }
                                }
                                other => other,
                            };
                            (index, reply)
                        });
                    }
                    let mut replies = vec![Value::Nil; chunk.len()];
                    while let Some(done) = running.join_next().await {
                        let (index, reply) = done.map_err(|e| {
                            redis::RedisError::from((
                                redis::ErrorKind::Client,
                                "a cluster command task failed",
                                e.to_string(),
                            ))
                        })?;
                        replies[index] = reply?;
                    }
                    Ok(replies)
                })?
            } else {
                let mut pipe = redis::pipe();
                for cmd in chunk {
                    pipe.add_command(cmd.clone());
                }
                let mut conn = self.redis.conn();
                self.redis
                    .run(async move { pipe.query_async(&mut conn).await })?
            };
            replies.extend(chunk_replies);
        }
        Ok(replies)
    }

    fn queue_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.command(redis::Cmd::smembers(&self.keys.queues))?;
        names.sort();
        Ok(names)
    }

    /// Counts and the retried total of queues, in pipelined round trips.
    fn counts_of(&self, names: &[String]) -> Result<Vec<(QueueCounts, u64)>> {
        let cmds = names
            .iter()
            .map(|name| eval_cmd(&self.scripts.counts, &self.queue(name).keys))
            .collect();
        self.pipelined(Some(&self.scripts.counts), cmds)?
            .iter()
            .map(|reply| {
                let c: Vec<u64> = FromRedisValue::from_redis_value(reply.clone()).map_err(|e| {
                    QueueError::Backend(format!("redis: unexpected counts reply: {e}"))
                })?;
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
            })
            .collect()
    }

    /// The leased jobs of one fetch, and when the next delayed job is due (ms, or -1).
    fn take(&self, queue: &RedisQueue, request: FetchRequest) -> Result<(i64, Vec<Job>)> {
        let at = now();
        let reply: Result<Value> = self.invoke(&self.scripts.fetch, queue, |cmd| {
            cmd.arg(millis(at))
                .arg(at.to_string())
                .arg(request.max.max(1))
                .arg(request.share.max(1))
                .arg(&self.token)
                .arg(self.lease.as_millis() as u64)
                .arg(if request.start_all { "1" } else { "0" });
        });
        let reply = reply.inspect_err(|error| {
            if matches!(error, QueueError::Indeterminate(_)) {
                // Jobs may have been leased with no reply: renew (and so take them back).
                queue.unsure.store(true, Ordering::Release);
            }
        })?;
        let Value::Array(parts) = reply else {
            return Err(QueueError::Backend("redis: unexpected fetch reply".into()));
        };
        let next_due = match parts.first() {
            Some(Value::Int(due)) => *due,
            _ => -1,
        };
        let leased = match parts.get(1) {
            Some(list) => decode_leased(&queue.name, list, at),
            None => Vec::new(),
        };
        let mut jobs = Vec::with_capacity(leased.len());
        let mut unreadable = Vec::new();
        for one in leased {
            match one {
                Leased::Job(job) => jobs.push(job),
                Leased::Unreadable { id, run, error } => unreadable.push((id, run, error)),
            }
        }
        if !unreadable.is_empty() {
            self.fail_unreadable(queue, &unreadable);
        }
        Ok((next_due, jobs))
    }

    /// Fails, on their own, leased jobs whose record cannot be read: retrying cannot help, and
    /// they must not hold back the jobs fetched with them.
    fn fail_unreadable(&self, queue: &RedisQueue, jobs: &[(String, u32, String)]) {
        let at = now();
        let failed: Result<i64> = self.invoke(&self.scripts.settle, queue, |cmd| {
            cmd.arg(millis(at)).arg(&self.token).arg(jobs.len());
            for (id, run, error) in jobs {
                cmd.arg(id)
                    .arg(run)
                    .arg("f")
                    .arg(at.to_string())
                    .arg(format!("{UNREADABLE}: {error}"));
                optional_text(cmd, None);
            }
        });
        for (id, _, error) in jobs {
            log::error!(
                target: "rnode_queue",
                "queue {:?}: job {id} cannot be read ({error}); it is failed{}",
                &*queue.name,
                match &failed {
                    Ok(_) => String::new(),
                    Err(e) => format!(
                        " once its lease expires (recording the failure failed too: {e})"
                    ),
                }
            );
        }
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

    /// Whether the queue (or every queue) has no waiting, delayed or active job.
    fn all_idle(&self, queue: Option<&str>) -> Result<bool> {
        let names = match queue {
            Some(name) => vec![name.to_string()],
            None => self.queue_names()?,
        };
        Ok(self
            .counts_of(&names)?
            .iter()
            .all(|(counts, _)| counts.waiting + counts.delayed + counts.active == 0))
    }

    /// Finds a job in whichever queue holds it: at once for one pushed here, otherwise by
    /// asking every queue in pipelined round trips.
    fn find_job(&self, id: JobId) -> Result<Option<Job>> {
        let pushed_to = self.pushed_here.lock().get(&id).cloned();
        if let Some(name) = &pushed_to {
            if let Some(job) = self.read_job(&self.queue(name), id)? {
                return Ok(Some(job));
            }
        }
        let names: Vec<String> = self
            .queue_names()?
            .into_iter()
            .filter(|name| pushed_to.as_deref() != Some(name.as_str()))
            .collect();
        let cmds = names
            .iter()
            .map(|name| redis::Cmd::exists(self.queue(name).job_key(id)))
            .collect();
        let found = self.pipelined(None, cmds)?;
        for (name, exists) in names.iter().zip(found) {
            if matches!(exists, Value::Int(1)) {
                if let Some(job) = self.read_job(&self.queue(name), id)? {
                    return Ok(Some(job));
                }
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

    /// Stores jobs; with a cron tick, only if that tick was not claimed yet. A try whose reply
    /// never came (a timeout, a lost connection) is made again with the same ids: if the first
    /// landed, the second finds its jobs stored. Returns whether they were stored (false: the
    /// tick was claimed before).
    fn store(
        &self,
        queue: &RedisQueue,
        jobs: &[Job],
        tick: Option<(&str, Timestamp)>,
        declaration: &QueueDeclaration,
    ) -> Result<bool> {
        // A cron tick's push is tried again by the engine until the next tick (the timer thread
        // must not wait long here).
        let retry_for = if tick.is_some() {
            Duration::from_secs(1)
        } else {
            PUSH_RETRY_FOR
        };
        let give_up = Instant::now() + retry_for;
        let mut unanswered = 0;
        loop {
            let outcome = match self.store_once(queue, jobs, tick, declaration) {
                Ok(1) => Ok(true),
                Ok(2) => {
                    // The queue was created again (deleted meanwhile): its name is listed after
                    // its record, as `declare` does.
                    let _: i64 = self.command(redis::Cmd::sadd(&self.keys.queues, &*queue.name))?;
                    Ok(true)
                }
                Ok(0) => Ok(false),
                // The ids are stored: by an earlier try of this push whose reply was lost.
                Ok(-2) if unanswered > 0 => Ok(true),
                Ok(-2) => Err(QueueError::DuplicateJob(format!(
                    "queue {:?} already holds a job with one of these ids: nothing was pushed",
                    &*queue.name
                ))),
                Ok(other) => Err(QueueError::Backend(format!(
                    "redis: unexpected push reply {other}"
                ))),
                Err(QueueError::Indeterminate(message)) if Instant::now() < give_up => {
                    unanswered += 1;
                    log::warn!(
                        target: "rnode_queue",
                        "a push of {} job(s) to queue {:?} got no answer ({message}); trying \
                         again with the same ids",
                        jobs.len(),
                        &*queue.name
                    );
                    thread::sleep(
                        Duration::from_millis(100)
                            .min(give_up.saturating_duration_since(Instant::now())),
                    );
                    continue;
                }
                Err(error) if unanswered > 0 && error.is_backend() => {
                    Err(QueueError::PushOutcomeUnknown {
                        message: format!(
                            "the push of {} job(s) to queue {:?} may or may not have been \
                             stored: Redis did not answer ({error}); get_job tells, for each \
                             of the ids this error carries",
                            jobs.len(),
                            &*queue.name
                        ),
                        ids: jobs.iter().map(|job| job.id).collect(),
                    })
                }
                Err(error) => Err(error),
            };
            return outcome;
        }
    }

    /// One try of `store`: the push script's reply.
    fn store_once(
        &self,
        queue: &RedisQueue,
        jobs: &[Job],
        tick: Option<(&str, Timestamp)>,
        declaration: &QueueDeclaration,
    ) -> Result<i64> {
        let retention = declaration.retention;
        let add_args = |cmd: &mut Cmd, chunk: &[Job], tick: Option<(&str, Timestamp)>| {
            cmd.arg(chunk.len());
            match tick {
                Some((schedule, at)) => cmd.arg(schedule).arg(at.to_string()),
                None => cmd.arg("").arg("0"),
            };
            cmd.arg((retention.ttl * 1000.0).round() as i64)
                .arg(retention.keep_completed)
                .arg(retention.keep_failed)
                .arg(&*declaration.settings);
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
        // Several chunks in one MULTI/EXEC of EVALSHAs, the script loaded first. A transaction
        // does not roll back a chunk that failed (Redis out of memory part way): the chunks that
        // were stored are removed again, so that the push is all or none.
        let mut conn = self.redis.conn();
        let script = &self.scripts.push;
        self.redis
            .run(async { script.load_async(&mut conn).await })?;
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        let chunks: Vec<&[Job]> = jobs.chunks(PUSH_CHUNK).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let mut cmd = eval_cmd(script, &queue.keys);
            add_args(&mut cmd, chunk, if n == 0 { tick } else { None });
            pipe.add_command(cmd);
        }
        let replies: Vec<Value> = self
            .redis
            .run(async move { pipe.query_async(&mut conn).await })?;
        // The first chunk may have created the queue (2); the others then stored (1) into it.
        let created = matches!(replies.first(), Some(Value::Int(2)));
        let codes: Vec<Option<i64>> = replies
            .iter()
            .map(|reply| match reply {
                Value::Int(2) => Some(1),
                Value::Int(code) => Some(*code),
                _ => None,
            })
            .collect();
        if codes.iter().all(|code| *code == codes[0]) {
            if let Some(code) = codes.first().copied().flatten() {
                return Ok(if created && code == 1 { 2 } else { code });
            }
        }
        // Mixed: undo what was stored, then report the failure.
        let stored: Vec<String> = chunks
            .iter()
            .zip(&codes)
            .filter(|(_, code)| **code == Some(1))
            .flat_map(|(chunk, _)| chunk.iter().map(|job| job.id.to_string()))
            .collect();
        let mut failure = replies
            .iter()
            .find(|reply| !matches!(reply, Value::Int(_)))
            .map(|reply| format!("{reply:?}"))
            .unwrap_or_else(|| "chunks stored differently".into());
        if failure.contains("OOM") {
            failure = "redis is out of memory (maxmemory reached with a noeviction policy)".into();
        }
        if stored.is_empty() {
            return Err(QueueError::Backend(format!(
                "redis refused a push of {} jobs: {failure}",
                jobs.len()
            )));
        }
        let undone: Result<i64> = self.invoke(&self.scripts.admin, queue, |cmd| {
            cmd.arg("unpush");
            for id in &stored {
                cmd.arg(id);
            }
        });
        match undone {
            Ok(_) => Err(QueueError::Backend(format!(
                "redis refused part of a push of {} jobs ({failure}); nothing was stored",
                jobs.len()
            ))),
            Err(error) => Err(QueueError::PushOutcomeUnknown {
                message: format!(
                    "redis refused part of a push of {} jobs ({failure}), and the part stored \
                     could not be removed ({error}): get_job tells which of the ids this error \
                     carries are stored",
                    jobs.len()
                ),
                ids: jobs.iter().map(|job| job.id).collect(),
            }),
        }
    }

    /// The queue's record first, then its name in the list: a `delete` (which unlists first,
    /// then removes the record) racing with this either removes the record after both steps,
    /// so the next push declares it again, or is over before the name is listed. The other
    /// order could leave a record, and jobs, under a name nobody lists.
    fn declare(
        &self,
        queue: &RedisQueue,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> Result<QueueDeclaration> {
        let retention = declaration.retention;
        let ttl_ms = (retention.ttl * 1000.0).round() as i64;
        let stored: Value = self.invoke(&self.scripts.admin, queue, |cmd| {
            cmd.arg("declare")
                .arg(if replace { "1" } else { "0" })
                .arg(ttl_ms)
                .arg(retention.keep_completed)
                .arg(retention.keep_failed)
                .arg(&*declaration.settings);
        })?;
        let created = matches!(
            &stored,
            Value::Array(fields) if matches!(fields.get(4), Some(Value::Int(1)))
        );
        let listed: Result<i64> = self.command(redis::Cmd::sadd(&self.keys.queues, &*queue.name));
        // An existing queue is listed already (this only heals a listing that failed before):
        // a full Redis, which refuses the write, must not stop a worker that starts to drain it.
        if created {
            listed?;
        }
        Ok(stored_declaration(&stored).unwrap_or_else(|| declaration.clone()))
    }
}

/// `{ttl_ms, keep_completed, keep_failed, settings}` as the admin script returns it; `None` for
/// a queue with no record.
fn stored_declaration(reply: &Value) -> Option<QueueDeclaration> {
    let Value::Array(fields) = reply else {
        return None;
    };
    let text = |i: usize| fields.get(i).and_then(bytes_of);
    let number = |i: usize| -> Option<f64> { std::str::from_utf8(text(i)?).ok()?.parse().ok() };
    Some(QueueDeclaration {
        retention: Retention {
            ttl: number(0)? / 1000.0,
            keep_completed: number(1)? as usize,
            keep_failed: number(2)? as usize,
        },
        settings: Payload::from(text(3).unwrap_or_default()),
    })
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

    fn declare_queue(
        &self,
        queue: &Arc<str>,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> Result<QueueDeclaration> {
        let s = &self.shared;
        s.declare(&s.queue(queue), declaration, replace)
    }

    fn stored_declarations(&self, queues: &[Arc<str>]) -> Result<Vec<Option<QueueDeclaration>>> {
        let s = &self.shared;
        let cmds = queues
            .iter()
            .map(|name| {
                let mut cmd = eval_cmd(&s.scripts.admin, &s.queue(name).keys);
                cmd.arg("settings");
                cmd
            })
            .collect();
        Ok(s.pipelined(Some(&s.scripts.admin), cmds)?
            .iter()
            .map(stored_declaration)
            .collect())
    }

    fn push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        may_block: bool,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        if !may_block {
            return Ok(false);
        }
        let handle = self.shared.queue(queue);
        self.shared.store(&handle, jobs, None, &declare())?;
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
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        let handle = self.shared.queue(queue);
        let stored = self
            .shared
            .store(&handle, jobs, Some((schedule, tick)), &declare())?;
        jobs.clear();
        Ok(stored)
    }

    fn fetch(&self, queue: &str, request: FetchRequest, cancel: &AtomicBool) -> Result<Vec<Job>> {
        let s = &self.shared;
        let handle = s.queue(queue);
        s.register(&handle)?;
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
            if cancel.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
            s.wakeups.wait(&s.redis, &s.token, &handle, seen, until)?;
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
                Err(error) if error.is_backend() && Instant::now() < give_up => {
                    log::debug!(
                        target: "rnode_queue",
                        "recording {} result(s) of queue {queue:?} failed ({error}); retrying",
                        acks.len()
                    );
                    thread::sleep(Duration::from_millis(200));
                }
                other => break other,
            }
        };
        if result.is_err() {
            // Their leases may still hold them: renewal takes them back once due.
            handle.unsure.store(true, Ordering::Release);
        }
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
        let runs: Vec<(JobId, u32)> = jobs.iter().map(|job| (job.id, job.attempts)).collect();
        self.shared
            .give_back(queue, &runs, "unstarted", "")
            .map(|_| ())
    }

    fn mark_started(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let _: i64 = s.invoke(&s.scripts.started, &s.queue(queue), |cmd| {
            cmd.arg(&s.token).arg(runs.len());
            for (id, run) in runs {
                cmd.arg(id.to_string()).arg(run);
            }
        })?;
        Ok(())
    }

    fn note_started(&self, queue: &str, (id, run): (JobId, u32)) {
        let s = &self.shared;
        let mut cmd = eval_cmd(&s.scripts.started, &s.queue(queue).keys);
        cmd.arg(&s.token).arg(1).arg(id.to_string()).arg(run);
        if !s.redis.note(&cmd) {
            s.redis.send_and_forget(cmd);
        }
    }

    fn hand_back(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<Vec<JobId>> {
        self.shared.give_back(queue, runs, "abandoned", HANDED_BACK)
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
        s.wakeups
            .wake(&s.redis, &s.token, &handle, &s.scripts.admin);
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
            jobs.extend(decode_jobs(&handle.name, &reply));
        }
        jobs.truncate(limit);
        Ok(jobs)
    }

    fn retry_failed(&self, id: JobId) -> Result<bool> {
        let s = &self.shared;
        let Some(job) = s.find_job(id)? else {
            return Ok(false);
        };
        let outcome: i64 = s.invoke(&s.scripts.admin, &s.queue(&job.queue), |cmd| {
            cmd.arg("retry").arg(id.to_string());
        })?;
        Ok(outcome == 1)
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
        let listed: i64 = s.command(redis::Cmd::srem(&s.keys.queues, queue))?;
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
        handle.heard();
        s.finished.notify();
        Ok(listed > 0 || removed > 0)
    }

    fn counts(&self, queue: &str) -> Result<QueueCounts> {
        let counts = self.shared.counts_of(&[queue.to_string()])?;
        Ok(counts.first().map(|(c, _)| *c).unwrap_or_default())
    }

    fn counts_of(&self, queues: &[String]) -> Result<Vec<Option<QueueCounts>>> {
        Ok(self
            .shared
            .counts_of(queues)?
            .into_iter()
            .map(|(counts, _)| Some(counts))
            .collect())
    }

    fn queue_names(&self) -> Result<Vec<String>> {
        self.shared.queue_names()
    }

    fn totals(&self) -> Result<Totals> {
        let s = &self.shared;
        let mut totals = Totals::default();
        for (counts, retried) in s.counts_of(&s.queue_names()?)? {
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
        let _: i64 = s.command(redis::Cmd::hset(&s.keys.schedules, &*schedule.id, text))?;
        Ok(())
    }

    fn remove_schedule(&self, id: &str) -> Result<bool> {
        let s = &self.shared;
        let stored: Option<Vec<u8>> = s.command(redis::Cmd::hget(&s.keys.schedules, id))?;
        let removed: i64 = s.command(redis::Cmd::hdel(&s.keys.schedules, id))?;
        // Its queue forgets its last tick: nothing of a removed schedule stays behind.
        if let Some(record) = stored.and_then(|text| decode_schedule(&text).ok()) {
            let _: i64 = s.invoke(&s.scripts.admin, &s.queue(&record.queue), |cmd| {
                cmd.arg("untick").arg(id);
            })?;
        }
        Ok(removed > 0)
    }

    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let s = &self.shared;
        let stored: HashMap<String, Vec<u8>> = s.command(redis::Cmd::hgetall(&s.keys.schedules))?;
        // An entry this version cannot read (written by another one) must not stop every
        // process from starting: it is skipped, and stays for `unschedule` to remove.
        Ok(stored
            .values()
            .filter_map(|text| decode_schedule(text).ok())
            .collect())
    }

    fn has_schedule(&self, id: &str) -> Result<bool> {
        let s = &self.shared;
        s.command(redis::Cmd::hexists(&s.keys.schedules, id))
    }

    fn close(&self) {
        self.stop_keeper();
        self.shared.leave();
        self.shared.wakeups.stop(&self.shared.redis);
    }
}

impl Shared {
    /// Hands back leased runs (`release.lua`); they leave this process's held jobs. Returns
    /// the ids handed back.
    fn give_back(
        &self,
        queue: &str,
        runs: &[(JobId, u32)],
        kind: &str,
        error: &str,
    ) -> Result<Vec<JobId>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let handle = self.queue(queue);
        let given: Result<Vec<String>> = self.invoke(&self.scripts.release, &handle, |cmd| {
            cmd.arg(&self.token)
                .arg(kind)
                .arg(now().to_string())
                .arg(error)
                .arg(runs.len());
            for (id, run) in runs {
                cmd.arg(id.to_string()).arg(run);
            }
        });
        let mut held = handle.held.lock();
        for (id, run) in runs {
            if held.get(id) == Some(run) {
                held.remove(id);
            }
        }
        if given.is_err() {
            handle.unsure.store(true, Ordering::Release);
        }
        Ok(given?.iter().filter_map(|id| JobId::parse(id)).collect())
    }
}

#[cfg(test)]
mod tests {
    //! Against a private `redis-server` on a free port (skipped with a note when none can be
    //! started, a failure under `RNQ_REQUIRE_REDIS=1`).
    use super::leases::ORPHAN_AFTER;
    use super::*;
    use crate::job::{JobOptions, Priority};
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

    fn declaration() -> QueueDeclaration {
        QueueDeclaration {
            retention: RETENTION,
            settings: Payload::from(&b"{}"[..]),
        }
    }

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
            start_all: false,
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
        redis.declare_queue(&queue, &declaration(), true).unwrap();
        let mut jobs = vec![
            job(&queue, 1, Priority::Low),
            job(&queue, 2, Priority::Critical),
            job(&queue, 3, Priority::Normal),
            job(&queue, 4, Priority::Critical),
        ];
        redis.push(&queue, &mut jobs, true, &declaration).unwrap();
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

    /// A raw command on the test's server.
    fn raw<T: FromRedisValue>(redis: &RedisBackend, cmd: Cmd) -> T {
        redis.shared.command(cmd).expect("redis command")
    }

    #[test]
    fn an_unreadable_job_fails_on_its_own_and_the_others_run() {
        let Some(server) = server() else { return };
        let redis = backend(&server, Duration::from_secs(30));
        let queue: Arc<str> = Arc::from("corrupt");
        redis.declare_queue(&queue, &declaration(), true).unwrap();
        let mut jobs: Vec<Job> = (1..=3).map(|n| job(&queue, n, Priority::Normal)).collect();
        let bad = jobs[1].id;
        redis.push(&queue, &mut jobs, true, &declaration).unwrap();
        let key = redis.shared.queue(&queue).job_key(bad);
        let _: i64 = raw(&redis, redis::Cmd::hset(&key, "b", "not a packed body"));
        let taken = redis
            .fetch(&queue, request(10), &AtomicBool::new(false))
            .unwrap();
        // The healthy jobs are handed out (before: the whole fetch failed, and every job of
        // it was taken back by the lease rule, again and again).
        let data: Vec<&[u8]> = taken.iter().map(|j| &*j.data).collect();
        assert_eq!(data, [b"1", b"3"]);
        let state: String = raw(&redis, redis::Cmd::hget(&key, "s"));
        let error: String = raw(&redis, redis::Cmd::hget(&key, "e"));
        assert_eq!(state, "failed");
        assert!(
            error.contains("cannot be read") && error.contains("body"),
            "{error}"
        );
        assert_eq!(redis.counts(&queue).unwrap().failed, 1);
        redis
            .settle(&queue, taken.iter().map(completed).collect())
            .unwrap();
        assert_eq!(redis.counts(&queue).unwrap().completed, 2);
    }

    #[test]
    fn a_push_to_a_deleted_queue_creates_and_lists_it_again() {
        let Some(server) = server() else { return };
        let redis = backend(&server, Duration::from_secs(30));
        let queue: Arc<str> = Arc::from("reborn");
        redis.declare_queue(&queue, &declaration(), true).unwrap();
        redis.delete(&queue).unwrap();
        assert!(redis.queue_names().unwrap().is_empty());
        let mut jobs = vec![job(&queue, 1, Priority::Normal)];
        redis.push(&queue, &mut jobs, true, &declaration).unwrap();
        assert_eq!(redis.queue_names().unwrap(), ["reborn"]);
        let stored = redis
            .stored_declarations(std::slice::from_ref(&queue))
            .unwrap();
        assert_eq!(
            stored,
            [Some(declaration())],
            "created with the settings given"
        );
        assert_eq!(redis.counts(&queue).unwrap().waiting, 1);
    }

    #[test]
    fn a_job_already_stored_is_never_overwritten() {
        let Some(server) = server() else { return };
        let redis = backend(&server, Duration::from_secs(30));
        let queue: Arc<str> = Arc::from("dup");
        redis.declare_queue(&queue, &declaration(), true).unwrap();
        let first = job(&queue, 1, Priority::Normal);
        let mut clash = first.clone();
        clash.data = Arc::from(&b"2"[..]);
        redis
            .push(&queue, &mut vec![first.clone()], true, &declaration)
            .unwrap();
        let pushed = redis.push(&queue, &mut vec![clash], true, &declaration);
        assert!(
            matches!(pushed, Err(QueueError::DuplicateJob(_))),
            "{pushed:?}"
        );
        assert_eq!(&*redis.get_job(first.id).unwrap().unwrap().data, b"1");
        assert_eq!(redis.counts(&queue).unwrap().waiting, 1);
    }

    #[test]
    fn only_started_runs_count_when_their_worker_dies() {
        let Some(server) = server() else { return };
        let lease = Duration::from_millis(200);
        let dead = backend(&server, lease);
        let queue: Arc<str> = Arc::from("unstarted");
        dead.declare_queue(&queue, &declaration(), true).unwrap();
        let mut jobs: Vec<Job> = (1..=4).map(|n| job(&queue, n, Priority::Normal)).collect();
        dead.push(&queue, &mut jobs, true, &declaration).unwrap();
        let taken = dead
            .fetch(&queue, request(4), &AtomicBool::new(false))
            .unwrap();
        assert_eq!(taken.len(), 4);
        // The worker started the first two jobs of its batch.
        let started: Vec<(JobId, u32)> = taken[..2].iter().map(|j| (j.id, j.attempts)).collect();
        dead.mark_started(&queue, &started).unwrap();
        dead.close(); // stops renewing, as if it died
        let rescuer = backend(&server, lease);
        let wait = FetchRequest {
            wait: Duration::from_secs(5),
            ..request(4)
        };
        let mut again = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while again.len() < 4 && Instant::now() < deadline {
            again.extend(
                rescuer
                    .fetch(&queue, wait, &AtomicBool::new(false))
                    .unwrap(),
            );
        }
        let runs: HashMap<JobId, (u32, Option<String>)> = again
            .iter()
            .map(|j| (j.id, (j.attempts, j.extras().and_then(|e| e.error.clone()))))
            .collect();
        for (n, job) in taken.iter().enumerate() {
            let (attempt, error) = &runs[&job.id];
            if n < 2 {
                assert_eq!(*attempt, 2, "job {n} started: its lost run counts");
                assert!(
                    error.as_deref().unwrap_or("").contains("run was lost"),
                    "{error:?}"
                );
            } else {
                assert_eq!(
                    *attempt, 1,
                    "job {n} never started: its attempt is not counted"
                );
                assert_eq!(*error, None);
            }
        }
    }

    #[test]
    fn an_engine_forgets_queues_deleted_elsewhere_and_takes_stored_settings() {
        use crate::engine::{Engine, EngineOptions, QueueConfig};
        let Some(server) = server() else { return };
        let open = || {
            let backend = backend(&server, Duration::from_secs(30));
            Engine::new(Arc::new(backend), EngineOptions::default()).unwrap()
        };
        let (here, elsewhere) = (open(), open());
        let spec = |data: &str| {
            (
                Payload::from(data.as_bytes().to_vec()),
                JobOptions::default(),
            )
        };
        for n in 0..3 {
            here.push(&format!("gone-{n}"), &[spec("1")], true).unwrap();
        }
        let settings = QueueConfig {
            timeout: 20.0,
            max_retries: 0,
            ..QueueConfig::default()
        };
        elsewhere.create_queue("kept", settings.clone()).unwrap();
        here.push("kept", &[spec("1")], true).unwrap();
        assert_eq!(here.queue_config("kept").unwrap().timeout, 20.0);
        for n in 0..3 {
            elsewhere.delete_queue(&format!("gone-{n}")).unwrap();
        }
        elsewhere
            .create_queue(
                "kept",
                QueueConfig {
                    timeout: 30.0,
                    ..settings
                },
            )
            .unwrap();
        // Within a reload (5 s): the deleted queues are forgotten here, the changed settings
        // taken.
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let names: Vec<String> = here
                .queue_configs()
                .unwrap()
                .into_iter()
                .map(|(name, _, _)| name)
                .collect();
            let timeout = here.queue_config("kept").unwrap().timeout;
            if names == ["kept"] && timeout == 30.0 {
                break;
            }
            assert!(Instant::now() < deadline, "{names:?} {timeout}");
            thread::sleep(Duration::from_millis(100));
        }
        here.close(Duration::from_secs(1));
        elsewhere.close(Duration::from_secs(1));
    }

    #[test]
    fn a_lost_lease_returns_the_job_and_the_old_ack_is_ignored() {
        let Some(server) = server() else { return };
        let lease = Duration::from_millis(200);
        let dead = backend(&server, lease);
        let queue: Arc<str> = Arc::from("lease");
        dead.declare_queue(&queue, &declaration(), true).unwrap();
        dead.push(
            &queue,
            &mut vec![job(&queue, 1, Priority::Normal)],
            true,
            &declaration,
        )
        .unwrap();
        let cancel = AtomicBool::new(false);
        let first = dead.fetch(&queue, request(1), &cancel).unwrap();
        dead.mark_started(&queue, &[(first[0].id, first[0].attempts)])
            .unwrap();
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
        worker.declare_queue(&queue, &declaration(), true).unwrap();
        worker
            .push(
                &queue,
                &mut vec![job(&queue, 1, Priority::Normal)],
                true,
                &declaration,
            )
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
        worker.declare_queue(&queue, &declaration(), true).unwrap();
        let mut jobs = vec![
            job(&queue, 1, Priority::Normal),
            job(&queue, 2, Priority::Normal),
        ];
        worker.push(&queue, &mut jobs, true, &declaration).unwrap();
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
        // Its run never started (its reply was lost): taken back uncounted.
        assert_eq!((rescued[0].id, rescued[0].attempts), (taken[0].id, 1));
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
        one.declare_queue(&queue, &declaration(), true).unwrap();
        let tick = 1_800_000_000.0;
        let pushed: Vec<bool> = [&one, &two, &one]
            .iter()
            .map(|b| {
                let mut jobs = vec![job(&queue, 1, Priority::Normal)];
                b.push_tick(&queue, &mut jobs, "every-second", tick, &declaration)
                    .unwrap()
            })
            .collect();
        assert_eq!(pushed, [true, false, false]);
        let mut later = vec![job(&queue, 2, Priority::Normal)];
        assert!(two
            .push_tick(&queue, &mut later, "every-second", tick + 1.0, &declaration)
            .unwrap());
        assert_eq!(one.counts(&queue).unwrap().waiting, 2);
    }

    #[test]
    fn released_jobs_keep_their_place_and_attempt() {
        let Some(server) = server() else { return };
        let redis = backend(&server, Duration::from_secs(30));
        let queue: Arc<str> = Arc::from("release");
        redis.declare_queue(&queue, &declaration(), true).unwrap();
        let mut jobs: Vec<Job> = (1..=3).map(|n| job(&queue, n, Priority::Normal)).collect();
        redis.push(&queue, &mut jobs, true, &declaration).unwrap();
        let cancel = AtomicBool::new(false);
        let taken = redis.fetch(&queue, request(2), &cancel).unwrap();
        redis.release(&queue, &taken).unwrap();
        let again = redis.fetch(&queue, request(3), &cancel).unwrap();
        let data: Vec<&[u8]> = again.iter().map(|j| &*j.data).collect();
        assert_eq!(data, [b"1", b"2", b"3"]);
        assert!(again.iter().all(|j| j.attempts == 1));
    }
}
