//! Platform code: every raw Linux call ringblast makes lives under this module, behind safe
//! functions returning `io::Result` (as quinn-udp keeps its `unix.rs`). The rest of the crate
//! is `#![deny(unsafe_code)]`; each `unsafe` block here carries a `// SAFETY:` line.

/// Most pieces one `pwritev`/`sendmsg` takes (the kernel's `IOV_MAX`).
pub const IOV_MAX: usize = 1024;

pub mod cmsg;
pub mod hugebuf;
pub mod mmap;
pub mod multicast;
pub mod recvmmsg;
pub mod sigbus;
pub mod socket;
pub mod splice;

/// Restores the default SIGPIPE action, so `ringblast get ... | head` ends quietly when the
/// reader goes away instead of panicking in `println!` (Rust ignores SIGPIPE by default).
/// For the command-line binary only: a library must not change process-wide signals.
#[allow(unsafe_code)]
pub fn default_sigpipe() {
    // SAFETY: called at the start of main, before any thread exists; SIG_DFL needs no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The signal that set [`STOP`], 0 if none did.
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

#[allow(unsafe_code)]
extern "C" fn on_stop_signal(sig: libc::c_int) {
    use std::sync::atomic::Ordering;
    if STOP_SIGNAL.swap(sig, Ordering::AcqRel) != 0 {
        // The second one: the user does not want to wait for the cleanup.
        // SAFETY: _exit is async-signal-safe; nothing of this process is used after it.
        unsafe { libc::_exit(128 + sig) }
    }
    STOP.store(true, Ordering::Release);
}

/// A flag set by SIGINT or SIGTERM, so a long-running command can clean up and report before
/// it exits; a second signal ends the process at once (exit status 128 + the signal).
#[allow(unsafe_code)]
pub fn stop_on_signals() -> &'static std::sync::atomic::AtomicBool {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches atomics and calls _exit, both async-signal-safe.
        unsafe {
            libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t);
        }
    }
    &STOP
}

/// Gives SIGINT and SIGTERM their default action back (after a stretch of work that
/// [`stop_on_signals`] made interruptible).
#[allow(unsafe_code)]
pub fn default_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: restoring the default action needs no handler.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// The signal that stopped the process (SIGINT, SIGTERM), if one did.
pub fn stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(std::sync::atomic::Ordering::Acquire) {
        0 => None,
        s => Some(s),
    }
}

/// The soft limit on open files now in force (0 if it cannot be read).
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft)
}

/// Descriptors this process has open now (`/proc/self/fd`; 0 if it cannot be read).
pub fn open_fds() -> u64 {
    // The directory's own descriptor, open while it is read, is not counted.
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1) as u64)
}

/// Raises the soft limit on open files to the hard limit (many distributions start processes
/// at 1024): a server holds a ring per session and a client a socket per sub-client, so a
/// thousand of either needs more. Returns the soft limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}
