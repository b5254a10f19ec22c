//! Read-only memory maps of served files.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

/// A whole file mapped read-only and pre-faulted (`MAP_POPULATE`): page faults on this VM cost
/// microseconds each, and the send path should meet none.
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
        let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(file)? };
        // Readahead hint only; failure is harmless.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MappedFile { map })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }
}
