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

/// Reads a snapshot file written by [`save`].
pub fn load(path: &Path) -> Result<CatalogData, DiskError> {
    let err = |reason: String| DiskError {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| err(e.to_string()))
}

/// Writes the snapshot atomically (temporary file, then rename), so a crash never
/// leaves a torn file behind; creates the directory if needed.
pub fn save(data: &CatalogData, path: &Path) -> Result<(), DiskError> {
    let err = |reason: String| DiskError {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let tmp = path.with_extension("tmp");
    // Serializing plain structs of strings and integers cannot fail.
    let body = serde_json::to_vec(data).expect("catalog data serializes");
    std::fs::write(&tmp, body).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
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
    }
}
