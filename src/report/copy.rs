//! What one sub-client measured: the lab's per-client figures plus ringblast's histograms.
//! The client fills a [`CopyReport`]; the table, `get --json` and `bench` read it.

use std::path::PathBuf;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::hist::Hist;

/// What a sub-client measures, per datagram, in microseconds (batch: datagrams per call).
#[derive(Debug, Clone)]
pub struct ClientHists {
    /// Kernel receive time minus the sender's timestamp (same host or synchronised clocks).
    pub one_way_delay_us: Hist,
    /// Between consecutive datagrams' kernel receive times.
    pub inter_arrival_us: Hist,
    /// Datagrams per `recvmmsg` call.
    pub recv_batch: Hist,
    /// From the arrival that revealed a hole to the arrival of the datagram that filled it.
    pub repair_us: Hist,
}

impl Default for ClientHists {
    fn default() -> Self {
        ClientHists {
            one_way_delay_us: Hist::latency_us(),
            inter_arrival_us: Hist::latency_us(),
            recv_batch: Hist::with_max(4096),
            repair_us: Hist::latency_us(),
        }
    }
}

impl ClientHists {
    /// Empty and next to no memory: a copy's report holds these until its data phase ends
    /// (a few KiB: a thousand sub-clients would otherwise hold 72 KiB each twice over).
    pub fn empty() -> Self {
        ClientHists {
            one_way_delay_us: Hist::with_max(2),
            inter_arrival_us: Hist::with_max(2),
            recv_batch: Hist::with_max(2),
            repair_us: Hist::with_max(2),
        }
    }

    pub fn merge(&mut self, o: &ClientHists) {
        self.one_way_delay_us.merge(&o.one_way_delay_us);
        self.inter_arrival_us.merge(&o.inter_arrival_us);
        self.recv_batch.merge(&o.recv_batch);
        self.repair_us.merge(&o.repair_us);
    }

    pub fn memory_bytes(&self) -> usize {
        self.one_way_delay_us.memory_bytes()
            + self.inter_arrival_us.memory_bytes()
            + self.recv_batch.memory_bytes()
            + self.repair_us.memory_bytes()
    }
}

/// In JSON, the histograms are their percentiles; one-way delay is `latency_us`.
impl Serialize for ClientHists {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ClientHists", 4)?;
        st.serialize_field("latency_us", &self.one_way_delay_us.summary())?;
        st.serialize_field("inter_arrival_us", &self.inter_arrival_us.summary())?;
        st.serialize_field("recv_batch", &self.recv_batch.summary())?;
        st.serialize_field("repair_us", &self.repair_us.summary())?;
        st.end()
    }
}

/// The outcome of one sub-client, like one block of the lab's log. Serialised as is for
/// `get --json` (DESIGN.md lists the fields scripts rely on).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    pub id: usize,
    /// The server accepted the request and the copy began (its META was taken): the copy
    /// has a line in the table even when the file is empty.
    #[serde(skip)]
    pub began: bool,
    pub local_port: u16,
    pub server_port: u16,
    pub file_size: u64,
    /// Bytes per datagram on the wire, header included, as the server chose for this path.
    pub datagram_size: usize,
    /// Datagrams were received coalesced (`UDP_GRO`).
    pub gro: bool,
    /// Bytes of the copy written to its file around the page cache (`O_DIRECT`), the rest
    /// through it (0 with --discard).
    pub written_direct: u64,
    /// Payload bytes of every data datagram that arrived (duplicates and corrupt included).
    pub bytes_received: u64,
    /// Distinct file bytes that arrived with a valid CRC.
    pub bytes_intact: u64,
    pub datagrams_expected: u64,
    pub datagrams_received: u64,
    /// Datagrams never received (0 for a complete copy).
    pub datagrams_lost: u64,
    /// Retransmissions received.
    pub retransmitted: u64,
    pub duplicates: u64,
    /// Datagrams whose CRC32C failed.
    pub corrupt: u64,
    /// Datagrams that were not valid for this session.
    pub malformed: u64,
    /// Datagrams dropped because they did not open (a sealed connection): unsealed, forged,
    /// replayed, or for another connection.
    pub unauthenticated: u64,
    /// `recvmmsg` calls that returned something (with GRO, each may carry many datagrams).
    pub recv_calls: u64,
    /// Times the server answered "busy" before it took this copy.
    pub busy_retries: u32,
    pub complete: bool,
    pub hash_ok: bool,
    /// From the first request to the end of verification.
    pub duration_s: f64,
    /// Verified bits per second (0 if the copy did not verify); set by [`CopyReport::finish`].
    pub goodput_bps: f64,
    /// Where the verified copy is (`None` with --discard or on failure).
    pub path: Option<PathBuf>,
    pub error: Option<String>,
    #[serde(flatten)]
    pub hists: ClientHists,
    /// The sender's congestion controller as it last reported it (`STATUS`): pacing rate,
    /// smoothed and minimum RTT, datagrams in flight, loss events, spurious retransmissions.
    pub sender: Option<crate::protocol::Status>,
    /// CPU seconds this sub-client's thread used (user + system).
    pub cpu_s: f64,
    /// What the multicast group delivered, for a member of one (`get --multicast`).
    pub multicast: Option<MulticastReport>,
}

