//! The standalone provider: a directory of multi-document YAML manifests.
//!
//! Each sync re-reads the directory, parsing only files whose text changed; a file unchanged
//! since a sync that applied all its objects is not compared object by object. A file that
//! fails to parse keeps contributing the objects of its last good version (from memory, or from
//! the state directory after a restart); an AccessPoint that fails validation keeps its last
//! accepted version in the index. Every problem names the file, the document and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::manifest::parse_documents;
use crate::core::model::{InputObject, Kind, ObjectKey};
use crate::index::Index;

use super::ConfigProblem;

/// Namespace for objects that name none, as `kubectl apply` would use.
const DEFAULT_NAMESPACE: &str = "default";
const LAST_GOOD_FILE: &str = "last-good-manifests.json";

#[derive(Debug, thiserror::Error)]
pub enum FileProviderError {
    #[error("cannot read config directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write state file {path}: {source}")]
    WriteState {
        path: PathBuf,
        source: std::io::Error,
    },
}

type Located = (PathBuf, usize, Arc<InputObject>);

/// A file's last good version: its text and, once parsed, its objects. An unchanged file is
/// not parsed again, so an edit to one file of a large directory costs that file's parse.
struct GoodFile {
    text: String,
    objects: Option<Vec<Arc<InputObject>>>,
}

pub struct FileProvider {
    dir: PathBuf,
    state_dir: Option<PathBuf>,
    last_good: BTreeMap<PathBuf, GoodFile>,
    /// Objects currently applied to the index, with where they came from.
    applied: BTreeMap<(Kind, ObjectKey), Located>,
    /// Files whose every object the last sync applied without a problem.
    clean: BTreeSet<PathBuf>,
}

