//! One sub-client, one copy, from start to end: a token, the `GET`, the server's `META`
//! checked against what this client will allocate, the receive path, the whole-file checks,
//! and the verified copy renamed into place (or removed: a partial or unverified copy is never
//! left under any name).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::connection::{server_error, Connection, Reply};
use super::receive::DataReceiver;
use super::sink::{content_hash, temp_path, Sink};
use super::window::window_for_buffer;
use super::{copy_path, ClientError, GetConfig, StartGate, Verify};
use crate::protocol::layout::{datagram_count, manifest_hash, DatagramSize};
use crate::protocol::{
    DoneStatus, Message, Meta, DATA_HEADER_LEN, MAX_DATAGRAM, MAX_DATAGRAMS, MIN_PAYLOAD,
};
use crate::report::copy::CopyReport;
use crate::report::cpu::cpu_time;
use crate::report::live::Live;
use crate::sys::socket;

/// DONE is sent this many times: it is not acknowledged.
const DONE_REPEATS: usize = 3;

/// Runs sub-client `id` of `clients` once `gate` opens; never fails, the report says how it
/// went.
pub(super) fn run(
    cfg: &GetConfig,
    id: usize,
    clients: usize,
    gate: &StartGate,
    live: &Live,
) -> CopyReport {
    let mut sub = SubClient {
        report: CopyReport {
            id,
            server_port: cfg.server.port(),
            ..Default::default()
        },
        temp: None,
    };
    let conn = Connection::open(cfg.server);
    if !gate.wait() {
        sub.report.error = Some("not started: another sub-client could not be started".into());
        return sub.report;
    }
    let cpu_start = cpu_time(true);
    let start = Instant::now();
    let result = conn
        .map_err(ClientError::from)
        .and_then(|conn| sub.fetch(cfg, conn, id, clients, start, live));
    sub.report.duration_s = start.elapsed().as_secs_f64();
    sub.report.cpu_s = (cpu_time(true).saturating_sub(cpu_start)).as_secs_f64();
    if let Err(e) = result {
        sub.report.error = Some(e.to_string());
    }
    if let Some(temp) = sub.temp.take() {
        // Never leave a partial or unverified copy behind under any name.
        let _ = std::fs::remove_file(temp);
    }
    sub.report.finish();
    sub.report
}

struct SubClient {
    report: CopyReport,
    /// The temporary file while it exists.
    temp: Option<PathBuf>,
}

