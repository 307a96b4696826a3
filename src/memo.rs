//! Decontamination verdicts kept across runs, so that a restart's replay looks them up instead
//! of matching every question again (the matcher is most of a replay's cost otherwise).
//!
//! Each decontamination operator writes, when its inputs end (a clean stop), the verdict of
//! every live question text under its current benchmark index, to
//! `.store/decontam/STEP-WORKERofPEERS.bin` (bincode [`MemoTable`], written atomically). The
//! next run loads every such file into one [`DecontamMemo`] per process. A verdict is reused
//! only under the same digest: matcher version, step configuration and every live benchmark
//! item. So a changed benchmark or setting makes the memo miss, never lie. A run that
//! crashes leaves the files of the last clean stop, which stay valid for what they cover.

use crate::sink::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thoughtflow_operators::steps::decontam::{DecontamMemo, MemoHooks, MemoTable};

/// `OUT/.store/decontam`.
pub fn dir(out: &Path) -> PathBuf {
    out.join(".store").join("decontam")
}

fn file(dir: &Path, step: &str, worker: usize, peers: usize) -> PathBuf {
    dir.join(format!("{step}-{worker}of{peers}.bin"))
}

/// Loads every verdict file under `dir`. Files written by a run with another number of
/// workers are loaded, then removed (this run's workers write their own when they end).
/// Unreadable files are skipped with a warning: the memo is a cache.
pub fn load(dir: &Path, peers: usize) -> DecontamMemo {
    let mut memo = DecontamMemo::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return memo;
    };
    let suffix = format!("of{peers}.bin");
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".bin") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| bincode::deserialize::<MemoTable>(&b).map_err(|e| e.to_string()))
        {
            Ok(t) => memo.add(t),
            Err(e) => {
                tracing::warn!(file = %path.display(), "skipping unreadable decontamination memo: {e}")
            }
        }
        if !name.ends_with(&suffix) {
            let _ = std::fs::remove_file(&path);
        }
    }
    memo
}

/// The hooks of one decontamination operator (`step` names it, `q3` or `a5`) on `worker`.
pub fn hooks(
    dir: &Path,
    step: &str,
    worker: usize,
    peers: usize,
    previous: &Arc<DecontamMemo>,
) -> MemoHooks {
    let path = file(dir, step, worker, peers);
    let dir = dir.to_path_buf();
    MemoHooks {
        previous: Arc::clone(previous),
        save: Box::new(move |table: MemoTable| {
            let written = std::fs::create_dir_all(&dir).and_then(|_| {
                let bytes = bincode::serialize(&table).map_err(std::io::Error::other)?;
                write_atomic(&path, &bytes)
            });
            if let Err(e) = written {
                tracing::warn!(file = %path.display(), "could not save the decontamination memo: {e}");
            }
        }),
    }
}
