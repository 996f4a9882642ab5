//! The Lua scripts, one per move between states (`lua/`), each run with EVALSHA.

use redis::{Cmd, Script};

const COMMON: &str = include_str!("lua/common.lua");

/// Redis 7 reads this first line: the script may run while Redis is out of memory (maxmemory
/// with noeviction), so that workers keep draining and queues can be paused and resumed. Older
/// servers do not know the syntax; they get the scripts without it.
const ALLOW_OOM: &str = "#!lua flags=allow-oom\n";

pub(super) struct Scripts {
    pub push: Script,
    pub fetch: Script,
    pub started: Script,
    pub settle: Script,
    pub release: Script,
    pub renew: Script,
    pub sweep: Script,
    pub tick: Script,
    pub counts: Script,
    pub list: Script,
    pub job: Script,
    /// Converts a queue stored by an older version (`lua/migrate.lua`).
    pub migrate: Script,
    pub admin: Script,
    /// The worker-process registry (its own keys, no queue prelude).
    pub workers: Script,
    /// The heartbeats operators see (its own keys, no queue prelude).
    pub beats: Script,
}

impl Scripts {
    /// `allow_oom`: the server understands script flags (Redis 7 and newer).
    pub fn new(allow_oom: bool) -> Self {
        let flags = if allow_oom { ALLOW_OOM } else { "" };
        let queue_script = |body: &str| Script::new(&format!("{flags}{COMMON}\n{body}"));
        Scripts {
            // A push under out-of-memory must fail (clearly), as any write does.
            push: Script::new(&format!("{COMMON}\n{}", include_str!("lua/push.lua"))),
            fetch: queue_script(include_str!("lua/fetch.lua")),
            started: queue_script(include_str!("lua/started.lua")),
            settle: queue_script(include_str!("lua/settle.lua")),
            release: queue_script(include_str!("lua/release.lua")),
            renew: queue_script(include_str!("lua/renew.lua")),
            sweep: queue_script(include_str!("lua/sweep.lua")),
            tick: queue_script(include_str!("lua/tick.lua")),
            counts: queue_script(include_str!("lua/counts.lua")),
            list: queue_script(include_str!("lua/list.lua")),
            job: queue_script(include_str!("lua/job.lua")),
            migrate: queue_script(include_str!("lua/migrate.lua")),
            admin: queue_script(include_str!("lua/admin.lua")),
            workers: Script::new(&format!("{flags}{}", include_str!("lua/workers.lua"))),
            beats: Script::new(&format!("{flags}{}", include_str!("lua/beats.lua"))),
        }
    }
}

impl Scripts {
    /// Every script, to load them all at connect: a server busy or paused later (`CLIENT PAUSE`)
    /// then never makes a push wait for a `SCRIPT LOAD` first.
    pub fn all(&self) -> [&Script; 15] {
        [
            &self.push,
            &self.fetch,
            &self.started,
            &self.settle,
            &self.release,
            &self.renew,
            &self.sweep,
            &self.tick,
            &self.counts,
            &self.list,
            &self.job,
            &self.migrate,
            &self.admin,
            &self.workers,
            &self.beats,
        ]
    }
}

/// `EVALSHA` of a script with these keys; arguments follow.
pub(super) fn eval_cmd(script: &Script, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(key);
    }
    cmd
}
