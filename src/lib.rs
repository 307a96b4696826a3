//! thoughtflow: an incremental streaming dataflow that builds reasoning-training datasets with
//! the OpenThoughts3 recipe (decontaminate, filter, dedup, teacher fan-out), recomputing only
//! what changed when sources, benchmarks or questions change.
//!
//! - [`recipe`]: recipes (TOML) parsed and validated, every problem reported at once.
//! - [`explain`]: the dataflow a recipe becomes, as text.
//! - [`gen`]: a seeded OpenThoughts3-scale workload (sources, benchmarks, recipe, truth).
//! - [`render`]: a recipe rendered into one timely worker's dataflow.
//! - [`runtime`]: the workers, the epoch loop, `--follow`.
//! - [`ingest`]: JSONL records to questions or rejections; files to upserts.
//! - [`kafka`]: topics in (per-worker readers), the changelog topic out.
//! - [`llm`]: OpenAI-compatible scorers and teachers, their cache and service.
//! - [`store`]: texts and names, out of the dataflow.
//! - [`teachers`]: replay and synthetic teachers.
//! - [`sink`]: the dataset shards, changes and audit outputs.
//! - [`stats`]: exact per-step counts and work.
//! - [`progress`], [`metrics`]: observers of a run: progress bars or log lines, Prometheus.
//! - [`report`]: `thoughtflow report OUT`, a self-contained HTML page about a run.

pub mod explain;
pub mod gen;
pub mod ingest;
pub mod kafka;
pub mod llm;
pub mod memo;
pub mod metrics;
pub mod progress;
pub mod recipe;
pub mod render;
pub mod report;
pub mod runtime;
pub mod sink;
pub mod stats;
pub mod store;
pub mod teachers;
pub mod text_index;
