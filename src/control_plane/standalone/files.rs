//! The standalone provider: a directory of multi-document YAML manifests.
//!
//! Each sync re-reads the directory, parsing only files whose text changed; a file unchanged
//! since a sync that applied all its objects is not compared object by object. A file that
//! fails to parse keeps contributing the objects the index accepted from it; an object that
//! fails validation keeps its last accepted version in the index. What the index accepted is
//! saved in the state directory (`state.rs`) and applied first after a restart, so a restart
//! serves what was in force, whatever kind of rejection the files hold now. Every problem
//! names the file, the document and the field.

mod read;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::control_plane::index::Index;
use crate::core::manifest::parse_documents;
use crate::core::model::InputObject;

use self::state::{Accepted, ObjectId, Source};
pub use self::state::{StateError, STATE_FILE};
use crate::control_plane::problems::ConfigProblem;

/// Namespace for objects that name none, as `kubectl apply` would use.
const DEFAULT_NAMESPACE: &str = "default";

/// The most objects a config directory may hold (about 5 KiB of memory each once indexed);
/// files past it, in path order, are reported and keep their last good objects.
pub const MAX_OBJECTS: usize = 100_000;

/// How long after its last write a file that shrank, emptied or broke may still be mid-write.
pub const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum FileProviderError {
    #[error("cannot read config directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The last text read from a file and, if it parsed, its objects. An unchanged file is not
/// parsed again, so an edit to one file of a large directory costs that file's parse.
struct ParsedFile {
    source: Arc<Source>,
    objects: Result<Vec<Arc<InputObject>>, crate::core::manifest::ManifestError>,
}

/// The objects of a file as just read, and whether its text changed since the last read.
struct FileRead {
    source: Arc<Source>,
    objects: Vec<Arc<InputObject>>,
    changed: bool,
}

pub struct FileProvider {
    dir: PathBuf,
    state_dir: Option<PathBuf>,
    parsed: BTreeMap<PathBuf, ParsedFile>,
    /// Objects the index accepted and holds now, with where they came from.
    applied: BTreeMap<ObjectId, Accepted>,
    /// Objects the index rejected at the last sync (it may hold an older version), by file.
    rejected: BTreeMap<ObjectId, PathBuf>,
    /// What a restart found in the state directory, applied before the first sync.
    saved: Option<Vec<Accepted>>,
    /// Files whose every object the last sync applied without a problem.
    clean: BTreeSet<PathBuf>,
    /// The last sync passed over a file that may be mid-write.
    settling: bool,
    /// What is applied could not be saved yet.
    unsaved: bool,
}

impl FileProvider {
    /// A provider of `dir`, saving what it applies in `state_dir`. A state file that cannot be
    /// read or understood is an error: starting without it would withdraw whatever the
    /// directory holds broken now.
    pub fn new(
        dir: impl Into<PathBuf>,
        state_dir: Option<PathBuf>,
    ) -> Result<FileProvider, FileProviderError> {
        let saved = match &state_dir {
            Some(state_dir) => Some(state::load(state_dir)?),
            None => None,
        };
        Ok(FileProvider {
            dir: dir.into(),
            state_dir,
            parsed: BTreeMap::new(),
            applied: BTreeMap::new(),
            rejected: BTreeMap::new(),
            saved,
            clean: BTreeSet::new(),
            settling: false,
            unsaved: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory and brings the index in line with it. Does not publish.
    /// Reads the directory and brings the index in line with it, then saves what the index
    /// now holds. Does not publish: see [`FileProvider::sync_unsaved`] to publish first.
    pub fn sync(&mut self, index: &mut Index) -> Result<Vec<ConfigProblem>, FileProviderError> {
        let mut problems = self.sync_unsaved(index)?;
        problems.extend(self.save());
        Ok(problems)
    }

    /// [`FileProvider::sync`] without the save, for a caller that publishes before it saves
    /// (an fsync on a busy disk must not delay an edit); then call [`FileProvider::save`].
    pub fn sync_unsaved(
        &mut self,
        index: &mut Index,
    ) -> Result<Vec<ConfigProblem>, FileProviderError> {
        self.apply_saved(index);
        match self.sync_with(index, true)? {
            Some(problems) => Ok(problems),
            // A changed file defines an object a skipped file holds: decide who wins in order.
            None => Ok(self.sync_with(index, false)?.unwrap_or_default()),
        }
    }

    /// Saves what the index holds from the files, if it changed since the last save (or that
    /// failed); a failure is a problem to report, and is retried on the next call.
    pub fn save(&mut self) -> Option<ConfigProblem> {
        let state_dir = self.state_dir.as_ref().filter(|_| self.unsaved)?;
        let saved = state::save(state_dir, self.applied.values());
        self.unsaved = saved.is_err();
        let error = saved.err()?;
        let why =
            format!("{error}; the config is served but would not survive a restart, retrying");
        Some(problem(&state_dir.display().to_string(), why))
    }

    /// After a restart, puts back what was in force before it, as if Meridian had never
    /// stopped; the sync that follows applies the files over it.
    fn apply_saved(&mut self, index: &mut Index) {
        for accepted in self.saved.take().into_iter().flatten() {
            let id = (accepted.object.kind(), accepted.object.key());
            match index.apply(InputObject::clone(&accepted.object)) {
                Ok(()) => {
                    self.applied.insert(id, accepted);
                }
                Err(errors) => tracing::warn!(
                    file = %accepted.path.display(),
                    object = %format!("{} {}", id.0, id.1),
                    errors = errors.len(),
                    "a saved object no longer validates; it is not served"
                ),
            }
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
        let listing = read::list(&self.dir).map_err(|source| FileProviderError::ReadDir {
            path: self.dir.clone(),
            source,
        })?;
        for (path, why) in &listing.skipped {
            problems.push(problem(&path.display().to_string(), why.clone()));
        }
        let mut wanted: BTreeMap<ObjectId, Accepted> = BTreeMap::new();
        let mut contributing = BTreeSet::new();
        let mut skipped = BTreeSet::new();
        let mut troubled = BTreeSet::new();
        // Files in directories that cannot be listed are not gone: keep what they gave.
        for (id, accepted) in &self.applied {
            if listing
                .unreadable
                .iter()
                .any(|d| accepted.path.starts_with(d))
            {
                wanted.insert(id.clone(), accepted.clone());
                contributing.insert(accepted.path.clone());
                troubled.insert(accepted.path.clone());
            }
        }
        self.settling = false;
        let mut budget = read::MAX_TOTAL_BYTES;
        let mut objects_seen = 0usize;
        for path in &listing.files {
            let display = path.display().to_string();
            let outcome = match read::read(path, budget) {
                Ok(file) => {
                    budget = budget.saturating_sub(file.text.len() as u64);
                    self.examine(path, file)
                }
                Err(error) => Outcome::Failed(error),
            };
            let outcome = match outcome {
                Outcome::Parsed(read) => {
                    objects_seen = objects_seen.saturating_add(read.objects.len());
                    if objects_seen > MAX_OBJECTS {
                        let why = format!(
                            "not read: the config directory holds more than {MAX_OBJECTS} objects"
                        );
                        Outcome::Failed(why)
                    } else {
                        Outcome::Parsed(read)
                    }
                }
                other => other,
            };
            let (source, objects) = match outcome {
                Outcome::Parsed(read)
                    if !read.changed && skip_clean && self.clean.contains(path) =>
                {
                    contributing.insert(path.clone());
                    skipped.insert(path.clone());
                    continue;
                }
                Outcome::Parsed(read) => (read.source, read.objects),
                Outcome::Failed(error) => {
                    problems.push(problem(&display, error));
                    self.keep_serving(path, &mut wanted);
                    troubled.insert(path.clone());
                    contributing.insert(path.clone());
                    continue;
                }
                Outcome::Settling => {
                    self.settling = true;
                    self.keep_serving(path, &mut wanted);
                    troubled.insert(path.clone());
                    contributing.insert(path.clone());
                    continue;
                }
            };
            contributing.insert(path.clone());
            for (document, object) in objects.into_iter().enumerate() {
                let id = (object.kind(), object.key());
                if let Some(other) = wanted.get(&id) {
                    troubled.insert(path.clone());
                    problems.push(problem(
                        &display,
                        format!(
                            "{} {} is already defined in {}; this copy is ignored",
                            id.0,
                            id.1,
                            other.path.display()
                        ),
                    ));
                    continue;
                }
                let accepted = Accepted {
                    path: path.clone(),
                    document,
                    object,
                    source: source.clone(),
                };
                wanted.insert(id, accepted);
            }
        }
        self.parsed.retain(|path, _| contributing.contains(path));

        // A changed file claims an object a skipped file holds: which copy wins depends on
        // file order, so look at every file.
        if skip_clean {
            let claimed_late = wanted.iter().any(|(id, wanted)| {
                self.applied
                    .get(id)
                    .is_some_and(|a| a.path != wanted.path && skipped.contains(&a.path))
            });
            if claimed_late {
                return Ok(None);
            }
        }
        let mut changed = false;
        let gone: Vec<ObjectId> = self
            .applied
            .iter()
            .map(|(id, a)| (id, &a.path))
            .chain(self.rejected.iter())
            .filter(|(id, path)| !skipped.contains(*path) && !wanted.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            index.delete(id.0, &id.1);
            changed |= self.applied.remove(&id).is_some();
            self.rejected.remove(&id);
        }
        for (id, wanted) in wanted {
            // `applied` holds only accepted versions, so a rejected object differs from it and
            // is re-validated (and re-reported) on every sync until it is fixed.
            let unchanged = self.applied.get(&id).is_some_and(|a| {
                Arc::ptr_eq(&a.object, &wanted.object) || a.object == wanted.object
            });
            if unchanged {
                // The same object, from another file or version of it: save where it is now.
                if let Some(a) = self.applied.get_mut(&id) {
                    if !Arc::ptr_eq(&a.source, &wanted.source)
                        || a.path != wanted.path
                        || a.document != wanted.document
                    {
                        *a = wanted;
                        changed = true;
                    }
                }
                continue;
            }
            match index.apply(InputObject::clone(&wanted.object)) {
                Ok(()) => {
                    self.rejected.remove(&id);
                    self.applied.insert(id, wanted);
                    changed = true;
                }
                Err(errors) => {
                    troubled.insert(wanted.path.clone());
                    let display = wanted.path.display().to_string();
                    for e in errors {
                        problems.push(problem(
                            &display,
                            format!("document {} ({} {}): {e}", wanted.document, id.0, id.1),
                        ));
                    }
                    self.rejected.insert(id, wanted.path);
                }
            }
        }
        self.unsaved |= changed;
        self.clean = contributing.difference(&troubled).cloned().collect();
        Ok(Some(problems))
    }

    /// What the index accepted from `path` keeps serving.
    fn keep_serving(&self, path: &Path, wanted: &mut BTreeMap<ObjectId, Accepted>) {
        for (id, accepted) in &self.applied {
            if accepted.path == path && !wanted.contains_key(id) {
                wanted.insert(id.clone(), accepted.clone());
            }
        }
    }

    /// Whether the last sync passed over a file caught mid-write; sync again after
    /// [`SETTLE`] to take it as it is then.
    pub fn settling(&self) -> bool {
        self.settling
    }

    /// What a file just read contributes. A changed file written within [`SETTLE`] that lost
    /// objects, went empty, stopped parsing or ends mid-line may be caught mid-write (a rewrite
    /// in place): it counts as unchanged until it settles.
    fn examine(&mut self, path: &Path, file: read::FileText) -> Outcome {
        let changed = self
            .parsed
            .get(path)
            .is_none_or(|p| p.source.text != file.text);
        let recent = file.modified.is_some_and(|m| {
            SystemTime::now()
                .duration_since(m)
                .map_or(true, |age| age < SETTLE)
        });
        let mid_line = !file.text.is_empty() && !file.text.ends_with('\n');
        // How many objects the file held: its last parse, else what it contributes (a scan,
        // only for a file never parsed cleanly in this run).
        let parsed_before = self.parsed.get(path).and_then(|p| p.objects.as_ref().ok());
        let before = parsed_before.map(Vec::len);
        let read = self.parse(path, file.text);
        if changed && recent {
            let before =
                before.unwrap_or_else(|| self.applied.values().filter(|a| a.path == path).count());
            let unfinished = match &read {
                Ok(read) => read.objects.len() < before || read.objects.is_empty() || mid_line,
                Err(_) => true,
            };
            if unfinished {
                // Parsed again once settled, whatever it holds then.
                self.parsed.remove(path);
                return Outcome::Settling;
            }
        }
        match read {
            Ok(read) => Outcome::Parsed(read),
            Err(error) => Outcome::Failed(error),
        }
    }

    /// The objects of `text`, read from `path`, and whether the text differs from the last
    /// read; parsed only when it does.
    fn parse(&mut self, path: &Path, text: String) -> Result<FileRead, String> {
        let cached = self.parsed.get(path).filter(|p| p.source.text == text);
        let changed = cached.is_none();
        if changed {
            let objects = parse_documents(&text, DEFAULT_NAMESPACE)
                .map(|objects| objects.into_iter().map(Arc::new).collect());
            let file = ParsedFile {
                source: Source::new(text),
                objects,
            };
            self.parsed.insert(path.to_path_buf(), file);
        }
        let file = &self.parsed[path];
        match &file.objects {
            Ok(objects) => Ok(FileRead {
                source: file.source.clone(),
                objects: objects.clone(),
                changed,
            }),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// What one file contributes to a sync.
enum Outcome {
    Parsed(FileRead),
    /// It cannot be read or parsed: reported, and its last accepted objects keep serving.
    Failed(String),
    /// Caught mid-write: its last accepted objects keep serving until it settles.
    Settling,
}

fn problem(source: &str, message: String) -> ConfigProblem {
    ConfigProblem {
        source: source.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::ObjectKey;

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

    /// Writes `text` to `path` as if the write had finished well before the next sync.
    fn write_settled(path: impl AsRef<Path>, text: impl AsRef<[u8]>) -> std::io::Result<()> {
        std::fs::write(&path, text)?;
        let long_ago = SystemTime::now() - Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(long_ago)
    }

    /// Writes `text` to `path` as a write still under way would leave it.
    fn write_just_now(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    fn provider(dir: &Path, state: &Path) -> (FileProvider, Index) {
        (
            FileProvider::new(dir, Some(state.to_path_buf())).unwrap(),
            Index::new().0,
        )
    }

    #[test]
    fn broken_file_keeps_last_good_objects_and_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        write_settled(dir.path().join("shop.yaml"), GOOD).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        assert!(p.sync(&mut index).unwrap().is_empty());
        assert_eq!(index.model().access_points.len(), 1);

        write_settled(
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
        write_settled(dir.path().join("shop.yaml"), GOOD).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        p.sync(&mut index).unwrap();
        let before = index.model().clone();
        write_settled(dir.path().join("shop.yaml"), GOOD.replace("8080", "0")).unwrap();
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
        write_settled(dir.path().join("shop.yaml"), GOOD.replace("8080", "9090")).unwrap();
        assert!(p.sync(&mut index).unwrap().is_empty());
    }

    #[test]
    fn removed_files_delete_their_objects_and_duplicates_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        write_settled(dir.path().join("a.yaml"), GOOD).unwrap();
        write_settled(dir.path().join("b.yml"), GOOD).unwrap();
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
            write_settled(dir.path().join(second), GOOD).unwrap();
            write_settled(dir.path().join(first), &other).unwrap();
            let (mut p, mut index) = provider(dir.path(), state.path());
            assert!(p.sync(&mut index).unwrap().is_empty());
            assert!(
                p.sync(&mut index).unwrap().is_empty(),
                "unchanged: nothing to say"
            );

            // `first` now defines shop too, on another port; only it changed.
            let claim = format!("{other}---\n{}", GOOD.replace("8080", "9090"));
            write_settled(dir.path().join(first), claim).unwrap();
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

    fn port(index: &Index) -> Option<u32> {
        let ap = index
            .model()
            .access_points
            .get(&ObjectKey::new("default", "shop"))?;
        Some(ap.spec.template.gateways[0].spec.servers[0].port.number)
    }

    #[test]
    fn a_restart_serves_the_last_accepted_version_whatever_the_files_hold_now() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let file = dir.path().join("shop.yaml");
        write_settled(&file, GOOD).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        p.sync(&mut index).unwrap();
        assert_eq!(port(&index), Some(8080));

        // Rejected by validation, then unparsable: neither becomes the last good version.
        for broken in [GOOD.replace("8080", "0"), GOOD.replace("8080", "many")] {
            write_settled(&file, &broken).unwrap();
            assert_eq!(p.sync(&mut index).unwrap().len(), 1);
            assert_eq!(port(&index), Some(8080));
            let (mut restarted, mut fresh) = provider(dir.path(), state.path());
            let problems = restarted.sync(&mut fresh).unwrap();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].source.ends_with("shop.yaml"), "{problems:?}");
            assert_eq!(port(&fresh), Some(8080), "after a restart with {broken}");
        }
        // The rejected version is reported on every restart, however many there were.
        write_settled(&file, GOOD.replace("8080", "0")).unwrap();
        for _ in 0..2 {
            let (mut restarted, mut fresh) = provider(dir.path(), state.path());
            assert_eq!(restarted.sync(&mut fresh).unwrap().len(), 1);
            assert_eq!(port(&fresh), Some(8080));
            assert!(fresh
                .rejected()
                .contains_key(&ObjectKey::new("default", "shop")));
        }

        // Fixed while stopped: the fix is served; removed while stopped: nothing is.
        write_settled(&file, GOOD.replace("8080", "9090")).unwrap();
        let (mut restarted, mut fresh) = provider(dir.path(), state.path());
        assert!(restarted.sync(&mut fresh).unwrap().is_empty());
        assert_eq!(port(&fresh), Some(9090));
        std::fs::remove_file(&file).unwrap();
        let (mut restarted, mut fresh) = provider(dir.path(), state.path());
        assert!(restarted.sync(&mut fresh).unwrap().is_empty());
        assert_eq!(port(&fresh), None);
    }

    #[test]
    fn an_object_never_accepted_is_not_served_after_a_restart_and_its_rejection_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let file = dir.path().join("shop.yaml");
        write_settled(&file, GOOD.replace("8080", "0")).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        assert_eq!(p.sync(&mut index).unwrap().len(), 1);
        assert_eq!(port(&index), None);
        assert_eq!(index.rejected().len(), 1);
        let (mut restarted, mut fresh) = provider(dir.path(), state.path());
        assert_eq!(restarted.sync(&mut fresh).unwrap().len(), 1);
        assert_eq!(port(&fresh), None);

        // The file stops parsing: only the parse error is left to report.
        write_settled(&file, "kind: [").unwrap();
        assert_eq!(restarted.sync(&mut fresh).unwrap().len(), 1);
        assert!(fresh.rejected().is_empty());
    }

    #[test]
    fn a_corrupt_state_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        write_settled(state.path().join(STATE_FILE), "{not json").unwrap();
        let error = FileProvider::new(dir.path(), Some(state.path().to_path_buf()))
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(STATE_FILE), "{error}");
    }

    #[test]
    fn a_file_caught_mid_write_keeps_its_objects_until_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let file = dir.path().join("shop.yaml");
        let two = format!("{GOOD}---\n{}", GOOD.replace("name: shop", "name: cart"));
        write_settled(&file, &two).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        p.sync(&mut index).unwrap();
        assert_eq!(index.model().access_points.len(), 2);

        // Truncated to nothing, to one document, to half a document, mid-line: each is held
        // back.
        let mid_line = two.replace("8080", "9090");
        let mid_line = mid_line.trim_end();
        for partial in ["", GOOD, &two[..two.len() / 2 + 7], mid_line] {
            write_just_now(&file, partial);
            assert!(p.sync(&mut index).unwrap().is_empty(), "{partial}");
            assert!(p.settling());
            assert_eq!(index.model().access_points.len(), 2, "{partial}");
        }
        // Settled as one document: the other goes.
        write_settled(&file, GOOD).unwrap();
        assert!(p.sync(&mut index).unwrap().is_empty());
        assert!(!p.settling());
        assert_eq!(index.model().access_points.len(), 1);
        // A file that grows or stays whole is taken at once.
        write_just_now(&file, &two.replace("8080", "9090"));
        p.sync(&mut index).unwrap();
        assert_eq!(
            (index.model().access_points.len(), port(&index)),
            (2, Some(9090))
        );
        // Settled broken: reported, and the last good config keeps serving.
        write_settled(&file, "kind: [").unwrap();
        assert_eq!(p.sync(&mut index).unwrap().len(), 1);
        assert_eq!(index.model().access_points.len(), 2);
    }

    #[test]
    fn special_and_oversized_files_are_reported_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        write_settled(dir.path().join("shop.yaml"), GOOD).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("loop")).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("fifo.yaml").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let (mut p, mut index) = provider(dir.path(), state.path());
        let problems = p.sync(&mut index).unwrap();
        let sources: Vec<_> = problems
            .iter()
            .map(|p| p.source.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(sources, ["fifo.yaml", "loop", "zero.yaml"], "{problems:?}");
        assert_eq!(port(&index), Some(8080));

        // Past the size limit, the last good version keeps serving.
        let huge = format!("{GOOD}# {}\n", "x".repeat(read::MAX_FILE_BYTES as usize));
        write_settled(dir.path().join("shop.yaml"), huge).unwrap();
        let problems = p.sync(&mut index).unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.source.ends_with("shop.yaml") && p.message.contains("more than")),
            "{problems:?}"
        );
        assert_eq!(port(&index), Some(8080));
    }

    #[test]
    fn a_state_dir_that_cannot_be_written_is_reported_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        // The temporary file the save writes through cannot be created.
        let blocker = state.path().join(format!(".{STATE_FILE}.tmp"));
        std::fs::create_dir(&blocker).unwrap();
        write_settled(dir.path().join("shop.yaml"), GOOD).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        let problems = p.sync(&mut index).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("would not survive a restart"),
            "{problems:?}"
        );
        assert_eq!(port(&index), Some(8080), "served all the same");
        assert_eq!(p.sync(&mut index).unwrap().len(), 1, "still unsaved");

        std::fs::remove_dir(&blocker).unwrap();
        assert!(
            p.sync(&mut index).unwrap().is_empty(),
            "saved on the next sync"
        );
        let (mut restarted, mut fresh) = provider(dir.path(), state.path());
        write_settled(dir.path().join("shop.yaml"), "kind: [").unwrap();
        restarted.sync(&mut fresh).unwrap();
        assert_eq!(port(&fresh), Some(8080));
    }

    #[test]
    fn objects_past_the_limit_are_reported_and_keep_their_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let service = |i: usize| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{ports: [{{port: 80}}]}}\n---\n")
        };
        // Four files of a quarter of the limit each (one would be past the file size limit).
        for part in 0..4 {
            let quarter = MAX_OBJECTS / 4;
            let text: String = (part * quarter..(part + 1) * quarter)
                .map(service)
                .collect();
            write_settled(dir.path().join(format!("a{part}.yaml")), &text).unwrap();
        }
        write_settled(dir.path().join("b.yaml"), GOOD).unwrap();
        let (mut p, mut index) = provider(dir.path(), state.path());
        let problems = p.sync(&mut index).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].source.ends_with("b.yaml") && problems[0].message.contains("more than"),
            "{problems:?}"
        );
        assert_eq!(port(&index), None);
        assert_eq!(index.model().len(), MAX_OBJECTS);
    }
}
