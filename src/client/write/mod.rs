//! How a copy reaches the disk, and its BLAKE3 content check, off the receive thread.
//!
//! The copy is cut into [`CHUNK`]-sized stretches. The receive thread puts each payload into
//! its chunk ([`Chunks`]): with the direct write path, into a chunk *staged* in memory (a
//! buffer from the run's [`stock`]); otherwise, or when the stock is used up, into the file
//! through the page cache (`pwritev`). Once every byte of the first unfinished chunk is in,
//! the chunk goes to the run's writer threads ([`pools`]): a staged chunk is written to the
//! file with `O_DIRECT` (the device reads it from the buffer; no page-cache page is
//! allocated, filled or written back) by the `write-N` threads, which mostly wait for the
//! disk, and every chunk is hashed in file order ([`hash`]) by the `hash-N` threads, a staged
//! one from its buffer (still in the CPU's cache), one written through the page cache by
//! reading it back. When a copy's chunks pile up unhashed, its receive thread hashes them
//! itself ([`HASH_BACKLOG`]).
//!
//! Why: on this project's VM, buffered writes of a new file ran at 0.3-4 GB/s from one minute
//! to the next (each page-cache page is fresh memory the hypervisor must hand over), while
//! `O_DIRECT` from reused buffers ran at a steady 1.7-2.3 GB/s, the disk's speed (`dd`, 1 GiB).
//! Measured figures are in README.md and perf/README.md (`benches/copybudget.sh`).
//!
//! What is on disk under the temporary name is exactly what was hashed: a staged chunk is
//! hashed from the very buffer the device wrote from, a cached one from the file. A chunk's
//! write error surfaces at the receive thread's next write, and every chunk handed on has been
//! written (or failed) before [`Chunks::finish`] returns, and it refuses a copy whose chunks
//! did not all come, so a copy is renamed only once all of it is written.
//!
//! Everything a run shares (the stock, the threads, how many copies may be written direct)
//! is one [`WriteEngine`] value that `get` makes and passes down: no process-wide state, so
//! two runs in one process (or two tests) do not meddle with each other.

mod chunks;
mod hash;
mod output;
mod pools;
mod stock;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub(super) use chunks::Chunks;
pub(super) use output::Output;
use pools::Pools;
use stock::Stock;

/// A chunk: what one staged buffer holds, one direct write, one step of the hash. Large
/// enough that a job's overhead and a write's latency do not matter, small enough that a
/// staged chunk is still in the CPU's cache when it is hashed, and a multiple of every
/// block size `O_DIRECT` asks offsets to be aligned to.
pub(super) const CHUNK: u64 = 4 << 20;
/// Chunks of one copy waiting for their hash beyond which the receive thread hashes them
/// itself. Measured with 10 copies written at once: the hashing threads, two among a dozen
/// busy threads, fell behind, held the staged chunks and left 66-84% of the bytes to the page
/// cache.
const HASH_BACKLOG: usize = 4;

/// What went wrong with a copy: what was being done (for the message), and the error.
pub(super) type Failure = (&'static str, io::Error);
/// Writing a chunk failed.
const WRITING: &str = "cannot write the copy";
/// The copy ended before all of it came.
const INCOMPLETE: &str = "the copy is incomplete";
/// Hashing a chunk failed (a hashing thread panicked).
const HASHING: &str = "cannot hash the copy";
/// Reading a chunk back for its hash failed.
const READING: &str = "cannot read back the copy to check it";

/// What the copies of one run share to reach the disk: the stock of staging buffers, the
/// writer and hashing threads (started on first use, ended when the engine goes), and how
/// many copies may take a second descriptor to be written direct.
pub(crate) struct WriteEngine {
    stock: Stock,
    pools: OnceLock<Pools>,
    /// Copies that may be written direct at once (each takes a second descriptor).
    direct_budget: usize,
}

impl WriteEngine {
    /// An engine whose copies may take `direct_budget` second descriptors at once, with the
    /// staging stock's usual limits.
    pub(crate) fn new(direct_budget: usize) -> Arc<WriteEngine> {
        Self::with_stock(direct_budget, stock::STAGE_MAX)
    }

    /// The same, with a stock of at most `stock_max` buffers (0: every chunk goes through
    /// the page cache, as when the stock is used up).
    pub(crate) fn with_stock(direct_budget: usize, stock_max: usize) -> Arc<WriteEngine> {
        Arc::new(WriteEngine {
            stock: Stock::new(stock_max),
            pools: OnceLock::new(),
            direct_budget,
        })
    }

    /// Whether one more copy may be written direct: each takes a second descriptor, of
    /// which the run leaves [`WriteEngine::new`]'s budget.
    pub(super) fn direct_allowed(&self) -> bool {
        self.stock.copies() < self.direct_budget
    }

    fn pools(&self) -> &Pools {
        self.pools.get_or_init(Pools::start)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
