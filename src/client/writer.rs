//! How a copy reaches the disk, and its BLAKE3 content check, off the receive thread.
//!
//! The copy is cut into [`CHUNK`]-sized stretches. The receive thread puts each payload into
//! its chunk: with the direct write path, into a chunk *staged* in memory (a buffer from a
//! small process-wide stock); otherwise, or when the stock is used up, into the file through
//! the page cache (`pwritev`). Once every byte of the first unfinished chunk is in, the chunk
//! goes to process-wide writer threads: a staged chunk is written to the file with `O_DIRECT`
//! (the device reads it from the buffer; no page-cache page is allocated, filled or written
//! back) by the `write-N` threads, which mostly wait for the disk, and every chunk is hashed in
//! file order by the `hash-N` threads, a staged one from its buffer (still in the CPU's
//! cache), one written through the page cache by reading it back. When a copy's chunks pile
//! up unhashed, its receive thread hashes them itself ([`HASH_BACKLOG`]).
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

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, TryLockError};

use crate::sys::hugebuf::HugeBuf;

/// A chunk: what one staged buffer holds, one direct write, one step of the hash. Large
/// enough that a job's overhead and a write's latency do not matter, small enough that a
/// staged chunk is still in the CPU's cache when it is hashed, and a multiple of every
/// block size `O_DIRECT` asks offsets to be aligned to.
pub(super) const CHUNK: u64 = 4 << 20;
/// Staged chunks the whole process may hold: [`STAGE_BASE`] plus [`STAGE_PER_COPY`] for each
/// copy being written direct, at most [`STAGE_MAX`]. Payloads arriving in order fill one
/// chunk of each copy at a time; the rest are chunks waiting for the disk. When the network outruns the
/// disk, the stock runs out and the excess goes through the page cache instead of waiting:
/// the disk takes what it can, the page cache the rest. Every buffer is fresh memory the
/// kernel must clear (and, in a VM, the hypervisor hand over) once per process, so the
/// stock is no larger than it must be. Measured (1 GiB, loopback, 3 runs each, perf/README.md):
/// 4 chunks 1358-1625 MiB/s (80% direct), 8: 1300-1676 (91%), 16: 1550-1737 (96%), 32:
/// 1326-1577 (98%), 64: 1365-1632. Ten copies at once need a chunk each to fill and more
/// waiting for the disk (10 x 250 MiB with [`HASH_BACKLOG`]: 83-88% of the bytes direct).
const STAGE_BASE: usize = 14;
const STAGE_PER_COPY: usize = 2;
/// 256 MiB.
const STAGE_MAX: usize = 64;
/// Staged chunks one copy may hold before they are whole (32 MiB): in order, a copy fills
/// one or two at a time; more means its head waits for a repair.
const OPEN_PER_COPY: usize = 8;
/// `O_DIRECT` writes whole blocks: a chunk's last partial block (the file's tail) goes through
/// the page cache.
const BLOCK: usize = 4096;
/// A chunk written through the page cache is read back for its hash this much at a time.
const READ_BACK: usize = 1 << 20;
/// Most pieces in one `pwritev` (the kernel's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;
/// Chunks of one copy waiting for their hash beyond which the receive thread hashes them
/// itself. Measured with 10 copies written at once: the hashing threads, two among a dozen
/// busy threads, fell behind, held the staged chunks and left 66-84% of the bytes to the page
/// cache.
const HASH_BACKLOG: usize = 4;

thread_local! {
    /// A thread's buffer for reading chunks back to hash them (hashing threads, and receive
    /// threads when they hash their copy's chunks themselves).
    static SCRATCH: std::cell::RefCell<Option<HugeBuf>> = const { std::cell::RefCell::new(None) };
}

/// Threads that write staged chunks: enough to keep a disk busy with several copies' chunks
/// (each thread waits for one write at a time).
const DISK_THREADS: usize = 4;
/// Most threads that hash.
const MAX_HASH_THREADS: usize = 4;

/// A staged chunk's buffer; dropped, it goes back to the stock.
pub(super) struct Staged(Option<HugeBuf>);

