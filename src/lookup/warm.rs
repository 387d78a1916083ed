//! Warm restarts: a node keeps the ids of the members its L1 holds in its data
//! directory, and loads those members back when it starts again.
//!
//! A restarted node's L1 is empty, and a cache can only hold what it has been asked
//! for since: under a steady load a node started cold reaches a warm node's hit ratio
//! only after a whole `l1.ttl` of traffic (measured: 0.866 at 30 s against a warm
//! node's 0.925, docs/PERFORMANCE.md). Memcached's warm restart and EVCache's cache
//! warmer answer the same need by keeping or copying what the cache held. Here only the
//! ids are kept (8 bytes a member): the values are read anew through the ordinary batch
//! fill (L2, then the store, the floor and generation rules of any load), so nothing a
//! change made stale while the node was down comes back.
//!
//! The file is written every `l1.ttl` and at shutdown (a temporary file, fsynced, then
//! renamed over the old one), and is checksummed: a torn or foreign file is ignored.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Members;

/// The file's first bytes (and its format's version).
const MAGIC: &[u8; 8] = b"RTL1IDS1";
/// Members loaded at once: one store query, one round trip per Redis node.
const BATCH: usize = 512;

/// Where a node in `data_dir` keeps its L1's ids.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("l1-members.bin")
}

/// FNV-1a over the ids' bytes.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Writes `ids` to `path`: magic, count, the ids (little-endian), checksum.
pub fn save(path: &Path, ids: &[u64]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(ids.len() * 8);
    for id in ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    let tmp = path.with_extension("bin.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&(ids.len() as u64).to_le_bytes())?;
        f.write_all(&bytes)?;
        f.write_all(&checksum(&bytes).to_le_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The ids `path` holds; none if it is missing, torn or not such a file.
pub fn load(path: &Path) -> Vec<u64> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let parse = || -> Option<Vec<u64>> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let (count, rest) = rest.split_at_checked(8)?;
        let count = usize::try_from(u64::from_le_bytes(count.try_into().ok()?)).ok()?;
        let (ids, sum) = rest.split_at_checked(count.checked_mul(8)?)?;
        (sum.len() == 8 && u64::from_le_bytes(sum.try_into().ok()?) == checksum(ids)).then(|| {
            ids.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect()
        })
    };
    parse().unwrap_or_default()
}

/// Loads back what the file at `path` names, a batch at a time, waiting while
/// `shedding()` says the node is refusing work (a restart into an overload serves
/// first); then writes the file every `every` until `stop`, and once more then.
pub async fn run(
    members: Arc<Members>,
    path: PathBuf,
    every: Duration,
    shedding: impl Fn() -> bool,
    stop: CancellationToken,
) {
    let ids = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || load(&path))
            .await
            .unwrap_or_default()
    };
    if !ids.is_empty() {
        let started = std::time::Instant::now();
        let mut loaded = 0;
        for batch in ids.chunks(BATCH) {
            while shedding() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => return,
                }
            }
            if stop.is_cancelled() {
                return;
            }
            loaded += members.load_back(batch).await;
        }
        tracing::info!(
            named = ids.len(),
            loaded,
            took = ?started.elapsed(),
            "L1 loaded back from the last run's members"
        );
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => break,
        }
        write(&members, &path).await;
    }
    write(&members, &path).await;
}

/// Writes the ids L1 holds now, off the runtime.
async fn write(members: &Arc<Members>, path: &Path) {
    let (members, path) = (members.clone(), path.to_path_buf());
    let written = tokio::task::spawn_blocking(move || {
        let ids = members.held_ids();
        save(&path, &ids).map(|()| ids.len())
    })
    .await;
    match written {
        Ok(Ok(n)) => tracing::debug!(members = n, "L1's members written"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot write L1's members"),
        Err(e) => tracing::warn!(error = %e, "cannot write L1's members"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_reads_back_what_was_written_and_a_damaged_one_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert!(load(&p).is_empty(), "no file");
        let ids: Vec<u64> = (1..=10_000).map(|i| i * 7).collect();
        save(&p, &ids).unwrap();
        assert_eq!(load(&p), ids);
        save(&p, &[]).unwrap();
        assert!(load(&p).is_empty());
        save(&p, &ids).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(load(&p).is_empty(), "a flipped bit: the checksum");
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load(&p).is_empty(), "torn");
        std::fs::write(&p, b"something else altogether").unwrap();
        assert!(load(&p).is_empty(), "not ours");
    }
}
