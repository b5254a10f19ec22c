//! What the server serves: the regular files directly inside one directory, and their index.
//!
//! A file is indexed once (and again when it changes): memory-mapped, its per-datagram payload
//! CRC32Cs computed, and two BLAKE3 digests taken: the content hash and the manifest hash (over
//! the CRC list). The CRC list lets the send path stamp datagrams without reading payloads; the
//! manifest hash lets a receiver verify the whole file from CRCs it computes anyway. The
//! digest itself is `indexer.rs`; this file decides what may be served and caches the result,
//! per file and payload size (the CRCs are per datagram, so each datagram size a path needs
//! has its own index).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::indexer::digest;
use crate::protocol::layout::{datagram_count, manifest_hash, payload_len, validate_name, BadName};
use crate::sys::mmap::MappedFile;

#[derive(Debug, Error)]
pub enum FileError {
    #[error(transparent)]
    BadName(#[from] BadName),
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("{0} is not a regular file")]
    NotRegular(String),
    #[error("{0} changed while it was being read")]
    Changed(String),
    #[error("cannot read {name}: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Identity of a file version: a change to any of these means re-index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    fn of(md: &std::fs::Metadata) -> Self {
        Identity {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        }
    }
}

/// A file ready to be sent: mapped, with its CRCs and hashes.
pub struct IndexedFile {
    pub name: String,
    pub size: u64,
    pub payload_size: u32,
    /// `None` for an empty file (nothing to map).
    pub map: Option<MappedFile>,
    /// The open file, for engines that read() instead of mapping (the baseline).
    pub file: File,
    /// CRC32C of each datagram's payload.
    pub crcs: Vec<u32>,
    pub manifest_hash: [u8; 32],
    pub content_hash: [u8; 32],
    identity: Identity,
    /// Set once a check found the file changed on disk: it stays changed.
    changed: AtomicBool,
    /// How often the file's identity was read from disk (fstat), for tests and stats.
    identity_checks: AtomicU64,
}

impl IndexedFile {
    /// Reads the file's identity from disk (one fstat): true when it is no longer the version
    /// that was indexed (written to, truncated, replaced), so its bytes may no longer match the
    /// CRCs and hashes. Once changed, always changed.
    pub fn check_changed(&self) -> bool {
        if self.changed.load(Ordering::Relaxed) {
            return true;
        }
        self.identity_checks.fetch_add(1, Ordering::Relaxed);
        let changed = match self.file.metadata() {
            Ok(md) => Identity::of(&md) != self.identity,
            Err(_) => true,
        };
        if changed {
            self.changed.store(true, Ordering::Relaxed);
        }
        changed
    }

    /// What the last [`IndexedFile::check_changed`] found, without touching the disk.
    pub fn known_changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }

    /// fstat calls made by [`IndexedFile::check_changed`] so far.
    pub fn identity_checks(&self) -> u64 {
        self.identity_checks.load(Ordering::Relaxed)
    }

    pub fn datagrams(&self) -> u64 {
        datagram_count(self.size, self.payload_size)
    }

    /// Payload bytes of datagram `index` (empty past the end).
    pub fn payload(&self, index: u64) -> &[u8] {
        let len = payload_len(self.size, self.payload_size, index);
        match &self.map {
            Some(m) if len > 0 => {
                let start = (index * self.payload_size as u64) as usize;
                &m.as_slice()[start..start + len]
            }
            _ => &[],
        }
    }
}

/// Checks each distinct file among `files` once (one fstat each, however many sessions send
/// it) and returns those that changed on disk since they were indexed.
pub fn changed_among<'a>(
    files: impl IntoIterator<Item = &'a Arc<IndexedFile>>,
) -> Vec<Arc<IndexedFile>> {
    let mut seen = std::collections::HashSet::new();
    let mut changed = Vec::new();
    for f in files {
        if !seen.insert(Arc::as_ptr(f)) {
            continue;
        }
        if f.check_changed() {
            changed.push(f.clone());
        }
    }
    changed
}

/// The served directory and the index of its files.
pub struct Catalog {
    dir: PathBuf,
    cache: Mutex<HashMap<(String, u32), Arc<IndexedFile>>>,
    /// Files left out of listings because this process cannot read them (each logged once).
    unreadable: Mutex<std::collections::HashSet<String>>,
}

fn open_plain(dir: &Path, name: &str) -> Result<(File, std::fs::Metadata), FileError> {
    validate_name(name)?;
    let path = dir.join(name);
    // O_NOFOLLOW: a symlink inside the directory could point anywhere; it is not served.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FileError::NotFound(name.to_string()),
            _ if e.raw_os_error() == Some(libc::ELOOP) => FileError::NotRegular(name.to_string()),
            _ => FileError::Io {
                name: name.to_string(),
                source: e,
            },
        })?;
    let md = file.metadata().map_err(|e| FileError::Io {
        name: name.to_string(),
        source: e,
    })?;
    if !md.file_type().is_file() {
        return Err(FileError::NotRegular(name.to_string()));
    }
    Ok((file, md))
}

