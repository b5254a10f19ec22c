//! Where one sub-client's copy goes: a temporary file written at each datagram's offset and
//! renamed only once verified, or nowhere (`--discard`). How the bytes reach the file, and
//! the content hash, are `write/`'s.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::write::{Chunks, Output, WriteEngine, CHUNK};
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

    /// Creates the copy's temporary file for `final_path` (a fresh, unpredictable name: see
    /// [`create_temp`]) with room for `size` bytes, written by `write_path` (the direct path
    /// falls back to the page cache where the file system refuses `O_DIRECT`, and for copies
    /// smaller than a chunk); with `hash`, its content hash is computed as it is written.
    /// Returns the sink and the temporary path, or the error and the path it was tried at.
    pub(super) fn create(
        writes: &Arc<WriteEngine>,
        dir: &Path,
        final_path: &Path,
        size: u64,
        hash: bool,
        write_path: WritePath,
    ) -> Result<(Sink, PathBuf), (io::Error, PathBuf)> {
        let (file, temp) = create_temp(dir, final_path)?;
        let r = (|| {
            file.set_len(size)?;
            // A copy smaller than a chunk gains nothing from staging: not worth a second
            // descriptor, of which a process may only spend so many.
            let direct = match write_path {
                WritePath::Direct if size >= CHUNK && writes.direct_allowed() => {
                    reopen_direct(&file)
                }
                WritePath::Direct | WritePath::Buffered => None,
            };
            Ok(Sink {
                chunks: Some(RefCell::new(Chunks::new(Output::new(
                    writes, file, direct, size, hash,
                )))),
                path: temp.clone(),
            })
        })();
        match r {
            Ok(sink) => Ok((sink, temp)),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err((e, temp))
            }
        }
    }

    /// Puts the verified copy at `final_path`: renames the temporary file, after checking
    /// that the name still holds this copy's own file (not something put in its place).
    pub(super) fn place(&self, final_path: &Path) -> io::Result<()> {
        let Some(chunks) = &self.chunks else {
            return Ok(());
        };
        let ours = chunks.borrow().output().file_identity()?;
        let there = std::fs::symlink_metadata(&self.path)?;
        if !there.file_type().is_file() || (there.dev(), there.ino()) != ours {
            return Err(io::Error::other(
                "its temporary file was replaced by something else meanwhile",
            ));
        }
        std::fs::rename(&self.path, final_path)
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

/// Attempts at a fresh temporary name before giving up (each collision is 1 in 2^64 unless
/// someone plants names).
const TEMP_ATTEMPTS: usize = 16;

/// Creates the temporary file of a copy whose final path is `final_path`: a hidden name
/// tagged with this process's id (for the clean-up of a killed run) and 64 random bits, made
/// exclusively (`O_CREAT | O_EXCL`: a file, link or anything else already at the name is never
/// opened, so nothing planted there, in a shared directory, is written through) and without
/// following a link.
pub(super) fn create_temp(
    dir: &Path,
    final_path: &Path,
) -> Result<(File, PathBuf), (io::Error, PathBuf)> {
    let base = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("copy");
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let path = dir.join(format!(
            ".{base}.{}.{:016x}.part",
            std::process::id(),
            rand::random::<u64>()
        ));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((e, path)),
            Err(e) => return Err((e, path)),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// A second descriptor of `file` opened for `O_DIRECT` writes, through `/proc/self/fd` (the
/// file itself, never its name, which someone could have replaced); `None` where that fails.
fn reopen_direct(file: &File) -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
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
        // ".FILE[.N].PID.RANDOM.part" (or ".FILE[.N].PID.part" from older releases): the
        // PID is the last dotted field that is a number, before the 16 hex digits if any.
        let mut fields = rest.rsplit('.');
        let last = fields.next().unwrap_or("");
        let pid_field = if last.len() == 16 && last.chars().all(|c| c.is_ascii_hexdigit()) {
            fields.next()
        } else {
            Some(last)
        };
        let Some(pid) = pid_field.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Only a regular file is ours to remove: a link or anything else under such a name
        // was put there by someone else (and removing a link would not follow it anyway).
        if !entry
            .path()
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_file())
        {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}