impl Staged {
    /// A buffer from the stock, or a new one while the stock is under its limit.
    fn take() -> Option<Staged> {
        #[cfg(test)]
        if tests::STOCK_CLOSED.load(Ordering::Relaxed) {
            return None;
        }
        let stock = stock();
        if let Some(buf) = lock(&stock.free).pop() {
            return Some(Staged(Some(buf)));
        }
        let limit = stage_limit(stock.copies.load(Ordering::Relaxed));
        if stock.made.fetch_add(1, Ordering::Relaxed) < limit {
            return Some(Staged(Some(HugeBuf::new(CHUNK as usize))));
        }
        stock.made.fetch_sub(1, Ordering::Relaxed);
        None
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_ref().map_or(&[], |b| b.as_slice())
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.0.as_mut().map_or(&mut [], |b| b.as_mut_slice())
    }
}

impl Drop for Staged {
    /// Back to the stock, or unmapped if the stock is over its limit now (fewer copies are
    /// written than when it was made).
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            let stock = stock();
            let limit = stage_limit(stock.copies.load(Ordering::Relaxed));
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

/// Whether one more copy may be written direct: each takes a second descriptor, and a quarter
/// of the process's limit on open files is the most those may take (a thousand sub-clients
/// already hold a thousand sockets and a thousand files).
pub(super) fn direct_allowed() -> bool {
    let budget = match DIRECT_BUDGET.load(Ordering::Relaxed) {
        usize::MAX => (crate::sys::fd_limit() / 4) as usize,
        n => n,
    };
    stock().copies.load(Ordering::Relaxed) < budget
}

/// Copies that may be written direct at once, as `get` leaves room for them (`usize::MAX`:
/// a quarter of the open-file limit).
static DIRECT_BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Sets how many copies may take a second descriptor to be written direct: what is left of
/// the open-file limit once every copy has its socket and its file, at most a quarter of it.
pub(super) fn set_direct_budget(spare_fds: u64) {
    let quarter = crate::sys::fd_limit() / 4;
    DIRECT_BUDGET.store(spare_fds.min(quarter) as usize, Ordering::Relaxed);
}

/// How many staged chunks the process may hold while `copies` copies are written direct.
fn stage_limit(copies: usize) -> usize {
    STAGE_BASE
        .saturating_add(STAGE_PER_COPY.saturating_mul(copies))
        .min(STAGE_MAX)
}

struct Stock {
    free: Mutex<Vec<HugeBuf>>,
    made: AtomicUsize,
    /// Copies being written direct now.
    copies: AtomicUsize,
}

fn stock() -> &'static Stock {
    static STOCK: OnceLock<Stock> = OnceLock::new();
    STOCK.get_or_init(|| Stock {
        free: Mutex::new(Vec::new()),
        made: AtomicUsize::new(0),
        copies: AtomicUsize::new(0),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One copy's file and everything its writer jobs share.
pub(super) struct Output {
    /// The copy, through the page cache.
    file: File,
    /// The same file opened `O_DIRECT`; `None` for the buffered write path, for copies
    /// smaller than a chunk, or where the file system refuses `O_DIRECT`.
    direct: Option<File>,
    len: u64,
    hash: Option<OrderedHash>,
    /// The file system refused an `O_DIRECT` write (its alignment): the rest go through the
    /// page cache without trying.
    direct_refused: AtomicBool,
    /// Bytes written around the page cache.
    direct_bytes: AtomicU64,
    /// The first write or read error, and which it was; the copy is then lost.
    failed: Mutex<Option<Failure>>,
    has_failed: AtomicBool,
    /// Jobs queued and not yet done (a staged chunk of a hashed copy is two: its write and
    /// a hash).
    outstanding: Mutex<u64>,
    settled: Condvar,
}

/// BLAKE3 over the chunks in file order, whichever thread finishes which chunk first.
struct OrderedHash {
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

/// Work for the writer threads. A staged chunk is written and hashed by separate jobs, on
/// separate threads: a write mostly waits for the disk, and must not wait behind hashing
/// (nor hashing behind it). Its buffer goes back to the stock when both are done (when the
/// write is, without a hash).
enum Job {
    /// Write staged chunk `k` to the file.
    Write(Arc<Output>, u64, Arc<Staged>),
    /// Hash the chunks that are ready, in order.
    Hash(Arc<Output>),
}

impl Job {
    fn output(&self) -> &Arc<Output> {
        match self {
            Job::Write(out, ..) | Job::Hash(out) => out,
        }
    }
}

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

impl Output {
    /// The writer of a copy of `len` bytes in `file`; `direct`, the same file opened
    /// `O_DIRECT`, makes chunks staged; `hash` computes the copy's content hash.
    pub(super) fn new(file: File, direct: Option<File>, len: u64, hash: bool) -> Arc<Output> {
        if direct.is_some() {
            stock().copies.fetch_add(1, Ordering::Relaxed);
        }
        Arc::new(Output {
            file,
            direct,
            len,
            hash: hash.then(|| OrderedHash {
                state: Mutex::new(HashState {
                    hasher: blake3::Hasher::new(),
                    next: 0,
                }),
                next: AtomicU64::new(0),
                ready: Mutex::new(BTreeMap::new()),
            }),
            direct_refused: AtomicBool::new(false),
            direct_bytes: AtomicU64::new(0),
            failed: Mutex::new(None),
            has_failed: AtomicBool::new(false),
            outstanding: Mutex::new(0),
            settled: Condvar::new(),
        })
    }

    /// The copy's file, as the file system knows it (device, inode): what its name must
    /// still hold when the verified copy is renamed into place.
    pub(super) fn file_identity(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let md = self.file.metadata()?;
        Ok((md.dev(), md.ino()))
    }

    /// Writes consecutive payloads through the page cache starting at `offset`, in as few
    /// syscalls as possible.
    fn write_cached(&self, offset: u64, run: &[IoSlice<'_>]) -> io::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let want: usize = run.iter().map(|s| s.len()).sum();
        let done = nix::sys::uio::pwritev(&self.file, run, offset as libc::off_t)
            .map_err(io::Error::from)?;
        if done < want {
            // Short write: finish the rest piece by piece.
            let mut pos = 0usize;
            for s in run {
                let end = pos + s.len();
                if end > done {
                    let skip = done.saturating_sub(pos);
                    self.file
                        .write_all_at(&s[skip..], offset + (pos + skip) as u64)?;
                }
                pos = end;
            }
        }
        Ok(())
    }

    /// Bytes in chunk `k`.
    fn chunk_len(&self, k: u64) -> usize {
        (self.len - (k * CHUNK).min(self.len)).min(CHUNK) as usize
    }

    /// Chunks in the copy.
    fn chunks(&self) -> u64 {
        self.len.div_ceil(CHUNK)
    }

    /// Writes staged chunk `k`: its whole blocks with `O_DIRECT`, a partial last block through
    /// the page cache. A file system that refuses this alignment gets it all through the page
    /// cache.
    fn write_staged(&self, k: u64, data: &[u8]) -> io::Result<()> {
        let at = k * CHUNK;
        let whole = data.len() / BLOCK * BLOCK;
        let refused = self.direct_refused.load(Ordering::Relaxed);
        if let (Some(direct), true) = (&self.direct, whole > 0 && !refused) {
            match direct.write_all_at(&data[..whole], at) {
                Ok(()) => {
                    self.direct_bytes.fetch_add(whole as u64, Ordering::Relaxed);
                    return self.file.write_all_at(&data[whole..], at + whole as u64);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct_refused.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, at)
    }

    fn fail(&self, what: &'static str, e: io::Error) {
        let mut failed = lock(&self.failed);
        if failed.is_none() {
            *failed = Some((what, e));
            self.has_failed.store(true, Ordering::Release);
        }
    }

    /// The first error a writer job met, as an error of its own (the job keeps the original).
    pub(super) fn error(&self) -> Option<Failure> {
        if !self.has_failed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.failed).as_ref().map(|(what, e)| {
            let e = match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            };
            (*what, e)
        })
    }

    /// Bytes written around the page cache so far.
    pub(super) fn direct_bytes(&self) -> u64 {
        self.direct_bytes.load(Ordering::Relaxed)
    }

    /// Hands chunk `k` (whole) to the writer threads: `staged` to write and hash, or `None`
    /// for one already in the page cache, to hash. Nothing to do for the latter without a
    /// hash.
    fn submit(self: &Arc<Self>, k: u64, staged: Option<Staged>) {
        let staged = staged.map(Arc::new);
        if let Some(staged) = &staged {
            self.queue(Job::Write(self.clone(), k, staged.clone()));
        }
        if let Some(hash) = &self.hash {
            let backlog = {
                let mut ready = lock(&hash.ready);
                ready.insert(k, staged);
                ready.len()
            };
            if backlog > HASH_BACKLOG {
                // The hashing threads are behind (busy cores share their time among many
                // receive threads): this thread hashes too, which slows its receiving and so
                // the sender, instead of piling up chunks and staging memory.
                self.hash_ready(hash);
            } else {
                self.queue(Job::Hash(self.clone()));
            }
        }
    }

    fn queue(&self, job: Job) {
        *lock(&self.outstanding) += 1;
        let pool = match job {
            Job::Write(..) => &pools().disk,
            Job::Hash(_) => &pools().hash,
        };
        let sent = lock(pool).send(job);
        if let Err(mpsc::SendError(job)) = sent {
            // No thread of that pool could be started: do it here.
            run_job(job);
        }
    }

    /// Waits until every chunk handed to the writer threads is written and hashed. Returns
    /// the first error, if any, and the content hash when there is one: of the whole copy if
    /// every chunk was handed on ([`Chunks::finish`] checks that).
    fn finish(&self) -> Result<Option<[u8; 32]>, Failure> {
        let mut outstanding = lock(&self.outstanding);
        while *outstanding > 0 {
            outstanding = self
                .settled
                .wait(outstanding)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(outstanding);
        if let Some(e) = self.error() {
            return Err(e);
        }
        Ok(self
            .hash
            .as_ref()
            .map(|hash| *lock(&hash.state).hasher.finalize().as_bytes()))
    }

    /// Hashes the ready chunks in order, unless another thread is at it (which then sees
    /// what was made ready meanwhile).
    fn hash_ready(&self, hash: &OrderedHash) {
        loop {
            let mut st = match hash.state.try_lock() {
                Ok(st) => st,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let next = st.next;
                let Some(chunk) = lock(&hash.ready).remove(&next) else {
                    break;
                };
                if !self.has_failed.load(Ordering::Acquire) {
                    self.hash_chunk(&mut st.hasher, next, chunk);
                }
                st.next += 1;
                hash.next.store(st.next, Ordering::Release);
            }
            drop(st);
            // A chunk made ready while this thread held the state, by a thread that then
            // left it to this one: take it now.
            if !lock(&hash.ready).contains_key(&hash.next.load(Ordering::Acquire)) {
                return;
            }
        }
    }

    fn hash_chunk(&self, hasher: &mut blake3::Hasher, k: u64, chunk: Option<Arc<Staged>>) {
        let n = self.chunk_len(k);
        match chunk {
            Some(staged) => {
                hasher.update(&staged.bytes()[..n]);
            }
            None => SCRATCH.with_borrow_mut(|scratch| {
                let buf = scratch.get_or_insert_with(|| HugeBuf::new(READ_BACK));
                let mut done = 0;
                while done < n {
                    let data = &mut buf.as_mut_slice()[..(n - done).min(READ_BACK)];
                    if let Err(e) = self.file.read_exact_at(data, k * CHUNK + done as u64) {
                        self.fail(READING, e);
                        return;
                    }
                    hasher.update(data);
                    done += data.len();
                }
            }),
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.direct.is_some() {
            stock().copies.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Where payloads go before their chunk is whole: the receive thread's side of one copy.
pub(super) struct Chunks {
    out: Arc<Output>,
    /// The first chunk not yet handed to the pool.
    head: u64,
    /// Chunks `head`, `head + 1`, ... as far as payloads have come.
    slots: VecDeque<Slot>,
}

#[derive(Default)]
struct Slot {
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
    pub(super) fn new(out: Arc<Output>) -> Chunks {
        Chunks {
            out,
            head: 0,
            slots: VecDeque::new(),
        }
    }

    pub(super) fn output(&self) -> &Arc<Output> {
        &self.out
    }

    /// The whole copy, written: [`Output::finish`] once every chunk came whole and was handed
    /// on, an error if some did not.
    pub(super) fn finish(&self) -> Result<Option<[u8; 32]>, Failure> {
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
    pub(super) fn write_run(&mut self, offset: u64, run: &[IoSlice<'_>]) -> Result<(), Failure> {
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
                match slot(&mut self.slots, self.head, &self.out, k) {
                    Some(slot) => {
                        slot.filled += take;
                        if let Place::Staged(staged) = &mut slot.place {
                            staged.bytes_mut()[within..within + take].copy_from_slice(piece);
                        } else {
                            if pos != cached_end || cached.len() == MAX_IOVECS {
                                self.out.write_cached(cached_at, &cached)?;
                                cached.clear();
                                cached_at = pos;
                            }
                            cached.push(IoSlice::new(piece));
                            cached_end = pos + take as u64;
                        }
                    }
                    None => {
                        // Before the first unfinished chunk, already handed on: the receiver
                        // drops duplicates, so this is a bug; the copy fails rather than risk
                        // a chunk written with a hole.
                        return Err(io::Error::other(format!(
                            "a payload at offset {pos} came after its chunk was complete"
                        )));
                    }
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
fn slot<'s>(
    slots: &'s mut VecDeque<Slot>,
    head: u64,
    out: &Output,
    k: u64,
) -> Option<&'s mut Slot> {
    let i = k.checked_sub(head)? as usize;
    if i >= slots.len() {
        slots.resize_with(i + 1, Slot::default);
    }
    if matches!(slots[i].place, Place::Untouched) {
        // A copy waiting for a repair at its head touches chunk after chunk: it may not hold
        // the whole stock meanwhile.
        let open = slots
            .iter()
            .filter(|s| matches!(s.place, Place::Staged(_)))
            .count();
        let staged = (out.direct.is_some() && open < OPEN_PER_COPY)
            .then(Staged::take)
            .flatten();
        slots[i].place = match staged {
            Some(staged) => Place::Staged(staged),
            None => Place::Cached,
        };
    }
    Some(&mut slots[i])
}

/// The writer threads, started on first use; they live as long as the process, idle when
/// there is nothing to do.
struct Pools {
    /// Writes staged chunks: [`DISK_THREADS`] threads that mostly wait for the disk.
    disk: Mutex<Sender<Job>>,
    /// Hashes: one thread per core, at most [`MAX_HASH_THREADS`].
    hash: Mutex<Sender<Job>>,
}

fn pools() -> &'static Pools {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    POOLS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Pools {
            disk: Mutex::new(start("write", DISK_THREADS)),
            hash: Mutex::new(start("hash", cores.min(MAX_HASH_THREADS))),
        }
    })
}

/// Starts `threads` threads named `name-N` on one job queue.
fn start(name: &str, threads: usize) -> Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for n in 0..threads {
        let rx = rx.clone();
        // A thread that cannot start leaves the others; with none, the queue's receiver is
        // gone and jobs are done by whoever submits them (the send fails).
        let _ = std::thread::Builder::new()
            .name(format!("{name}-{n}"))
            .spawn(move || run(&rx));
    }
    tx
}

fn run(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = lock(rx).recv();
        let Ok(job) = job else { return };
        run_job(job);
    }
}

fn run_job(job: Job) {
    let out = job.output().clone();
    // The job is settled however it ends, even by a panic: `finish` must not wait forever.
    let doing = match job {
        Job::Write(..) => WRITING,
        Job::Hash(_) => HASHING,
    };
    let _settle = Settle(&out, doing);
    match job {
        Job::Write(_, k, staged) => {
            if !out.has_failed.load(Ordering::Acquire) {
                let n = out.chunk_len(k);
                if let Err(e) = out.write_staged(k, &staged.bytes()[..n]) {
                    out.fail(WRITING, e);
                }
            }
        }
        Job::Hash(_) => {
            if let Some(hash) = &out.hash {
                out.hash_ready(hash);
            }
        }
    }
}

/// Counts a job of its output's as done when dropped; a job that panicked fails the copy
/// with what it was doing.
struct Settle<'a>(&'a Output, &'static str);

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail(self.1, io::Error::other("a writer thread panicked"));
        }
        let mut outstanding = lock(&self.0.outstanding);
        *outstanding -= 1;
        if *outstanding == 0 {
            self.0.settled.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While set, the stock hands out nothing.
    pub(super) static STOCK_CLOSED: AtomicBool = AtomicBool::new(false);
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn open(path: &std::path::Path, len: u64, direct: bool) -> (File, Option<File>) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        file.set_len(len).unwrap();
        let d = direct.then(|| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        });
        (file, d.flatten())
    }

    /// A copy of `len` bytes in a new temporary directory (kept alive by the first value):
    /// its path, its output and its chunks.
    fn writer(
        len: usize,
        direct: bool,
        hash: bool,
    ) -> (tempfile::TempDir, std::path::PathBuf, Arc<Output>, Chunks) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        let (file, d) = open(&path, len as u64, direct);
        let out = Output::new(file, d, len as u64, hash);
        let chunks = Chunks::new(out.clone());
        (dir, path, out, chunks)
    }

    /// Writes `data` as `payload`-byte pieces in the order `order` gives, `per_run` at a time
    /// when consecutive, and returns the finished hash and the file's bytes.
    fn copy(
        data: &[u8],
        payload: usize,
        order: &[usize],
        direct: bool,
    ) -> (Option<[u8; 32]>, Vec<u8>, u64) {
        let (_dir, path, out, mut chunks) = writer(data.len(), direct, true);
        for &i in order {
            let at = i * payload;
            let end = (at + payload).min(data.len());
            chunks
                .write_run(at as u64, &[IoSlice::new(&data[at..end])])
                .unwrap();
        }
        let hash = out.finish().unwrap();
        (hash, std::fs::read(&path).unwrap(), out.direct_bytes())
    }

    #[test]
    fn chunks_in_any_order_give_the_file_and_the_hash_of_the_whole() {
        // Odd payloads straddling chunk boundaries, an odd tail, pieces out of order.
        let data = pattern(3 * CHUNK as usize + 12_345);
        let payload = 61_441;
        let n = data.len().div_ceil(payload);
        let mut order: Vec<usize> = (0..n).collect();
        for w in order.chunks_mut(7) {
            w.reverse();
        }
        order.swap(3, n - 2);
        for direct in [true, false] {
            let (hash, file, direct_bytes) = copy(&data, payload, &order, direct);
            assert_eq!(
                hash,
                Some(*blake3::hash(&data).as_bytes()),
                "direct {direct}"
            );
            assert!(file == data, "the file is the data (direct {direct})");
            if !direct {
                assert_eq!(direct_bytes, 0);
            }
        }
    }

    #[test]
    fn when_the_stock_is_used_up_chunks_go_through_the_page_cache() {
        let data = pattern(2 * CHUNK as usize + 777);
        let order: Vec<usize> = (0..data.len().div_ceil(65_000)).collect();
        // (The tests running beside this one then write through the page cache too.)
        STOCK_CLOSED.store(true, Ordering::Relaxed);
        let (hash, file, direct_bytes) = copy(&data, 65_000, &order, true);
        STOCK_CLOSED.store(false, Ordering::Relaxed);
        assert_eq!(hash, Some(*blake3::hash(&data).as_bytes()));
        assert!(file == data);
        assert_eq!(direct_bytes, 0, "no chunk was staged");
    }

    #[test]
    fn the_stock_grows_with_the_copies_written_direct_up_to_its_most() {
        assert_eq!(stage_limit(0), 14);
        assert_eq!(stage_limit(1), 16, "one copy: 64 MiB");
        assert_eq!(stage_limit(10), 34);
        assert_eq!(stage_limit(25), STAGE_MAX);
        assert_eq!(stage_limit(usize::MAX), STAGE_MAX);
    }

    #[test]
    fn an_empty_copy_and_one_smaller_than_a_block_hash_right() {
        for len in [0, 1, 4095, 4097] {
            let data = pattern(len);
            let order: Vec<usize> = (0..len.div_ceil(1000)).collect();
            let (hash, file, _) = copy(&data, 1000, &order, true);
            assert_eq!(hash, Some(*blake3::hash(&data).as_bytes()), "len {len}");
            assert_eq!(file, data);
        }
    }

    #[test]
    fn consecutive_payloads_go_in_one_run_across_chunks() {
        let data = pattern(2 * CHUNK as usize + 100);
        let (_dir, path, out, mut chunks) = writer(data.len(), true, false);
        let run: Vec<IoSlice<'_>> = data.chunks(65_475).map(IoSlice::new).collect();
        chunks.write_run(0, &run).unwrap();
        assert_eq!(out.finish().unwrap(), None, "no hash asked for");
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn many_chunks_at_once_are_hashed_by_the_writer_too_and_hash_right() {
        // Twelve chunks made whole by one call: more than HASH_BACKLOG wait for their hash,
        // so the calling thread hashes some itself, alongside the hashing threads.
        let data = pattern(12 * CHUNK as usize + 5);
        for direct in [true, false] {
            let (_dir, path, out, mut chunks) = writer(data.len(), direct, true);
            let run: Vec<IoSlice<'_>> = data.chunks(61_440).map(IoSlice::new).collect();
            chunks.write_run(0, &run).unwrap();
            assert_eq!(out.finish().unwrap(), Some(*blake3::hash(&data).as_bytes()));
            assert!(std::fs::read(&path).unwrap() == data);
        }
    }

    #[test]
    fn a_copy_waiting_for_its_head_holds_no_more_than_its_share_of_the_stock() {
        // Chunks 1..=10 come before chunk 0 (its head waits for a repair): at most
        // OPEN_PER_COPY of them are staged, the rest go through the page cache.
        let data = pattern(11 * CHUNK as usize);
        let (_dir, path, out, mut chunks) = writer(data.len(), true, true);
        let c = CHUNK as usize;
        for k in (1..11).chain([0]) {
            chunks
                .write_run((k * c) as u64, &[IoSlice::new(&data[k * c..(k + 1) * c])])
                .unwrap();
        }
        assert_eq!(out.finish().unwrap(), Some(*blake3::hash(&data).as_bytes()));
        assert!(std::fs::read(&path).unwrap() == data);
        assert!(out.direct_bytes() <= (OPEN_PER_COPY * c) as u64);
    }

    #[test]
    fn a_payload_for_a_chunk_already_handed_on_fails_the_copy() {
        let data = pattern(2 * CHUNK as usize);
        let (_dir, _, out, mut chunks) = writer(data.len(), true, true);
        let first = &data[..CHUNK as usize];
        chunks.write_run(0, &[IoSlice::new(first)]).unwrap();
        let (what, _) = chunks
            .write_run(0, &[IoSlice::new(&first[..10])])
            .unwrap_err();
        assert_eq!(what, WRITING);
        drop(out);
    }

    #[test]
    fn a_copy_that_cannot_be_read_back_is_an_error_not_a_hash() {
        // Chunks through the page cache are hashed by reading them back: a file that cannot
        // be read fails the hash.
        let data = pattern(CHUNK as usize + 10);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        // Opened for writing only: the read back fails.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let out = Output::new(file, None, data.len() as u64, true);
        let mut chunks = Chunks::new(out.clone());
        chunks.write_run(0, &[IoSlice::new(&data)]).unwrap();
        let (what, e) = out.finish().unwrap_err();
        assert_eq!(
            (what, e.raw_os_error()),
            (READING, Some(libc::EBADF)),
            "{e}"
        );
    }

    #[test]
    fn an_unfinished_copy_has_no_hash() {
        let data = pattern(CHUNK as usize + 10);
        let (_dir, _, out, mut chunks) = writer(data.len(), true, true);
        chunks
            .write_run(0, &[IoSlice::new(&data[..CHUNK as usize])])
            .unwrap();
        assert!(chunks.finish().is_err(), "the last chunk never came");
        drop(out);
    }
}
