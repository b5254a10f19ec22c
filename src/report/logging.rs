//! Log setup: timestamped lines like the lab's ("2022-10-23 20:17:35 INFO ..."), to stderr,
//! coloured only when stderr is a terminal and NO_COLOR is unset (a log file or a pipe gets
//! plain text).

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::time::UtcTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter RUST_LOG asks for (`debug`, `warn,ringblast::server=debug`: a default level and
/// levels per module), or `default` ("info" for serve, "warn" for get) when it is unset or
/// cannot be read (said once on stderr).
fn filter(default: &str) -> Targets {
    filter_from(std::env::var("RUST_LOG").ok(), default)
}

fn filter_from(rust_log: Option<String>, default: &str) -> Targets {
    let fallback = || default.parse().unwrap_or_default();
    match rust_log {
        Some(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| {
            eprintln!("ringblast: RUST_LOG={v:?} not understood ({e}): logging at {default}");
            fallback()
        }),
        _ => fallback(),
    }
}

/// Logs to stderr, filtered by RUST_LOG (see [`filter`]).
pub fn init(default: &str) {
    let filter = filter(default);
    let timer = UtcTime::new(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]"
    ));
    let fmt = tracing_subscriber::fmt::layer()
        .with_timer(timer)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn rust_log_sets_a_level_and_levels_per_module() {
        let f = filter_from(None, "warn");
        assert!(f.would_enable("ringblast::server", &Level::WARN));
        assert!(!f.would_enable("ringblast::server", &Level::INFO));
        let f = filter_from(Some("debug".into()), "warn");
        assert!(f.would_enable("ringblast::client::subclient", &Level::DEBUG));
        let f = filter_from(Some("warn,ringblast::client=debug".into()), "info");
        assert!(f.would_enable("ringblast::client::pool", &Level::DEBUG));
        assert!(!f.would_enable("ringblast::server::control", &Level::INFO));
        let f = filter_from(Some("  ".into()), "info");
        assert!(f.would_enable("ringblast::server", &Level::INFO));
    }
}
