//! `ringblast demo`: the lab's experiment in one command. Generates a random file in files/ if
//! absent, serves it on loopback, fetches it with N sub-clients and prints the lab's table.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;

use crate::client::{self, GetConfig};
use crate::protocol::Mode;
use crate::server::engine::EngineKind;
use crate::server::{Server, ServerConfig};

pub struct DemoConfig {
    pub dir: PathBuf,
    pub size: u64,
    pub clients: usize,
    pub mode: Mode,
    pub engine: EngineKind,
}

/// The temporary name `path` is generated under: hidden, tagged with this process's id, and
/// ending `.generating` (never listed nor served: see `server::catalog::is_unfinished`).
fn generating_name(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(".{name}.{}.generating", std::process::id()))
}

/// Writes `size` random bytes to `path` through a temporary name, so an interrupted run never
/// leaves a short file that looks finished: a failed one, or one stopped by Ctrl-C or SIGTERM
/// (error kind `Interrupted`), removes it.
pub fn generate(path: &Path, size: u64) -> std::io::Result<()> {
    let tmp = generating_name(path);
    // Ctrl-C while generating stops here, with the clean-up, instead of killing the process
    // and leaving hundreds of megabytes behind; the signals' default action comes back after.
    let stop = crate::sys::stop_on_signals();
    let r = write_random(&tmp, size, stop).and_then(|()| std::fs::rename(&tmp, path));
    crate::sys::default_stop_signals();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn write_random(
    tmp: &Path,
    size: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut rng = rand::rng();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted",
            ));
        }
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Removes what an earlier run that is gone (killed) left half-generated in `dir`.
fn remove_stale_generating(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name
            .strip_suffix(".generating")
            .filter(|_| name.starts_with('.'))
        else {
            continue;
        };
        let Some(pid) = rest.rsplit('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let regular = e.path().symlink_metadata().is_ok_and(|m| m.is_file());
        if regular && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!(
                "removed {}: a file an interrupted run left half-generated",
                e.path().display()
            );
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Name of the generated file for a size, e.g. `100MiB.bin`.
pub fn file_name(size: u64) -> String {
    if size.is_multiple_of(1 << 20) {
        format!("{}MiB.bin", size >> 20)
    } else {
        format!("{size}B.bin")
    }
}

/// Makes sure `dir/name` exists with exactly `size` bytes.
pub fn ensure_file(dir: &Path, size: u64) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_stale_generating(dir);
    let name = file_name(size);
    let path = dir.join(&name);
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(size) {
        // Refused up front rather than found out after filling the disk.
        if let Ok(fs) = nix::sys::statvfs::statvfs(dir) {
            let free = fs.blocks_available() * fs.fragment_size();
            if size > free {
                anyhow::bail!(
                    "cannot generate a {size}-byte file in {}: {free} bytes free there",
                    dir.display()
                );
            }
        }
        eprintln!("generating {} ({size} random bytes)...", path.display());
        generate(&path, size).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(name)
}

/// Runs the demo; returns true when every copy arrived intact.
pub fn run(cfg: &DemoConfig) -> anyhow::Result<bool> {
    let name = ensure_file(&cfg.dir, cfg.size)?;
    let server = Server::start(ServerConfig {
        dir: Some(cfg.dir.clone()),
        bind: "127.0.0.1:0".parse().expect("literal"),
        engine: cfg.engine,
        ..ServerConfig::default()
    })?;
    let out = std::env::temp_dir().join(format!("ringblast-demo-{}", std::process::id()));
    let mut get = GetConfig::new(server.local_addr(), &name);
    get.clients = cfg.clients;
    get.out_dir = Some(out.clone());
    get.mode = cfg.mode;
    get.timeout = Duration::from_secs(10);
    let reports = client::get(&get);
    let _ = std::fs::remove_dir_all(&out);
    let threads = server.engine_threads();
    server.shutdown();
    let reports = reports?;
    println!("{}", crate::report::table::table(&name, &reports));
    let threads = match cfg.engine {
        EngineKind::Uring => format!("{threads} worker threads for {} sessions", cfg.clients),
        EngineKind::Threads => format!("one thread per session ({} sessions)", cfg.clients),
    };
    println!(
        "server: engine {}, {threads}; copies were written to {} and verified (BLAKE3), then removed",
        cfg.engine.as_str(),
        out.display()
    );
    Ok(reports.iter().all(|r| r.ok()))
}
