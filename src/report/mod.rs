//! Reporting: what people read (the lab's table, live interval lines, logs) and what scripts
//! read (JSON), from counters and histograms the data paths fill in. Reports read results;
//! they never reach into the hot path.

pub mod copy;
pub mod cpu;
pub mod hist;
pub mod json;
pub mod live;
pub mod logging;
pub mod table;
