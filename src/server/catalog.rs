//! What the server serves: the regular files directly inside one directory, and their scans.
//!
//! A file is scanned once (and again when it changes): memory-mapped, its per-datagram payload
//! CRC32Cs computed, and two BLAKE3 digests taken: the content hash and the manifest hash (over
//! the CRC list). The CRC list lets the send path stamp datagrams without reading payloads; the
//! manifest hash lets a receiver verify the whole file from CRCs it computes anyway. This file
//! computes the digest, decides what may be served and caches the result,
//! per file and payload size (the CRCs are per datagram, so each datagram size a path needs
//! has its own scan).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::generated::GeneratedStore;
use crate::protocol::data::payload_crc;
use crate::protocol::layout::{datagram_count, manifest_hash, payload_len, validate_name, BadName};
use crate::sys::hugebuf::HugeBuf;
use crate::sys::mmap::{MapRange, MappedFile};

#[derive(Debug, Error)]
pub enum FileError {
    #[error(transparent)]
    BadName(#[from] BadName),
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("{0} is not a regular file")]
    NotRegular(String),
    #[error("{0} is a temporary name of a file still being written")]
    Unfinished(String),
    #[error("{0} changed while it was being read")]
    Changed(String),
    #[error("{name} is larger than this server generates (at most {limit} bytes: serve --generated-max)")]
    TooLarge { name: String, limit: u64 },
    #[error("cannot read {name}: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Identity of a file version: a change to any of these means re-scan. The change time is
/// in it because a writer can restore the size and the modification time (`touch -d`), but
/// not the change time: any write or metadata change sets it to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Identity {
    fn of(md: &std::fs::Metadata) -> Self {
        Identity {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
        }
    }
}

/// A file ready to be sent: mapped, with its CRCs and hashes.
pub struct ScannedFile {
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
    /// A generated file (`gen-SIZE`, in memory): its bytes never change.
    pub generated: bool,
    /// Its memory is in 4 KiB pages (a generated file without huge shared-memory pages):
    /// copying a datagram costs less than splicing its 15 pages.
    pub small_pages: bool,
}

impl ScannedFile {
    /// Reads the file's identity from disk (one fstat): true when it is no longer the version
    /// that was scanned (written to, truncated, replaced), so its bytes may no longer match the
    /// CRCs and hashes. Once changed, always changed.
    pub fn check_changed(&self) -> bool {
        if self.changed.load(Ordering::Relaxed) {
            return true;
        }
        if self.generated {
            // Its memory only grows (its size and times move) and never changes.
            return false;
        }
        self.identity_checks.fetch_add(1, Ordering::Relaxed);
        let changed = match self.file.metadata() {
            Ok(md) => Identity::of(&md) != self.identity,
            Err(_) => true,
        };
        if changed {
            self.mark_changed();
        }
        changed
    }

    /// Marks the file changed (its identity moved, its bytes no longer match their CRCs, or
    /// its map was found shorter than the file was): it stays changed, and the next GET of it
    /// scans and maps it anew.
    pub fn mark_changed(&self) {
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Reads datagram `index`'s payload back from the file (pread, never the map) and checks
    /// it against the CRC it was scanned with: false, and the file marked changed, when it no
    /// longer matches (written in place with its identity intact: what repeated repairs of one
    /// datagram suggest). An error reading counts as changed.
    pub fn payload_matches(&self, index: u32) -> bool {
        let len = payload_len(self.size, self.payload_size, index as u64);
        let mut buf = vec![0u8; len];
        let ok = self
            .file
            .read_exact_at(&mut buf, index as u64 * self.payload_size as u64)
            .is_ok_and(|()| self.crcs.get(index as usize) == Some(&payload_crc(&buf)));
        if !ok {
            self.mark_changed();
        }
        ok
    }

    /// What the last [`ScannedFile::check_changed`] found, without touching the disk.
    pub fn known_changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }

    /// fstat calls made by [`ScannedFile::check_changed`] so far.
    pub fn identity_checks(&self) -> u64 {
        self.identity_checks.load(Ordering::Relaxed)
    }

    pub fn datagrams(&self) -> u64 {
        datagram_count(self.size, self.payload_size)
    }

    /// Where datagram `index`'s payload lies in the map, for the kernel to read (empty past
    /// the end). Never a slice: user space does not read a mapped file (see `sys/mmap.rs`).
    pub fn payload(&self, index: u64) -> MapRange {
        let len = payload_len(self.size, self.payload_size, index);
        match &self.map {
            Some(m) if len > 0 => m.range((index * self.payload_size as u64) as usize, len),
            _ => MapRange::EMPTY,
        }
    }

