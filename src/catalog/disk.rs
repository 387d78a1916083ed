//! The last good catalog on disk: a node that starts while the store is down serves
//! from it, so the catalog survives an outage of the store and of Redis.
//!
//! One function writes it (the node at start and the follower after each reload) and
//! one reads it.

use std::path::{Path, PathBuf};

use super::CatalogData;

/// The snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("catalog snapshot file {path}: {reason}")]
pub struct DiskError {
    pub path: PathBuf,
    pub reason: String,
}

/// The file a node keeps its last good catalog in, under its data directory.
pub fn snapshot_path(data_dir: &Path) -> PathBuf {
    data_dir.join("catalog-snapshot.json")
}

/// The first line of a snapshot file: a format tag, then the checksum of the rest.
const TAG: &str = "readtier-catalog-v1";

/// FNV-1a, 64 bits: enough to tell a torn or corrupted file from a whole one (it is
/// not a defence against an attacker who can write the data directory).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Reads a snapshot file written by [`save`]; a file whose checksum does not match
/// its contents (torn, truncated, corrupted) is refused, saying so.
pub fn load(path: &Path) -> Result<CatalogData, DiskError> {
    let err = |reason: String| DiskError {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let split = text
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| err("corrupt: no header line (empty or truncated file)".into()))?;
    let header = std::str::from_utf8(&text[..split]).unwrap_or("");
    let body = &text[split + 1..];
    let want = header
        .strip_prefix(TAG)
        .and_then(|rest| u64::from_str_radix(rest.trim(), 16).ok())
        .ok_or_else(|| err(format!("corrupt: not a {TAG} header: {header:.40}")))?;
    let got = checksum(body);
    if got != want {
        return Err(err(format!(
            "corrupt: checksum {got:016x} does not match the header's {want:016x}"
        )));
    }
    serde_json::from_slice(body).map_err(|e| err(format!("corrupt: {e}")))
}

/// Writes the snapshot durably and atomically: a temporary file of its own (two
/// writers never share one), fsynced, renamed over the old one, then the directory
/// fsynced, so after a crash or a power loss the file is the old snapshot or the new
/// one, whole. Creates the directory if needed.
pub fn save(data: &CatalogData, path: &Path) -> Result<(), DiskError> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let err = |reason: String| DiskError {
        path: path.to_path_buf(),
        reason,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // Serializing plain structs of strings and integers cannot fail.
    let body = serde_json::to_vec(data).expect("catalog data serializes");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{TAG} {:016x}", checksum(&body))?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e.to_string())
    })
}

/// Saves off the runtime's threads, logging rather than failing: a node that cannot
/// write its disk copy still serves.
pub async fn save_in_background(data: CatalogData, path: PathBuf) {
    let saved = tokio::task::spawn_blocking(move || save(&data, &path)).await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not save the catalog snapshot to disk"),
        Err(e) => tracing::warn!(error = %e, "saving the catalog snapshot failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_snapshot_loads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let path = snapshot_path(&dir.path().join("nested"));
        let mut data = CatalogData::reference().unwrap();
        data.version = 77;
        save(&data, &path).unwrap();
        assert_eq!(load(&path).unwrap(), data);
        assert!(load(&dir.path().join("missing.json")).is_err());
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn a_torn_or_corrupted_snapshot_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = snapshot_path(dir.path());
        save(&CatalogData::reference().unwrap(), &path).unwrap();
        let whole = std::fs::read(&path).unwrap();
        // Torn: cut in the middle.
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("corrupt: checksum"), "{e}");
        // One byte changed, still valid JSON.
        let mut flipped = whole.clone();
        let at = flipped.iter().rposition(|b| *b == b'9').unwrap();
        flipped[at] = b'8';
        std::fs::write(&path, &flipped).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("corrupt"));
        // Empty (a rename without fsync after a power loss).
        std::fs::write(&path, b"").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("corrupt"));
    }
}
