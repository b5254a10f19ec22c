//! Log setup: timestamped lines like the lab's ("2022-10-23 20:17:35 INFO ..."), to stderr,
//! coloured only when stderr is a terminal and NO_COLOR is unset (a log file or a pipe gets
//! plain text).

use std::io::IsTerminal;

use tracing_subscriber::fmt::time::UtcTime;
use tracing_subscriber::EnvFilter;

/// `default` is the level when RUST_LOG is not set ("info" for serve, "warn" for get).
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let timer = UtcTime::new(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]"
    ));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(timer)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .try_init();
}
