//! Where one sub-client's copy goes: a temporary file written at each datagram's offset and
//! renamed only once verified, or nowhere (`--discard`).

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::hashing::{ContentHash, STEP};
use super::ClientError;

/// The output of one sub-client.
pub(super) struct Sink {
    pub(super) file: Option<Arc<File>>,
    /// Where `file` is, for errors.
    path: PathBuf,
    /// The copy's content hash, computed as the copy is written (`--verify content`).
    hash: Option<Arc<ContentHash>>,
    /// How far the hash has been asked to go.
    hash_asked: Cell<u64>,
}

impl Sink {
    pub(super) fn discard() -> Sink {
        Sink {
            file: None,
            path: PathBuf::new(),
            hash: None,
            hash_asked: Cell::new(0),
        }
    }

    /// Creates `temp` (truncated) with room for `size` bytes; with `hash`, its content hash is
    /// computed while it is written ([`Sink::written_through`]).
    pub(super) fn create(temp: &Path, size: u64, hash: bool) -> io::Result<Sink> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(temp)?;
        file.set_len(size)?;
        // Shared, not duplicated: a thousand copies must not take two thousand descriptors.
        let file = Arc::new(file);
        let hash = hash.then(|| ContentHash::new(file.clone(), size));
        Ok(Sink {
            file: Some(file),
            path: temp.to_path_buf(),
            hash,
            hash_asked: Cell::new(0),
        })
    }

    /// The copy's first `front` bytes are all written: the background hash may take them.
    pub(super) fn written_through(&self, front: u64) {
        if let Some(hash) = &self.hash {
            if front >= self.hash_asked.get() + STEP {
                self.hash_asked.set(front);
                hash.advance_in_background(front);
            }
        }
    }

    /// The BLAKE3 hash of the whole copy (what the background hash has not done yet is done
    /// now); `None` when there is no copy or it is not hashed.
    pub(super) fn content_hash(&self) -> Option<Result<[u8; 32], ClientError>> {
        let hash = self.hash.as_ref()?;
        Some(hash.finish().map_err(|error| ClientError::Path {
            what: "cannot read back the copy to check it",
            path: self.path.clone(),
            error,
        }))
    }

    /// Writes consecutive payloads starting at `offset`, in as few syscalls as possible; an
    /// error names the file.
    pub(super) fn write_run(&self, offset: u64, run: &[IoSlice<'_>]) -> Result<(), ClientError> {
        self.write_at(offset, run)
            .map_err(|error| ClientError::Path {
                what: "cannot write the copy",
                path: self.path.clone(),
                error,
            })
    }

    fn write_at(&self, offset: u64, run: &[IoSlice<'_>]) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if run.is_empty() {
            return Ok(());
        }
        let want: usize = run.iter().map(|s| s.len()).sum();
        let done =
            nix::sys::uio::pwritev(file, run, offset as libc::off_t).map_err(io::Error::from)?;
        if done < want {
            // Short write: finish the rest piece by piece.
            let mut pos = 0usize;
            for s in run {
                let end = pos + s.len();
                if end > done {
                    let skip = done.saturating_sub(pos);
                    file.write_all_at(&s[skip..], offset + (pos + skip) as u64)?;
                }
                pos = end;
            }
        }
        Ok(())
    }
}

/// The temporary name of a copy whose final path is `final_path`: hidden, and tagged with this
/// process's id so concurrent runs into one directory do not collide.
pub(super) fn temp_path(dir: &Path, final_path: &Path) -> PathBuf {
    dir.join(format!(
        ".{}.{}.part",
        final_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("copy"),
        std::process::id()
    ))
}

/// Removes the temporary copies of `file` in `dir` that a process no longer running left
/// behind (a crash, SIGKILL: the name holds its PID). Returns the paths removed.
pub(super) fn remove_stale_parts(dir: &Path, file: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!(".{file}");
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".part"))
            .filter(|r| r.starts_with('.'))
        else {
            continue;
        };
        // ".FILE.PID.part" or ".FILE.N.PID.part": the PID is the last dotted field.
        let Some(pid) = rest.rsplit('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}
