//! Job ids: UUIDv7, unique across processes without coordination (random bits per process,
//! drawn from the OS and drawn again in every forked child), consecutive within a process.
//! Ids know nothing of jobs; errors may carry them.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;

use uuid::Uuid;

/// A job's id: a UUID (version 7: time-ordered), kept as 16 bytes and shown as text only at
/// the boundary.
///
/// Layout: 48 bits of Unix milliseconds, then 32 random bits fixed per process, then a 42-bit
/// counter. Unique across processes without coordination, and consecutive within a process —
/// which the job store turns into memory locality (see `IdHasher`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct JobId(pub Uuid);

const COUNTER_BITS: u32 = 42;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

/// The process's random bits, with bit 32 set once they are chosen (0: not yet). Reset to 0 in
/// a forked child (see `forget_in_child`), which then draws its own on first use.
static PROCESS_BITS: AtomicU64 = AtomicU64::new(0);
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Held while the bits are drawn.
static SEEDING: AtomicBool = AtomicBool::new(false);

impl JobId {
    /// A fresh id for a job created at `created_at`: no syscall, no lock (one atomic add).
    pub fn new(created_at: f64) -> Self {
        let mut bits = PROCESS_BITS.load(Ordering::Acquire);
        if bits == 0 {
            bits = Self::seed();
        }
        let process = bits as u32;
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed) & COUNTER_MASK;
        let millis = ((created_at.max(0.0) * 1000.0) as u64) & ((1 << 48) - 1);
        // rand_a (12 bits) and the top 20 bits of rand_b carry the process bits.
        let rand_a = (process >> 20) as u16 & 0x0fff;
        let rand_b = (u64::from(process) & 0xf_ffff) << COUNTER_BITS | counter;
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        bytes[6..8].copy_from_slice(&(0x7000 | rand_a).to_be_bytes());
        bytes[8..].copy_from_slice(&((2 << 62) | rand_b).to_be_bytes());
        JobId(Uuid::from_bytes(bytes))
    }

    /// Draws the process bits and the counter's start from the OS (a v4 UUID is 122 bits of OS
    /// entropy), at first use and again after `fork`. A user-space generator would not do: its
    /// state is copied by `fork`, so sibling children would draw the same bits.
    fn seed() -> u64 {
        static AT_FORK: Once = Once::new();
        AT_FORK.call_once(|| {
            // SAFETY: registers a handler that only stores to atomics (async-signal-safe).
            unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) };
        });
        // One thread seeds; one that comes meanwhile waits for its bits (a spin of a syscall's
        // length: no lock that `fork` could copy held).
        while SEEDING
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let mut bits = PROCESS_BITS.load(Ordering::Acquire);
        if bits == 0 {
            let (high, low) = Uuid::new_v4().as_u64_pair();
            COUNTER.store(low & COUNTER_MASK, Ordering::Relaxed);
            bits = 1 << 32 | (high & 0xffff_ffff);
            PROCESS_BITS.store(bits, Ordering::Release);
        }
        SEEDING.store(false, Ordering::Release);
        bits
    }

    pub fn parse(text: &str) -> Option<Self> {
        Uuid::try_parse(text).ok().map(JobId)
    }

    /// The table position comes from the low bits of the id (the counter), so that jobs pushed
    /// one after another sit next to each other and a FIFO walk through a large queue stays in
    /// the cache; the top bits (the table's tag byte) are mixed so that tags still differ.
    pub(crate) fn hash_word(&self) -> u64 {
        let low = self.0.as_u64_pair().1;
        let mixed = low.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (low & !(0x7f << 57)) | (mixed & (0x7f << 57))
    }
}

impl std::hash::Hash for JobId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash_word());
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// In every forked child, whoever forked (a manager, multiprocessing, a web server): the child
/// must not repeat its parent's ids.
extern "C" fn forget_in_child() {
    SEEDING.store(false, Ordering::Release);
    PROCESS_BITS.store(0, Ordering::Release);
}

/// Passes `JobId::hash_word` through unchanged.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `JobId`; a plain fold keeps the hasher total.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }
}

pub type IdMap<V> = std::collections::HashMap<JobId, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        let a = JobId::new(1_700_000_000.0);
        let b = JobId::new(1_700_000_000.0);
        assert_ne!(a, b);
        assert_eq!(JobId::parse(&a.to_string()), Some(a));
        assert_eq!(a.0.get_version_num(), 7);
        assert_eq!(a.0.get_variant(), uuid::Variant::RFC4122);
        // Consecutive ids are consecutive in the table, with differing tag bits.
        assert_eq!(
            (b.hash_word() & COUNTER_MASK) - (a.hash_word() & COUNTER_MASK),
            1
        );
    }
}
