//! The file provider's saved state: every object the index accepted, as the text of the file
//! version it was parsed from plus its document index, so a restart serves exactly what was in
//! force, whatever the files say now.
//!
//! Only accepted objects are saved: a version that failed to parse or validate never becomes
//! "last good". The file holds user Secrets' private keys, so it is written with mode 0600.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::manifest::parse_documents;
use crate::core::model::{InputObject, Kind, ObjectKey};

pub const STATE_FILE: &str = "last-good-manifests.json";
const FORMAT: u32 = 2;

/// The text of one version of a manifest file, named by its digest.
#[derive(Debug, PartialEq, Eq)]
pub struct Source {
    pub text: String,
    pub digest: String,
}

impl Source {
    pub fn new(text: String) -> Arc<Source> {
        let digest = hex::encode(&Sha256::digest(text.as_bytes())[..16]);
        Arc::new(Source { text, digest })
    }
}

/// An object the index accepted, with the file, document and file version it came from.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub path: PathBuf,
    pub document: usize,
    pub object: Arc<InputObject>,
    pub source: Arc<Source>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({reason}); Meridian will not start without the config it last served. Fix the file, or move it aside to start from the config directory alone (objects whose files are broken now would then not be served)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    format: u32,
    /// File versions by digest.
    sources: BTreeMap<String, String>,
    objects: Vec<SavedObject>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedObject {
    path: PathBuf,
    document: usize,
    source: String,
}

/// What earlier releases saved: the last text of each file that parsed.
#[derive(Deserialize)]
#[serde(untagged)]
enum AnyState {
    Current(SavedState),
    Texts(BTreeMap<PathBuf, String>),
}

/// The accepted objects saved in `state_dir`, in the order they were saved; none if there is
/// no state file yet. A file that cannot be read or understood is an error, never "nothing".
pub fn load(state_dir: &Path) -> Result<Vec<Accepted>, StateError> {
    let path = state_dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.clone(),
        reason,
    };
    let state: AnyState = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let (sources, objects) = match state {
        AnyState::Current(state) if state.format == FORMAT => (state.sources, state.objects),
        AnyState::Current(state) => {
            return Err(corrupt(format!("unknown format {}", state.format)))
        }
        AnyState::Texts(texts) => from_texts(texts),
    };
    let mut parsed: BTreeMap<String, (Arc<Source>, Vec<Arc<InputObject>>)> = BTreeMap::new();
    let mut accepted = Vec::with_capacity(objects.len());
    for saved in objects {
        if !parsed.contains_key(&saved.source) {
            let text = sources
                .get(&saved.source)
                .ok_or_else(|| corrupt(format!("no source {}", saved.source)))?;
            let objects = parse_documents(text, super::DEFAULT_NAMESPACE)
                .map_err(|e| corrupt(format!("{}: {e}", saved.path.display())))?;
            let objects = objects.into_iter().map(Arc::new).collect();
            parsed.insert(saved.source.clone(), (Source::new(text.clone()), objects));
        }
        let (source, objects) = &parsed[&saved.source];
        let object = objects.get(saved.document).ok_or_else(|| {
            corrupt(format!(
                "{} has no document {}",
                saved.path.display(),
                saved.document
            ))
        })?;
        accepted.push(Accepted {
            path: saved.path,
            document: saved.document,
            object: object.clone(),
            source: source.clone(),
        });
    }
    Ok(accepted)
}

/// The old format named only file texts: every object of each is taken as accepted (it
/// validated or not; the index decides again when the objects are applied).
fn from_texts(texts: BTreeMap<PathBuf, String>) -> (BTreeMap<String, String>, Vec<SavedObject>) {
    let mut sources = BTreeMap::new();
    let mut objects = Vec::new();
    for (path, text) in texts {
        let count = parse_documents(&text, super::DEFAULT_NAMESPACE).map_or(0, |o| o.len());
        let digest = Source::new(text.clone()).digest.clone();
        objects.extend((0..count).map(|document| SavedObject {
            path: path.clone(),
            document,
            source: digest.clone(),
        }));
        sources.insert(digest, text);
    }
    (sources, objects)
}

/// Saves the accepted objects atomically (write, fsync, rename), readable by the owner only.
pub fn save<'a>(
    state_dir: &Path,
    accepted: impl Iterator<Item = &'a Accepted>,
) -> Result<(), StateError> {
    let mut state = SavedState {
        format: FORMAT,
        sources: BTreeMap::new(),
        objects: Vec::new(),
    };
    for a in accepted {
        state
            .sources
            .entry(a.source.digest.clone())
            .or_insert_with(|| a.source.text.clone());
        state.objects.push(SavedObject {
            path: a.path.clone(),
            document: a.document,
            source: a.source.digest.clone(),
        });
    }
    let path = state_dir.join(STATE_FILE);
    let bytes = serde_json::to_vec(&state).unwrap_or_default();
    write_private(state_dir, &path, &bytes).map_err(|source| StateError::Write { path, source })
}

/// Writes `bytes` to `path` through a temporary file in the same directory, mode 0600.
pub fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // An existing temporary file keeps its mode through `open`.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Identifies an object across versions.
pub type ObjectId = (Kind, ObjectKey);

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 81}]}\n";

    fn accepted(path: &str, document: usize, source: &Arc<Source>) -> Accepted {
        let objects = parse_documents(&source.text, "default").unwrap();
        Accepted {
            path: PathBuf::from(path),
            document,
            object: Arc::new(objects[document].clone()),
            source: source.clone(),
        }
    }

    #[test]
    fn saved_objects_load_back_from_their_file_version_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let source = Source::new(TWO.to_owned());
        let saved = [accepted("x.yaml", 1, &source)];
        save(dir.path(), saved.iter()).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].object, saved[0].object);
        assert_eq!(loaded[0].path, PathBuf::from("x.yaml"));
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_old_format_loads_every_object_of_each_text() {
        let dir = tempfile::tempdir().unwrap();
        let old = BTreeMap::from([("x.yaml", TWO)]);
        std::fs::write(
            dir.path().join(STATE_FILE),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        assert_eq!(load(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            load(dir.path()).unwrap().is_empty(),
            "no file: nothing saved"
        );
        for bad in [
            "{\"format\": 2, \"sources\": {}, \"objects\": [",
            "{\"format\": 2, \"sources\": {}, \"objects\": [{\"path\": \"x\", \"document\": 0, \"source\": \"gone\"}]}",
            "{\"format\": 9, \"sources\": {}, \"objects\": []}",
            "[1, 2]",
        ] {
            std::fs::write(dir.path().join(STATE_FILE), bad).unwrap();
            let error = load(dir.path()).unwrap_err().to_string();
            assert!(error.contains(STATE_FILE) && error.contains("corrupt"), "{bad}: {error}");
        }
    }
}
