//! Read-only look-ups: queue names, counts, and jobs by id.

use redis::{FromRedisValue, Value};

use super::keys::RedisQueue;

use super::codec::decode_job;
use super::scripts::eval_cmd;
use super::Shared;
use crate::backend::QueueCounts;
use crate::error::{QueueError, Result};
use crate::job::{Job, JobId};

impl Shared {
    pub(super) fn queue_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.command(redis::Cmd::smembers(&self.keys.queues))?;
        names.sort();
        Ok(names)
    }

    /// Counts and the retried total of queues, in pipelined round trips.
    pub(super) fn counts_of(&self, names: &[String]) -> Result<Vec<(QueueCounts, u64)>> {
        let cmds = names
            .iter()
            .map(|name| Ok(eval_cmd(&self.scripts.counts, &self.upgraded(name)?.keys)))
            .collect::<Result<_>>()?;
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

    /// Whether the queue (or every queue) has no waiting, delayed or active job.
    pub(super) fn all_idle(&self, queue: Option<&str>) -> Result<bool> {
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
    pub(super) fn find_job(&self, id: JobId) -> Result<Option<Job>> {
        let pushed_to = self.pushed_here.lock().get(&id).cloned();
        if let Some(name) = &pushed_to {
            if let Some(job) = self.read_job(&*self.upgraded(name)?, id)? {
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
            .map(|name| {
                let queue = self.upgraded(name)?;
                Ok(redis::Cmd::hexists(queue.jobs_key(), id.to_string()))
            })
            .collect::<Result<_>>()?;
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

    pub(super) fn read_job(&self, queue: &RedisQueue, id: JobId) -> Result<Option<Job>> {
        let id = id.to_string();
        let fields: Value = self.invoke(&self.scripts.job, queue, |cmd| {
            cmd.arg(&id);
        })?;
        decode_job(&queue.name, id.as_bytes(), &fields)
    }
}
