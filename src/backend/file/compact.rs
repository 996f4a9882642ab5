//! Compaction: the live state is written as a snapshot, and the segments it covers are removed.
//!
//! 1. `Cut`: under every lock of the store, the log starts a new segment S and the state is
//!    copied (a consistent picture: nothing changes between the two);
//! 2. `Written`: the copy goes to `S.snapshot.tmp`, which is synced;
//! 3. `Renamed`: the file becomes `S.snapshot` and the directory is synced;
//! 4. the segments and snapshots below S are removed.
//!
//! A crash at any point loses nothing: before 3, the old segments are still whole (and the
//! `.tmp` file is removed at the next open); after it, the snapshot plus the segments from S
//! hold everything (older files left behind are removed at the next open).

use std::fs::File;
use std::io::{BufWriter, Write};

use super::segment::{self, Kind, END_PAYLOAD};
use super::{codec, FileBackend};
use crate::error::{QueueError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Cut,
    Written,
    Renamed,
}

/// Compacts the log; with `stop_after`, stops there as a crash would (tests). Returns the
/// snapshot's size.
pub(super) fn compact(backend: &FileBackend, stop_after: Option<Step>) -> Result<u64> {
    let log = backend.journal();
    let _compaction = log.compaction();
    let dir = log.dir().to_path_buf();
    let mut number = 0;
    let events = backend.snapshot(|| {
        number = log.cut()?;
        Ok(())
    })?;
    if stop_after == Some(Step::Cut) {
        return Ok(0);
    }
    let name = segment::file_name(Kind::Snapshot, number);
    let path = dir.join(&name);
    let temporary = dir.join(format!("{name}.tmp"));
    let io = |what: &str, error: std::io::Error| super::writer::io_error(&dir, what, error);
    let written = (|| -> std::io::Result<u64> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&temporary)?);
        out.write_all(&segment::header(Kind::Snapshot, number))?;
        let mut size = segment::HEADER_LEN as u64;
        let mut payload = Vec::new();
        for event in &events {
            payload.clear();
            codec::encode(event, &mut payload);
            let frame = segment::frame(&payload);
            out.write_all(&frame)?;
            size += frame.len() as u64;
        }
        let end = segment::frame(&END_PAYLOAD);
        out.write_all(&end)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(size + end.len() as u64)
    })();
    let size = match written {
        Ok(size) => size,
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(io("could not write a snapshot", error));
        }
    };
    if stop_after == Some(Step::Written) {
        return Ok(size);
    }
    if log.is_closed() {
        // Closed meanwhile: the directory may be another process's now.
        let _ = std::fs::remove_file(&temporary);
        return Err(QueueError::Backend(
            "the store closed during a compaction".into(),
        ));
    }
    std::fs::rename(&temporary, &path).map_err(|e| io("could not rename a snapshot", e))?;
    segment::sync_dir(&dir).map_err(|e| io("could not sync the directory", e))?;
    if stop_after == Some(Step::Renamed) {
        return Ok(size);
    }
    remove_covered(&dir, number).map_err(|e| io("could not remove compacted segments", e))?;
    Ok(size)
}

/// Removes the segments and snapshots a snapshot numbered `number` covers.
pub(super) fn remove_covered(dir: &std::path::Path, number: u64) -> std::io::Result<()> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some((_, n)) = segment::parse_name(&path).filter(|(_, n)| *n < number) {
            let _ = n;
            std::fs::remove_file(&path)?;
            removed = true;
        }
    }
    if removed {
        segment::sync_dir(dir)?;
    }
    Ok(())
}
