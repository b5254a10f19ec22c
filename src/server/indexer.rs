//! The indexer thread: indexing a file (`Catalog::index`: every datagram's CRC32C and its
//! BLAKE3 hash) takes time proportional to it (about a second per GiB here), so it runs on a
//! thread of its own: the control thread asks for a file by name, answers the client `WAIT`,
//! and gets the result back on a channel.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::catalog::{Catalog, FileError, IndexedFile};

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
