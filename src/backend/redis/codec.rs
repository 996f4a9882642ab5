//! Jobs and schedules as Redis stores them: a job is one hash with short field names; times
//! are decimal seconds written by Rust (shortest exact form), never by Lua.

use std::sync::Arc;

use redis::Value;

use crate::backend::ScheduleRecord;
use crate::error::{QueueError, Result};
use crate::job::{Job, JobExtras, JobId, JobState, MaybeTime, Payload, Priority, Timestamp};

/// The fields a push writes (the script adds the state `s` and the sequence `q`).
pub fn job_fields(job: &Job) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields: Vec<(&'static str, Vec<u8>)> = vec![
        ("d", job.data.to_vec()),
        ("p", (job.priority as u8).to_string().into_bytes()),
        ("a", b"0".to_vec()),
        ("m", job.max_attempts.to_string().into_bytes()),
        ("to", job.timeout.to_string().into_bytes()),
        ("c", job.created_at.to_string().into_bytes()),
    ];
    if let Some(at) = job.scheduled_at.get() {
        fields.push(("sa", at.to_string().into_bytes()));
    }
    if let Some(extras) = job.extras() {
        if !extras.tags.is_empty() {
            let tags = serde_json::to_vec(&extras.tags).unwrap_or_else(|_| b"[]".to_vec());
            fields.push(("tg", tags));
        }
        if let Some(metadata) = &extras.metadata {
            fields.push(("md", metadata.to_vec()));
        }
        if let Some(schedule) = &extras.schedule_id {
            fields.push(("sid", schedule.as_bytes().to_vec()));
        }
        if extras.delay > 0.0 {
            fields.push(("dl", extras.delay.to_string().into_bytes()));
        }
    }
    fields
}

/// Milliseconds for a sorted-set score.
pub fn millis(at: Timestamp) -> i64 {
    (at * 1000.0).round() as i64
}

fn corrupt(what: &str) -> QueueError {
    QueueError::Backend(format!("redis: a stored job has a bad {what} field"))
}

fn text(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(what))
}

fn number<T: std::str::FromStr>(bytes: &[u8], what: &str) -> Result<T> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| corrupt(what))
}

fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// A job from its id and its hash (as `HGETALL` returns it); `None` for a missing hash.
pub fn decode_job(queue: &Arc<str>, id: &[u8], hash: &Value) -> Result<Option<Job>> {
    let pairs: Vec<(&[u8], &[u8])> = match hash {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|pair| Some((bytes_of(&pair[0])?, bytes_of(&pair[1])?)))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((bytes_of(k)?, bytes_of(v)?)))
            .collect(),
        Value::Nil => return Ok(None),
        _ => return Err(corrupt("hash")),
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let id = std::str::from_utf8(id)
        .ok()
        .and_then(JobId::parse)
        .ok_or_else(|| corrupt("id"))?;
    let mut job = Job {
        id,
        queue: queue.clone(),
        data: Arc::from(&b"null"[..]),
        priority: Priority::Normal,
        state: JobState::Waiting,
        attempts: 0,
        max_attempts: 1,
        timeout: 300.0,
        created_at: 0.0,
        scheduled_at: MaybeTime::NONE,
        started_at: MaybeTime::NONE,
        finished_at: MaybeTime::NONE,
        seq: 0,
        extras: None,
    };
    let mut extras = JobExtras::default();
    let mut has_extras = false;
    for (field, value) in pairs {
        match field {
            b"d" => job.data = Payload::from(value),
            b"p" => job.priority = Priority::from_level(number(value, "priority")?)?,
            b"s" => job.state = text(value, "state")?.parse()?,
            b"a" => job.attempts = number(value, "attempts")?,
            b"m" => job.max_attempts = number(value, "max_attempts")?,
            b"to" => job.timeout = number(value, "timeout")?,
            b"c" => job.created_at = number(value, "created_at")?,
            b"sa" => job.scheduled_at = Some(number(value, "scheduled_at")?).into(),
            b"st" => job.started_at = Some(number(value, "started_at")?).into(),
            b"f" => job.finished_at = Some(number(value, "finished_at")?).into(),
            b"q" => job.seq = number(value, "seq")?,
            b"tg" => {
                extras.tags = serde_json::from_slice(value).map_err(|_| corrupt("tags"))?;
                has_extras = true;
            }
            b"md" => {
                extras.metadata = Some(Payload::from(value));
                has_extras = true;
            }
            b"sid" => {
                extras.schedule_id = Some(Arc::from(text(value, "schedule_id")?));
                has_extras = true;
            }
            b"dl" => {
                extras.delay = number(value, "delay")?;
                has_extras = true;
            }
            b"r" => {
                extras.result = Some(Payload::from(value));
                has_extras = true;
            }
            b"e" => {
                extras.error = Some(String::from_utf8_lossy(value).into_owned());
                has_extras = true;
            }
            b"tb" => {
                extras.traceback = Some(String::from_utf8_lossy(value).into_owned());
                has_extras = true;
            }
            // The lease token and anything a newer version adds.
            _ => {}
        }
    }
    if has_extras {
        job.extras = Some(Box::new(extras));
    }
    Ok(Some(job))
}