    /// Bytes this scan keeps in memory (its CRC table), for the cache's bound.
    fn index_bytes(&self) -> usize {
        self.crcs.len() * 4
    }
}

/// What a scan found, before it is cached as a [`ScannedFile`].
struct Scan<'a> {
    name: &'a str,
    size: u64,
    payload_size: u32,
    crcs: Vec<u32>,
    content_hash: [u8; 32],
    map: Option<MappedFile>,
    file: File,
    identity: Identity,
    generated: bool,
}

/// Per-datagram CRC32Cs and the BLAKE3 content hash of the first `len` bytes of `file`, read in
/// chunks of whole datagrams into a huge-page buffer; the hash runs on all cores.
///
/// Read with pread, never through a map: a file truncated while it is read this way gives a
/// short read (an error), where a map read in user space would be SIGBUS.
pub fn digest(file: &File, len: u64, payload_size: u32) -> std::io::Result<(Vec<u32>, [u8; 32])> {
    let chunk = (8 << 20) / payload_size as usize * payload_size as usize;
    let mut buf = HugeBuf::new(chunk.max(payload_size as usize));
    let mut crcs = Vec::with_capacity(datagram_count(len, payload_size) as usize);
    let mut h = blake3::Hasher::new();
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(buf.as_slice().len());
        file.read_exact_at(&mut buf.as_mut_slice()[..n], pos)?;
        let data = &buf.as_slice()[..n];
        std::thread::scope(|s| {
            let c = s.spawn(|| {
                data.chunks(payload_size as usize)
                    .map(payload_crc)
                    .collect::<Vec<u32>>()
            });
            h.update_rayon(data);
            crcs.extend(c.join().expect("crc thread"));
        });
        pos += n as u64;
    }
    Ok((crcs, *h.finalize().as_bytes()))
}

/// Checks each distinct file among `files` once (one fstat each, however many sessions send
/// it) and returns those that changed on disk since they were scanned.
pub fn changed_among<'a>(
    files: impl IntoIterator<Item = &'a Arc<ScannedFile>>,
) -> Vec<Arc<ScannedFile>> {
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

/// Most scans the cache keeps (each holds an open file and a map): a client asking for one
/// file at many datagram sizes, or for many files, cannot make the server hold descriptors
/// without bound. Sessions hold their own scan while they run.
pub const MAX_CACHED_SCANS: usize = 64;
/// Most bytes of CRC tables the cache keeps (4 bytes per datagram).
pub const MAX_CACHED_SCAN_BYTES: usize = 256 << 20;

/// The cache of scans, least recently used first out.
#[derive(Default)]
struct Cache {
    entries: HashMap<(String, u32), (Arc<ScannedFile>, u64)>,
    /// Use counter: an entry's is when it was last asked for.
    clock: u64,
    bytes: usize,
}

impl Cache {
    fn get(&mut self, key: &(String, u32)) -> Option<Arc<ScannedFile>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(f, used)| {
            *used = clock;
            f.clone()
        })
    }

    fn insert(&mut self, key: (String, u32), f: Arc<ScannedFile>) {
        self.clock += 1;
        self.bytes += f.index_bytes();
        if let Some((old, _)) = self.entries.insert(key, (f, self.clock)) {
            self.bytes -= old.index_bytes();
        }
        while self.entries.len() > MAX_CACHED_SCANS
            || (self.bytes > MAX_CACHED_SCAN_BYTES && self.entries.len() > 1)
        {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
    }

    fn remove(&mut self, key: &(String, u32)) {
        if let Some((f, _)) = self.entries.remove(key) {
            self.bytes -= f.index_bytes();
        }
    }
}

/// The served directory, the generated files, and the scans of both.
pub struct Catalog {
    /// `None`: generated files only (`serve --generated` without `--dir`).
    dir: Option<PathBuf>,
    /// `serve --generated`: `gen-SIZE` names are generated, not read from `dir`.
    generated: Option<GeneratedStore>,
    cache: Mutex<Cache>,
    /// Names left out of listings (unreadable, links, directories, ...), each logged once.
    skipped: Mutex<std::collections::HashSet<String>>,
}

