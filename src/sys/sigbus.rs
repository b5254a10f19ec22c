//! User-space reads of a mapped file that another process may truncate.
//!
//! A map's pages past a file's new end raise SIGBUS when read. A read through [`guarded`]
//! marks, in a thread-local, the address range it is about to read; a SIGBUS inside that range
//! (delivered to the faulting thread, synchronously) marks the map poisoned, gets a page of
//! zeros mapped in place of the vanished one (`MAP_FIXED`, anonymous), and the read resumes on
//! zeros; [`guarded`] then tells its caller the file was cut short, and the caller throws away
//! what it read. A poisoned map stays poisoned (its vanished pages now read as zeros): every
//! later guarded read of it is refused, and the file must be mapped again. A SIGBUS anywhere
//! else goes to whatever handled it before (Rust's own handler, which lets it end the process
//! as it would have).
//!
//! Used where reading the map in user space saves a copy: a sealed datagram is encrypted
//! straight from the file's pages into the datagram (see `protocol::seal::Sealer::seal_from`).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The range this thread is reading, and the flag to raise if a page of it is gone.
#[derive(Clone, Copy)]
struct Armed {
    start: usize,
    end: usize,
    poison: *const AtomicBool,
    faulted: bool,
}

const DISARMED: Armed = Armed {
    start: 0,
    end: 0,
    poison: std::ptr::null(),
    faulted: false,
};

thread_local! {
    // A const-initialised Cell of a type without Drop: a plain thread-local word, read and
    // written without allocation or lazy initialisation, so the signal handler may touch it.
    static ARMED: Cell<Armed> = const { Cell::new(DISARMED) };
}

/// The SIGBUS action there was before ours, to hand other faults to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static PAGE: AtomicUsize = AtomicUsize::new(4096);

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; for SIGBUS its
    // address field is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    let armed = ARMED.with(Cell::get);
    if armed.start <= addr && addr < armed.end && !armed.poison.is_null() {
        // Poisoned before the zeros appear: a thread that reads them finds the flag raised
        // once its read is over.
        // SAFETY: `poison` points at the map's flag, which outlives the guarded read that
        // armed it (the map is borrowed for the whole read).
        unsafe { (*armed.poison).store(true, Ordering::SeqCst) };
        let page = PAGE.load(Ordering::Relaxed);
        // SAFETY: replaces one page of the map being read (inside its range, page-aligned)
        // with a private page of zeros; nothing else lives at that address. mmap is a plain
        // system call, safe to make in a signal handler.
        let p = unsafe {
            libc::mmap(
                (addr & !(page - 1)) as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            ARMED.with(|a| {
                a.set(Armed {
                    faulted: true,
                    ..armed
                })
            });
            return;
        }
    }
    // Not a guarded read: as if this handler were not installed.
    match PREVIOUS.get() {
        Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
            if old.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: with SA_SIGINFO the previous action is a three-argument handler.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO the previous action is a one-argument handler.
                let f: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // SAFETY: restores the default action; the faulting instruction runs again and
            // the process ends with SIGBUS, as it would have without this handler.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        }
    }
}

/// Installs the handler once per process; false if the system refused it.
fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: the sigaction structs are plain data, zeroed then filled; the handler only
        // touches a thread-local word, an atomic and async-signal-safe system calls.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return false;
            }
            let _ = PREVIOUS.set(old);
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) == 0
        }
    })
}

/// Disarms this thread's guard however the read ends (a panic included).
struct Disarm;

impl Drop for Disarm {
    fn drop(&mut self) {
        ARMED.with(|a| a.set(DISARMED));
    }
}

/// Why a guarded read gave nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardError {
    /// A page of the range was gone (the file was truncated), now or in an earlier read of
    /// this map.
    CutShort,
    /// The SIGBUS handler could not be installed (nothing was read).
    NoHandler,
}

impl From<GuardError> for io::Error {
    fn from(e: GuardError) -> io::Error {
        match e {
            GuardError::CutShort => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than its map (truncated meanwhile)",
            ),
            GuardError::NoHandler => io::Error::other("cannot install the SIGBUS handler"),
        }
    }
}

/// Hands `read` the `len` bytes at `base`, a mapped file's pages that may vanish under it
/// (truncation), and returns what it returns, or [`GuardError::CutShort`] if any page of the
/// range was gone (`read` then saw zeros there; its result is dropped) or `poisoned` was
/// already set. Guarded reads do not nest.
///
/// # Safety
/// `base .. base + len` must lie inside a live read-only shared map of a file, which stays
/// mapped for the whole call, and `poisoned` must be that map's flag.
pub unsafe fn guarded<R>(
    base: *const u8,
    len: usize,
    poisoned: &AtomicBool,
    read: impl FnOnce(&[u8]) -> R,
) -> Result<R, GuardError> {
    if !install() {
        return Err(GuardError::NoHandler);
    }
    if poisoned.load(Ordering::SeqCst) {
        return Err(GuardError::CutShort);
    }
    debug_assert!(
        ARMED.with(Cell::get).poison.is_null(),
        "nested guarded reads"
    );
    let start = base as usize;
    ARMED.with(|a| {
        a.set(Armed {
            start,
            end: start + len,
            poison: poisoned,
            faulted: false,
        })
    });
    let disarm = Disarm;
    // Nothing of the read may move above the arming (nor below the check after it).
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    // SAFETY: the caller vouches the range is mapped for the call; a page that vanishes is
    // replaced by zeros before any instruction reads it (the handler above), so every read
    // through the slice returns. A concurrent writer of the file may change the bytes while
    // they are read: the reader then gets torn contents, which the payload CRCs (scanned
    // before) expose at the receiver, as they do for the kernel's reads on the open path.
    let r = read(unsafe { std::slice::from_raw_parts(base, len) });
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    let faulted = ARMED.with(Cell::get).faulted;
    drop(disarm);
    if faulted || poisoned.load(Ordering::SeqCst) {
        return Err(GuardError::CutShort);
    }
    Ok(r)
}
