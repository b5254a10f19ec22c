//! CPU time, for the benchmark's server CPU per GB and each sub-client's own cost.

use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};

/// CPU time (user + system) used so far by this process, or by the calling thread.
/// CPU time (user + system) another process on this machine has used, from
/// `/proc/PID/stat` (clock-tick resolution, 10 ms on most systems); `None` if it is gone.
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line: utime and stime, in clock ticks.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)
        .unwrap_or(100) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_process_cpu_time_is_read_from_proc() {
        // This process, as another would see it: at least what it had burnt before.
        let before = cpu_time(false);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        let seen = process_cpu_time(std::process::id()).unwrap();
        assert!(
            seen + Duration::from_millis(20) >= before,
            "{seen:?} {before:?}"
        );
        assert_eq!(process_cpu_time(u32::MAX), None);
    }
}