/// A group member's account of the group (`get --multicast`): what came from it, what its
/// repairs rebuilt, and what unicast had to fetch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MulticastReport {
    /// The group's address, and the transmission's id.
    pub group: String,
    pub transmission: String,
    /// The first block sent after this member joined (a late one fetches those before it by
    /// unicast), of how many.
    pub first_block: u32,
    pub blocks: u32,
    /// Sources and repairs from the group, datagrams rebuilt, feedback sent.
    #[serde(flatten)]
    pub stats: crate::protocol::group_rx::GroupRxStats,
    /// Datagrams the unicast session brought (what the group did not deliver).
    pub unicast_datagrams: u64,
    /// Why the copy went on by unicast before the group ended, if it did.
    pub fallback: Option<String>,
}

impl CopyReport {
    /// Fills in what is derived from the rest, once the copy has ended.
    pub fn finish(&mut self) {
        self.goodput_bps = if self.ok() && self.duration_s > 0.0 {
            self.bytes_intact as f64 * 8.0 / self.duration_s
        } else {
            0.0
        };
    }

    pub fn ok(&self) -> bool {
        self.error.is_none() && self.complete && self.hash_ok
    }
}

/// Verified bytes of all copies over the longest copy's time, bits per second.
pub fn aggregate_goodput_bps(reports: &[CopyReport]) -> f64 {
    let intact: u64 = reports
        .iter()
        .filter(|r| r.ok())
        .map(|r| r.bytes_intact)
        .sum();
    let wall = reports.iter().map(|r| r.duration_s).fold(0.0, f64::max);
    if wall > 0.0 {
        intact as f64 * 8.0 / wall
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_carries_goodput_and_percentiles() {
        let mut r = CopyReport {
            id: 2,
            bytes_intact: 1000,
            complete: true,
            hash_ok: true,
            duration_s: 0.5,
            ..Default::default()
        };
        r.hists.one_way_delay_us.record(40);
        r.finish();
        // tests/cli.rs checks every field DESIGN.md lists, end to end.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["goodput_bps"], 16_000.0);
        assert_eq!(v["latency_us"]["count"], 1);
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"][p].is_u64(), "{p}: {v}");
            assert!(v["repair_us"][p].is_u64(), "{p}: {v}");
        }
    }

    #[test]
    fn a_sub_client_s_histograms_are_small() {
        assert!(ClientHists::default().memory_bytes() <= 72 << 10);
        assert!(ClientHists::empty().memory_bytes() <= 16 << 10);
        // Merging an unused one into the summary's is harmless.
        let mut all = ClientHists::default();
        all.one_way_delay_us.record(500);
        all.merge(&ClientHists::empty());
        assert_eq!(all.one_way_delay_us.summary().count, 1);
    }
}
