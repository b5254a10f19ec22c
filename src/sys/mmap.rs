//! Read-only memory maps of served files.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

/// A whole file mapped read-only and pre-faulted: page faults on this VM cost microseconds
/// each, and the send path should meet none.
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps the first `len` bytes of `file` (its size when it was opened).
    pub fn map(file: &File, len: u64) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
        // SAFETY: the map is read-only and private to this process; ringblast never writes
        // through it. Another process truncating the file while it is mapped would make
        // reads past the new end raise SIGBUS: the catalog re-checks the file's identity
        // before each new session, and the known gap (a truncate *during* a session) is
        // tracked as a fault to guard against (see docs/PROTOCOL.md, "Known limits").
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        // Hints only; failure is harmless. Where the filesystem keeps large folios in the page
        // cache, MADV_HUGEPAGE lets them be mapped with huge pages: fewer TLB misses in the
        // kernel's copy on the send path (see sys/recvmmsg.rs for what that costs in a VM).
        let _ = map.advise(memmap2::Advice::Sequential);
        let _ = map.advise(memmap2::Advice::HugePage);
        // Pre-fault after the huge-page advice, so the faults can map huge folios.
        if map.advise(memmap2::Advice::PopulateRead).is_err() {
            // Kernels before 5.14: touch one byte per page instead.
            let mut sum = 0u8;
            for b in map.iter().step_by(4096) {
                sum = sum.wrapping_add(*b);
            }
            std::hint::black_box(sum);
        }
        Ok(MappedFile { map })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }
}
