//! The BLAKE3 content check of a copy, computed while the copy is received instead of by
//! reading the whole file again at the end.
//!
//! The hash is sequential, so it follows the copy's contiguous front (everything before the
//! first missing datagram): whenever that front has moved [`STEP`] bytes, a job goes to a small
//! process-wide pool of hashing threads, which reads the new stretch back from the copy (from
//! the page cache, where it was written moments ago: still in the CPU's cache) and hashes it,
//! on a core the receive threads leave idle. The receive thread never waits for it. At the end
//! the sub-client hashes what is left (the last stretch, or all of it if the pool fell
//! behind) itself, on all cores. Every byte is hashed once, from the file itself: what is on
//! disk under the temporary name is what was hashed, as with a second pass.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::sys::hugebuf::HugeBuf;

/// How far the contiguous front moves before a stretch is handed to the pool, and the size of
/// each read: large enough that a job's overhead does not matter, small enough to still be in
/// the CPU's cache when it is read back.
pub(super) const STEP: u64 = 8 << 20;
/// Most threads the pool runs.
const MAX_THREADS: usize = 4;

/// One copy's running content hash.
pub(super) struct ContentHash {
    file: Arc<File>,
    len: u64,
    state: Mutex<HashState>,
}

struct HashState {
    hasher: blake3::Hasher,
    /// Bytes of the copy hashed so far (from its start).
    hashed: u64,
    /// A read that failed: the hash cannot be had.
    failed: Option<io::Error>,
}

type Job = (Arc<ContentHash>, u64);

impl ContentHash {
    /// The hash of the first `len` bytes of `file` (the copy, shared with its writer), none
    /// hashed yet.
    pub(super) fn new(file: Arc<File>, len: u64) -> Arc<ContentHash> {
        Arc::new(ContentHash {
            file,
            len,
            state: Mutex::new(HashState {
                hasher: blake3::Hasher::new(),
                hashed: 0,
                failed: None,
            }),
        })
    }

    /// Asks the pool to hash the copy up to `front` (its first `front` bytes are written).
    pub(super) fn advance_in_background(self: &Arc<Self>, front: u64) {
        let _ = pool()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((self.clone(), front));
    }

    /// Bytes hashed so far.
    pub(super) fn hashed(&self) -> u64 {
        self.lock().hashed
    }

    fn lock(&self) -> MutexGuard<'_, HashState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hashes the copy up to `front`, reading it through `buf`, one `STEP` at a time;
    /// `parallel` spreads each step over all cores.
    fn advance(&self, front: u64, buf: &mut HugeBuf, parallel: bool) {
        let front = front.min(self.len);
        let mut st = self.lock();
        while st.hashed < front && st.failed.is_none() {
            let n = ((front - st.hashed) as usize).min(buf.as_slice().len());
            let pos = st.hashed;
            match self.file.read_exact_at(&mut buf.as_mut_slice()[..n], pos) {
                Ok(()) => {
                    let data = &buf.as_slice()[..n];
                    if parallel {
                        st.hasher.update_rayon(data);
                    } else {
                        st.hasher.update(data);
                    }
                    st.hashed += n as u64;
                }
                Err(e) => st.failed = Some(e),
            }
        }
    }

    /// The content hash of the whole copy: what the pool has not hashed yet is hashed here.
    pub(super) fn finish(&self) -> io::Result<[u8; 32]> {
        let left = self.len - self.hashed().min(self.len);
        if left > 0 {
            let mut buf = HugeBuf::new(left.min(STEP) as usize);
            self.advance(self.len, &mut buf, true);
        }
        let mut st = self.lock();
        if let Some(e) = st.failed.take() {
            return Err(e);
        }
        debug_assert_eq!(st.hashed, self.len);
        Ok(*st.hasher.finalize().as_bytes())
    }
}

/// The pool's job queue, its threads started on first use (one per core, at most
/// [`MAX_THREADS`]); they live as long as the process, idle when there is nothing to hash.
fn pool() -> &'static Mutex<Sender<Job>> {
    static POOL: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(MAX_THREADS);
        for n in 0..threads {
            let rx = rx.clone();
            // A pool that cannot start a thread only hashes less in the background: the end
            // of each copy does the rest.
            let _ = std::thread::Builder::new()
                .name(format!("hash-{n}"))
                .spawn(move || run(&rx));
        }
        Mutex::new(tx)
    })
}

fn run(rx: &Mutex<Receiver<Job>>) {
    let mut buf: Option<HugeBuf> = None;
    loop {
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((hash, front)) = job else { return };
        let buf = buf.get_or_insert_with(|| HugeBuf::new(STEP as usize));
        hash.advance(front, buf, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_of(data: &[u8]) -> (tempfile::NamedTempFile, Arc<File>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), data).unwrap();
        let file = Arc::new(File::open(f.path()).unwrap());
        (f, file)
    }

    #[test]
    fn hashing_in_stretches_in_the_background_gives_the_hash_of_the_whole() {
        let data: Vec<u8> = (0..(3 * STEP as usize + 12_345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let (_keep, file) = copy_of(&data);
        let h = ContentHash::new(file, data.len() as u64);
        // Fronts out of order and repeated, as jobs may run.
        for front in [STEP, 3 * STEP, 2 * STEP, STEP + 7, 3 * STEP] {
            h.advance_in_background(front);
        }
        assert_eq!(h.finish().unwrap(), *blake3::hash(&data).as_bytes());
    }

    #[test]
    fn a_copy_hashed_only_at_the_end_and_an_empty_one_hash_right() {
        let data = vec![5u8; 1_000_001];
        let (_keep, file) = copy_of(&data);
        let h = ContentHash::new(file, data.len() as u64);
        assert_eq!(h.finish().unwrap(), *blake3::hash(&data).as_bytes());
        let (_keep, file) = copy_of(&[]);
        assert_eq!(
            ContentHash::new(file, 0).finish().unwrap(),
            *blake3::hash(&[]).as_bytes()
        );
    }

    #[test]
    fn a_copy_shorter_than_its_length_is_an_error_not_a_hash() {
        let (_keep, file) = copy_of(&[1, 2, 3]);
        assert!(ContentHash::new(file, 10).finish().is_err());
    }
}
