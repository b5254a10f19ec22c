//! Where one sub-client's copy goes: a temporary file written at each datagram's offset and
//! renamed only once verified, or nowhere (`--discard`). How the bytes reach the file, and
//! the content hash, are `writer.rs`'s.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{self, IoSlice};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::writer::{self, Chunks, Output, CHUNK};
use super::{ClientError, WritePath};

/// The output of one sub-client.
pub(super) struct Sink {
    /// The copy's chunks; `None` with `--discard`.
    chunks: Option<RefCell<Chunks>>,
    /// Where the copy is, for errors.
    path: PathBuf,
}

impl Sink {
    pub(super) fn discard() -> Sink {
        Sink {
            chunks: None,
            path: PathBuf::new(),
        }
    }

    /// Creates `temp` (truncated) with room for `size` bytes, written by `write_path` (the
    /// direct path falls back to the page cache where the file system refuses `O_DIRECT`, and
    /// for copies smaller than a chunk);
    /// with `hash`, its content hash is computed as it is written.
    pub(super) fn create(
        temp: &Path,
        size: u64,
        hash: bool,
        write_path: WritePath,
    ) -> io::Result<Sink> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(temp)?;
        file.set_len(size)?;
        // A copy smaller than a chunk gains nothing from staging: not worth a second
        // descriptor, of which a process may only spend so many.
        let direct = match write_path {
            WritePath::Direct if size >= CHUNK && writer::direct_allowed() => OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(temp)
                .ok(),
            WritePath::Direct | WritePath::Buffered => None,
        };
        Ok(Sink {
            chunks: Some(RefCell::new(Chunks::new(Output::new(
                file, direct, size, hash,
            )))),
            path: temp.to_path_buf(),
        })
    }

    /// Waits until the whole copy is written; its content hash when it was asked for. An
    /// error names the file.
    pub(super) fn finish(&self) -> Result<Option<[u8; 32]>, ClientError> {
        let Some(chunks) = &self.chunks else {
            return Ok(None);
        };
        chunks
            .borrow()
            .finish()
            .map_err(|(what, error)| ClientError::Path {
                what,
                path: self.path.clone(),
                error,
            })
    }

    /// Bytes of the copy written around the page cache so far.
    pub(super) fn direct_bytes(&self) -> u64 {
        self.chunks
            .as_ref()
            .map_or(0, |c| c.borrow().output().direct_bytes())
    }

    /// Writes consecutive payloads starting at `offset`; an error names the file.
    pub(super) fn write_run(&self, offset: u64, run: &[IoSlice<'_>]) -> Result<(), ClientError> {
        let Some(chunks) = &self.chunks else {
            return Ok(());
        };
        if run.is_empty() {
            return Ok(());
        }
        chunks
            .borrow_mut()
            .write_run(offset, run)
            .map_err(|(what, error)| ClientError::Path {
                what,
                path: self.path.clone(),
                error,
            })
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
