//! What the server serves: the regular files directly inside one directory, and their index.
//!
//! A file is indexed once (and again when it changes): memory-mapped, its per-datagram payload
//! CRC32Cs computed, and two BLAKE3 digests taken: the content hash and the manifest hash (over
//! the CRC list). The CRC list lets the send path stamp datagrams without reading payloads; the
//! manifest hash lets a receiver verify the whole file from CRCs it computes anyway.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::sys::mmap::MappedFile;
use crate::wire::MAX_NAME_LEN;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("bad file name {0:?}: names are plain file names inside the served directory")]
    BadName(String),
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

/// Refuses anything but a plain name: no separators, no NUL, no `.`/`..`, not empty or huge.
pub fn validate_name(name: &str) -> Result<(), FileError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0');
    if bad {
        Err(FileError::BadName(name.to_string()))
    } else {
        Ok(())
    }
}

/// Number of datagrams a file of `size` bytes takes at `payload_size` bytes each.
pub fn datagram_count(size: u64, payload_size: u32) -> u64 {
    size.div_ceil(payload_size as u64)
}

/// Payload length of datagram `index`.
pub fn payload_len(size: u64, payload_size: u32, index: u64) -> usize {
    let start = index * payload_size as u64;
    (size.saturating_sub(start)).min(payload_size as u64) as usize
}

/// BLAKE3 over the file's manifest: size, datagram payload size and every datagram's payload
/// CRC32C in order. Two files with the same manifest hash have the same size and, datagram by
/// datagram, the same CRC32C; receivers check every datagram's CRC on arrival.
pub fn manifest_hash(file_size: u64, payload_size: u32, crcs: &[u32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("ringblast 2026 manifest v1");
    h.update(&file_size.to_be_bytes());
    h.update(&payload_size.to_be_bytes());
    for c in crcs {
        h.update(&c.to_be_bytes());
    }
    *h.finalize().as_bytes()
}

/// Per-datagram CRC32Cs and the BLAKE3 content hash of the first `len` bytes of `file`, read in
/// chunks of whole datagrams into a huge-page buffer; the hash runs on all cores.
fn digest(file: &File, len: u64, payload_size: u32) -> std::io::Result<(Vec<u32>, [u8; 32])> {
    use std::os::unix::fs::FileExt;
    let chunk = (8 << 20) / payload_size as usize * payload_size as usize;
    let mut buf = crate::sys::hugebuf::HugeBuf::new(chunk.max(payload_size as usize));
    let mut crcs = Vec::with_capacity(datagram_count(len, payload_size) as usize);
    let mut h = blake3::Hasher::new();
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(buf.as_slice().len());
        let data = &mut buf.as_mut_slice()[..n];
        file.read_exact_at(data, pos)?;
        let data = &buf.as_slice()[..n];
        std::thread::scope(|s| {
            let c = s.spawn(|| {
                data.chunks(payload_size as usize)
                    .map(crc32c::crc32c)
                    .collect::<Vec<u32>>()
            });
            h.update_rayon(data);
            crcs.extend(c.join().expect("crc thread"));
        });
        pos += n as u64;
    }
    Ok((crcs, *h.finalize().as_bytes()))
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
}

impl IndexedFile {
    /// True when the file on disk is no longer the version that was indexed (written to,
    /// truncated, replaced): its bytes may no longer match the CRCs and hashes.
    pub fn changed(&self) -> bool {
        match self.file.metadata() {
            Ok(md) => Identity::of(&md) != self.identity,
            Err(_) => true,
        }
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

/// The served directory and the index of its files.
pub struct Catalog {
    dir: PathBuf,
    payload_size: u32,
    cache: Mutex<HashMap<String, Arc<IndexedFile>>>,
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
    pub fn new(dir: impl Into<PathBuf>, payload_size: u32) -> Self {
        Catalog {
            dir: dir.into(),
            payload_size,
            cache: Mutex::new(HashMap::new()),
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
            if md.file_type().is_file() && validate_name(&name).is_ok() {
                out.push((name, md.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The index of `name` if it is cached and the file has not changed since.
    pub fn cached(&self, name: &str) -> Result<Option<Arc<IndexedFile>>, FileError> {
        let (_, md) = open_plain(&self.dir, name)?;
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        Ok(cache
            .get(name)
            .filter(|f| f.identity == Identity::of(&md))
            .cloned())
    }

    /// Indexes `name` (maps it, computes CRCs and hashes) unless a fresh index is cached.
    /// Takes time proportional to the file size: call it off the control path.
    pub fn index(&self, name: &str) -> Result<Arc<IndexedFile>, FileError> {
        if let Some(f) = self.cached(name)? {
            return Ok(f);
        }
        let (file, md) = open_plain(&self.dir, name)?;
        let identity = Identity::of(&md);
        let io_err = |source| FileError::Io {
            name: name.to_string(),
            source,
        };
        let payload_size = self.payload_size;
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
        });
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), indexed.clone());
        Ok(indexed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_are_refused() {
        for bad in ["", ".", "..", "../etc/passwd", "/etc/passwd", "a/b", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"x".repeat(256)).is_err());
        for good in ["100mb.mp4", "..hidden", "a b", "ñ"] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn datagram_arithmetic() {
        assert_eq!(datagram_count(0, 10), 0);
        assert_eq!(datagram_count(1, 10), 1);
        assert_eq!(datagram_count(10, 10), 1);
        assert_eq!(datagram_count(11, 10), 2);
        assert_eq!(payload_len(11, 10, 0), 10);
        assert_eq!(payload_len(11, 10, 1), 1);
        assert_eq!(payload_len(11, 10, 2), 0);
    }

    #[test]
    fn index_lists_and_hashes_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        std::fs::write(dir.path().join("a.bin"), &data).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        let cat = Catalog::new(dir.path(), 10);
        assert_eq!(
            cat.list().unwrap(),
            vec![("a.bin".to_string(), 25), ("empty".to_string(), 0)]
        );
        let f = cat.index("a.bin").unwrap();
        assert_eq!(f.datagrams(), 3);
        assert_eq!(f.payload(2), &data[20..25]);
        assert_eq!(f.crcs[1], crc32c::crc32c(&data[10..20]));
        assert_eq!(f.content_hash, *blake3::hash(&data).as_bytes());
        assert_eq!(f.manifest_hash, manifest_hash(25, 10, &f.crcs));
        // Cached until the file changes.
        assert!(Arc::ptr_eq(&f, &cat.index("a.bin").unwrap()));
        std::fs::write(dir.path().join("a.bin"), b"changed!").unwrap();
        assert_eq!(cat.index("a.bin").unwrap().size, 8);
        let e = cat.index("empty").unwrap();
        assert_eq!((e.size, e.datagrams()), (0, 0));
        assert!(matches!(cat.index("link"), Err(FileError::NotRegular(_))));
        assert!(matches!(cat.index("sub"), Err(FileError::NotRegular(_))));
        assert!(matches!(cat.index("nope"), Err(FileError::NotFound(_))));
        assert!(matches!(cat.index("../a.bin"), Err(FileError::BadName(_))));
    }
}
