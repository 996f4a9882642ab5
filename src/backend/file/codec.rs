//! The binary form of the store's events in the log: little-endian numbers, strings and byte
//! strings prefixed with their u32 length, `Option`s with a flag byte. A job's queue is not
//! repeated per job: it is the event's.

use std::borrow::Cow;
use std::sync::Arc;

use crate::backend::memory::Event;
use crate::backend::{Ack, QueueDeclaration, Retention, ScheduleRecord, Settlement};
use crate::job::{Job, JobExtras, JobId, JobState, MaybeTime, Payload, Priority};

/// Why a frame whose checksum matched could not be read (a bug, or a log edited by hand).
#[derive(Debug)]
pub struct DecodeError(pub String);

pub(super) type Decoded<T> = std::result::Result<T, DecodeError>;

mod tag {
    pub const PUSH: u8 = 1;
    pub const CLAIM: u8 = 2;
    pub const SETTLE: u8 = 3;
    pub const RELEASE: u8 = 4;
    pub const LOST: u8 = 5;
    pub const RETRY_FAILED: u8 = 6;
    pub const PAUSED: u8 = 7;
    pub const CLEAR: u8 = 8;
    pub const DELETE: u8 = 9;
    pub const DECLARE: u8 = 10;
    pub const TOTALS: u8 = 11;
    pub const SAVE_SCHEDULE: u8 = 12;
    pub const REMOVE_SCHEDULE: u8 = 13;
    /// From format 2 on.
    pub const REMOVE_JOB: u8 = 14;
}

/// Appends the event's bytes to `out`.
pub fn encode(event: &Event<'_>, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    match event {
        Event::Push { queue, jobs, tick } => {
            w.u8(tag::PUSH);
            w.str(queue);
            match tick {
                Some((schedule, at)) => {
                    w.u8(1);
                    w.str(schedule);
                    w.f64(*at);
                }
                None => w.u8(0),
            }
            w.u32(jobs.len() as u32);
            for job in jobs.iter() {
                w.job(job);
            }
        }
        Event::Claim { queue, at, runs } | Event::Lost { queue, at, runs } => {
            let lost = matches!(event, Event::Lost { .. });
            w.u8(if lost { tag::LOST } else { tag::CLAIM });
            w.str(queue);
            w.f64(*at);
            w.runs(runs);
        }
        Event::Release { queue, runs } => {
            w.u8(tag::RELEASE);
            w.str(queue);
            w.runs(runs);
        }
        Event::Settle { queue, acks } => {
            w.u8(tag::SETTLE);
            w.str(queue);
            w.u32(acks.len() as u32);
            for ack in acks.iter() {
                w.ack(ack);
            }
        }
        Event::RetryFailed { queue, id } => {
            w.u8(tag::RETRY_FAILED);
            w.str(queue);
            w.id(*id);
        }
        Event::RemoveJob { queue, id } => {
            w.u8(tag::REMOVE_JOB);
            w.str(queue);
            w.id(*id);
        }
        Event::Paused { queue, paused } => {
            w.u8(tag::PAUSED);
            w.str(queue);
            w.u8(u8::from(*paused));
        }
        Event::Clear { queue } => {
            w.u8(tag::CLEAR);
            w.str(queue);
        }
        Event::Delete { queue } => {
            w.u8(tag::DELETE);
            w.str(queue);
        }
        Event::Declare { queue, declaration } => {
            w.u8(tag::DECLARE);
            w.str(queue);
            w.declaration(declaration);
        }
        Event::Totals {
            queue,
            completed,
            failed,
        } => {
            w.u8(tag::TOTALS);
            w.str(queue);
            w.u64(*completed);
            w.u64(*failed);
        }
        Event::SaveSchedule(schedule) => {
            w.u8(tag::SAVE_SCHEDULE);
            w.schedule(schedule);
        }
        Event::RemoveSchedule(id) => {
            w.u8(tag::REMOVE_SCHEDULE);
            w.str(id);
        }
    }
}