/// Whether `name` is one of ringblast's own temporary names, of a file still being written:
/// a copy `get` has not verified yet (`.FILE.PID.RANDOM.part`) or a file `demo` or `bench`
/// is generating (`.FILE.PID.generating`). They are never listed nor served.
pub fn is_unfinished(name: &str) -> bool {
    name.starts_with('.') && (name.ends_with(".part") || name.ends_with(".generating"))
}

fn open_plain(dir: Option<&Path>, name: &str) -> Result<(File, std::fs::Metadata), FileError> {
    validate_name(name)?;
    let Some(dir) = dir else {
        return Err(FileError::NotFound(name.to_string()));
    };
    if is_unfinished(name) {
        return Err(FileError::Unfinished(name.to_string()));
    }
    let path = dir.join(name);
    // O_NOFOLLOW: a symlink inside the directory could point anywhere; it is not served.
    // O_NONBLOCK: opening a FIFO for reading would wait for a writer (the control thread,
    // frozen for everyone); with it the open returns at once, and the type check below
    // refuses it before anything can block.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
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

/// Why a directory entry is not served, in the words of the log line that says so.
fn not_served(md: &std::fs::Metadata) -> Option<&'static str> {
    let t = md.file_type();
    if t.is_file() {
        None
    } else if t.is_symlink() {
        Some("a symbolic link")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file (a FIFO, socket or device)")
    }
}

/// Sizes `list` shows as examples of generated files (those within the server's limit, and
/// the limit itself): any other size may be asked for by name.
const GENERATED_EXAMPLES: [u64; 4] = [1 << 20, 100 << 20, 250 << 20, 1 << 30];

