//! The state moves, each one script: take, settle, store (push), declare, give back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Cmd, Value};

use super::keys::RedisQueue;

use crate::backend::{Ack, FetchRequest, QueueDeclaration, Retention};
use crate::error::{QueueError, Result};
use crate::job::{now, Job, JobId, Payload, Timestamp};
use std::thread;

use super::codec::{bytes_of, decode_leased, encode_body, millis, Leased};
use super::scripts::eval_cmd;
use super::Shared;
use crate::backend::Settlement;
use crate::job::JobState;

/// Jobs per push script; a larger batch is several scripts in one MULTI/EXEC round trip.
const PUSH_CHUNK: usize = 1000;
/// A push whose reply never came is tried again (with the same ids: a try that landed is found,
/// never stored twice) for this long; then its outcome is reported as unknown.
const PUSH_RETRY_FOR: Duration = Duration::from_secs(10);
/// How many pushed jobs `remember_pushed` keeps track of (then it starts over).
const PUSHED_HERE_LIMIT: usize = 100_000;
/// The error a job whose stored record cannot be read fails with.
const UNREADABLE: &str = "BackendError: the stored job cannot be read";

impl Shared {
    /// The leased jobs of one fetch, and when the next delayed job is due (ms, or -1).
    pub(super) fn take(
        &self,
        queue: &RedisQueue,
        request: FetchRequest,
    ) -> Result<(i64, Vec<Job>)> {
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
        let leased = match &parts[..] {
            [_, ids, bodies, extra] => decode_leased(&queue.name, ids, bodies, extra, at),
            _ => return Err(QueueError::Backend("redis: unexpected fetch reply".into())),
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
    pub(super) fn fail_unreadable(&self, queue: &RedisQueue, jobs: &[(String, u32, String)]) {
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

    pub(super) fn settle_acks(&self, queue: &RedisQueue, acks: &[Ack]) -> Result<i64> {
        let at = now();
        self.invoke(&self.scripts.settle, queue, |cmd| {
            cmd.arg(millis(at)).arg(&self.token).arg(acks.len());
            for ack in acks {
                cmd.arg(ack.id.to_string())
                    .arg(ack.attempt)
                    .arg(match ack.settlement {
                        Settlement::Completed { result: None } => "c",
                        Settlement::Completed { result: Some(_) } => "C",
                        Settlement::Retry { .. } => "r",
                        Settlement::Failed { .. } => "f",
                    })
                    .arg(ack.at.to_string());
                match &ack.settlement {
                    Settlement::Completed { result } => {
                        if let Some(result) = result {
                            cmd.arg(&**result);
                        }
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

    /// Remembers which queue jobs pushed here went to: `get_job` and `wait_for`, which a web
    /// process typically calls on what it pushed, then take one round trip, not one per queue.
    pub(super) fn remember_pushed(&self, queue: &Arc<str>, jobs: &[Job]) {
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
    pub(super) fn store(
        &self,
        queue: &RedisQueue,
        jobs: &[Job],
        tick: Option<(&str, Timestamp)>,
        declaration: &QueueDeclaration,
        forwarded: bool,
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
            // A first try goes on the caller's own connection; later ones on the shared one,
            // where a try that got no answer stays queued (Redis runs it once it can: a push
            // held back by a paused Redis is stored, once, when it resumes).
            let direct = unanswered == 0;
            let outcome = match self.store_once(queue, jobs, tick, declaration, forwarded, direct) {
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
    pub(super) fn store_once(
        &self,
        queue: &RedisQueue,
        jobs: &[Job],
        tick: Option<(&str, Timestamp)>,
        declaration: &QueueDeclaration,
        forwarded: bool,
        direct: bool,
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
                .arg(&*declaration.settings)
                .arg(if forwarded { "1" } else { "0" });
            add_sections(cmd, chunk);
        };
        if jobs.len() <= PUSH_CHUNK {
            let mut cmd = eval_cmd(&self.scripts.push, &queue.keys);
            add_args(&mut cmd, jobs, tick);
            // On the caller's thread where it can: a push waits for its round trip only.
            if direct {
                if let Some(reply) = self.redis.direct(&self.scripts.push, &cmd) {
                    return reply;
                }
            }
            return self.eval(&self.scripts.push, cmd);
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
    pub(super) fn declare(
        &self,
        queue: &RedisQueue,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> Result<QueueDeclaration> {
        self.upgrade_layout(queue)?;
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

    /// The queue's handle, its jobs converted first if an older version stored them.
    pub(super) fn upgraded(&self, name: &str) -> Result<Arc<RedisQueue>> {
        let queue = self.queue(name);
        self.upgrade_layout(&queue)?;
        Ok(queue)
    }

    /// Converts the queue's jobs if an older rnode-queue stored them (`migrate.lua`): once per
    /// queue and process, before it declares the queue, fetches from, sweeps, lists, counts or
    /// administers it.
    pub(super) fn upgrade_layout(&self, queue: &RedisQueue) -> Result<()> {
        if queue.layout_checked.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut converted = 0;
        loop {
            let (chunk, more): (i64, i64) = self.invoke(&self.scripts.migrate, queue, |_| {})?;
            converted += chunk;
            if more == 0 {
                break;
            }
        }
        if converted > 0 {
            log::info!(
                target: "rnode_queue",
                "queue {:?}: {converted} job(s) stored by an older rnode-queue were converted to \
                 this version's Redis layout",
                &*queue.name
            );
        }
        queue.layout_checked.store(true, Ordering::Release);
        Ok(())
    }

    /// Hands back leased runs (`release.lua`); they leave this process's held jobs. Returns
    /// the ids handed back.
    pub(super) fn give_back(
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

/// `{ttl_ms, keep_completed, keep_failed, settings}` as the admin script returns it; `None` for
/// a queue with no record.
pub(super) fn stored_declaration(reply: &Value) -> Option<QueueDeclaration> {
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

/// The jobs of a push as `push.lua` reads them: runs of jobs waiting now at one priority as
/// `'w', priority, k, id, body, ...` (stored as sent, no work per job in Lua), the others
/// (delayed, or with a due time) as `'s', k, id, body, priority, due_ms, due, ...`; runs keep
/// the order of the jobs.
fn add_sections(cmd: &mut Cmd, jobs: &[Job]) {
    let plain = |job: &Job| job.state != JobState::Delayed && job.scheduled_at.get().is_none();
    let same_section =
        |a: &Job, b: &Job| plain(a) == plain(b) && (!plain(a) || a.priority == b.priority);
    for run in jobs.chunk_by(same_section) {
        if plain(&run[0]) {
            cmd.arg("w").arg(run[0].priority as u8).arg(run.len());
            for job in run {
                cmd.arg(job.id.to_string()).arg(encode_body(job));
            }
        } else {
            cmd.arg("s").arg(run.len());
            for job in run {
                cmd.arg(job.id.to_string())
                    .arg(encode_body(job))
                    .arg(job.priority as u8);
                if job.state == JobState::Delayed {
                    cmd.arg(millis(job.due_at()));
                } else {
                    cmd.arg("");
                }
                match job.scheduled_at.get() {
                    Some(due) => cmd.arg(due.to_string()),
                    None => cmd.arg(""),
                };
            }
        }
    }
}

pub(super) fn optional_text(cmd: &mut Cmd, text: Option<&str>) {
    match text {
        Some(text) => cmd.arg("1").arg(text),
        None => cmd.arg("0").arg(""),
    };
}

pub(super) fn next_event(ms: i64) -> Option<Timestamp> {
    (ms >= 0).then(|| ms as f64 / 1000.0)
}
