//! A copy's BLAKE3, over its chunks in file order, whichever thread finishes which chunk
//! first: a staged chunk hashed from its buffer, one written through the page cache read
//! back from the file.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use super::output::Output;
use super::stock::Staged;
use super::{lock, CHUNK, READING};
use crate::sys::hugebuf::HugeBuf;

/// A chunk written through the page cache is read back for its hash this much at a time.
const READ_BACK: usize = 1 << 20;

thread_local! {
    /// A thread's buffer for reading chunks back to hash them (hashing threads, and receive
    /// threads when they hash their copy's chunks themselves).
    static SCRATCH: std::cell::RefCell<Option<HugeBuf>> = const { std::cell::RefCell::new(None) };
}

/// BLAKE3 over the chunks in file order.
pub(super) struct OrderedHash {
    state: Mutex<HashState>,
    /// `state.next`, readable without its lock.
    next: AtomicU64,
    /// Chunks ready to hash, ahead of `next`: `None` for one to read back from the file.
    ready: Mutex<BTreeMap<u64, Option<Arc<Staged>>>>,
}

struct HashState {
    hasher: blake3::Hasher,
    /// The next chunk to hash.
    next: u64,
}

impl OrderedHash {
    pub(super) fn new() -> OrderedHash {
        OrderedHash {
            state: Mutex::new(HashState {
                hasher: blake3::Hasher::new(),
                next: 0,
            }),
            next: AtomicU64::new(0),
            ready: Mutex::new(BTreeMap::new()),
        }
    }

    /// Chunk `k` is whole (`staged`, or in the file if `None`); returns how many wait.
    pub(super) fn add(&self, k: u64, staged: Option<Arc<Staged>>) -> usize {
        let mut ready = lock(&self.ready);
        ready.insert(k, staged);
        ready.len()
    }

    /// The hash of every chunk hashed so far (all of them, once the copy is finished).
    pub(super) fn finalize(&self) -> [u8; 32] {
        *lock(&self.state).hasher.finalize().as_bytes()
    }

    /// Hashes the ready chunks of `out` in order, unless another thread is at it (which then
    /// sees what was made ready meanwhile).
    pub(super) fn hash_ready(&self, out: &Output) {
        loop {
            let mut st = match self.state.try_lock() {
                Ok(st) => st,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let next = st.next;
                let Some(chunk) = lock(&self.ready).remove(&next) else {
                    break;
                };
                if !out.has_failed() {
                    hash_chunk(out, &mut st.hasher, next, chunk);
                }
                st.next += 1;
                self.next.store(st.next, Ordering::Release);
            }
            drop(st);
            // A chunk made ready while this thread held the state, by a thread that then
            // left it to this one: take it now.
            if !lock(&self.ready).contains_key(&self.next.load(Ordering::Acquire)) {
                return;
            }
        }
    }
}

fn hash_chunk(out: &Output, hasher: &mut blake3::Hasher, k: u64, chunk: Option<Arc<Staged>>) {
    let n = out.chunk_len(k);
    match chunk {
        Some(staged) => {
            hasher.update(&staged.bytes()[..n]);
        }
        None => SCRATCH.with_borrow_mut(|scratch| {
            let buf = scratch.get_or_insert_with(|| HugeBuf::new(READ_BACK));
            let mut done = 0;
            while done < n {
                let data = &mut buf.as_mut_slice()[..(n - done).min(READ_BACK)];
                if let Err(e) = out.file.read_exact_at(data, k * CHUNK + done as u64) {
                    out.fail(READING, e);
                    return;
                }
                hasher.update(data);
                done += data.len();
            }
        }),
    }
}
