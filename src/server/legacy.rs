//! `serve --legacy`: the lab's text protocol, answered as the lab's Python server did, so the
//! lab's own clients work unchanged.
//!
//! `LIST` -> the file list as Python prints a list (`['100mb.mp4', '250mb.mp4']`);
//! `!CONFIG :file :n` -> `Config set` (or the lab's error texts); `TRANSFER` -> the configured
//! file, raw, with no header, from a new thread, once: in 65507-byte datagrams where the path
//! carries them whole (loopback), in the largest the path carries otherwise (1472 bytes on
//! Ethernet; the lab's client writes whatever arrives, in order). Like the lab, the
//! configured file is one server-wide setting. Off by default: `TRANSFER` needs no address
//! validation, so a spoofed request makes the server blast a whole file at a victim.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::catalog::Catalog;
use super::log_budget::LogBudget;
use super::stats::ServerStats;
use crate::protocol::layout::validate_name;
use crate::report::escape;
use crate::sys::socket::{self, retry_eintr};

/// Python's `repr()` of a string, as `str(list)` prints it.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str()` of a list of file names.
pub fn py_list(names: &[String]) -> String {
    let items: Vec<String> = names.iter().map(|n| py_repr(n)).collect();
    format!("[{}]", items.join(", "))
}

/// The lab server's state and answers.
pub struct Legacy {
    sock: Arc<UdpSocket>,
    catalog: Arc<Catalog>,
    /// The lab's `file_to_be_sent`: one for the whole server.
    file_to_be_sent: Option<String>,
    transfers: Arc<AtomicUsize>,
    max_transfers: usize,
    /// `serve --rate`: each raw transfer is paced at it (the lab's server sent as fast as its
    /// loop went; a rate reproduces a slower machine or link).
    rate_bps: Option<u64>,
    stats: Arc<ServerStats>,
    /// The `[RECEIVED]` lines, a few a second (a flood of commands must not flood the log).
    log: LogBudget,
}

impl Legacy {
    pub fn new(
        sock: Arc<UdpSocket>,
        catalog: Arc<Catalog>,
        max_transfers: usize,
        rate_bps: Option<u64>,
        stats: Arc<ServerStats>,
    ) -> Self {
        Legacy {
            sock,
            catalog,
            file_to_be_sent: None,
            transfers: Arc::new(AtomicUsize::new(0)),
            max_transfers,
            rate_bps,
            stats,
            log: LogBudget::new(
                "[RECEIVED]",
                "commands of the lab's protocol",
                Instant::now(),
            ),
        }
    }

    /// Sums up the commands not logged line by line (once a second).
    pub fn flush_log(&mut self, now: Instant) {
        self.log.flush(now);
    }

    fn reply(&self, to: SocketAddr, text: &str) {
        let _ = retry_eintr(|| self.sock.send_to(text.as_bytes(), to));
    }

    fn files(&self) -> Vec<String> {
        self.catalog
            .list_files()
            .map(|l| l.into_iter().map(|(n, _)| n).collect())
            .unwrap_or_default()
    }

    /// Handles one datagram of the lab's protocol. Returns false if it is not one.
    pub fn handle(&mut self, src: SocketAddr, dgram: &[u8]) -> bool {
        let Ok(data) = std::str::from_utf8(dgram) else {
            return false;
        };
        if !(data == "LIST" || data == "TRANSFER" || data.contains("CONFIG")) {
            return false;
        }
        self.log.log("commands", Instant::now(), || {
            format!("Received data from client {src}: {}", escape(data))
        });
        if data == "LIST" {
            self.reply(src, &py_list(&self.files()));
        } else if data.contains("CONFIG") {
            let commands: Vec<&str> = data.split(':').collect();
            if commands.len() <= 1 {
                self.reply(src, "Invalid config format (Empty config). Please use the following format: !CONFIG <file>");
            } else if commands.len() != 3 {
                let msg_str: String = commands.iter().map(|c| format!("{c} ")).collect();
                self.reply(src, &format!("Invalid config format! {msg_str}. Please use the following format: !CONFIG <file> :<num_clients>"));
            } else {
                let name = commands[1].trim_end();
                if !self.files().iter().any(|f| f == name) {
                    self.reply(src, &format!("File {name} does not exist"));
                } else {
                    self.file_to_be_sent = Some(name.to_string());
                    self.reply(src, "Config set");
                }
            }
        } else if data == "TRANSFER" {
            self.transfer(src);
        } else {
            return false;
        }
        true
    }

