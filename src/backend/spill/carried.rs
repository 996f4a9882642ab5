//! A queue's declaration, carried in the spill with its jobs: the spill's own declaration of
//! the queue holds the engine's in its settings, so that Redis gets it with the jobs whichever
//! process forwards them.

use crate::backend::{QueueDeclaration, Retention};
use crate::job::Payload;

/// The spill's own declaration of a queue: spilled jobs are forgotten as soon as they are
/// forwarded; its settings carry the queue's declaration for Redis.
pub(super) fn spill_declaration(queue: &QueueDeclaration) -> QueueDeclaration {
    let carried = serde_json::json!({
        "ttl": queue.retention.ttl,
        "keep_completed": queue.retention.keep_completed,
        "keep_failed": queue.retention.keep_failed,
        "settings": String::from_utf8_lossy(&queue.settings),
    });
    QueueDeclaration {
        retention: Retention {
            ttl: 0.0,
            keep_completed: 0,
            keep_failed: usize::MAX,
        },
        settings: Payload::from(carried.to_string().into_bytes()),
    }
}

/// The queue's declaration that `spill_declaration` carried.
pub(super) fn carried_declaration(held: &QueueDeclaration) -> Option<QueueDeclaration> {
    let carried: serde_json::Value = serde_json::from_slice(&held.settings).ok()?;
    let count = |key: &str| carried.get(key)?.as_u64().map(|n| n as usize);
    Some(QueueDeclaration {
        retention: Retention {
            ttl: carried.get("ttl")?.as_f64()?,
            keep_completed: count("keep_completed")?,
            keep_failed: count("keep_failed")?,
        },
        settings: Payload::from(carried.get("settings")?.as_str()?.as_bytes()),
    })
}
