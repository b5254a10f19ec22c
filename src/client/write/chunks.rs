//! The receive thread's side of one copy: where each payload goes before its chunk is whole,
//! staged in memory or written through the page cache, and the whole chunks handed on in
//! order.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use super::output::Output;
use super::stock::Staged;
use super::{Failure, CHUNK, INCOMPLETE, WRITING};
use crate::sys::IOV_MAX;

/// Staged chunks one copy may hold before they are whole (32 MiB): in order, a copy fills
/// one or two at a time; more means its head waits for a repair.
pub(super) const OPEN_PER_COPY: usize = 8;

pub(crate) struct Chunks {
    out: Arc<Output>,
    /// The first chunk not yet handed to the pool.
    head: u64,
    /// Chunks `head`, `head + 1`, ... as far as payloads have come.
    slots: VecDeque<Filling>,
}

/// A chunk on its way: how much of it came, and where it is kept.
#[derive(Default)]
struct Filling {
    /// Bytes of the chunk received.
    filled: usize,
    place: Place,
}

#[derive(Default)]
enum Place {
    /// Nothing received yet.
    #[default]
    Untouched,
    /// In memory, written to the file once whole.
    Staged(Staged),
    /// Written to the file through the page cache as it comes.
    Cached,
}

impl Chunks {
    pub(crate) fn new(out: Arc<Output>) -> Chunks {
        Chunks {
            out,
            head: 0,
            slots: VecDeque::new(),
        }
    }

    pub(crate) fn output(&self) -> &Arc<Output> {
        &self.out
    }

    /// The whole copy, written: [`Output::finish`] once every chunk came whole and was handed
    /// on, an error if some did not.
    pub(crate) fn finish(&self) -> Result<Option<[u8; 32]>, Failure> {
        if self.head < self.out.chunks() {
            let e = io::Error::other(format!(
                "only {} of {} chunks came",
                self.head,
                self.out.chunks()
            ));
            return Err((INCOMPLETE, e));
        }
        self.out.finish()
    }

    /// Puts consecutive payloads, the first at `offset`, into their chunks; hands every chunk
    /// that is now whole (from the first unfinished one on) to the writer pool. Each byte of
    /// the copy must come once (the receiver drops duplicates).
    pub(crate) fn write_run(&mut self, offset: u64, run: &[IoSlice<'_>]) -> Result<(), Failure> {
        if let Some(failure) = self.out.error() {
            return Err(failure);
        }
        self.place(offset, run).map_err(|e| (WRITING, e))
    }

    fn place(&mut self, offset: u64, run: &[IoSlice<'_>]) -> io::Result<()> {
        // Pieces going through the page cache, gathered into one pwritev while consecutive.
        let mut cached: Vec<IoSlice<'_>> = Vec::new();
        let mut cached_at = 0u64;
        let mut cached_end = 0u64;
        let mut pos = offset;
        for payload in run {
            let mut data: &[u8] = payload;
            while !data.is_empty() {
                let k = pos / CHUNK;
                let within = (pos % CHUNK) as usize;
                let take = data.len().min(CHUNK as usize - within);
                let (piece, rest) = data.split_at(take);
                let Some(slot) = filling(&mut self.slots, self.head, &self.out, k) else {
                    // Before the first unfinished chunk, already handed on: the receiver
                    // drops duplicates, so this is a bug; the copy fails rather than risk a
                    // chunk written with a hole.
                    return Err(io::Error::other(format!(
                        "a payload at offset {pos} came after its chunk was complete"
                    )));
                };
                slot.filled += take;
                if let Place::Staged(staged) = &mut slot.place {
                    staged.bytes_mut()[within..within + take].copy_from_slice(piece);
                } else {
                    if pos != cached_end || cached.len() == IOV_MAX {
                        self.out.write_cached(cached_at, &cached)?;
                        cached.clear();
                        cached_at = pos;
                    }
                    cached.push(IoSlice::new(piece));
                    cached_end = pos + take as u64;
                }
                pos += take as u64;
                data = rest;
            }
        }
        self.out.write_cached(cached_at, &cached)?;
        // Every piece is in place: the whole chunks at the front can go.
        while self
            .slots
            .front()
            .is_some_and(|s| s.filled >= self.out.chunk_len(self.head))
        {
            let slot = self.slots.pop_front().unwrap_or_default();
            let staged = match slot.place {
                Place::Staged(s) => Some(s),
                _ => None,
            };
            self.out.submit(self.head, staged);
            self.head += 1;
        }
        Ok(())
    }
}

/// Chunk `k`'s slot among `slots` (from chunk `head` on), created (and staged, while the
/// stock lasts and `out` writes direct) on first use; `None` if `k` was already handed on.
fn filling<'s>(
    slots: &'s mut VecDeque<Filling>,
    head: u64,
    out: &Output,
    k: u64,
) -> Option<&'s mut Filling> {
    let i = k.checked_sub(head)? as usize;
    if i >= slots.len() {
        slots.resize_with(i + 1, Filling::default);
    }
    if matches!(slots[i].place, Place::Untouched) {
        // A copy waiting for a repair at its head touches chunk after chunk: it may not hold
        // the whole stock meanwhile.
        let open = slots
            .iter()
            .filter(|s| matches!(s.place, Place::Staged(_)))
            .count();
        let staged = (out.direct.is_some() && open < OPEN_PER_COPY)
            .then(|| Staged::take(&out.engine))
            .flatten();
        slots[i].place = match staged {
            Some(staged) => Place::Staged(staged),
            None => Place::Cached,
        };
    }
    Some(&mut slots[i])
}
