//! The staging buffers of a run: chunks held in memory until they are written with
//! `O_DIRECT` and hashed. Reused huge-page buffers, as few as the copies written direct need.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{lock, WriteEngine, CHUNK};
use crate::sys::hugebuf::HugeBuf;

/// Staged chunks a run may hold: [`STAGE_BASE`] plus [`STAGE_PER_COPY`] for each copy being
/// written direct, at most [`STAGE_MAX`]. Payloads arriving in order fill one chunk of each
/// copy at a time; the rest are chunks waiting for the disk. When the network outruns the
/// disk, the stock runs out and the excess goes through the page cache instead of waiting:
/// the disk takes what it can, the page cache the rest. Every buffer is fresh memory the
/// kernel must clear (and, in a VM, the hypervisor hand over) once per process, so the
/// stock is no larger than it must be. Measured (1 GiB, loopback, 3 runs each, perf/README.md):
/// 4 chunks 1358-1625 MiB/s (80% direct), 8: 1300-1676 (91%), 16: 1550-1737 (96%), 32:
/// 1326-1577 (98%), 64: 1365-1632. Ten copies at once need a chunk each to fill and more
/// waiting for the disk (10 x 250 MiB with `HASH_BACKLOG`: 83-88% of the bytes direct).
pub(super) const STAGE_BASE: usize = 14;
pub(super) const STAGE_PER_COPY: usize = 2;
/// 256 MiB.
pub(super) const STAGE_MAX: usize = 64;

/// The buffers, those made, and the copies they are for.
pub(super) struct Stock {
    free: Mutex<Vec<HugeBuf>>,
    made: AtomicUsize,
    /// Copies being written direct now.
    copies: AtomicUsize,
    /// The most buffers, whatever the copies.
    max: usize,
}

impl Stock {
    pub(super) fn new(max: usize) -> Stock {
        Stock {
            free: Mutex::new(Vec::new()),
            made: AtomicUsize::new(0),
            copies: AtomicUsize::new(0),
            max,
        }
    }

    /// How many staged chunks the run may hold while `copies` copies are written direct.
    pub(super) fn limit(&self, copies: usize) -> usize {
        STAGE_BASE
            .saturating_add(STAGE_PER_COPY.saturating_mul(copies))
            .min(STAGE_MAX)
            .min(self.max)
    }

    pub(super) fn copies(&self) -> usize {
        self.copies.load(Ordering::Relaxed)
    }

    /// A copy written direct begins (`true`) or ends.
    pub(super) fn copy_direct(&self, begins: bool) {
        if begins {
            self.copies.fetch_add(1, Ordering::Relaxed);
        } else {
            self.copies.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A staged chunk's buffer; dropped, it goes back to its run's stock.
pub(crate) struct Staged {
    buf: Option<HugeBuf>,
    engine: Arc<WriteEngine>,
}

impl Staged {
    /// A buffer from `engine`'s stock, or a new one while the stock is under its limit.
    pub(super) fn take(engine: &Arc<WriteEngine>) -> Option<Staged> {
        let stock = &engine.stock;
        let staged = |buf| Staged {
            buf: Some(buf),
            engine: engine.clone(),
        };
        if let Some(buf) = lock(&stock.free).pop() {
            return Some(staged(buf));
        }
        let limit = stock.limit(stock.copies());
        if stock.made.fetch_add(1, Ordering::Relaxed) < limit {
            return Some(staged(HugeBuf::new(CHUNK as usize)));
        }
        stock.made.fetch_sub(1, Ordering::Relaxed);
        None
    }

    pub(super) fn bytes(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_slice())
    }

    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut().map_or(&mut [], |b| b.as_mut_slice())
    }
}

impl Drop for Staged {
    /// Back to the stock, or unmapped if the stock is over its limit now (fewer copies are
    /// written than when it was made).
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let stock = &self.engine.stock;
            let limit = stock.limit(stock.copies());
            let mut free = lock(&stock.free);
            if stock.made.load(Ordering::Relaxed) > limit {
                stock.made.fetch_sub(1, Ordering::Relaxed);
                drop(free);
                drop(buf);
            } else {
                free.push(buf);
            }
        }
    }
}
