//! thoughtflow's integration tests: one binary, each module one concern, all through the real
//! `thoughtflow` executable.

mod answers;
mod bad_input;
mod check;
mod decontam;
mod follow;
#[cfg(feature = "kafka")]
mod kafka;
mod llm;
mod recipes;
mod standin;
mod util;
