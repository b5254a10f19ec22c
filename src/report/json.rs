//! `get --json`: one object for scripts, the per-client reports serialised as they are.

use serde::Serialize;

use super::copy::{aggregate_goodput_bps, CopyReport};
use crate::protocol::Mode;

/// The whole `get --json` object.
#[derive(Debug, Serialize)]
pub struct GetJson<'a> {
    pub file: &'a str,
    pub size: u64,
    pub mode: &'static str,
    pub clients: &'a [CopyReport],
    pub goodput_bps: f64,
    pub all_intact: bool,
}

pub fn get_json<'a>(file: &'a str, mode: Mode, reports: &'a [CopyReport]) -> GetJson<'a> {
    GetJson {
        file,
        size: reports.iter().map(|r| r.file_size).max().unwrap_or(0),
        mode: mode.as_str(),
        clients: reports,
        goodput_bps: aggregate_goodput_bps(reports),
        all_intact: reports.iter().all(|r| r.ok()),
    }
}
