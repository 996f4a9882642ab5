//! The files of a log and their frames.
//!
//! A directory holds numbered segments (`0000000000000007.log`), maybe a snapshot
//! (`0000000000000007.snapshot`: the whole store as of the start of segment 7, written by a
//! compaction), and the `lock` file. Every file starts with a 32-byte header — magic, format
//! version, kind, number, CRC32C — and holds frames: a u32 length, the CRC32C of length and
//! payload, then the payload (an event, see `codec.rs`, or the end mark). A segment that was
//! rolled over, and every finished snapshot, ends with the end mark: a segment without one,
//! followed by others, was damaged.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"RNQLOG\r\n";
/// The format this version writes; a log from a newer one is refused, never misread.
/// 2: a job removed on its own (`RemoveJob`); a format-1 log is read as ever, and new segments
/// are written in format 2, which an older rnode-queue refuses rather than misreads.
pub const FORMAT_VERSION: u32 = 2;
pub const HEADER_LEN: usize = 32;
/// Length and checksum.
pub const FRAME_OVERHEAD: usize = 8;
/// The payload of the end mark (no event starts with a zero byte).
pub const END_PAYLOAD: [u8; 1] = [0];
pub const END_FRAME_LEN: usize = FRAME_OVERHEAD + END_PAYLOAD.len();

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Log,
    Snapshot,
}

impl Kind {
    fn code(self) -> u32 {
        match self {
            Kind::Log => 0,
            Kind::Snapshot => 1,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Snapshot => "snapshot",
        }
    }
}

pub fn file_name(kind: Kind, number: u64) -> String {
    format!("{number:016}.{}", kind.extension())
}

/// The kind and number a log file's name gives.
pub fn parse_name(path: &Path) -> Option<(Kind, u64)> {
    let kind = match path.extension()?.to_str()? {
        "log" => Kind::Log,
        "snapshot" => Kind::Snapshot,
        _ => return None,
    };
    let stem = path.file_stem()?.to_str()?;
    (stem.len() == 16)
        .then(|| stem.parse().ok())
        .flatten()
        .map(|number| (kind, number))
}

pub fn header(kind: Kind, number: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&kind.code().to_le_bytes());
    header[16..24].copy_from_slice(&number.to_le_bytes());
    let crc = crc32c::crc32c(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a file's header cannot be used.
#[derive(Debug)]
pub enum HeaderError {
    /// Not a header (damage): the file is set aside.
    Damaged(String),
    /// A log written by a newer version: opening the store is refused.
    Newer(u32),
}

pub fn check_header(bytes: &[u8], kind: Kind, number: u64) -> Result<(), HeaderError> {
    let damaged = |why: &str| Err(HeaderError::Damaged(why.to_string()));
    if bytes.len() < HEADER_LEN {
        return damaged("shorter than its header");
    }
    if &bytes[..8] != MAGIC {
        return damaged("not an rnode-queue log (bad magic)");
    }
    let crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..28]) != crc {
        return damaged("header checksum mismatch");
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(HeaderError::Newer(version));
    }
    if u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) != kind.code()
        || u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")) != number
    {
        return damaged("header does not match the file name");
    }
    Ok(())
}

/// Writes a frame of `payload` at the start of `out` (which must be long enough).
pub fn put_frame(out: &mut [u8], payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&len);
    crc = crc32c::crc32c_append(crc, payload);
    out[..4].copy_from_slice(&len);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out[8..8 + payload.len()].copy_from_slice(payload);
}

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; FRAME_OVERHEAD + payload.len()];
    put_frame(&mut out, payload);
    out
}

/// How a scan of a file's frames ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The end mark: the file was finished.
    Marked,
    /// Zeros or the end of the file: it was the tail, written up to here.
    Clean,
    /// Bytes that are not a whole frame with a matching checksum.
    Torn,
}

/// The frames of a file's body (after the header), in order, up to the first that is not
/// whole: the payloads, where they stop (offset in the file), and how.
pub fn scan(bytes: &[u8]) -> (Vec<&[u8]>, usize, Ending) {
    let mut frames = Vec::new();
    let mut at = HEADER_LEN;
    loop {
        let rest = &bytes[at.min(bytes.len())..];
        if rest.len() < FRAME_OVERHEAD {
            let ending = if rest.iter().all(|b| *b == 0) {
                Ending::Clean
            } else {
                Ending::Torn
            };
            return (frames, at, ending);
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 && crc == 0 {
            // Never written. Zeros up to the end: a clean tail; anything after: damage.
            let ending = if rest.iter().all(|b| *b == 0) {
                Ending::Clean
            } else {
                Ending::Torn
            };
            return (frames, at, ending);
        }
        let Some(payload) = rest.get(FRAME_OVERHEAD..FRAME_OVERHEAD + len) else {
            return (frames, at, Ending::Torn);
        };
        let expected = crc32c::crc32c_append(crc32c::crc32c(&rest[..4]), payload);
        if len == 0 || expected != crc {
            return (frames, at, Ending::Torn);
        }
        if payload == END_PAYLOAD {
            return (frames, at, Ending::Marked);
        }
        frames.push(payload);
        at += FRAME_OVERHEAD + len;
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file set aside as damaged keeps its bytes for inspection, under a name no scan reads.
pub fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{}", crate::job::now() as u64));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}
