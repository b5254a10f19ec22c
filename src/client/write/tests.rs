//! The write path's rules: chunks in any order, staged or through the page cache, hashed in
//! file order; the stock's bounds; errors that surface.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use super::chunks::OPEN_PER_COPY;
use super::stock::{Stock, STAGE_MAX};
use super::*;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn open(path: &std::path::Path, len: u64, direct: bool) -> (File, Option<File>) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.set_len(len).unwrap();
    let d = direct.then(|| {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
    });
    (file, d.flatten())
}

/// A copy of `len` bytes in a new temporary directory (kept alive by the first value):
/// its path, its output and its chunks.
fn writer(
    engine: &Arc<WriteEngine>,
    len: usize,
    direct: bool,
    hash: bool,
) -> (tempfile::TempDir, std::path::PathBuf, Arc<Output>, Chunks) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy");
    let (file, d) = open(&path, len as u64, direct);
    let out = Output::new(engine, file, d, len as u64, hash);
    let chunks = Chunks::new(out.clone());
    (dir, path, out, chunks)
}

/// An engine as `get` makes one, with room for a few direct copies.
fn engine() -> Arc<WriteEngine> {
    WriteEngine::new(16)
}

/// Whether the file system of the temporary directory takes `O_DIRECT`.
fn direct_works() -> bool {
    let dir = tempfile::tempdir().unwrap();
    open(&dir.path().join("probe"), 4096, true).1.is_some()
}

/// Writes `data` as `payload`-byte pieces in the order `order` gives, `per_run` at a time
/// when consecutive, and returns the finished hash and the file's bytes.
fn copy(
    engine: &Arc<WriteEngine>,
    data: &[u8],
    payload: usize,
    order: &[usize],
    direct: bool,
) -> (Option<[u8; 32]>, Vec<u8>, u64) {
    let (_dir, path, out, mut chunks) = writer(engine, data.len(), direct, true);
    for &i in order {
        let at = i * payload;
        let end = (at + payload).min(data.len());
        chunks
            .write_run(at as u64, &[IoSlice::new(&data[at..end])])
            .unwrap();
    }
    let hash = out.finish().unwrap();
    (hash, std::fs::read(&path).unwrap(), out.direct_bytes())
}

#[test]
fn chunks_in_any_order_give_the_file_and_the_hash_of_the_whole() {
    // Odd payloads straddling chunk boundaries, an odd tail, pieces out of order.
    let data = pattern(3 * CHUNK as usize + 12_345);
    let payload = 61_441;
    let n = data.len().div_ceil(payload);
    let mut order: Vec<usize> = (0..n).collect();
    for w in order.chunks_mut(7) {
        w.reverse();
    }
    order.swap(3, n - 2);
    for direct in [true, false] {
        let (hash, file, direct_bytes) = copy(&engine(), &data, payload, &order, direct);
        assert_eq!(
            hash,
            Some(*blake3::hash(&data).as_bytes()),
            "direct {direct}"
        );
        assert!(file == data, "the file is the data (direct {direct})");
        if !direct {
            assert_eq!(direct_bytes, 0);
        } else if direct_works() {
            // Every whole block of a staged chunk went with O_DIRECT (the odd tail did not).
            assert_eq!(direct_bytes, data.len() as u64 / 4096 * 4096, "direct");
        } else {
            eprintln!("NOTE: this file system refuses O_DIRECT: the direct path was not tested");
        }
    }
}

#[test]
fn when_the_stock_is_used_up_chunks_go_through_the_page_cache() {
    let data = pattern(2 * CHUNK as usize + 777);
    let order: Vec<usize> = (0..data.len().div_ceil(65_000)).collect();
    // A stock of nothing: this run's copies go through the page cache (others' are not
    // touched: each run has its own engine).
    let empty = WriteEngine::with_stock(16, 0);
    let (hash, file, direct_bytes) = copy(&empty, &data, 65_000, &order, true);
    assert_eq!(hash, Some(*blake3::hash(&data).as_bytes()));
    assert!(file == data);
    assert_eq!(direct_bytes, 0, "no chunk was staged");
}

#[test]
fn the_stock_grows_with_the_copies_written_direct_up_to_its_most() {
    let stock = Stock::new(STAGE_MAX);
    assert_eq!(stock.limit(0), 14);
    assert_eq!(stock.limit(1), 16, "one copy: 64 MiB");
    assert_eq!(stock.limit(10), 34);
    assert_eq!(stock.limit(25), STAGE_MAX);
    assert_eq!(stock.limit(usize::MAX), STAGE_MAX);
    assert_eq!(Stock::new(3).limit(10), 3);
}

#[test]
fn an_empty_copy_and_one_smaller_than_a_block_hash_right() {
    for len in [0, 1, 4095, 4097] {
        let data = pattern(len);
        let order: Vec<usize> = (0..len.div_ceil(1000)).collect();
        let (hash, file, _) = copy(&engine(), &data, 1000, &order, true);
        assert_eq!(hash, Some(*blake3::hash(&data).as_bytes()), "len {len}");
        assert_eq!(file, data);
    }
}

