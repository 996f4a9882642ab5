//! Jobs and schedules as Redis stores them. A job's body is packed by Rust and written once;
//! the scripts describe a job to Rust as field/value pairs with short names (`describe` in
//! `lua/common.lua`); times are decimal seconds written by Rust (shortest exact form), never
//! by Lua.

use std::collections::HashMap;
use std::sync::Arc;

use redis::Value;

use crate::backend::ScheduleRecord;
use crate::error::{QueueError, Result};
use crate::job::{Job, JobExtras, JobId, JobState, MaybeTime, Payload, Priority, Timestamp};

/// A job's immutable part, packed into one hash field (`b`): one field to write at push and
/// read at fetch instead of ten. A header line of decimal numbers, then the variable parts:
///
/// `max_attempts created priority timeout delay tags_len metadata_len schedule_len\n` tags
/// metadata schedule data (the scripts read max attempts and priority from the header).
pub fn encode_body(job: &Job) -> Vec<u8> {
    let extras = job.extras();
    let tags = match extras {
        Some(e) if !e.tags.is_empty() => serde_json::to_vec(&e.tags).unwrap_or_default(),
        _ => Vec::new(),
    };
    let metadata = extras
        .and_then(|e| e.metadata.as_deref())
        .unwrap_or_default();
    let schedule = extras
        .and_then(|e| e.schedule_id.as_deref())
        .unwrap_or_default();
    let delay = extras.map_or(0.0, |e| e.delay);
    let mut body = Vec::with_capacity(64 + tags.len() + metadata.len() + job.data.len());
    body.extend_from_slice(
        format!(
            "{} {} {} {} {} {} {} {}\n",
            job.max_attempts,
            job.created_at,
            job.priority as u8,
            job.timeout,
            delay,
            tags.len(),
            metadata.len(),
            schedule.len()
        )
        .as_bytes(),
    );
    body.extend_from_slice(&tags);
    body.extend_from_slice(metadata);
    body.extend_from_slice(schedule.as_bytes());
    body.extend_from_slice(&job.data);
    body
}

/// Milliseconds for a sorted-set score.
pub fn millis(at: Timestamp) -> i64 {
    (at * 1000.0).round() as i64
}

fn corrupt(what: &str) -> QueueError {
    QueueError::Backend(format!("redis: a stored job has a bad {what} field"))
}

fn number<T: std::str::FromStr>(bytes: &[u8], what: &str) -> Result<T> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| corrupt(what))
}

pub fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// A job with its immutable part unpacked; the mutable fields are set by the caller.
fn decode_body(queue: &Arc<str>, id: JobId, body: &[u8]) -> Result<Job> {
    let newline = body
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("body"))?;
    let header = std::str::from_utf8(&body[..newline]).map_err(|_| corrupt("body"))?;
    let numbers: Vec<&str> = header.split(' ').collect();
    let [max_attempts, created, priority, timeout, delay, tags_len, metadata_len, schedule_len] =
        numbers[..]
    else {
        return Err(corrupt("body"));
    };
    let parse = |text: &str| -> Result<f64> { text.parse().map_err(|_| corrupt("body")) };
    let length = |text: &str| -> Result<usize> { text.parse().map_err(|_| corrupt("body")) };
    let (tags_len, metadata_len, schedule_len) = (
        length(tags_len)?,
        length(metadata_len)?,
        length(schedule_len)?,
    );
    let rest = &body[newline + 1..];
    if rest.len() < tags_len + metadata_len + schedule_len {
        return Err(corrupt("body"));
    }
    let (tags, rest) = rest.split_at(tags_len);
    let (metadata, rest) = rest.split_at(metadata_len);
    let (schedule, data) = rest.split_at(schedule_len);
    let delay = parse(delay)?;
    let mut extras = JobExtras {
        delay,
        ..JobExtras::default()
    };
    if !tags.is_empty() {
        extras.tags = serde_json::from_slice(tags).map_err(|_| corrupt("tags"))?;
    }
    if !metadata.is_empty() {
        extras.metadata = Some(Payload::from(metadata));
    }
    if !schedule.is_empty() {
        let schedule = std::str::from_utf8(schedule).map_err(|_| corrupt("schedule"))?;
        extras.schedule_id = Some(Arc::from(schedule));
    }
    let has_extras = extras != JobExtras::default();
    Ok(Job {
        id,
        queue: queue.clone(),
        data: Payload::from(data),
        priority: Priority::from_level(length(priority)? as i64)?,
        state: JobState::Waiting,
        attempts: 0,
        max_attempts: max_attempts.parse().map_err(|_| corrupt("body"))?,
        timeout: parse(timeout)?,
        created_at: parse(created)?,
        scheduled_at: MaybeTime::NONE,
        started_at: MaybeTime::NONE,
        finished_at: MaybeTime::NONE,
        seq: 0,
        extras: has_extras.then(|| Box::new(extras)),
    })
}

fn parse_id(id: &[u8]) -> Result<JobId> {
    std::str::from_utf8(id)
        .ok()
        .and_then(JobId::parse)
        .ok_or_else(|| corrupt("id"))
}

