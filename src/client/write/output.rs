//! One copy's file and everything its writer jobs share: the file (and its `O_DIRECT` twin),
//! its hash, its first error, the jobs still out.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::hash::OrderedHash;
use super::pools::Job;
use super::stock::Staged;
use super::{lock, Failure, WriteEngine, CHUNK, HASH_BACKLOG};

/// `O_DIRECT` writes whole blocks: a chunk's last partial block (the file's tail) goes through
/// the page cache.
const BLOCK: usize = 4096;

pub(crate) struct Output {
    pub(super) engine: Arc<WriteEngine>,
    /// The copy, through the page cache.
    pub(super) file: File,
    /// The same file opened `O_DIRECT`; `None` for the buffered write path, for copies
    /// smaller than a chunk, or where the file system refuses `O_DIRECT`.
    pub(super) direct: Option<File>,
    len: u64,
    hash: Option<OrderedHash>,
    /// The file system refused an `O_DIRECT` write (its alignment): the rest go through the
    /// page cache without trying.
    direct_refused: AtomicBool,
    /// Bytes written with `O_DIRECT`.
    direct_bytes: AtomicU64,
    /// The first write or read error, and which it was; the copy is then lost.
    failed: Mutex<Option<Failure>>,
    has_failed: AtomicBool,
    /// Jobs queued and not yet done (a staged chunk of a hashed copy is two: its write and
    /// a hash).
    outstanding: Arc<Outstanding>,
}

/// A copy's jobs still out, apart from the copy: a job lets go of its [`Output`] (and so,
/// maybe last, of the file) before it counts itself done, so that once [`Output::finish`]
/// returns no writer thread holds the file open (a failed copy's name is removed then, and a
/// file removed but still open keeps its file system busy: it cannot be remounted, say).
pub(super) struct Outstanding {
    jobs: Mutex<u64>,
    settled: Condvar,
}

impl Outstanding {
    /// A queued job is done (however it ended).
    pub(super) fn settle(&self) {
        let mut jobs = lock(&self.jobs);
        *jobs -= 1;
        if *jobs == 0 {
            self.settled.notify_all();
        }
    }
}

impl Output {
    /// The writer of a copy of `len` bytes in `file`, on `engine`; `direct`, the same file
    /// opened `O_DIRECT`, makes chunks staged; `hash` computes the copy's content hash.
    pub(crate) fn new(
        engine: &Arc<WriteEngine>,
        file: File,
        direct: Option<File>,
        len: u64,
        hash: bool,
    ) -> Arc<Output> {
        if direct.is_some() {
            engine.stock.copy_direct(true);
        }
        Arc::new(Output {
            engine: engine.clone(),
            file,
            direct,
            len,
            hash: hash.then(OrderedHash::new),
            direct_refused: AtomicBool::new(false),
            direct_bytes: AtomicU64::new(0),
            failed: Mutex::new(None),
            has_failed: AtomicBool::new(false),
            outstanding: Arc::new(Outstanding {
                jobs: Mutex::new(0),
                settled: Condvar::new(),
            }),
        })
    }

    /// The copy's file, as the file system knows it (device, inode): what its name must
    /// still hold when the verified copy is renamed into place.
    pub(crate) fn file_identity(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let md = self.file.metadata()?;
        Ok((md.dev(), md.ino()))
    }

    /// Writes consecutive payloads through the page cache starting at `offset`, in as few
    /// syscalls as possible.
    pub(super) fn write_cached(&self, offset: u64, run: &[IoSlice<'_>]) -> io::Result<()> {
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
    pub(super) fn chunk_len(&self, k: u64) -> usize {
        (self.len - (k * CHUNK).min(self.len)).min(CHUNK) as usize
    }

    /// Chunks in the copy.
    pub(super) fn chunks(&self) -> u64 {
        self.len.div_ceil(CHUNK)
    }

    /// Writes staged chunk `k`: its whole blocks with `O_DIRECT`, a partial last block through
    /// the page cache. A file system that refuses this alignment gets it all through the page
    /// cache.
    pub(super) fn write_staged(&self, k: u64, data: &[u8]) -> io::Result<()> {
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

    pub(super) fn fail(&self, what: &'static str, e: io::Error) {
        let mut failed = lock(&self.failed);
        if failed.is_none() {
            *failed = Some((what, e));
            self.has_failed.store(true, Ordering::Release);
        }
    }

    pub(super) fn has_failed(&self) -> bool {
        self.has_failed.load(Ordering::Acquire)
    }

    /// The first error a writer job met, as an error of its own (the job keeps the original).
    pub(crate) fn error(&self) -> Option<Failure> {
        if !self.has_failed() {
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

    /// Bytes written with `O_DIRECT` so far.
    pub(crate) fn direct_bytes(&self) -> u64 {
        self.direct_bytes.load(Ordering::Relaxed)
    }

    /// Hands chunk `k` (whole) to the writer threads: `staged` to write and hash, or `None`
    /// for one already in the page cache, to hash. Nothing to do for the latter without a
    /// hash.
    pub(super) fn submit(self: &Arc<Self>, k: u64, staged: Option<Staged>) {
        let staged = staged.map(Arc::new);
        if let Some(staged) = &staged {
            self.queue(Job::Write(self.clone(), k, staged.clone()));
        }
        if let Some(hash) = &self.hash {
            if hash.add(k, staged) > HASH_BACKLOG {
                // The hashing threads are behind (busy cores share their time among many
                // receive threads): this thread hashes too, which slows its receiving and so
                // the sender, instead of piling up chunks and staging memory.
                hash.hash_ready(self);
            } else {
                self.queue(Job::Hash(self.clone()));
            }
        }
    }

    fn queue(&self, job: Job) {
        *lock(&self.outstanding.jobs) += 1;
        self.engine.pools().queue(job);
    }

    /// What a job counts itself done on.
    pub(super) fn outstanding(&self) -> Arc<Outstanding> {
        self.outstanding.clone()
    }

    /// Hashes the ready chunks in order (a hashing job).
    pub(super) fn hash_ready(&self) {
        if let Some(hash) = &self.hash {
            hash.hash_ready(self);
        }
    }

    /// Waits until every chunk handed to the writer threads is written and hashed. Returns
    /// the first error, if any, and the content hash when there is one: of the whole copy if
    /// every chunk was handed on ([`super::Chunks::finish`] checks that).
    pub(crate) fn finish(&self) -> Result<Option<[u8; 32]>, Failure> {
        let tally = &self.outstanding;
        let mut jobs = lock(&tally.jobs);
        while *jobs > 0 {
            jobs = tally.settled.wait(jobs).unwrap_or_else(|e| e.into_inner());
        }
        drop(jobs);
        if let Some(e) = self.error() {
            return Err(e);
        }
        Ok(self.hash.as_ref().map(OrderedHash::finalize))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.direct.is_some() {
            self.engine.stock.copy_direct(false);
        }
    }
}