#[test]
fn consecutive_payloads_go_in_one_run_across_chunks() {
    let data = pattern(2 * CHUNK as usize + 100);
    let (_dir, path, out, mut chunks) = writer(&engine(), data.len(), true, false);
    let run: Vec<IoSlice<'_>> = data.chunks(65_475).map(IoSlice::new).collect();
    chunks.write_run(0, &run).unwrap();
    assert_eq!(out.finish().unwrap(), None, "no hash asked for");
    assert!(std::fs::read(&path).unwrap() == data);
}

#[test]
fn many_chunks_at_once_are_hashed_by_the_writer_too_and_hash_right() {
    // Twelve chunks made whole by one call: more than HASH_BACKLOG wait for their hash,
    // so the calling thread hashes some itself, alongside the hashing threads.
    let data = pattern(12 * CHUNK as usize + 5);
    for direct in [true, false] {
        let (_dir, path, out, mut chunks) = writer(&engine(), data.len(), direct, true);
        let run: Vec<IoSlice<'_>> = data.chunks(61_440).map(IoSlice::new).collect();
        chunks.write_run(0, &run).unwrap();
        assert_eq!(out.finish().unwrap(), Some(*blake3::hash(&data).as_bytes()));
        assert!(std::fs::read(&path).unwrap() == data);
    }
}

#[test]
fn a_copy_waiting_for_its_head_holds_no_more_than_its_share_of_the_stock() {
    // Chunks 1..=10 come before chunk 0 (its head waits for a repair): at most
    // OPEN_PER_COPY of them are staged, the rest go through the page cache.
    let data = pattern(11 * CHUNK as usize);
    let (_dir, path, out, mut chunks) = writer(&engine(), data.len(), true, true);
    let c = CHUNK as usize;
    for k in (1..11).chain([0]) {
        chunks
            .write_run((k * c) as u64, &[IoSlice::new(&data[k * c..(k + 1) * c])])
            .unwrap();
    }
    assert_eq!(out.finish().unwrap(), Some(*blake3::hash(&data).as_bytes()));
    assert!(std::fs::read(&path).unwrap() == data);
    assert!(out.direct_bytes() <= (OPEN_PER_COPY * c) as u64);
}

#[test]
fn a_payload_for_a_chunk_already_handed_on_fails_the_copy() {
    let data = pattern(2 * CHUNK as usize);
    let (_dir, _, out, mut chunks) = writer(&engine(), data.len(), true, true);
    let first = &data[..CHUNK as usize];
    chunks.write_run(0, &[IoSlice::new(first)]).unwrap();
    let (what, _) = chunks
        .write_run(0, &[IoSlice::new(&first[..10])])
        .unwrap_err();
    assert_eq!(what, WRITING);
    drop(out);
}

#[test]
fn a_copy_that_cannot_be_read_back_is_an_error_not_a_hash() {
    // Chunks through the page cache are hashed by reading them back: a file that cannot
    // be read fails the hash.
    let data = pattern(CHUNK as usize + 10);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy");
    // Opened for writing only: the read back fails.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let out = Output::new(&engine(), file, None, data.len() as u64, true);
    let mut chunks = Chunks::new(out.clone());
    chunks.write_run(0, &[IoSlice::new(&data)]).unwrap();
    let (what, e) = out.finish().unwrap_err();
    assert_eq!(
        (what, e.raw_os_error()),
        (READING, Some(libc::EBADF)),
        "{e}"
    );
}

#[test]
fn an_unfinished_copy_has_no_hash() {
    let data = pattern(CHUNK as usize + 10);
    let (_dir, _, out, mut chunks) = writer(&engine(), data.len(), true, true);
    chunks
        .write_run(0, &[IoSlice::new(&data[..CHUNK as usize])])
        .unwrap();
    assert!(chunks.finish().is_err(), "the last chunk never came");
    drop(out);
}

#[test]
fn once_a_copy_is_finished_no_writer_thread_holds_its_file() {
    // A failed copy's name is removed when `finish` returns; a writer thread still holding
    // the file then would keep a removed file open (its file system busy) a moment longer.
    // A job lets go of the copy before it counts itself done, so nothing but the copy's own
    // two holders (here and its chunks) is left, whatever the threads' timing.
    let data = pattern(3 * CHUNK as usize);
    for round in 0..20 {
        let (_dir, _, out, mut chunks) = writer(&engine(), data.len(), true, true);
        for piece in data.chunks(CHUNK as usize) {
            let at = piece.as_ptr() as usize - data.as_ptr() as usize;
            chunks.write_run(at as u64, &[IoSlice::new(piece)]).unwrap();
        }
        out.finish().unwrap();
        assert_eq!(Arc::strong_count(&out), 2, "round {round}");
    }
}
