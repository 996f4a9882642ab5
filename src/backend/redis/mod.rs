//! The Redis backend: jobs shared by any number of processes and hosts.
//!
//! Every move between states is one Lua script (`lua/`, one per move, `common.lua` prepended),
//! so a crash never leaves a job half moved. The files of this folder:
//!
//! - `keys.rs`: the key layout (all keys of a queue in one Cluster slot);
//! - `scripts.rs`: the script registry;
//! - `connection.rs`: redis-rs on a private tokio runtime, timeouts, cluster, TLS;
//! - `calls.rs`: queue handles, scripts run by SHA, commands and pipelines;
//! - `codec.rs`: jobs and schedules as Redis stores them;
//! - `moves.rs`: the state moves (take, settle, store, declare, give back);
//! - `combine.rs`: small pushes from many threads sharing round trips;
//! - `lookups.rs`: queue names, counts, jobs by id;
//! - `leases.rs`: leases, their renewal and the sweeper, the worker-process registry;
//! - `wakeups.rs`: how idle workers hear of new jobs;
//! - this file: the options, connecting, and the `Backend` trait.

mod calls;
mod codec;
mod combine;
mod connection;
mod keys;
mod leases;
mod lookups;
mod moves;
use moves::{next_event, stored_declaration};
mod scripts;
mod wakeups;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis::Value;

use self::codec::{decode_jobs, decode_schedule, encode_schedule, millis};
use self::connection::Redis;
use self::keys::{GlobalKeys, RedisQueue};
use self::scripts::{eval_cmd, Scripts};
use self::wakeups::Wakeups;
use super::{
    Ack, Backend, FetchRequest, QueueCounts, QueueDeclaration, Removal, ScheduleRecord, Totals,
};
use crate::error::{QueueError, Result};
use crate::job::{now, Job, JobId, JobState, Payload, Timestamp};
use crate::sync::{Condvar, Mutex, RwLock};

/// How long closing waits for the lease thread.
const KEEPER_STOP: Duration = Duration::from_millis(500);
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
    /// `push` of jobs forwarded from a spill: refused (`DuplicateJob`) if any was forwarded
    /// before, even one retention has dropped since (ids are remembered for a week).
    pub fn push_forwarded(
        &self,
        queue: &Arc<str>,
        jobs: &[Job],
        declaration: &QueueDeclaration,
    ) -> Result<()> {
        let handle = self.shared.queue(queue);
        self.shared.store(&handle, jobs, None, declaration, true)?;
        self.shared.remember_pushed(&handle.name, jobs);
        Ok(())
    }

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
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<()> {
        let handle = self.shared.queue(queue);
        if jobs.len() <= combine::COMBINED_AT_MOST {
            return handle.combiner.push(&self.shared, &handle, jobs, declare);
        }
        self.shared.store(&handle, jobs, None, &declare(), false)?;
        self.shared.remember_pushed(&handle.name, jobs);
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
        let handle = self.shared.queue(queue);
        let stored = self
            .shared
            .store(&handle, jobs, Some((schedule, tick)), &declare(), false)?;
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
        let handle = s.upgraded(queue)?;
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

    fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let s = &self.shared;
        let handle = s.upgraded(queue)?;
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
            // An offset comes only with one state (the engine checks). Lua's numbers are exact
            // up to 2^53: a page past that is empty anyway.
            let offset = offset.min(1 << 52);
            let reply: Value = s.invoke(&s.scripts.list, &handle, |cmd| {
                cmd.arg(index)
                    .arg((limit - jobs.len()).min(1 << 52))
                    .arg(offset);
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

    fn remove_job(&self, id: JobId) -> Result<Removal> {
        let s = &self.shared;
        let Some(job) = s.find_job(id)? else {
            return Ok(Removal::NotFound);
        };
        let outcome: i64 = s.invoke(&s.scripts.admin, &s.queue(&job.queue), |cmd| {
            cmd.arg("remove").arg(id.to_string());
        })?;
        Ok(match outcome {
            1 => Removal::Removed,
            0 => Removal::Running,
            _ => Removal::NotFound,
        })
    }

    fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let s = &self.shared;
        let handle = s.upgraded(queue)?;
        let _: i64 = s.invoke(&s.scripts.admin, &handle, |cmd| {
            cmd.arg("pause").arg(if paused { "1" } else { "0" });
        })?;
        Ok(())
    }

    fn clear(&self, queue: &str) -> Result<usize> {
        let s = &self.shared;
        let handle = s.upgraded(queue)?;
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
        Ok(removed)
    }

    fn delete(&self, queue: &str) -> Result<bool> {
        let s = &self.shared;
        let handle = s.upgraded(queue)?;
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

    fn is_idle(&self, queue: Option<&str>) -> Result<bool> {
        self.shared.all_idle(queue)
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

    fn beat(&self, worker: &str, info: &Payload, ttl: f64) -> Result<()> {
        let s = &self.shared;
        let mut cmd = eval_cmd(&s.scripts.beats, &s.keys.beats);
        let ttl_ms = (ttl * 1000.0).ceil().max(1.0) as u64;
        cmd.arg("beat").arg(worker).arg(ttl_ms).arg(&**info);
        let _: i64 = s.eval(&s.scripts.beats, cmd)?;
        Ok(())
    }

    fn workers(&self) -> Result<Vec<Payload>> {
        let s = &self.shared;
        let mut cmd = eval_cmd(&s.scripts.beats, &s.keys.beats);
        cmd.arg("list");
        let infos: Vec<Option<Vec<u8>>> = s.eval(&s.scripts.beats, cmd)?;
        Ok(infos.into_iter().flatten().map(Payload::from).collect())
    }

    fn leave(&self, worker: &str) -> Result<()> {
        let s = &self.shared;
        let mut cmd = eval_cmd(&s.scripts.beats, &s.keys.beats);
        cmd.arg("leave").arg(worker);
        let _: i64 = s.eval(&s.scripts.beats, cmd)?;
        Ok(())
    }

    fn close(&self) {
        self.stop_keeper();
        self.shared.leave();
        self.shared.wakeups.stop(&self.shared.redis);
    }
}

#[cfg(test)]
mod tests;
