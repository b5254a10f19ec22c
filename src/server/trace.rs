//! `serve --trace FILE`: the sender's state over time, one JSON object per line, for each
//! session: its controller's state and rates, RTT, inflight and window, losses and resends, as
//! the control thread sees them after an ACK (at most one sample per session per interval)
//! and when the session ends. `ringblast trace FILE` plots it (`tools/trace.rs`).
//!
//! The control thread never writes the file: it hands each sample (a few numbers, nothing
//! allocated) to a writer thread over a bounded channel, and a sample that finds the channel
//! full is dropped and counted (a slow disk must not stall the server); the count is logged
//! when the server stops.
//!
//! ```text
//! {"t_ms":1532.118,"session":"5f0c22a1","state":"startup","sent":18211,"acked":15000,
//!  "pacing_bps":812000000,"delivery_bps":790000000,"srtt_us":201520,"min_rtt_us":200310,
//!  "inflight":13040,"cwnd":14230,"loss_events":0,"retransmitted":0,"spurious":0,
//!  "capacity_bps":1000000000}
//! ```

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::protocol::Status;

/// Samples waiting for the writer at most.
const QUEUE: usize = 16_384;
/// The writer flushes after this long without a sample.
const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// How often a session is sampled at most unless told otherwise (`--trace-every`).
pub const DEFAULT_EVERY: Duration = Duration::from_millis(10);

/// One sample of one session's sender.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Milliseconds since the server started.
    pub t_ms: f64,
    /// The controller's state (BBR's `startup`, `drain`, `probe_bw`, `probe_rtt`; `fixed`;
    /// `blast` for a blast-mode session; `end` in its last sample).
    pub state: &'static str,
    /// Datagrams sent so far (resends included) and known delivered.
    pub sent: u64,
    pub acked: u64,
    #[serde(flatten)]
    pub status: Status,
    /// The bottleneck capacity the sender's packet trains measured lately (or a remembered
    /// path's rate: `serve --path-memory`), bits/s (none yet, or not known in the last
    /// sample).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bps: Option<u64>,
    /// The session's last sample (it ended).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
}

/// The writer thread and the way to it.
pub struct Tracer {
    tx: Option<SyncSender<Sample>>,
    writer: Option<JoinHandle<io::Result<u64>>>,
    started: Instant,
    pub every: Duration,
    dropped: Arc<AtomicU64>,
}

impl Tracer {
    /// Creates `path` (replacing it) and starts the writer.
    pub fn create(path: &Path, every: Duration) -> io::Result<Tracer> {
        let file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("trace".into())
            .spawn(move || write_all(rx, BufWriter::new(file)))?;
        Ok(Tracer {
            tx: Some(tx),
            writer: Some(writer),
            started: Instant::now(),
            every,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Milliseconds since the server started, as samples count them.
    pub fn t_ms(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.started).as_secs_f64() * 1e3
    }

    /// Hands `s` to the writer, or counts it dropped when the writer is behind.
    pub fn record(&self, s: Sample) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(s) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops the writer once it has written everything queued: samples written and dropped,
    /// or why the file could not be written.
    pub fn finish(mut self) -> io::Result<(u64, u64)> {
        self.tx.take();
        let written = match self.writer.take().map(|h| h.join()) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => return Err(io::Error::other("the trace writer panicked")),
            None => 0,
        };
        Ok((written, self.dropped.load(Ordering::Relaxed)))
    }
}

/// Writes samples as they come, and flushes whenever none came for a moment: the file is
/// whole up to the last quiet moment even if the server is killed.
fn write_all(rx: Receiver<Sample>, mut out: BufWriter<File>) -> io::Result<u64> {
    let mut n = 0;
    loop {
        match rx.recv_timeout(FLUSH_AFTER) {
            Ok(s) => {
                serde_json::to_writer(&mut out, &s)?;
                out.write_all(b"\n")?;
                n += 1;
            }
            Err(RecvTimeoutError::Timeout) => out.flush()?,
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    out.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_written_one_json_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let t = Tracer::create(&path, DEFAULT_EVERY).unwrap();
        for i in 0..100u32 {
            t.record(Sample {
                t_ms: i as f64,
                state: "startup",
                sent: i as u64 * 10,
                acked: i as u64 * 9,
                status: Status {
                    session: 0xabcd,
                    inflight: i,
                    ..Status::default()
                },
                capacity_bps: (i > 50).then_some(1_000_000_000),
                end: i == 99,
            });
        }
        assert_eq!(t.finish().unwrap(), (100, 0));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[7]["session"], "0000abcd");
        assert_eq!(lines[7]["inflight"], 7);
        assert_eq!(lines[7]["state"], "startup");
        assert!(lines[7].get("end").is_none());
        assert_eq!(lines[99]["end"], true);
    }
}