impl FileProvider {
    pub fn new(dir: impl Into<PathBuf>, state_dir: Option<PathBuf>) -> FileProvider {
        let saved: BTreeMap<PathBuf, String> = state_dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join(LAST_GOOD_FILE)).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let last_good = saved
            .into_iter()
            .map(|(path, text)| {
                let file = GoodFile {
                    text,
                    objects: None,
                };
                (path, file)
            })
            .collect();
        FileProvider {
            dir: dir.into(),
            state_dir,
            last_good,
            applied: BTreeMap::new(),
            clean: BTreeSet::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory and brings the index in line with it. Does not publish.
    pub fn sync(&mut self, index: &mut Index) -> Result<Vec<ConfigProblem>, FileProviderError> {
        match self.sync_with(index, true)? {
            Some(problems) => Ok(problems),
            // A changed file defines an object a skipped file holds: decide who wins in order.
            None => Ok(self.sync_with(index, false)?.unwrap_or_default()),
        }
    }

    /// With `skip_clean`, files unchanged since a sync that applied all their objects without
    /// a problem are not looked at object by object; `None` if a changed file defines an
    /// object such a file holds (nothing was applied then).
    fn sync_with(
        &mut self,
        index: &mut Index,
        skip_clean: bool,
    ) -> Result<Option<Vec<ConfigProblem>>, FileProviderError> {
        let mut problems = Vec::new();
        let files = manifest_files(&self.dir)?;
        let mut wanted: BTreeMap<(Kind, ObjectKey), Located> = BTreeMap::new();
        let mut contributing = BTreeSet::new();
        let mut skipped = BTreeSet::new();
        let mut troubled = BTreeSet::new();
        let mut remembered_changed = false;
        for path in &files {
            let display = path.display().to_string();
            let text = match std::fs::read_to_string(path) {
                Ok(text) => Some(text),
                Err(e) => {
                    problems.push(problem(&display, format!("cannot read: {e}")));
                    troubled.insert(path.clone());
                    None
                }
            };
            let objects = match text {
                Some(text) => match self.parse(path, text) {
                    Ok((_, false)) if skip_clean && self.clean.contains(path) => {
                        contributing.insert(path.clone());
                        skipped.insert(path.clone());
                        continue;
                    }
                    Ok((objects, changed)) => {
                        remembered_changed |= changed;
                        objects
                    }
                    Err(error) => {
                        problems.push(problem(&display, error.to_string()));
                        troubled.insert(path.clone());
                        match self.fallback(path) {
                            Some(objects) => objects,
                            None => continue,
                        }
                    }
                },
                None => match self.fallback(path) {
                    Some(objects) => objects,
                    None => continue,
                },
            };
            contributing.insert(path.clone());
            for (document, object) in objects.into_iter().enumerate() {
                let id = (object.kind(), object.key());
                if let Some((other, _, _)) = wanted.get(&id) {
                    troubled.insert(path.clone());
                    problems.push(problem(
                        &display,
                        format!(
                            "{} {} is already defined in {}; this copy is ignored",
                            id.0,
                            id.1,
                            other.display()
                        ),
                    ));
                    continue;
                }
                wanted.insert(id, (path.clone(), document, object));
            }
        }
        let before = self.last_good.len();
        self.last_good.retain(|path, _| contributing.contains(path));
        remembered_changed |= self.last_good.len() != before;

        // A changed file claims an object a skipped file holds: which copy wins depends on
        // file order, so look at every file.
        if skip_clean {
            let claimed_late = wanted.iter().any(|(id, (path, _, _))| {
                self.applied
                    .get(id)
                    .is_some_and(|(other, _, _)| other != path && skipped.contains(other))
            });
            if claimed_late {
                return Ok(None);
            }
        }
        let gone: Vec<_> = self
            .applied
            .iter()
            .filter(|(id, (path, _, _))| !skipped.contains(path) && !wanted.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for (kind, key) in gone {
            index.delete(kind, &key);
            self.applied.remove(&(kind, key));
        }
        for (id, (path, document, object)) in wanted {
            // `applied` holds only accepted versions, so a rejected object differs from it and
            // is re-validated (and re-reported) on every sync until it is fixed.
            let unchanged = self
                .applied
                .get(&id)
                .is_some_and(|(_, _, o)| Arc::ptr_eq(o, &object) || o == &object);
            if unchanged {
                continue;
            }
            match index.apply(InputObject::clone(&object)) {
                Ok(()) => {
                    self.applied.insert(id, (path, document, object));
                }
                Err(errors) => {
                    troubled.insert(path.clone());
                    for e in errors {
                        problems.push(problem(
                            &path.display().to_string(),
                            format!("document {document} ({} {}): {e}", id.0, id.1),
                        ));
                    }
                }
            }
        }
        if remembered_changed {
            self.remember()?;
        }
        self.clean = contributing.difference(&troubled).cloned().collect();
        Ok(Some(problems))
    }

    /// The objects of `text`, read from `path`: from the cache when the text is the last good
    /// one, else parsed and remembered as the new last good version (then `true`).
    fn parse(
        &mut self,
        path: &Path,
        text: String,
    ) -> Result<(Vec<Arc<InputObject>>, bool), crate::core::manifest::ManifestError> {
        if let Some(good) = self.last_good.get(path) {
            if good.text == text {
                if let Some(objects) = &good.objects {
                    return Ok((objects.clone(), false));
                }
            }
        }
        let objects: Vec<Arc<InputObject>> = parse_documents(&text, DEFAULT_NAMESPACE)?
            .into_iter()
            .map(Arc::new)
            .collect();
        let changed = self.last_good.get(path).is_none_or(|g| g.text != text);
        let file = GoodFile {
            text,
            objects: Some(objects.clone()),
        };
        self.last_good.insert(path.to_path_buf(), file);
        Ok((objects, changed))
    }

    /// Objects from the last good version of a file that now fails to parse or read.
    fn fallback(&mut self, path: &Path) -> Option<Vec<Arc<InputObject>>> {
        let good = self.last_good.get_mut(path)?;
        if good.objects.is_none() {
            let parsed = parse_documents(&good.text, DEFAULT_NAMESPACE).ok()?;
            good.objects = Some(parsed.into_iter().map(Arc::new).collect());
        }
        good.objects.clone()
    }

    fn remember(&self) -> Result<(), FileProviderError> {
        let Some(state_dir) = &self.state_dir else {
            return Ok(());
        };
        let texts: BTreeMap<&PathBuf, &str> = self
            .last_good
            .iter()
            .map(|(path, good)| (path, good.text.as_str()))
            .collect();
        let path = state_dir.join(LAST_GOOD_FILE);
        let tmp = state_dir.join(format!("{LAST_GOOD_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(&texts).unwrap_or_default();
        std::fs::create_dir_all(state_dir)
            .and_then(|_| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| FileProviderError::WriteState { path, source })
    }
}

fn problem(source: &str, message: String) -> ConfigProblem {
    ConfigProblem {
        source: source.to_owned(),
        message,
    }
}

/// `*.yaml` / `*.yml` files under `dir`, recursively, sorted; hidden files are skipped.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, FileProviderError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| FileProviderError::ReadDir {
            path: current.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: shop}
spec:
  template:
    gateways:
    - metadata: {name: gw}
      spec: {servers: [{port: {number: 8080}, hosts: ["*"]}]}
"#;

    fn provider(dir: &Path, state: &Path) -> (FileProvider, Index) {
        (
            FileProvider::new(dir, Some(state.to_path_buf())),
            Index::new().0,
        )
    }

    #[test]
    fn broken_file_keeps_last_good_objects_and_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shop.yaml"), GOOD).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        assert!(p.sync(&mut index).unwrap().is_empty());
        assert_eq!(index.model().access_points.len(), 1);

        std::fs::write(
            dir.path().join("shop.yaml"),
            GOOD.replace("number: 8080", "number: many"),
        )
        .unwrap();
        let problems = p.sync(&mut index).unwrap();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].source.ends_with("shop.yaml"));
        assert!(problems[0].message.contains("document 0"), "{problems:?}");
        assert!(
            problems[0]
                .message
                .contains("spec.template.gateways[0].spec.servers[0].port.number"),
            "{problems:?}"
        );
        assert_eq!(
            index.model().access_points.len(),
            1,
            "last good config keeps serving"
        );

