//! The moves of one job named by its id: a failed job retried (`Backend::retry_failed`), and
//! a job removed on its own (`Backend::remove_job`: any state but running). Both journaled.

use std::borrow::Cow;

use super::{Event, Journal, MemoryBackend};
use crate::backend::Removal;
use crate::error::Result;
use crate::job::{JobId, JobState};

impl<J: Journal> MemoryBackend<J> {
    pub(super) fn retry_one(&self, id: JobId) -> Result<bool> {
        let Some((name, handle)) = self.queue_holding(id) else {
            return Ok(false);
        };
        let lsn;
        {
            let mut state = handle.state.lock();
            if state.deleted {
                return Ok(false);
            }
            if !state
                .jobs
                .get(&id)
                .is_some_and(|job| job.state == JobState::Failed)
            {
                return Ok(false);
            }
            lsn = self.record(|| Event::RetryFailed {
                queue: Cow::Borrowed(&name),
                id,
            })?;
            state.retry_failed(id);
            handle.notify_fetchers(&state, 1);
        }
        self.journal.commit(lsn)?;
        Ok(true)
    }

    pub(super) fn remove_one(&self, id: JobId) -> Result<Removal> {
        let Some((name, handle)) = self.queue_holding(id) else {
            return Ok(Removal::NotFound);
        };
        let lsn;
        {
            let mut state = handle.state.lock();
            match state.jobs.get(&id).map(|job| job.state) {
                None => return Ok(Removal::NotFound),
                Some(JobState::Active) => return Ok(Removal::Running),
                Some(_) if state.deleted => return Ok(Removal::NotFound),
                Some(_) => {}
            }
            lsn = self.record(|| Event::RemoveJob {
                queue: Cow::Borrowed(&name),
                id,
            })?;
            state.remove(&id);
        }
        self.journal.commit(lsn)?;
        Ok(Removal::Removed)
    }
}
