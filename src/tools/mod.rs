//! The tools built on the client and the server: `demo` (the lab's experiment in one
//! command), `bench` (the lab's experiment matrix, repeated and measured) and `relay` (an
//! impairing UDP relay, for experiments without netem), and `trace` (plots what `serve
//! --trace` wrote).

pub mod bench;
pub mod demo;
pub mod relay;
pub mod trace;