    fn transfer(&mut self, to: SocketAddr) {
        let now = Instant::now();
        let Some(name) = self.file_to_be_sent.clone() else {
            // The lab's server sent nothing here (its thread failed on the unset file); a
            // reply would land in the lab client's output file as data.
            self.log.log("TRANSFERs before any !CONFIG", now, || {
                format!("[TRANSFER] from {to} before any !CONFIG: nothing sent")
            });
            return;
        };
        if validate_name(&name).is_err() {
            return;
        }
        if self.transfers.fetch_add(1, Ordering::AcqRel) >= self.max_transfers {
            self.transfers.fetch_sub(1, Ordering::AcqRel);
            let max = self.max_transfers;
            self.log.log("TRANSFERs refused busy", now, || {
                format!("[TRANSFER] refused {to}: {max} legacy transfers running")
            });
            return;
        }
        let Some(dir) = self.catalog.dir() else {
            return;
        };
        let path = dir.join(&name);
        let sock = self.sock.clone();
        let transfers = self.transfers.clone();
        let rate = self.rate_bps;
        let stats = self.stats.clone();
        let spawned = std::thread::Builder::new()
            .name("legacy-transfer".into())
            .spawn(move || {
                let name = escape(&name);
                match send_raw(&sock, &path, &name, to, rate) {
                    Ok(()) => {}
                    Err(e) => {
                        stats.sessions_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("[TRANSFER] File {name} NOT sent to client {to}: {e}");
                    }
                }
                transfers.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.transfers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Opens the configured file as `serve` serves files: no symlink followed (one swapped in
/// after `!CONFIG` is refused), nothing that could block (a FIFO), a regular file only.
fn open_regular(path: &std::path::Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other("it is a symbolic link")
            } else {
                e
            }
        })?;
    if !f.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    Ok(f)
}

/// The lab's send_file: read a datagram's worth, sendto, until the file ends; with
/// `rate_bps`, no faster than that (each datagram waits until the bytes before it are due).
/// A datagram is 65507 bytes where the path carries that whole, else the largest it carries
/// (the server's socket never fragments). Any failed send ends the transfer with an error:
/// a transfer is reported sent only if every datagram was.
fn send_raw(
    sock: &UdpSocket,
    path: &std::path::Path,
    name: &str,
    to: SocketAddr,
    rate_bps: Option<u64>,
) -> std::io::Result<()> {
    let mut f =
        open_regular(path).map_err(|e| std::io::Error::other(format!("cannot open it: {e}")))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let datagram = socket::route_datagram_size(to);
    tracing::info!("[TRANSFER] Sending file {name} to client {to}");
    tracing::info!(
        "[TRANSFER] File size: {size} bytes, in datagrams of {datagram} bytes. Client {to}"
    );
    let t = std::time::Instant::now();
    let mut buf = vec![0u8; datagram];
    let mut sent_bits = 0f64;
    let mut sent = 0u64;
    loop {
        // Fill the whole datagram, as Python's f.read(65507) does on a regular file.
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(std::io::Error::other(format!("cannot read it: {e}"))),
            }
        }
        if n == 0 {
            break;
        }
        if let Some(rate) = rate_bps {
            let due = t + Duration::from_secs_f64(sent_bits / rate.max(1) as f64);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            sent_bits += (n * 8) as f64;
        }
        // A full send buffer (ENOBUFS/EAGAIN) is waited out, as a blocking send would.
        loop {
            match retry_eintr(|| sock.send_to(&buf[..n], to)) {
                Ok(_) => break,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "send failed after {sent} of {size} bytes: {e}"
                    )))
                }
            }
        }
        sent += n as u64;
        if n < buf.len() {
            break;
        }
    }
    tracing::info!("[TRANSFER] File {name} sent to client {to}");
    tracing::info!(
        "[TRANSFER] Time taken to send file: {} seconds. Client {to}",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_print_like_python() {
        assert_eq!(
            py_list(&["100mb.mp4".into(), "250mb.mp4".into()]),
            "['100mb.mp4', '250mb.mp4']"
        );
        assert_eq!(py_list(&[]), "[]");
        assert_eq!(py_list(&["it's".into()]), "[\"it's\"]");
        assert_eq!(py_list(&["a\\b".into()]), "['a\\\\b']");
    }
}
