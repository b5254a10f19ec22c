//! CPU time, for the benchmark's server CPU per GB and each sub-client's own cost.

use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};

/// CPU time (user + system) used so far by this process, or by the calling thread.
pub fn cpu_time(thread_only: bool) -> Duration {
    let who = if thread_only {
        UsageWho::RUSAGE_THREAD
    } else {
        UsageWho::RUSAGE_SELF
    };
    match getrusage(who) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}