impl Catalog {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Catalog {
            dir: dir.into(),
            cache: Mutex::new(HashMap::new()),
            unreadable: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The regular files directly inside the directory (symlinks and non-UTF-8 names left
    /// out), sorted by name, with sizes.
    pub fn list(&self) -> std::io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // symlink_metadata: a link is not followed, so a link to a file outside is hidden.
            let Ok(md) = entry.path().symlink_metadata() else {
                continue;
            };
            if !md.file_type().is_file() || validate_name(&name).is_err() {
                continue;
            }
            // Only what a GET could actually send is listed.
            if nix::unistd::access(&entry.path(), nix::unistd::AccessFlags::R_OK).is_err() {
                let mut seen = self.unreadable.lock().unwrap_or_else(|e| e.into_inner());
                if seen.insert(name.clone()) {
                    tracing::warn!("not listing {name}: this server cannot read it");
                }
                continue;
            }
            out.push((name, md.len()));
        }
        out.sort();
        Ok(out)
    }

    /// The index of `name` at `payload_size` bytes per datagram, if it is cached and the file
    /// has not changed since.
    pub fn cached(
        &self,
        name: &str,
        payload_size: u32,
    ) -> Result<Option<Arc<IndexedFile>>, FileError> {
        let (_, md) = open_plain(&self.dir, name)?;
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        Ok(cache
            .get(&(name.to_string(), payload_size))
            .filter(|f| f.identity == Identity::of(&md))
            .cloned())
    }

    /// Indexes `name` (maps it, computes CRCs and hashes) unless a fresh index is cached.
    /// Takes time proportional to the file size: call it off the control path.
    pub fn index(&self, name: &str, payload_size: u32) -> Result<Arc<IndexedFile>, FileError> {
        if let Some(f) = self.cached(name, payload_size)? {
            return Ok(f);
        }
        let (file, md) = open_plain(&self.dir, name)?;
        let identity = Identity::of(&md);
        let io_err = |source| FileError::Io {
            name: name.to_string(),
            source,
        };
        // Read with pread, never through the map: a file truncated while it is read this way
        // gives a short read (an error here), where a map read in user space would be SIGBUS.
        // The map is only ever read by the kernel (sendmsg), where a vanished page is EFAULT.
        let (crcs, content_hash) = digest(&file, md.len(), payload_size).map_err(io_err)?;
        if Identity::of(&file.metadata().map_err(io_err)?) != identity {
            return Err(FileError::Changed(name.to_string()));
        }
        let map = if md.len() > 0 {
            Some(MappedFile::map(&file, md.len()).map_err(io_err)?)
        } else {
            None
        };
        let indexed = Arc::new(IndexedFile {
            name: name.to_string(),
            size: md.len(),
            payload_size,
            manifest_hash: manifest_hash(md.len(), payload_size, &crcs),
            crcs,
            content_hash,
            map,
            file,
            identity,
            changed: AtomicBool::new(false),
            identity_checks: AtomicU64::new(0),
        });
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((name.to_string(), payload_size), indexed.clone());
        Ok(indexed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_and_hashes_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        std::fs::write(dir.path().join("a.bin"), &data).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        let cat = Catalog::new(dir.path());
        assert_eq!(
            cat.list().unwrap(),
            vec![("a.bin".to_string(), 25), ("empty".to_string(), 0)]
        );
        let f = cat.index("a.bin", 10).unwrap();
        assert_eq!(f.datagrams(), 3);
        assert_eq!(f.payload(2), &data[20..25]);
        assert_eq!(f.crcs[1], crc32c::crc32c(&data[10..20]));
        assert_eq!(f.content_hash, *blake3::hash(&data).as_bytes());
        assert_eq!(f.manifest_hash, manifest_hash(25, 10, &f.crcs));
        // Cached until the file changes.
        assert!(Arc::ptr_eq(&f, &cat.index("a.bin", 10).unwrap()));
        std::fs::write(dir.path().join("a.bin"), b"changed!").unwrap();
        assert_eq!(cat.index("a.bin", 10).unwrap().size, 8);
        // Another datagram size is another index of the same file.
        let coarse = cat.index("a.bin", 4).unwrap();
        assert_eq!((coarse.payload_size, coarse.datagrams()), (4, 2));
        assert_eq!(cat.index("a.bin", 10).unwrap().payload_size, 10);
        let e = cat.index("empty", 10).unwrap();
        assert_eq!((e.size, e.datagrams()), (0, 0));
        assert!(matches!(
            cat.index("link", 10),
            Err(FileError::NotRegular(_))
        ));
        assert!(matches!(
            cat.index("sub", 10),
            Err(FileError::NotRegular(_))
        ));
        assert!(matches!(cat.index("nope", 10), Err(FileError::NotFound(_))));
        assert!(matches!(
            cat.index("../a.bin", 10),
            Err(FileError::BadName(_))
        ));
    }

    #[test]
    fn many_sessions_of_one_file_cost_one_identity_check_per_sweep() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 100]).unwrap();
        std::fs::write(dir.path().join("g"), vec![2u8; 100]).unwrap();
        let cat = Catalog::new(dir.path());
        let (f, g) = (cat.index("f", 10).unwrap(), cat.index("g", 10).unwrap());
        // 50 sessions of f and 50 of g: one fstat per file, not per session.
        let sessions: Vec<Arc<IndexedFile>> = (0..100)
            .map(|i| if i % 2 == 0 { f.clone() } else { g.clone() })
            .collect();
        assert!(changed_among(&sessions).is_empty());
        assert_eq!((f.identity_checks(), g.identity_checks()), (1, 1));
        std::fs::write(dir.path().join("g"), b"rewritten").unwrap();
        let changed = changed_among(&sessions);
        assert_eq!(changed.len(), 1);
        assert!(Arc::ptr_eq(&changed[0], &g));
        assert!(g.known_changed() && !f.known_changed());
        assert_eq!((f.identity_checks(), g.identity_checks()), (2, 2));
    }
}
