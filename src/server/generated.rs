//! The memory behind `serve --generated`: one anonymous in-memory file (memfd) holding the
//! generated sequence ([`crate::protocol::generated`]) up to the largest size asked for so
//! far. Every `gen-SIZE` is its first SIZE bytes, mapped and sent like a cached file on disk
//! (the page cache of a memfd is its memory). It only grows: bytes once written never change,
//! so sessions sending a smaller prefix go on undisturbed while it grows for a larger one.

use std::fs::File;
use std::sync::Mutex;

use crate::protocol::generated::fill;

/// The largest generated file a server makes unless told (`serve --generated-max`): a
/// quarter of the machine's memory, at most 4 GiB (1 GiB where the memory cannot be read).
pub fn default_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    total.map_or(1 << 30, |t| (t / 4).min(4 << 30))
}

/// Whether this system gives shared memory (a memfd) huge pages where a map asks for them
/// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`: advise, within_size, always or
/// force). Without them the generated files are 4 KiB pages, and splicing a datagram takes
/// 15 of them: measured ~30% slower than a cached file on disk (large folios) with 5
/// clients on loopback, so their sessions copy instead (sendmsg: as fast as a spliced cached
/// file within this VM's spread, README "Experiments between hosts").
pub fn shmem_huge_pages() -> bool {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .unwrap_or_default();
    let chosen = text
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(['[', ']']));
    matches!(chosen, Some("always" | "within_size" | "advise" | "force"))
}

/// The generated sequence in memory, bounded by `limit` bytes.
pub struct GeneratedStore {
    limit: u64,
    /// The memfd and how many of its bytes are written.
    inner: Mutex<Option<(File, u64)>>,
}

impl GeneratedStore {
    pub fn new(limit: u64) -> Self {
        GeneratedStore {
            limit,
            inner: Mutex::new(None),
        }
    }

    /// The largest generated file served.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held in memory now (the largest size asked for so far).
    pub fn held(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |(_, len)| *len)
    }

    /// A descriptor of the memfd whose first `size` bytes are the generated file of that
    /// size, growing it first if needed (time proportional to the growth: call it off the
    /// control path). `size` must be within [`GeneratedStore::limit`].
    pub fn file_for(&self, size: u64) -> std::io::Result<File> {
        debug_assert!(size <= self.limit);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.is_none() {
            let fd = nix::sys::memfd::memfd_create(
                c"ringblast-generated",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )?;
            *inner = Some((File::from(fd), 0));
        }
        let (file, len) = inner.as_mut().expect("just set");
        if *len < size {
            file.set_len(size)?;
            crate::sys::mmap::write_through_map(file, *len, size, fill)?;
            *len = size;
        }
        file.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn the_store_grows_and_every_prefix_is_the_sequence() {
        let store = GeneratedStore::new(1 << 30);
        let small = store.file_for(1000).unwrap();
        assert_eq!(store.held(), 1000);
        // Grown from an offset inside a page, past a chunk of the fill.
        const BIG: u64 = (8 << 20) + 77;
        let big = store.file_for(BIG).unwrap();
        assert_eq!(store.held(), BIG);
        // Asking for less does not shrink it.
        store.file_for(10).unwrap();
        assert_eq!(store.held(), BIG);
        let mut got = vec![0u8; 300];
        let mut want = vec![0u8; 300];
        for at in [0u64, 700, 995, 4090, BIG - 300] {
            big.read_exact_at(&mut got, at).unwrap();
            fill(at, &mut want);
            assert_eq!(got, want, "at {at}");
        }
        // The first descriptor sees the same (grown) memory.
        small.read_exact_at(&mut got[..100], 0).unwrap();
        fill(0, &mut want[..100]);
        assert_eq!(got[..100], want[..100]);
    }
}
