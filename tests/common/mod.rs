//! Helpers shared by the integration tests.

/// True (after saying why) when this kernel gives this process no io_uring, so a server cannot
/// run: the test is skipped with a message rather than failed.
pub fn no_uring() -> bool {
    match ringblast::engine::uring::available() {
        Ok(()) => false,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            true
        }
    }
}