        // A restart with the file still broken serves the last good version from the state dir.
        let (mut restarted, mut index2) = provider(dir.path(), state.path());
        assert_eq!(restarted.sync(&mut index2).unwrap().len(), 1);
        assert_eq!(index2.model().access_points.len(), 1);
    }

    #[test]
    fn invalid_access_point_keeps_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shop.yaml"), GOOD).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        p.sync(&mut index).unwrap();
        let before = index.model().clone();
        std::fs::write(dir.path().join("shop.yaml"), GOOD.replace("8080", "0")).unwrap();
        let problems = p.sync(&mut index).unwrap();
        assert!(
            problems[0].message.contains("AccessPoint default/shop"),
            "{problems:?}"
        );
        assert!(
            problems[0].message.contains("servers[0].port.number"),
            "{problems:?}"
        );
        assert_eq!(index.model(), &before);
        // Still reported on the next sync, until fixed.
        assert_eq!(p.sync(&mut index).unwrap().len(), 1);
        std::fs::write(dir.path().join("shop.yaml"), GOOD.replace("8080", "9090")).unwrap();
        assert!(p.sync(&mut index).unwrap().is_empty());
    }

    #[test]
    fn removed_files_delete_their_objects_and_duplicates_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.yml"), GOOD).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        let problems = p.sync(&mut index).unwrap();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].source.ends_with("b.yml")
                && problems[0].message.contains("already defined")
        );
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        std::fs::remove_file(dir.path().join("b.yml")).unwrap();
        assert!(p.sync(&mut index).unwrap().is_empty());
        assert!(index.model().access_points.is_empty());
    }

    #[test]
    fn a_changed_file_claiming_an_object_of_an_unchanged_one_loses_to_file_order() {
        let other = GOOD.replace("name: shop", "name: other");
        for (first, second) in [("a.yaml", "b.yaml"), ("b.yaml", "a.yaml")] {
            let dir = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            // `second` holds shop; `first` holds another AccessPoint.
            std::fs::write(dir.path().join(second), GOOD).unwrap();
            std::fs::write(dir.path().join(first), &other).unwrap();
            let (mut p, mut index) = provider(dir.path(), state.path());
            assert!(p.sync(&mut index).unwrap().is_empty());
            assert!(
                p.sync(&mut index).unwrap().is_empty(),
                "unchanged: nothing to say"
            );

            // `first` now defines shop too, on another port; only it changed.
            let claim = format!("{other}---\n{}", GOOD.replace("8080", "9090"));
            std::fs::write(dir.path().join(first), claim).unwrap();
            let problems = p.sync(&mut index).unwrap();
            let port = |index: &Index| {
                index.model().access_points[&ObjectKey::new("default", "shop")]
                    .spec
                    .template
                    .gateways[0]
                    .spec
                    .servers[0]
                    .port
                    .number
            };
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].message.contains("already defined"),
                "{problems:?}"
            );
            // The file first in order keeps it, as on a fresh start.
            let (winner, loser, expected) = if first < second {
                (first, second, 9090)
            } else {
                (second, first, 8080)
            };
            assert!(
                problems[0].source.ends_with(loser),
                "{winner}: {problems:?}"
            );
            assert_eq!(port(&index), expected);
            assert_eq!(index.model().access_points.len(), 2);
        }
    }
}