/// A job from its id and its fields (as the scripts describe it); `None` for a missing job.
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
    let Some((_, body)) = pairs.iter().find(|(field, _)| *field == b"b") else {
        return Ok(None);
    };
    let mut job = decode_body(queue, parse_id(id)?, body)?;
    let mut run = 0;
    for (field, value) in pairs {
        match field {
            b"s" => {
                let state = std::str::from_utf8(value).map_err(|_| corrupt("state"))?;
                job.state = state.parse()?;
            }
            b"a" => job.attempts = number(value, "attempts")?,
            b"n" => run = number(value, "run")?,
            b"sa" => job.scheduled_at = Some(number(value, "scheduled_at")?).into(),
            b"st" => job.started_at = Some(number(value, "started_at")?).into(),
            b"f" => job.finished_at = Some(number(value, "finished_at")?).into(),
            b"r" => job.extras_mut().result = Some(Payload::from(value)),
            b"e" => job.extras_mut().error = Some(String::from_utf8_lossy(value).into_owned()),
            b"tb" => job.extras_mut().traceback = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
    if job.state == JobState::Active {
        // Taken by a worker: the run it is leased for (not counted until it starts).
        job.attempts = job.attempts.max(run);
    }
    Ok(Some(job))
}

/// `{id, fields, id, fields, ...}` as the list script returns them. A record that cannot be
/// read is left out, and logged: one bad record must not hide the others.
pub fn decode_jobs(queue: &Arc<str>, list: &Value) -> Vec<Job> {
    let Value::Array(items) = list else {
        return Vec::new();
    };
    let mut jobs = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks_exact(2) {
        let id = bytes_of(&pair[0]).unwrap_or_default();
        match decode_job(queue, id, &pair[1]) {
            Ok(Some(job)) => jobs.push(job),
            Ok(None) => {}
            Err(error) => log::warn!(
                target: "rnode_queue",
                "queue {:?}: job {} is left out of a listing: {error}",
                &**queue,
                String::from_utf8_lossy(id)
            ),
        }
    }
    jobs
}

/// One job of a fetch: readable, or not (its id and run, and what could not be read).
pub enum Leased {
    Job(Job),
    Unreadable { id: String, run: u32, error: String },
}

/// The jobs a fetch leased, each decoded on its own: `ids` and `bodies` side by side (a body
/// `nil` for a job that vanished: it was not leased), and `extra` for jobs with a history:
/// `{n (1-based), run, due, error, traceback, ...}`; the others are on their first run.
pub fn decode_leased(
    queue: &Arc<str>,
    ids: &Value,
    bodies: &Value,
    extra: &Value,
    started_at: Timestamp,
) -> Vec<Leased> {
    let (Value::Array(ids), Value::Array(bodies)) = (ids, bodies) else {
        return Vec::new();
    };
    let mut pasts: HashMap<usize, &[Value]> = HashMap::new();
    if let Value::Array(extra) = extra {
        for fields in extra.chunks_exact(5) {
            if let Value::Int(n) = fields[0] {
                pasts.insert(n as usize, fields);
            }
        }
    }
    ids.iter()
        .zip(bodies)
        .enumerate()
        .filter(|(_, (_, body))| !matches!(body, Value::Nil))
        .map(|(index, (id, body))| {
            let past = pasts.get(&(index + 1)).copied();
            let id = String::from_utf8_lossy(bytes_of(id).unwrap_or_default()).into_owned();
            let run = match past.map(|fields| &fields[1]) {
                Some(Value::Int(n)) => *n as u32,
                _ => 1,
            };
            decode_leased_job(queue, &id, body, past, run, started_at).map_or_else(
                |error| Leased::Unreadable {
                    id: id.clone(),
                    run,
                    error: error.to_string(),
                },
                Leased::Job,
            )
        })
        .collect()
}

fn decode_leased_job(
    queue: &Arc<str>,
    id: &str,
    body: &Value,
    past: Option<&[Value]>,
    run: u32,
    started_at: Timestamp,
) -> Result<Job> {
    let id = parse_id(id.as_bytes())?;
    let body = bytes_of(body).ok_or_else(|| corrupt("body (missing)"))?;
    let mut job = decode_body(queue, id, body)?;
    job.state = JobState::Active;
    job.attempts = run;
    job.started_at = Some(started_at).into();
    if let Some(fields) = past {
        if let Some(due) = bytes_of(&fields[2]) {
            job.scheduled_at = Some(number(due, "scheduled_at")?).into();
        }
        if let Some(error) = bytes_of(&fields[3]) {
            job.extras_mut().error = Some(String::from_utf8_lossy(error).into_owned());
        }
        if let Some(traceback) = bytes_of(&fields[4]) {
            job.extras_mut().traceback = Some(String::from_utf8_lossy(traceback).into_owned());
        }
    }
    // The data must be JSON, or every handler call would fail on it.
    serde_json::from_slice::<serde::de::IgnoredAny>(&job.data)
        .map_err(|e| QueueError::Backend(format!("redis: a stored job's data is not JSON: {e}")))?;
    Ok(job)
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
            schedule_id: Some(Arc::from("nightly")),
            ..JobOptions::default()
        };
        let job = Job::new(
            queue.clone(),
            Payload::from(&b"[1,\n2]"[..]),
            options,
            4,
            30.5,
        );
        let field = |name: &str| Value::BulkString(name.as_bytes().to_vec());
        let hash = Value::Array(vec![
            field("b"),
            Value::BulkString(encode_body(&job)),
            field("s"),
            field("delayed"),
            field("sa"),
            Value::BulkString(job.scheduled_at.get().unwrap().to_string().into_bytes()),
        ]);
        let id = job.id.to_string();
        let back = decode_job(&queue, id.as_bytes(), &hash).unwrap().unwrap();
        assert_eq!(back.id, job.id);
        assert_eq!(back.created_at, job.created_at, "times keep every digit");
        assert_eq!(back.scheduled_at, job.scheduled_at);
        assert_eq!(back.priority, Priority::High);
        assert_eq!(back.state, JobState::Delayed);
        assert_eq!(back.max_attempts, 4);
        assert_eq!(back.timeout, 30.5);
        assert_eq!(back.extras(), job.extras());
        assert_eq!(&*back.data, b"[1,\n2]");
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
