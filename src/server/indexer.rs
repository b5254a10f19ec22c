//! Indexing: reading a file once to compute every datagram's CRC32C and its BLAKE3 hash.
//!
//! It takes time proportional to the file (about a second per GiB here), so it runs on its own
//! thread: the control thread asks for a file by name, answers the client `WAIT`, and gets the
//! result back on a channel.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::catalog::{Catalog, FileError, IndexedFile};
use crate::protocol::layout::datagram_count;
use crate::sys::hugebuf::HugeBuf;

/// Per-datagram CRC32Cs and the BLAKE3 content hash of the first `len` bytes of `file`, read in
/// chunks of whole datagrams into a huge-page buffer; the hash runs on all cores.
///
/// Read with pread, never through a map: a file truncated while it is read this way gives a
/// short read (an error), where a map read in user space would be SIGBUS.
pub fn digest(file: &File, len: u64, payload_size: u32) -> std::io::Result<(Vec<u32>, [u8; 32])> {
    let chunk = (8 << 20) / payload_size as usize * payload_size as usize;
    let mut buf = HugeBuf::new(chunk.max(payload_size as usize));
    let mut crcs = Vec::with_capacity(datagram_count(len, payload_size) as usize);
    let mut h = blake3::Hasher::new();
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(buf.as_slice().len());
        file.read_exact_at(&mut buf.as_mut_slice()[..n], pos)?;
        let data = &buf.as_slice()[..n];
        std::thread::scope(|s| {
            let c = s.spawn(|| {
                data.chunks(payload_size as usize)
                    .map(crc32c::crc32c)
                    .collect::<Vec<u32>>()
            });
            h.update_rayon(data);
            crcs.extend(c.join().expect("crc thread"));
        });
        pos += n as u64;
    }
    Ok((crcs, *h.finalize().as_bytes()))
}

/// What to index: a file, at a payload size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexJob {
    pub name: String,
    pub payload_size: u32,
}

/// The result of indexing one file.
pub struct Indexed {
    pub job: IndexJob,
    pub result: Result<Arc<IndexedFile>, FileError>,
    pub took: Duration,
}

/// The indexer thread and its two channels.
pub struct Indexer {
    jobs: Option<Sender<IndexJob>>,
    pub done: Receiver<Indexed>,
    thread: Option<JoinHandle<()>>,
}

impl Indexer {
    pub fn spawn(catalog: Arc<Catalog>) -> std::io::Result<Indexer> {
        let (jobs, job_rx) = mpsc::channel::<IndexJob>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("indexer".into())
            .spawn(move || {
                for job in job_rx {
                    let t = Instant::now();
                    let result = catalog.index(&job.name, job.payload_size);
                    let took = t.elapsed();
                    if done_tx.send(Indexed { job, result, took }).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Indexer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Queues `job`; false if the indexer is gone.
    pub fn request(&self, job: IndexJob) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }

    /// Stops taking jobs and waits for the current one.
    pub fn stop(&mut self) {
        drop(self.jobs.take());
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.stop();
    }
}
