//! Reading the config directory defensively: only regular files, each bounded in size, the
//! directory bounded in total, symlinked directories followed once (loops and repeats are
//! skipped), and whatever cannot be read reported rather than waited on or dropped.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The largest manifest file read (Kubernetes itself stores objects of at most 1.5 MiB).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The most manifest text one directory may hold; files past it (in path order) are not read.
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;

/// What a walk of the directory found.
#[derive(Debug, Default)]
pub struct Listing {
    /// `*.yaml` / `*.yml` regular files, sorted.
    pub files: Vec<PathBuf>,
    /// Entries that were passed over, and why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Directories that could not be listed: what their files contributed keeps serving.
    pub unreadable: Vec<PathBuf>,
}

/// Walks `dir`; only `dir` itself failing to list is an error.
pub fn list(dir: &Path) -> std::io::Result<Listing> {
    let mut listing = Listing::default();
    let mut visited = BTreeSet::new();
    let root = std::fs::metadata(dir)?;
    visited.insert((root.dev(), root.ino()));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if current == dir => return Err(e),
            Err(e) => {
                let why =
                    format!("cannot list directory: {e}; what its files contributed keeps serving");
                listing.skipped.push((current.clone(), why));
                listing.unreadable.push(current);
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let is_manifest = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            // Follows symlinks: a ConfigMap volume links each file into `..data`.
            let metadata = match std::fs::metadata(&path) {
                Ok(metadata) => metadata,
                Err(e) => {
                    if is_manifest || entry.file_type().is_ok_and(|t| t.is_symlink()) {
                        listing.skipped.push((path, format!("cannot follow: {e}")));
                    }
                    continue;
                }
            };
            if metadata.is_dir() {
                if visited.insert((metadata.dev(), metadata.ino())) {
                    stack.push(path);
                } else {
                    let why = "a directory already read (a symlink loop or a second link); skipped";
                    listing.skipped.push((path, why.to_owned()));
                }
            } else if is_manifest {
                if metadata.is_file() {
                    listing.files.push(path);
                } else {
                    let why = "not a regular file (a FIFO, device or socket); skipped";
                    listing.skipped.push((path, why.to_owned()));
                }
            }
        }
    }
    listing.files.sort();
    listing.skipped.sort();
    Ok(listing)
}

/// A file's text and when it was last modified.
#[derive(Debug)]
pub struct FileText {
    pub text: String,
    pub modified: Option<SystemTime>,
}

/// Reads one manifest file, at most `limit` bytes of it. Opened non-blocking, so a FIFO swapped
/// in after the walk cannot hang the reader.
pub fn read(path: &Path, limit: u64) -> Result<FileText, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let metadata = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !metadata.is_file() {
        return Err("not a regular file; skipped".to_owned());
    }
    let limit = limit.min(MAX_FILE_BYTES);
    if metadata.len() > limit {
        return Err(too_large(metadata.len(), limit));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64, limit));
    }
    let text = String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    Ok(FileText {
        text,
        modified: metadata.modified().ok(),
    })
}

fn too_large(size: u64, limit: u64) -> String {
    if limit < MAX_FILE_BYTES {
        format!(
            "not read: the config directory holds more than {MAX_TOTAL_BYTES} bytes of manifests"
        )
    } else {
        format!("{size} bytes, more than the {MAX_FILE_BYTES} a manifest file may have; not read")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_listed_and_loops_are_walked_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.yaml"), "x").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/b.yml"), "x").unwrap();
        std::os::unix::fs::symlink(".", root.join("loop")).unwrap();
        std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero.yaml")).unwrap();
        std::os::unix::fs::symlink("missing", root.join("dangling.yaml")).unwrap();
        let fifo = std::ffi::CString::new(root.join("fifo.yaml").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let listing = list(root).unwrap();
        assert_eq!(listing.files, [root.join("a.yaml"), root.join("sub/b.yml")]);
        let skipped: Vec<_> = listing.skipped.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            skipped,
            [
                root.join("dangling.yaml"),
                root.join("fifo.yaml"),
                root.join("loop"),
                root.join("sub/up"),
                root.join("zero.yaml"),
            ]
        );
        assert!(listing.unreadable.is_empty());
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, vec![b'a'; 100]).unwrap();
        assert_eq!(read(&path, 100).unwrap().text.len(), 100);
        assert!(read(&path, 99).unwrap_err().contains("more than"));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(read(&path, 100).unwrap_err().contains("UTF-8"));
    }
}