/// `{id, fields, id, fields, ...}` as the scripts return them.
pub fn decode_jobs(queue: &Arc<str>, list: &Value) -> Result<Vec<Job>> {
    let Value::Array(items) = list else {
        return Ok(Vec::new());
    };
    let mut jobs = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks_exact(2) {
        let id = bytes_of(&pair[0]).ok_or_else(|| corrupt("id"))?;
        if let Some(job) = decode_job(queue, id, &pair[1])? {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

fn raw_json(bytes: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(bytes).map_err(|e| QueueError::Backend(format!("redis: {e}")))
}

pub fn encode_schedule(record: &ScheduleRecord) -> Result<String> {
    let value = serde_json::json!({
        "id": &*record.id,
        "name": record.name,
        "queue": &*record.queue,
        "cron": record.cron,
        "data": raw_json(&record.data)?,
        "priority": record.priority as u8,
        "attempts": record.attempts,
        "timeout": record.timeout,
        "tags": record.tags,
        "metadata": record.metadata.as_deref().map(raw_json).transpose()?,
    });
    Ok(value.to_string())
}

pub fn decode_schedule(text: &[u8]) -> Result<ScheduleRecord> {
    #[derive(serde::Deserialize)]
    struct Stored {
        id: String,
        name: Option<String>,
        queue: String,
        cron: String,
        data: serde_json::Value,
        priority: i64,
        attempts: Option<u32>,
        timeout: Option<f64>,
        #[serde(default)]
        tags: Vec<String>,
        metadata: Option<serde_json::Value>,
    }
    let stored: Stored = serde_json::from_slice(text)
        .map_err(|e| QueueError::Backend(format!("redis: a stored schedule is invalid: {e}")))?;
    let json = |value: &serde_json::Value| -> Payload {
        Payload::from(serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()))
    };
    Ok(ScheduleRecord {
        id: Arc::from(stored.id),
        name: stored.name,
        queue: Arc::from(stored.queue),
        cron: stored.cron,
        data: json(&stored.data),
        priority: Priority::from_level(stored.priority)?,
        attempts: stored.attempts,
        timeout: stored.timeout,
        tags: stored.tags,
        metadata: stored.metadata.as_ref().map(json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobOptions;

    #[test]
    fn a_job_round_trips_through_its_hash() {
        let queue: Arc<str> = Arc::from("q");
        let options = JobOptions {
            priority: Priority::High,
            delay: 2.5,
            tags: vec!["a".into(), "b\"c".into()],
            metadata: Some(Payload::from(&br#"{"k":1}"#[..])),
            ..JobOptions::default()
        };
        let job = Job::new(
            queue.clone(),
            Payload::from(&b"[1,2]"[..]),
            options,
            4,
            30.5,
        );
        let mut items = Vec::new();
        for (field, value) in job_fields(&job) {
            items.push(Value::BulkString(field.as_bytes().to_vec()));
            items.push(Value::BulkString(value));
        }
        items.push(Value::BulkString(b"s".to_vec()));
        items.push(Value::BulkString(b"delayed".to_vec()));
        let id = job.id.to_string();
        let back = decode_job(&queue, id.as_bytes(), &Value::Array(items))
            .unwrap()
            .unwrap();
        assert_eq!(back.id, job.id);
        assert_eq!(back.created_at, job.created_at, "times keep every digit");
        assert_eq!(back.scheduled_at, job.scheduled_at);
        assert_eq!(back.priority, Priority::High);
        assert_eq!(back.state, JobState::Delayed);
        assert_eq!(back.max_attempts, 4);
        assert_eq!(back.extras(), job.extras());
        assert_eq!(&*back.data, b"[1,2]");
    }

    #[test]
    fn a_schedule_round_trips() {
        let record = ScheduleRecord {
            id: Arc::from("nightly"),
            name: Some("nightly".into()),
            queue: Arc::from("maint"),
            cron: "0 2 * * *".into(),
            data: Payload::from(&br#"{"type":"daily"}"#[..]),
            priority: Priority::Low,
            attempts: Some(2),
            timeout: None,
            tags: vec!["t".into()],
            metadata: None,
        };
        let text = encode_schedule(&record).unwrap();
        assert_eq!(decode_schedule(text.as_bytes()).unwrap(), record);
    }
}
