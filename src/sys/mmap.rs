//! Read-only memory maps of served files.
//!
//! A mapped file that another process truncates raises SIGBUS on any user-space read past its
//! new end. So this module hands out no `&[u8]` of a map: the open path gets [`MapRange`]s,
//! which become the iovecs of a `sendmsg` (the kernel reading a vanished page fails that one
//! send with `EFAULT`; the process lives on), and the sealed path reads through
//! [`MappedFile::read`], under a SIGBUS guard (`sys::sigbus`) that turns a vanished page into
//! an error for that read instead of the end of the process.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicBool;

use super::sigbus::{self, GuardError};

/// A whole file mapped read-only and pre-faulted by the kernel: page faults on this VM cost
/// microseconds each, and the send path should meet none.
pub struct MappedFile {
    map: memmap2::Mmap,
    /// A guarded read found a page gone: the file was truncated, and the vanished pages now
    /// read as zeros. Every later [`MappedFile::read`] is refused.
    poisoned: AtomicBool,
}

/// A byte range of a [`MappedFile`], for the kernel to read (an iovec): never a slice.
#[derive(Debug, Clone, Copy)]
pub struct MapRange {
    base: *const u8,
    len: usize,
}

// SAFETY: a MapRange is an address and a length; this crate never dereferences it (only the
// kernel reads through it, as an iovec), so sending or sharing it between threads is sound.
unsafe impl Send for MapRange {}
// SAFETY: as above: nothing reads through it in user space.
unsafe impl Sync for MapRange {}

impl MapRange {
    /// The empty range (a datagram past the end of the file).
    pub const EMPTY: MapRange = MapRange {
        base: std::ptr::null(),
        len: 0,
    };

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The range as an iovec for `sendmsg`: the kernel, not this process, reads it.
    pub fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.base.cast_mut().cast(),
            iov_len: self.len,
        }
    }
}

