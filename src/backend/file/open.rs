//! Opening a store: the newest finished snapshot and the segments after it are replayed, in
//! order, into a fresh memory store. Damage is cut off, never a crash: a torn tail (a write the
//! process or the machine did not finish) is truncated with a warning; a damaged segment stops
//! the replay there, and the files after it are set aside (`*.damaged-*`), since their events
//! may build on the ones lost. A log of a newer format is refused before anything is touched.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::lock::DirLock;
use super::segment::{self, Ending, HeaderError, Kind, END_PAYLOAD};
use super::writer::{io_error, FileLog};
use super::{codec, compact, FileBackend, FileOptions};
use crate::backend::memory::MemoryBackend;
use crate::backend::Backend;
use crate::error::{QueueError, Result};

/// Opens the store whose lock this process took; returns it with the size of the snapshot it
/// started from. Jobs found running are left so (see `recover_lost_runs`).
pub(super) fn open(options: &FileOptions, lock: DirLock) -> Result<(FileBackend, u64)> {
    let dir = options.path.as_path();
    let files = list(dir)?;

    // The newest snapshot that is whole; the segments it covers go (a compaction that
    // crashed after its rename left them).
    let mut base: Option<(u64, Vec<u8>)> = None;
    for (number, path) in files.snapshots.iter().rev() {
        let bytes = read(dir, path)?;
        let problem = match segment::check_header(&bytes, Kind::Snapshot, *number) {
            Err(HeaderError::Newer(version)) => return Err(newer(path, version)),
            Err(HeaderError::Damaged(why)) => Some(why),
            Ok(()) if segment::scan(&bytes).2 != Ending::Marked => {
                Some("it is incomplete or damaged".into())
            }
            Ok(()) => None,
        };
        match problem {
            None => {
                base = Some((*number, bytes));
                break;
            }
            Some(why) => set_aside(path, &why),
        }
    }
    let start = base.as_ref().map_or(0, |(number, _)| *number);
    compact::remove_covered(dir, start)
        .map_err(|e| io_error(dir, "could not remove compacted segments", e))?;
    let segments: Vec<&(u64, PathBuf)> = files
        .logs
        .iter()
        .filter(|(number, _)| *number >= start)
        .collect();
    for (number, path) in &segments {
        let mut header = [0u8; segment::HEADER_LEN];
        let _ = std::fs::File::open(path).and_then(|mut f| {
            std::io::Read::read(&mut f, &mut header)?;
            Ok(())
        });
        if let Err(HeaderError::Newer(version)) = segment::check_header(&header, Kind::Log, *number)
        {
            return Err(newer(path, version));
        }
    }

    let next = segments
        .last()
        .map_or(start.max(1), |(number, _)| number + 1);
    let log = FileLog::create(dir, next, options.fsync, lock)?;
    let backend = MemoryBackend::with_journal(log);
    let mut replayed_bytes = 0u64;
    let snapshot_bytes = base.as_ref().map_or(0, |(_, bytes)| bytes.len() as u64);
    if let Some((number, bytes)) = &base {
        let name = dir.join(segment::file_name(Kind::Snapshot, *number));
        let (frames, _, _) = segment::scan(bytes);
        for payload in frames {
            match codec::decode(payload) {
                Ok(event) => backend.replay(event),
                Err(error) => {
                    log::error!(
                        target: "rnode_queue",
                        "file store: an event of snapshot {} cannot be read ({}); it is skipped",
                        name.display(),
                        error.0
                    );
                }
            }
        }
    }
    for (index, (number, path)) in segments.iter().enumerate() {
        let bytes = read(dir, path)?;
        let last = index + 1 == segments.len();
        let (stop, ending) = match segment::check_header(&bytes, Kind::Log, *number) {
            Err(HeaderError::Damaged(why)) => {
                set_aside(path, &why);
                (None, Ending::Torn)
            }
            Err(HeaderError::Newer(version)) => return Err(newer(path, version)),
            Ok(()) => {
                let (frames, mut stop, mut ending) = segment::scan(&bytes);
                for payload in frames {
                    match codec::decode(payload) {
                        Ok(event) => {
                            backend.replay(event);
                            replayed_bytes += (segment::FRAME_OVERHEAD + payload.len()) as u64;
                        }
                        Err(error) => {
                            // Damage with a matching checksum: the replay stops before it.
                            log::warn!(
                                target: "rnode_queue",
                                "file store: an event in {} cannot be read ({})",
                                path.display(),
                                error.0
                            );
                            stop = payload.as_ptr() as usize
                                - bytes.as_ptr() as usize
                                - segment::FRAME_OVERHEAD;
                            ending = Ending::Torn;
                            break;
                        }
                    }
                }
                (Some(stop), ending)
            }
        };
        if ending == Ending::Marked {
            continue;
        }
        let later: Vec<&PathBuf> = segments[index + 1..].iter().map(|(_, p)| p).collect();
        let later_hold_events = later.iter().any(|p| holds_events(p));
        if ending == Ending::Torn || later_hold_events {
            log::warn!(
                target: "rnode_queue",
                "file store: {} is torn or damaged at byte {}; the events before it were \
                 recovered{}",
                path.display(),
                stop.unwrap_or(0),
                if later_hold_events {
                    format!(", the {} later segment(s) set aside", later.len())
                } else if last {
                    ", the rest (an unfinished write) dropped".to_string()
                } else {
                    String::new()
                }
            );
        }
        if let Some(stop) = stop {
            finish(path, stop)
                .map_err(|e| io_error(dir, "could not truncate a torn segment", e))?;
        }
        for path in later {
            if later_hold_events {
                set_aside(path, "it follows a damaged segment");
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
        break;
    }
    backend.journal().add_since_snapshot(replayed_bytes);
    // What retention dropped after the last snapshot goes again, and due jobs become waiting.
    let now = crate::job::now();
    for name in backend.queue_names()? {
        backend.tick(&name, now)?;
    }
    Ok((backend, snapshot_bytes))
}

struct Files {
    logs: Vec<(u64, PathBuf)>,
    snapshots: Vec<(u64, PathBuf)>,
}

fn list(dir: &Path) -> Result<Files> {
    let mut files = Files {
        logs: Vec::new(),
        snapshots: Vec::new(),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, "could not list", e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| io_error(dir, "could not list", e))?
            .path();
        if path.extension().is_some_and(|ext| ext == "tmp") {
            // A compaction that did not finish: the segments it would have replaced are whole.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match segment::parse_name(&path) {
            Some((Kind::Log, number)) => files.logs.push((number, path)),
            Some((Kind::Snapshot, number)) => files.snapshots.push((number, path)),
            None => {}
        }
    }
    files.logs.sort();
    files.snapshots.sort();
    Ok(files)
}

fn read(dir: &Path, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_error(dir, &format!("could not read {}", path.display()), e))
}

fn newer(path: &Path, version: u32) -> QueueError {
    QueueError::Backend(format!(
        "{} was written in log format {version}, newer than this rnode-queue reads (format \
         {}): upgrade rnode-queue to open this store; nothing was changed",
        path.display(),
        segment::FORMAT_VERSION
    ))
}

fn set_aside(path: &Path, why: &str) {
    match segment::set_aside(path) {
        Ok(aside) => log::warn!(
            target: "rnode_queue",
            "file store: {} cannot be used ({why}); set aside as {}",
            path.display(),
            aside.display()
        ),
        Err(error) => log::error!(
            target: "rnode_queue",
            "file store: {} cannot be used ({why}) nor set aside ({error})",
            path.display()
        ),
    }
}

/// Whether a segment holds any event (one made just before a crash may hold none).
fn holds_events(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| !segment::scan(&bytes).0.is_empty())
}

/// Ends a segment at `stop` with the end mark, dropping what follows.
fn finish(path: &Path, stop: usize) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    let end = segment::frame(&END_PAYLOAD);
    file.set_len(stop as u64)?;
    file.seek(SeekFrom::Start(stop as u64))?;
    file.write_all(&end)?;
    file.sync_all()
}