impl SubClient {
    fn fetch(
        &mut self,
        cfg: &GetConfig,
        mut conn: Connection,
        id: usize,
        clients: usize,
        start: Instant,
        live: &Live,
    ) -> Result<(), ClientError> {
        self.report.local_port = conn.sock.local_addr()?.port();
        let rcvbuf = socket::set_recv_buffer(&conn.sock, cfg.recv_buffer)?;
        let max_datagram = max_datagram(cfg, &conn)?;
        // Before META the datagram size is not known: size the window for the largest.
        let payload_guess = (max_datagram - DATA_HEADER_LEN) as u32;
        let initial_window = window_for_buffer(rcvbuf, payload_guess, cfg.window_bytes);
        let token = conn.token(cfg.timeout)?;
        let request_id: u32 = rand::random();
        let get = Message::Get {
            token,
            request_id,
            mode: cfg.mode,
            window_bytes: (initial_window as u64 * payload_guess as u64).min(u32::MAX as u64)
                as u32,
            max_datagram: max_datagram as u16,
            name: &cfg.file,
        };
        conn.keep_early = true;
        let meta = conn.request(&get, cfg.timeout, "waiting for the file", |m| match m {
            Message::Meta(meta) if meta.request_id == request_id => Reply::Done(Ok(*meta)),
            Message::Wait { request_id: r } if *r == request_id => Reply::Alive,
            Message::Error {
                request_id: r,
                code,
                text,
            } if *r == request_id => Reply::Done(Err(server_error(*code, text))),
            _ => Reply::Ignore,
        })??;
        check_meta(cfg, &meta, max_datagram)?;
        self.report.datagram_size = meta.payload_size as usize + DATA_HEADER_LEN;
        // Coalesced receives from here on: what arrived before META was read one by one.
        self.report.gro = cfg.gro && socket::enable_gro(&conn.sock);
        let sink = match &cfg.out_dir {
            Some(dir) => {
                let temp = temp_path(dir, &copy_path(dir, &cfg.file, id, clients));
                self.temp = Some(temp.clone());
                Sink::create(&temp, meta.file_size)?
            }
            None => Sink::discard(),
        };
        let window = window_for_buffer(rcvbuf, meta.payload_size, cfg.window_bytes);
        tracing::debug!(
            "client {id}: receive buffer {} KiB, window {window} datagrams",
            rcvbuf / 1024
        );
        // Credit never passes the end of the file, whatever the window.
        let window_max =
            (cfg.window_max_bytes / meta.payload_size.max(1) as u64).min(u32::MAX as u64) as u32;
        let mut rx = DataReceiver::new(&meta, window, window_max);
        live.total_bytes
            .fetch_add(meta.file_size, Ordering::Relaxed);
        conn.keep_early = false;
        let early = std::mem::take(&mut conn.early);
        let outcome = rx
            .absorb_early(&early, &sink)
            .and_then(|()| rx.run(&mut conn, &sink, cfg, &live.clients[id - 1]));
        drop(early);
        let r = &mut self.report;
        r.file_size = meta.file_size;
        r.datagrams_expected = rx.tracker.total() as u64;
        r.datagrams_lost = rx.tracker.missing() as u64;
        r.complete = rx.tracker.is_complete();
        let c = &rx.counts;
        r.bytes_received = c.bytes_received;
        r.bytes_intact = c.bytes_intact;
        r.datagrams_received = c.datagrams_received;
        r.retransmitted = c.retransmitted;
        r.duplicates = c.duplicates;
        r.corrupt = c.corrupt;
        r.malformed = c.malformed;
        r.recv_calls = c.recv_calls;
        r.hists = std::mem::take(&mut rx.hists);
        r.sender = rx.status;
        let manifest_ok = r.complete
            && manifest_hash(meta.file_size, meta.payload_size, &rx.crcs) == meta.manifest_hash;
        // Tell the server we are done, whatever happened (it is not acknowledged).
        let status = if manifest_ok {
            DoneStatus::Complete
        } else {
            DoneStatus::Incomplete
        };
        for _ in 0..DONE_REPEATS {
            let _ = conn.send(&Message::Done {
                session: meta.session,
                status,
            });
        }
        outcome?;
        if !r.complete {
            return Err(ClientError::Incomplete(format!(
                "{} of {} datagrams lost ({} of {} bytes intact)",
                r.datagrams_lost, r.datagrams_expected, r.bytes_intact, meta.file_size
            )));
        }
        if !manifest_ok {
            return Err(ClientError::Verification(
                "whole-file manifest hash mismatch: copy discarded".into(),
            ));
        }
        let content_ok = match (&sink.file, cfg.verify) {
            (Some(file), Verify::Content) => {
                content_hash(file, meta.file_size)? == meta.content_hash
            }
            _ => true,
        };
        if !content_ok {
            return Err(ClientError::Verification(
                "BLAKE3 content hash mismatch: copy discarded".into(),
            ));
        }
        self.report.hash_ok = true;
        if let (Some(dir), Some(temp)) = (&cfg.out_dir, self.temp.take()) {
            let final_path = copy_path(dir, &cfg.file, id, clients);
            std::fs::rename(&temp, &final_path)?;
            self.report.path = Some(final_path);
        }
        tracing::debug!(
            "client {id}: verified in {:.3} s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The largest datagram this client takes from the server: its path MTU to the server less
/// the IP and UDP headers (auto), or `--datagram-size` if the path carries that whole.
fn max_datagram(cfg: &GetConfig, conn: &Connection) -> Result<usize, ClientError> {
    let mtu = socket::path_mtu(&conn.sock)?;
    let path_max = socket::datagram_size_for_mtu(mtu, &conn.server);
    match cfg.datagram_size {
        DatagramSize::Auto => Ok(path_max.min(MAX_DATAGRAM)),
        DatagramSize::Fixed(n) if n <= path_max => Ok(n),
        DatagramSize::Fixed(n) => Err(ClientError::AbovePathMtu {
            asked: n,
            server: conn.server,
            mtu,
            max: path_max,
        }),
    }
}

/// Refuses a META that would make this client allocate without bound, or that does not match
/// what was asked.
fn check_meta(cfg: &GetConfig, m: &Meta, max_datagram: usize) -> Result<(), ClientError> {
    if m.payload_size as usize + DATA_HEADER_LEN > max_datagram {
        return Err(ClientError::BadMeta(format!(
            "{}-byte datagrams, over the {max_datagram} this client takes",
            m.payload_size as usize + DATA_HEADER_LEN
        )));
    }
    if m.file_size > cfg.max_size {
        return Err(ClientError::BadMeta(format!(
            "a {} byte file, over the {} byte limit (--max-size)",
            m.file_size, cfg.max_size
        )));
    }
    if m.payload_size < MIN_PAYLOAD {
        return Err(ClientError::BadMeta(format!(
            "{} byte payloads, under the {MIN_PAYLOAD} byte minimum",
            m.payload_size
        )));
    }
    let datagrams = datagram_count(m.file_size, m.payload_size);
    if datagrams > MAX_DATAGRAMS {
        return Err(ClientError::BadMeta(format!(
            "{datagrams} datagrams, over the {MAX_DATAGRAMS} a client tracks (use a larger datagram size)"
        )));
    }
    if m.mode != cfg.mode {
        return Err(ClientError::BadMeta(format!(
            "mode {} instead of {}",
            m.mode.as_str(),
            cfg.mode.as_str()
        )));
    }
    Ok(())
}