impl Catalog {
    /// The regular files directly inside `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with(Some(dir.into()), None)
    }

    /// The files of `dir` (if any) and, with `generated_limit`, generated files of up to
    /// that many bytes.
    pub fn with(dir: Option<PathBuf>, generated_limit: Option<u64>) -> Self {
        Catalog {
            dir,
            generated: generated_limit.map(GeneratedStore::new),
            cache: Mutex::new(Cache::default()),
            skipped: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The size `name` asks for when it names a generated file this catalog serves
    /// (`Ok(None)`: not a generated name, or no generated files here), or why it cannot be
    /// served (larger than the limit).
    fn generated_size(&self, name: &str) -> Result<Option<u64>, FileError> {
        let Some(store) = &self.generated else {
            return Ok(None);
        };
        match crate::protocol::generated::parse_name(name) {
            Some(size) if size > store.limit() => Err(FileError::TooLarge {
                name: name.to_string(),
                limit: store.limit(),
            }),
            size => Ok(size),
        }
    }

    /// Logs, once per name, why `name` is left out.
    fn skip(&self, name: &str, why: &str) {
        let mut seen = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() < 10_000 && seen.insert(name.to_string()) {
            tracing::warn!("not serving {}: {why}", crate::report::escape(name));
        }
    }

    /// What `LIST` shows: the files of the directory, then (`serve --generated`) a few
    /// generated ones as examples, the largest being the server's limit.
    pub fn list(&self) -> std::io::Result<Vec<(String, u64)>> {
        let mut out = self.list_files()?;
        if let Some(store) = &self.generated {
            let limit = store.limit();
            let mut sizes: Vec<u64> = GENERATED_EXAMPLES
                .into_iter()
                .filter(|&s| s < limit)
                .collect();
            sizes.push(limit);
            out.extend(
                sizes
                    .into_iter()
                    .map(|s| (crate::protocol::generated::name_for(s), s)),
            );
        }
        Ok(out)
    }

    /// The regular files directly inside the directory (symlinks, directories, other kinds,
    /// unfinished temporary files, non-UTF-8 names and, with generated files, names that
    /// generated files take left out, each logged once), sorted by name, with sizes.
    pub fn list_files(&self) -> std::io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let Some(dir) = &self.dir else {
            return Ok(out);
        };
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = match entry.file_name().into_string() {
                Ok(n) => n,
                Err(raw) => {
                    self.skip(&raw.to_string_lossy(), "its name is not UTF-8");
                    continue;
                }
            };
            // symlink_metadata: a link is not followed, so a link to a file outside is hidden.
            let Ok(md) = entry.path().symlink_metadata() else {
                continue;
            };
            if let Some(why) = not_served(&md) {
                let why = format!("{why} (only regular files directly inside --dir are served)");
                self.skip(&name, &why);
                continue;
            }
            if is_unfinished(&name) {
                continue;
            }
            if validate_name(&name).is_err() {
                self.skip(&name, "its name cannot be carried on the wire");
                continue;
            }
            if self.generated.is_some() && crate::protocol::generated::parse_name(&name).is_some() {
                self.skip(
                    &name,
                    "with --generated, gen-SIZE names are generated files",
                );
                continue;
            }
            // Only what a GET could actually send is listed.
            if nix::unistd::access(&entry.path(), nix::unistd::AccessFlags::R_OK).is_err() {
                self.skip(&name, "this server cannot read it");
                continue;
            }
            out.push((name, md.len()));
        }
        out.sort();
        Ok(out)
    }

    /// The scan of `name` at `payload_size` bytes per datagram, if it is cached and the file
    /// has not changed since.
    pub fn cached(
        &self,
        name: &str,
        payload_size: u32,
    ) -> Result<Option<Arc<ScannedFile>>, FileError> {
        if self.generated_size(name)?.is_some() {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            return Ok(cache.get(&(name.to_string(), payload_size)));
        }
        let (_, md) = open_plain(self.dir(), name)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        Ok(cache
            .get(&(name.to_string(), payload_size))
            .filter(|f| f.identity == Identity::of(&md) && !f.known_changed()))
    }

    /// Scans `name` (maps it, computes CRCs and hashes) unless a fresh scan is cached.
    /// Takes time proportional to the file size: call it off the control path.
    pub fn scan(&self, name: &str, payload_size: u32) -> Result<Arc<ScannedFile>, FileError> {
        if let Some(f) = self.cached(name, payload_size)? {
            return Ok(f);
        }
        if let Some(size) = self.generated_size(name)? {
            return self.scan_generated(name, size, payload_size);
        }
        let (file, md) = open_plain(self.dir(), name)?;
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
            match MappedFile::map(&file, md.len()) {
                Ok(m) => Some(m),
                // Truncated between the check above and the map.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(FileError::Changed(name.to_string()))
                }
                Err(e) => return Err(io_err(e)),
            }
        } else {
            None
        };
        Ok(self.keep(Scan {
            name,
            size: md.len(),
            payload_size,
            crcs,
            content_hash,
            map,
            file,
            identity,
            generated: false,
        }))
    }

    /// A finished scan, cached.
    fn keep(&self, scan: Scan<'_>) -> Arc<ScannedFile> {
        let scanned = Arc::new(ScannedFile {
            name: scan.name.to_string(),
            size: scan.size,
            payload_size: scan.payload_size,
            manifest_hash: manifest_hash(scan.size, scan.payload_size, &scan.crcs),
            crcs: scan.crcs,
            content_hash: scan.content_hash,
            map: scan.map,
            file: scan.file,
            identity: scan.identity,
            changed: AtomicBool::new(false),
            identity_checks: AtomicU64::new(0),
            generated: scan.generated,
            small_pages: scan.generated && !super::generated::shmem_huge_pages(),
        });
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((scan.name.to_string(), scan.payload_size), scanned.clone());
        scanned
    }

    /// The scan of a generated file: the store's memory, grown to `size` if needed, mapped
    /// and digested like a file on disk.
    fn scan_generated(
        &self,
        name: &str,
        size: u64,
        payload_size: u32,
    ) -> Result<Arc<ScannedFile>, FileError> {
        let store = self.generated.as_ref().expect("a generated name");
        let io_err = |source| FileError::Io {
            name: name.to_string(),
            source,
        };
        let file = store.file_for(size).map_err(io_err)?;
        let (crcs, content_hash) = digest(&file, size, payload_size).map_err(io_err)?;
        let map = if size > 0 {
            Some(MappedFile::map(&file, size).map_err(io_err)?)
        } else {
            None
        };
        let identity = Identity::of(&file.metadata().map_err(io_err)?);
        Ok(self.keep(Scan {
            name,
            size,
            payload_size,
            crcs,
            content_hash,
            map,
            file,
            identity,
            generated: true,
        }))
    }

    /// Drops cached scans of files deleted, replaced or changed on disk (one fstat each):
    /// a deleted file's space is not held by a cache nobody will ask again.
    pub fn evict_stale(&self) -> usize {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<_> = cache
            .entries
            .iter()
            .filter(|(_, (f, _))| {
                // A generated file's memfd has no link, and never changes.
                !f.generated
                    && (f.check_changed() || f.file.metadata().map_or(true, |md| md.nlink() == 0))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            cache.remove(k);
        }
        stale.len()
    }

    /// Scans (and descriptors) the cache holds now.
    pub fn cached_scans(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
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
        let f = cat.scan("a.bin", 10).unwrap();
        assert_eq!(f.datagrams(), 3);
        assert_eq!((f.payload(2).len(), f.payload(3).len()), (5, 0));
        assert_eq!(f.crcs[1], crc32c::crc32c(&data[10..20]));
        assert_eq!(f.content_hash, *blake3::hash(&data).as_bytes());
        assert_eq!(f.manifest_hash, manifest_hash(25, 10, &f.crcs));
        // Cached until the file changes.
        assert!(Arc::ptr_eq(&f, &cat.scan("a.bin", 10).unwrap()));
        std::fs::write(dir.path().join("a.bin"), b"changed!").unwrap();
        assert_eq!(cat.scan("a.bin", 10).unwrap().size, 8);
        // Another datagram size is another scan of the same file.
        let coarse = cat.scan("a.bin", 4).unwrap();
        assert_eq!((coarse.payload_size, coarse.datagrams()), (4, 2));
        assert_eq!(cat.scan("a.bin", 10).unwrap().payload_size, 10);
        let e = cat.scan("empty", 10).unwrap();
        assert_eq!((e.size, e.datagrams()), (0, 0));
        assert!(matches!(
            cat.scan("link", 10),
            Err(FileError::NotRegular(_))
        ));
        assert!(matches!(cat.scan("sub", 10), Err(FileError::NotRegular(_))));
        assert!(matches!(cat.scan("nope", 10), Err(FileError::NotFound(_))));
        assert!(matches!(
            cat.scan("../a.bin", 10),
            Err(FileError::BadName(_))
        ));
    }

    /// Issue 19.7: written in place with its size and times put back, a file still gives
    /// itself away: its change time moves (the identity), and a datagram read back no longer
    /// matches its CRC (the re-read after repeated repairs).
    #[test]
    fn a_file_written_in_place_is_found_changed_whatever_its_times_say() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 100]).unwrap();
        let cat = Catalog::new(dir.path());
        let f = cat.scan("f", 10).unwrap();
        assert!(f.payload_matches(3) && !f.check_changed());
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        {
            use std::io::Write;
            let mut w = OpenOptions::new().write(true).open(&path).unwrap();
            w.write_all(&[2u8; 100]).unwrap();
            w.set_modified(mtime).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        assert!(!f.payload_matches(3));
        assert!(f.known_changed() && f.check_changed());
        // Not served from the cache again: the next GET scans the new content.
        assert!(cat.cached("f", 10).unwrap().is_none());
        assert_eq!(
            cat.scan("f", 10).unwrap().crcs[0],
            crc32c::crc32c(&[2u8; 10])
        );
    }

    /// Issue 19.3 and 19.20: a FIFO is refused without blocking; what is not served is said.
    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let cat = Catalog::new(dir.path());
        assert!(matches!(cat.scan("p", 10), Err(FileError::NotRegular(_))));
        assert!(cat.list().unwrap().is_empty());
        assert!(cat.skipped.lock().unwrap().contains("p"));
    }

    /// Issue 19.4: the cache keeps at most [`MAX_CACHED_SCANS`] scans (each an open file),
    /// least recently used out first, and lets go of deleted files.
    #[test]
    fn the_index_cache_is_bounded_and_forgets_deleted_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 1000]).unwrap();
        let cat = Catalog::new(dir.path());
        let first = cat.scan("f", 512).unwrap();
        for size in 513..(513 + MAX_CACHED_SCANS as u32 + 10) {
            cat.scan("f", size).unwrap();
            // The first stays in use, so it stays.
            assert!(cat.cached("f", 512).unwrap().is_some());
        }
        assert_eq!(cat.cached_scans(), MAX_CACHED_SCANS);
        assert!(
            cat.cached("f", 513).unwrap().is_none(),
            "the least recent went first"
        );
        drop(first);
        std::fs::remove_file(dir.path().join("f")).unwrap();
        assert_eq!(cat.evict_stale(), MAX_CACHED_SCANS);
        assert_eq!(cat.cached_scans(), 0);
    }

    #[test]
    fn many_sessions_of_one_file_cost_one_identity_check_per_sweep() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 100]).unwrap();
        std::fs::write(dir.path().join("g"), vec![2u8; 100]).unwrap();
        let cat = Catalog::new(dir.path());
        let (f, g) = (cat.scan("f", 10).unwrap(), cat.scan("g", 10).unwrap());
        // 50 sessions of f and 50 of g: one fstat per file, not per session.
        let sessions: Vec<Arc<ScannedFile>> = (0..100)
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