/// Reads back an event `encode` wrote; all of `bytes` must be used.
pub fn decode(bytes: &[u8]) -> Decoded<Event<'static>> {
    let mut r = Reader(bytes);
    let event = match r.u8()? {
        tag::PUSH => {
            let queue: Arc<str> = Arc::from(r.str()?);
            let tick = match r.flag()? {
                true => Some((Cow::Owned(r.str()?.to_string()), r.f64()?)),
                false => None,
            };
            let count = r.count(JOB_MIN_BYTES)?;
            let jobs = (0..count)
                .map(|_| r.job(&queue))
                .collect::<Decoded<Vec<Job>>>()?;
            Event::Push {
                queue: Cow::Owned(queue.to_string()),
                jobs: Cow::Owned(jobs),
                tick,
            }
        }
        kind @ (tag::CLAIM | tag::LOST) => {
            let queue = r.string()?;
            let at = r.f64()?;
            let runs = Cow::Owned(r.runs()?);
            if kind == tag::LOST {
                Event::Lost { queue, at, runs }
            } else {
                Event::Claim { queue, at, runs }
            }
        }
        tag::RELEASE => Event::Release {
            queue: r.string()?,
            runs: Cow::Owned(r.runs()?),
        },
        tag::SETTLE => {
            let queue = r.string()?;
            let count = r.count(ACK_MIN_BYTES)?;
            let acks = (0..count).map(|_| r.ack()).collect::<Decoded<Vec<Ack>>>()?;
            Event::Settle {
                queue,
                acks: Cow::Owned(acks),
            }
        }
        tag::RETRY_FAILED => Event::RetryFailed {
            queue: r.string()?,
            id: r.id()?,
        },
        tag::REMOVE_JOB => Event::RemoveJob {
            queue: r.string()?,
            id: r.id()?,
        },
        tag::PAUSED => Event::Paused {
            queue: r.string()?,
            paused: r.flag()?,
        },
        tag::CLEAR => Event::Clear { queue: r.string()? },
        tag::DELETE => Event::Delete { queue: r.string()? },
        tag::DECLARE => Event::Declare {
            queue: r.string()?,
            declaration: Cow::Owned(r.declaration()?),
        },
        tag::TOTALS => Event::Totals {
            queue: r.string()?,
            completed: r.u64()?,
            failed: r.u64()?,
        },
        tag::SAVE_SCHEDULE => Event::SaveSchedule(Cow::Owned(r.schedule()?)),
        tag::REMOVE_SCHEDULE => Event::RemoveSchedule(r.string()?),
        other => return Err(DecodeError(format!("unknown event kind {other}"))),
    };
    if !r.0.is_empty() {
        return Err(DecodeError(format!(
            "{} bytes left over after the event",
            r.0.len()
        )));
    }
    Ok(event)
}

/// Lower bounds of an encoded item's size: a count larger than the bytes left could hold is
/// damage, not a reason to allocate.
const JOB_MIN_BYTES: usize = 16 + 4 + 2 + 8 + 8 * 6 + 1;
const ACK_MIN_BYTES: usize = 16 + 4 + 8 + 1;

