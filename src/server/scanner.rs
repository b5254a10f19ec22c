//! The scanner thread: scanning a file (`Catalog::scan`: every datagram's CRC32C and its
//! BLAKE3 hash) takes time proportional to it (about a second per GiB here), so it runs on a
//! thread of its own: the control thread asks for a file by name, answers the client `WAIT`,
//! and gets the result back on a channel.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::catalog::{Catalog, FileError, ScannedFile};

/// What to index: a file, at a payload size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScanJob {
    pub name: String,
    pub payload_size: u32,
}

/// The result of scanning one file.
pub struct Scanned {
    pub job: ScanJob,
    pub result: Result<Arc<ScannedFile>, FileError>,
    pub took: Duration,
}

/// The scanner thread and its two channels.
pub struct Scanner {
    jobs: Option<Sender<ScanJob>>,
    pub done: Receiver<Scanned>,
    thread: Option<JoinHandle<()>>,
}

impl Scanner {
    pub fn spawn(catalog: Arc<Catalog>) -> std::io::Result<Scanner> {
        let (jobs, job_rx) = mpsc::channel::<ScanJob>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("scanner".into())
            .spawn(move || {
                for job in job_rx {
                    let t = Instant::now();
                    let result = catalog.scan(&job.name, job.payload_size);
                    let took = t.elapsed();
                    if done_tx.send(Scanned { job, result, took }).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Scanner {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Queues `job`; false if the scanner is gone.
    pub fn request(&self, job: ScanJob) -> bool {
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

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop();
    }
}