impl MappedFile {
    /// Maps the first `len` bytes of `file` (its size when it was opened). Fails if the file
    /// is now shorter than `len` (truncated since): the pre-fault reports it as `EFAULT`.
    pub fn map(file: &File, len: u64) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
        // SAFETY: the map is read-only and private to this process, and this module never
        // reads it in user space (it hands out iovec ranges, not slices): a file truncated
        // while mapped makes the kernel fail a send with EFAULT, never SIGBUS here.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        // Hints only; failure is harmless. Where the filesystem keeps large folios in the page
        // cache, MADV_HUGEPAGE lets them be mapped with huge pages: fewer TLB misses in the
        // kernel's copy on the send path (see sys/recvmmsg.rs for what that costs in a VM).
        let _ = map.advise(memmap2::Advice::Sequential);
        let _ = map.advise(memmap2::Advice::HugePage);
        // Pre-fault after the huge-page advice, so the faults can map huge folios. The kernel
        // does it (MADV_POPULATE_READ, Linux 5.14+): a page past the end is EFAULT, not a
        // signal. Older kernels (EINVAL) go without: there is no fault-free way to touch the
        // pages from user space (touching one byte per page was SIGBUS on a truncated file).
        match map.advise(memmap2::Advice::PopulateRead) {
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than when it was opened (truncated meanwhile)",
            )),
            _ => Ok(MappedFile {
                map,
                poisoned: AtomicBool::new(false),
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Hands `read` the `len` bytes at `start` and returns its result, or an error if the file
    /// is now shorter than the map (a page of the range, or of an earlier read, was gone:
    /// `read` saw zeros there, and its result is dropped). Panics if the range is not inside
    /// the map (a bug in the caller's arithmetic). Not to be nested.
    pub fn read<R>(
        &self,
        start: usize,
        len: usize,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, GuardError> {
        let range = self.range(start, len);
        // SAFETY: the range is inside this map (checked by `range`), which is read-only, shared
        // and borrowed (so mapped) for the whole call; `poisoned` is this map's flag.
        unsafe { sigbus::guarded(range.base, range.len, &self.poisoned, read) }
    }

    /// The `len` bytes at `start`, for the kernel to read. Panics if they are not inside the
    /// map (a bug in the caller's arithmetic, never a property of the file's contents).
    pub fn range(&self, start: usize, len: usize) -> MapRange {
        assert!(
            start
                .checked_add(len)
                .is_some_and(|end| end <= self.map.len()),
            "range {start}+{len} outside a {}-byte map",
            self.map.len()
        );
        MapRange {
            // SAFETY: `start` is within the map (checked above), so the pointer stays inside
            // the mapping's allocation; nothing dereferences it in user space.
            base: unsafe { self.map.as_ptr().add(start) },
            len,
        }
    }
}

/// Writes bytes `start .. end` of `file`, a memory file of this process that nothing else
/// truncates (the generated files' memfd, already `end` bytes long), through a shared map
/// with `MADV_HUGEPAGE`: where the system lets shared memory have huge pages
/// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`: advise, within_size, always), the
/// pages are allocated huge, and later sends splice fewer, larger pieces. `fill(offset, out)`
/// writes the bytes at `offset` into `out`.
pub fn write_through_map(
    file: &File,
    start: u64,
    end: u64,
    mut fill: impl FnMut(u64, &mut [u8]),
) -> io::Result<()> {
    if start >= end {
        return Ok(());
    }
    // Maps start at a page boundary.
    let first = start - start % 4096;
    let len = usize::try_from(end - first).map_err(|_| io::Error::other("too large to map"))?;
    // SAFETY: the caller's file is a memfd private to this process, `end` bytes long, that
    // nothing truncates while this map lives (the store holds its lock), so every page of the
    // map is backed; the map is written here and dropped before this returns.
    let mut map = unsafe {
        memmap2::MmapOptions::new()
            .offset(first)
            .len(len)
            .map_mut(file)?
    };
    let _ = map.advise(memmap2::Advice::HugePage);
    let skip = (start - first) as usize;
    const CHUNK: usize = 8 << 20;
    let mut at = skip;
    while at < len {
        let n = (len - at).min(CHUNK);
        fill(first + at as u64, &mut map[at..at + n]);
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Issue 19.1: a file truncated between its scanning and its mapping killed the server
    /// with SIGBUS (the fallback pre-fault touched every page in user space). Run in a child
    /// process, so that a regression fails this test instead of killing the whole harness.
    #[test]
    fn mapping_a_file_truncated_meanwhile_fails_cleanly_without_sigbus() {
        if std::env::var("RINGBLAST_MMAP_CHILD").is_ok() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let mut f = File::create(&path).unwrap();
            f.write_all(&vec![7u8; 4 << 20]).unwrap();
            let file = File::open(&path).unwrap();
            // Truncated after its size was taken, before it is mapped.
            File::create(&path).unwrap();
            let r = MappedFile::map(&file, 4 << 20);
            let e = r.err().expect("a truncated file is refused");
            assert!(e.to_string().contains("truncated"), "{e}");
            // A map that is whole works, and hands out ranges, never bytes.
            std::fs::write(&path, vec![1u8; 10_000]).unwrap();
            let m = MappedFile::map(&File::open(&path).unwrap(), 10_000).unwrap();
            let r = m.range(4096, 5904);
            assert_eq!((r.len(), r.iovec().iov_len), (5904, 5904));
            return;
        }
        let (status, out) = in_child(
            "mapping_a_file_truncated_meanwhile_fails_cleanly_without_sigbus",
            "RINGBLAST_MMAP_CHILD",
        );
        assert!(status.success(), "child died: {status:?}\n{out}");
    }

    /// Runs the test `name` of this module again in a child process with `env` set; returns
    /// how the child ended and what it printed.
    fn in_child(name: &str, env: &str) -> (std::process::ExitStatus, String) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("sys::mmap::tests::{name}"),
                "--nocapture",
            ])
            .env(env, "1")
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// The sealed send path reads the map in user space: a file truncated under it is an
    /// error for that read (and every later read of the map), not SIGBUS; the pages still
    /// there read as they are. In a child process, so a regression kills only the child.
    #[test]
    fn a_guarded_read_of_a_truncated_file_is_an_error_not_sigbus() {
        if std::env::var("RINGBLAST_GUARD_CHILD").is_ok() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let data: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let m = MappedFile::map(&File::open(&path).unwrap(), data.len() as u64).unwrap();
            let sum = |b: &[u8]| b.iter().map(|&x| x as u64).sum::<u64>();
            let whole = sum(&data[1000..30_000]);
            assert_eq!(m.read(1000, 29_000, sum), Ok(whole));
            // Cut to 8 KiB: the first two pages stay, the rest are gone.
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(8192)
                .unwrap();
            assert_eq!(m.read(0, 8192, sum), Ok(sum(&data[..8192])));
            assert_eq!(m.read(8000, 1000, sum), Err(GuardError::CutShort));
            // Poisoned: even the pages that are still there are refused now.
            assert_eq!(m.read(0, 100, sum), Err(GuardError::CutShort));
            // Another map of the same file (the rescan) reads what is there.
            let again = MappedFile::map(&File::open(&path).unwrap(), 8192).unwrap();
            assert_eq!(again.read(0, 8192, sum), Ok(sum(&data[..8192])));
            println!("guarded reads survived");
            return;
        }
        let (status, out) = in_child(
            "a_guarded_read_of_a_truncated_file_is_an_error_not_sigbus",
            "RINGBLAST_GUARD_CHILD",
        );
        assert!(
            status.success() && out.contains("guarded reads survived"),
            "child: {status:?}\n{out}"
        );
    }

    /// The guard catches only the reads it guards: a SIGBUS anywhere else ends the process
    /// as it did before the handler was installed.
    #[test]
    fn a_sigbus_outside_a_guarded_read_still_ends_the_process() {
        use std::os::unix::process::ExitStatusExt;
        if std::env::var("RINGBLAST_UNGUARDED_CHILD").is_ok() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, vec![3u8; 64 << 10]).unwrap();
            let m = MappedFile::map(&File::open(&path).unwrap(), 64 << 10).unwrap();
            // Dies without leaving a core file behind.
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).unwrap();
            // Installs the handler.
            assert_eq!(m.read(0, 10, |b| b[0]), Ok(3));
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(0)
                .unwrap();
            let p = m.range(40_000, 1).base;
            // SAFETY: deliberately reads a page the truncation removed, unguarded: the
            // process must die of SIGBUS here (the test's parent checks that it did).
            let v = unsafe { std::ptr::read_volatile(p) };
            println!("read {v} past the end and lived");
            return;
        }
        let (status, out) = in_child(
            "a_sigbus_outside_a_guarded_read_still_ends_the_process",
            "RINGBLAST_UNGUARDED_CHILD",
        );
        assert_eq!(
            status.signal(),
            Some(libc::SIGBUS),
            "child: {status:?}\n{out}"
        );
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_range_outside_the_map_is_a_bug_not_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        std::fs::write(&path, vec![1u8; 100]).unwrap();
        let m = MappedFile::map(&File::open(&path).unwrap(), 100).unwrap();
        m.range(50, 51);
    }
}
