//! How the backend talks to Redis: queue handles, scripts run by SHA (loaded again where Redis
//! lost them), plain commands, and pipelines.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, FromRedisValue, Script, Value};

use super::connection::{is_no_script, COMMAND_TIMEOUT};
use super::keys::RedisQueue;

use super::scripts::eval_cmd;
use super::Shared;
use crate::error::Result;

/// The queue records kept here beyond this many, unused, are dropped (and made again on use).
const QUEUE_HANDLES: usize = 1024;
/// Commands per pipelined round trip when many queues are read at once.
const PIPELINE_CHUNK: usize = 500;

impl Shared {
    pub(super) fn queue(&self, name: &str) -> Arc<RedisQueue> {
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
    pub(super) fn invoke<T: FromRedisValue>(
        &self,
        script: &Script,
        queue: &RedisQueue,
        args: impl FnOnce(&mut Cmd),
    ) -> Result<T> {
        let mut cmd = eval_cmd(script, &queue.keys);
        args(&mut cmd);
        self.eval(script, cmd)
    }

    pub(super) fn eval<T: FromRedisValue>(&self, script: &Script, cmd: Cmd) -> Result<T> {
        self.eval_for(COMMAND_TIMEOUT, script, cmd)
    }

    pub(super) fn eval_for<T: FromRedisValue>(
        &self,
        limit: Duration,
        script: &Script,
        cmd: Cmd,
    ) -> Result<T> {
        let mut conn = self.redis.conn();
        self.redis.run_for(limit, async move {
            match cmd.query_async(&mut conn).await {
                Err(e) if is_no_script(&e) => {
                    script.load_async(&mut conn).await?;
                    cmd.query_async(&mut conn).await
                }
                other => other,
            }
        })
    }

    pub(super) fn command<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T> {
        let mut conn = self.redis.conn();
        self.redis
            .run(async move { cmd.query_async(&mut conn).await })
    }

    /// Commands in pipelined round trips (`script` loaded first when they run it).
    pub(super) fn pipelined(&self, script: Option<&Script>, cmds: Vec<Cmd>) -> Result<Vec<Value>> {
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
                                Err(e) if is_no_script(&e) => match &script {
                                    Some(script) => match script.load_async(&mut conn).await {
                                        Ok(_) => cmd.query_async(&mut conn).await,
                                        Err(e) => Err(e),
                                    },
                                    None => Err(e),
                                },
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
}