pub(super) struct Writer<'a>(pub(super) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(super) fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    pub(super) fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    pub(super) fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    pub(super) fn f64(&mut self, value: f64) {
        self.0.extend_from_slice(&value.to_bits().to_le_bytes());
    }
    pub(super) fn bytes(&mut self, value: &[u8]) {
        self.u32(value.len() as u32);
        self.0.extend_from_slice(value);
    }
    pub(super) fn str(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }
    pub(super) fn id(&mut self, id: JobId) {
        self.0.extend_from_slice(id.0.as_bytes());
    }
    pub(super) fn opt<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            Some(value) => {
                self.u8(1);
                write(self, value);
            }
            None => self.u8(0),
        }
    }
    pub(super) fn strs(&mut self, values: &[String]) {
        self.u32(values.len() as u32);
        for value in values {
            self.str(value);
        }
    }
    pub(super) fn runs(&mut self, runs: &[(JobId, u32)]) {
        self.u32(runs.len() as u32);
        for &(id, attempt) in runs {
            self.id(id);
            self.u32(attempt);
        }
    }
    pub(super) fn job(&mut self, job: &Job) {
        self.id(job.id);
        self.bytes(&job.data);
        self.u8(job.priority as u8);
        self.u8(state_code(job.state));
        self.u32(job.attempts);
        self.u32(job.max_attempts);
        self.f64(job.timeout);
        self.f64(job.created_at);
        self.f64(job.scheduled_at.get().unwrap_or(f64::NAN));
        self.f64(job.started_at.get().unwrap_or(f64::NAN));
        self.f64(job.finished_at.get().unwrap_or(f64::NAN));
        self.u64(job.seq);
        self.opt(job.extras(), |w, extras| {
            w.strs(&extras.tags);
            w.opt(extras.metadata.as_deref(), Writer::bytes);
            w.opt(extras.result.as_deref(), Writer::bytes);
            w.opt(extras.error.as_deref(), Writer::str);
            w.opt(extras.traceback.as_deref(), Writer::str);
            w.opt(extras.schedule_id.as_deref(), Writer::str);
            w.f64(extras.delay);
        });
    }
    /// Jobs of any queues, each with its queue's name.
    pub(super) fn jobs_with_queues(&mut self, jobs: &[Job]) {
        self.u32(jobs.len() as u32);
        for job in jobs {
            self.str(&job.queue);
            self.job(job);
        }
    }
    pub(super) fn ack(&mut self, ack: &Ack) {
        self.id(ack.id);
        self.u32(ack.attempt);
        self.f64(ack.at);
        match &ack.settlement {
            Settlement::Completed { result } => {
                self.u8(0);
                self.opt(result.as_deref(), Writer::bytes);
            }
            Settlement::Retry {
                due,
                error,
                traceback,
            } => {
                self.u8(1);
                self.f64(*due);
                self.str(error);
                self.opt(traceback.as_deref(), Writer::str);
            }
            Settlement::Failed { error, traceback } => {
                self.u8(2);
                self.str(error);
                self.opt(traceback.as_deref(), Writer::str);
            }
        }
    }
    pub(super) fn acks(&mut self, acks: &[Ack]) {
        self.u32(acks.len() as u32);
        for ack in acks {
            self.ack(ack);
        }
    }
    pub(super) fn declaration(&mut self, declaration: &QueueDeclaration) {
        let retention = &declaration.retention;
        self.f64(retention.ttl);
        self.u64(retention.keep_completed as u64);
        self.u64(retention.keep_failed as u64);
        self.bytes(&declaration.settings);
    }
    pub(super) fn schedule(&mut self, schedule: &ScheduleRecord) {
        self.str(&schedule.id);
        self.opt(schedule.name.as_deref(), Writer::str);
        self.str(&schedule.queue);
        self.str(&schedule.cron);
        self.bytes(&schedule.data);
        self.u8(schedule.priority as u8);
        self.opt(schedule.attempts, Writer::u32);
        self.opt(schedule.timeout, Writer::f64);
        self.strs(&schedule.tags);
        self.opt(schedule.metadata.as_deref(), Writer::bytes);
    }
}

fn state_code(state: JobState) -> u8 {
    match state {
        JobState::Waiting => 0,
        JobState::Delayed => 1,
        JobState::Active => 2,
        JobState::Completed => 3,
        JobState::Failed => 4,
    }
}

pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        if self.0.len() < n {
            return Err(DecodeError(format!(
                "the event ends early ({} bytes wanted, {} left)",
                n,
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Decoded<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    pub(super) fn u8(&mut self) -> Decoded<u8> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn flag(&mut self) -> Decoded<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError(format!("bad flag byte {other}"))),
        }
    }
    pub(super) fn u32(&mut self) -> Decoded<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(super) fn u64(&mut self) -> Decoded<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(super) fn f64(&mut self) -> Decoded<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    /// A count of items each at least `min` bytes long.
    pub(super) fn count(&mut self, min: usize) -> Decoded<usize> {
        let count = self.u32()? as usize;
        if count.saturating_mul(min) > self.0.len() {
            return Err(DecodeError(format!("a count of {count} items cannot fit")));
        }
        Ok(count)
    }
    pub(super) fn bytes(&mut self) -> Decoded<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    pub(super) fn payload(&mut self) -> Decoded<Payload> {
        Ok(Arc::from(self.bytes()?))
    }
    pub(super) fn str(&mut self) -> Decoded<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|e| DecodeError(format!("bad text: {e}")))
    }
    pub(super) fn string(&mut self) -> Decoded<Cow<'static, str>> {
        Ok(Cow::Owned(self.str()?.to_string()))
    }
    pub(super) fn id(&mut self) -> Decoded<JobId> {
        Ok(JobId(uuid::Uuid::from_bytes(self.array()?)))
    }
    pub(super) fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Decoded<T>,
    ) -> Decoded<Option<T>> {
        match self.flag()? {
            true => read(self).map(Some),
            false => Ok(None),
        }
    }
    pub(super) fn strs(&mut self) -> Decoded<Vec<String>> {
        let count = self.count(4)?;
        (0..count).map(|_| self.str().map(str::to_string)).collect()
    }
    pub(super) fn runs(&mut self) -> Decoded<Vec<(JobId, u32)>> {
        let count = self.count(20)?;
        (0..count).map(|_| Ok((self.id()?, self.u32()?))).collect()
    }
    pub(super) fn priority(&mut self) -> Decoded<Priority> {
        let level = self.u8()?;
        Priority::from_level(i64::from(level))
            .map_err(|_| DecodeError(format!("bad priority {level}")))
    }
    pub(super) fn job(&mut self, queue: &Arc<str>) -> Decoded<Job> {
        let id = self.id()?;
        let data = self.payload()?;
        let priority = self.priority()?;
        let state = match self.u8()? {
            0 => JobState::Waiting,
            1 => JobState::Delayed,
            2 => JobState::Active,
            3 => JobState::Completed,
            4 => JobState::Failed,
            other => return Err(DecodeError(format!("bad job state {other}"))),
        };
        let time = |r: &mut Self| -> Decoded<MaybeTime> {
            let value = r.f64()?;
            Ok(MaybeTime::from((!value.is_nan()).then_some(value)))
        };
        Ok(Job {
            id,
            queue: queue.clone(),
            data,
            priority,
            state,
            attempts: self.u32()?,
            max_attempts: self.u32()?,
            timeout: self.f64()?,
            created_at: self.f64()?,
            scheduled_at: time(self)?,
            started_at: time(self)?,
            finished_at: time(self)?,
            seq: self.u64()?,
            extras: self.opt(|r| {
                Ok(Box::new(JobExtras {
                    tags: r.strs()?,
                    metadata: r.opt(Reader::payload)?,
                    result: r.opt(Reader::payload)?,
                    error: r.opt(|r| r.str().map(str::to_string))?,
                    traceback: r.opt(|r| r.str().map(str::to_string))?,
                    schedule_id: r.opt(|r| r.str().map(Arc::from))?,
                    delay: r.f64()?,
                }))
            })?,
        })
    }
    pub(super) fn jobs_with_queues(&mut self) -> Decoded<Vec<Job>> {
        let count = self.count(JOB_MIN_BYTES)?;
        (0..count)
            .map(|_| {
                let queue: Arc<str> = Arc::from(self.str()?);
                self.job(&queue)
            })
            .collect()
    }
    pub(super) fn ack(&mut self) -> Decoded<Ack> {
        let id = self.id()?;
        let attempt = self.u32()?;
        let at = self.f64()?;
        let settlement = match self.u8()? {
            0 => Settlement::Completed {
                result: self.opt(Reader::payload)?,
            },
            1 => Settlement::Retry {
                due: self.f64()?,
                error: self.str()?.to_string(),
                traceback: self.opt(|r| r.str().map(str::to_string))?,
            },
            2 => Settlement::Failed {
                error: self.str()?.to_string(),
                traceback: self.opt(|r| r.str().map(str::to_string))?,
            },
            other => return Err(DecodeError(format!("bad settlement {other}"))),
        };
        Ok(Ack {
            id,
            attempt,
            at,
            settlement,
        })
    }
    pub(super) fn acks(&mut self) -> Decoded<Vec<Ack>> {
        let count = self.count(ACK_MIN_BYTES)?;
        (0..count).map(|_| self.ack()).collect()
    }
    pub(super) fn declaration(&mut self) -> Decoded<QueueDeclaration> {
        let count = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        Ok(QueueDeclaration {
            retention: Retention {
                ttl: self.f64()?,
                keep_completed: count(self.u64()?),
                keep_failed: count(self.u64()?),
            },
            settings: self.payload()?,
        })
    }
    pub(super) fn schedule(&mut self) -> Decoded<ScheduleRecord> {
        Ok(ScheduleRecord {
            id: Arc::from(self.str()?),
            name: self.opt(|r| r.str().map(str::to_string))?,
            queue: Arc::from(self.str()?),
            cron: self.str()?.to_string(),
            data: self.payload()?,
            priority: self.priority()?,
            attempts: self.opt(Reader::u32)?,
            timeout: self.opt(Reader::f64)?,
            tags: self.strs()?,
            metadata: self.opt(Reader::payload)?,
        })
    }
}
