//! The run's writer threads: `write-N` write staged chunks (they mostly wait for the disk),
//! `hash-N` hash chunks in file order. Started on a run's first chunk, ended with its engine.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::output::{Output, Outstanding};
use super::stock::Staged;
use super::{lock, HASHING, WRITING};

/// Threads that write staged chunks: enough to keep a disk busy with several copies' chunks
/// (each thread waits for one write at a time).
const DISK_THREADS: usize = 4;
/// Most threads that hash.
const MAX_HASH_THREADS: usize = 4;

/// Work for the writer threads. A staged chunk is written and hashed by separate jobs, on
/// separate threads: a write mostly waits for the disk, and must not wait behind hashing
/// (nor hashing behind it). Its buffer goes back to the stock when both are done (when the
/// write is, without a hash).
pub(super) enum Job {
    /// Write staged chunk `k` to the file.
    Write(Arc<Output>, u64, Arc<Staged>),
    /// Hash the chunks that are ready, in order.
    Hash(Arc<Output>),
}

/// The two queues.
pub(super) struct Pools {
    /// Writes staged chunks: [`DISK_THREADS`] threads that mostly wait for the disk.
    disk: Mutex<Sender<Job>>,
    /// Hashes: one thread per core, at most [`MAX_HASH_THREADS`].
    hash: Mutex<Sender<Job>>,
}

impl Pools {
    pub(super) fn start() -> Pools {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Pools {
            disk: Mutex::new(start("write", DISK_THREADS)),
            hash: Mutex::new(start("hash", cores.min(MAX_HASH_THREADS))),
        }
    }

    /// Queues `job` for its threads; if there are none, does it here.
    pub(super) fn queue(&self, job: Job) {
        let pool = match job {
            Job::Write(..) => &self.disk,
            Job::Hash(_) => &self.hash,
        };
        let sent = lock(pool).send(job);
        if let Err(mpsc::SendError(job)) = sent {
            run_job(job);
        }
    }
}

/// Starts `threads` threads named `name-N` on one job queue; they end when it is dropped.
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
    // The job is settled however it ends, even by a panic: `finish` must not wait forever.
    let doing = match job {
        Job::Write(..) => WRITING,
        Job::Hash(_) => HASHING,
    };
    let (out, write) = match job {
        Job::Write(out, k, staged) => (out, Some((k, staged))),
        Job::Hash(out) => (out, None),
    };
    let settle = Settle {
        tally: out.outstanding(),
        out: Some(out),
        doing,
    };
    let out = settle.out.as_deref().expect("held until the guard drops");
    match write {
        Some((k, staged)) => {
            if !out.has_failed() {
                let n = out.chunk_len(k);
                if let Err(e) = out.write_staged(k, &staged.bytes()[..n]) {
                    out.fail(WRITING, e);
                }
            }
        }
        None => out.hash_ready(),
    }
}

/// Counts a job as done when dropped, after letting go of its copy (see [`Outstanding`]); a
/// job that panicked fails the copy with what it was doing.
struct Settle {
    tally: Arc<Outstanding>,
    out: Option<Arc<Output>>,
    doing: &'static str,
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            if std::thread::panicking() {
                out.fail(self.doing, io::Error::other("a writer thread panicked"));
            }
        }
        self.tally.settle();
    }
}
