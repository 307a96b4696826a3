//! thoughtflow's integration tests: one binary, each module one concern, all through the real
//! `thoughtflow` executable.

mod answers;
mod bad_input;
mod check;
mod cluster;
mod crash;
mod decontam;
mod durable;
mod follow;
mod gen;
#[cfg(feature = "kafka")]
mod kafka;
mod llm;
mod metrics;
mod readme;
mod recipes;
mod report;
mod standin;
mod util;
