//! Tidy checks that keep the architecture true (docs/ARCHITECTURE.md, "Layers"): the pure core
//! does no I/O, no file imports from a layer above its own, programs do not import each other,
//! and no two files import each other, however indirectly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates and modules that do I/O or need a runtime; none may appear in the pure core or in
/// the sans-IO protocol state machines.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tonic",
    "hyper",
    "axum",
    "kube::api",
    "kube::runtime",
    "kube::Client",
    "kube_client",
    "kube_runtime",
    "notify",
    "reqwest",
    "std::net",
    "std::fs",
    "std::process",
    "std::thread",
];

/// The layers, bottom first, each with the modules it holds (a module holds its children,
/// unless a child is listed itself). A file may import from its own layer and those below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "model: the API types, the model and what feeds it",
        &[
            "api",
            "core::model",
            "core::hosts",
            "core::observed",
            "core::resources",
            "core::duration",
        ],
    ),
    (
        "view: placement, overrides, expansion, binding, references, validation, node subsets",
        &[
            "core::placement",
            "core::selector",
            "core::overrides",
            "core::manifest",
            "core::expand",
            "core::binding",
            "core::certificates",
            "core::refs",
            "core::validate",
            "core::vip_allocation",
            "core::node_subsets",
            "core::node_agent",
        ],
    ),
    (
        "outputs: translation, rollout, DNS records, status, what data planes compile",
        &[
            "core::translate",
            "core::rollout",
            "core::quarantine",
            "core::dataplane",
            "core::dns",
            "core::status",
            "core::federation",
            "core::json",
        ],
    ),
    ("runtime: I/O plumbing every program shares", &["runtime"]),
    (
        "program edges: the control plane's shared edges, the proxy's, the L4 balancer's, the node agent's",
        &["control_plane", "proxy", "l4", "node_agent", "haproxy"],
    ),
    (
        "control-plane wiring both modes share",
        &["control_plane::serve"],
    ),
    (
        "control-plane modes and their adapters",
        &["control_plane::standalone", "control_plane::kubernetes"],
    ),
    ("benchmarks", &["bench"]),
    ("the command line", &["cli", "main"]),
];

/// The programs over the core: none imports another (what they share belongs below them).
const PROGRAMS: &[&str] = &["control_plane", "proxy", "l4", "node_agent", "haproxy"];

/// Module roots that only declare their children and so belong to no layer.
const DECLARATIONS_ONLY: &[&str] = &["", "core"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/core/model/mod.rs` → `core::model`; `src/lib.rs` → ``; `src/main.rs` → `main`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// Test code may reach anywhere: whole test files, and inline `#[cfg(test)] mod …` blocks
/// (which by convention close the file).
fn production_code(file: &Path, text: &str) -> Option<String> {
    let name = file.file_stem()?.to_string_lossy();
    let test_file = name == "tests"
        || name.ends_with("_tests")
        || name.ends_with("proptests")
        || name == "test_support";
    if test_file {
        return None;
    }
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut end = code.len();
    let mut from = 0;
    while let Some(found) = code[from..].find("#[cfg(test)]") {
        let at = from + found;
        let rest = code[at + "#[cfg(test)]".len()..].trim_start();
        let inline_module = rest.starts_with("mod ")
            && rest
                .find(['{', ';'])
                .is_some_and(|i| rest.as_bytes()[i] == b'{');
        if inline_module {
            end = at;
            break;
        }
        from = at + 1;
    }
    Some(code[..end].to_owned())
}

/// Every path a piece of code names through `crate::`, `meridian::` or `super::`, with use-tree
/// groups expanded and `super` resolved against `module`: full module paths, item names kept.
fn imported_paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let starts_word = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let rest = &code[i..];
        let prefix = ["crate::", "meridian::", "super::"]
            .into_iter()
            .find(|p| starts_word && rest.starts_with(p));
        let Some(prefix) = prefix else {
            i += 1;
            continue;
        };
        let mut base: Vec<String> = Vec::new();
        let mut at = i + prefix.len();
        if prefix == "super::" {
            base = module
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            // `a/b.rs` and `a/b/mod.rs` are both module a::b, whose parent is `a`.
            base.pop();
            while code[at..].starts_with("super::") {
                base.pop();
                at += "super::".len();
            }
        }
        let (paths, consumed) = use_tree(&code[at..]);
        for path in paths {
            let mut full = base.clone();
            full.extend(path);
            out.push(full);
        }
        i = at + consumed.max(1);
    }
    out
}

/// Parses a use tree (`a::b`, `a::{b, c::{d, e}}`, `self`) into paths; returns them and the
/// bytes consumed.
fn use_tree(text: &str) -> (Vec<Vec<String>>, usize) {
    let ident_len = |t: &str| {
        t.char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map_or(t.len(), |(i, _)| i)
    };
    let mut segments = Vec::new();
    let mut at = 0;
    loop {
        let rest = &text[at..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut paths = Vec::new();
            let mut group_at = 0;
            loop {
                let item = group[group_at..].trim_start();
                group_at = group.len() - item.len();
                if item.starts_with('}') || item.is_empty() {
                    group_at += 1;
                    break;
                }
                let (sub, used) = use_tree(item);
                for path in sub {
                    let mut full: Vec<String> = segments.clone();
                    full.extend(path.into_iter().filter(|s| s != "self"));
                    paths.push(full);
                }
                group_at += used.max(1);
                let after = group[group_at..].trim_start();
                group_at = group.len() - after.len();
                if after.starts_with(',') {
                    group_at += 1;
                }
            }
            return (paths, at + 1 + group_at);
        }
        let len = ident_len(rest);
        if len == 0 {
            break;
        }
        segments.push(rest[..len].to_owned());
        at += len;
        if text[at..].starts_with("::") {
            at += 2;
        } else {
            break;
        }
    }
    (vec![segments], at)
}

struct Crate {
    /// Module → the production code of its file.
    files: BTreeMap<String, (PathBuf, String)>,
}

impl Crate {
    fn load() -> Crate {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut paths = Vec::new();
        rust_files(&src, &mut paths);
        let mut files = BTreeMap::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Some(code) = production_code(&path, &text) {
                files.insert(module_of(&src, &path), (path, code));
            }
        }
        Crate { files }
    }

    /// The module a path lands in: its longest prefix that is a file of the crate.
    fn module_of_path(&self, path: &[String]) -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("::"))
            .find(|m| self.files.contains_key(m))
    }

    /// Module → the modules it imports (itself, its ancestors and external crates left out).
    fn imports(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph = BTreeMap::new();
        for (module, (_, code)) in &self.files {
            let targets = imported_paths(module, code)
                .into_iter()
                .filter_map(|p| self.module_of_path(&p))
                .filter(|t| t != module && !module.starts_with(&format!("{t}::")))
                .collect();
            graph.insert(module.clone(), targets);
        }
        graph
    }
}

/// The layer of a module: the one listing its longest prefix.
fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (name, prefixes))| prefixes.iter().map(move |p| (i, *name, *p)))
        .filter(|(_, _, p)| module == *p || module.starts_with(&format!("{p}::")))
        .max_by_key(|(_, _, p)| p.len())
        .map(|(i, name, _)| (i, name))
}

fn program_of(module: &str) -> Option<&'static str> {
    PROGRAMS
        .iter()
        .copied()
        .find(|p| module == *p || module.starts_with(&format!("{p}::")))
}

/// Architecture Invariant: `src/core` and the xDS state machines are pure.
#[test]
fn pure_modules_import_no_io_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/core"), &mut files);
    rust_files(&root.join("src/api"), &mut files);
    for f in [
        "sotw.rs",
        "delta.rs",
        "status.rs",
        "identity.rs",
        "polling.rs",
    ] {
        files.push(root.join("src/control_plane/xds").join(f));
    }
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for krate in IO_CRATES {
                let used = code.contains(&format!("{krate}::"))
                    || code.contains(&format!("use {krate}"))
                    || code.contains(&format!("{krate} "));
                if used && !code.trim_start().starts_with("//") {
                    offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "I/O in pure modules:\n{}",
        offences.join("\n")
    );
}

/// Architecture Invariant: every module has a layer, and imports only from its own layer and
/// those below; programs do not import each other.
#[test]
fn every_file_imports_only_from_its_layer_and_below() {
    let krate = Crate::load();
    let mut offences = Vec::new();
    for (module, targets) in krate.imports() {
        if DECLARATIONS_ONLY.contains(&module.as_str()) {
            continue;
        }
        let Some((layer, name)) = layer_of(&module) else {
            offences.push(format!("{module}: in no layer (add it to LAYERS)"));
            continue;
        };
        for target in targets {
            let Some((target_layer, target_name)) = layer_of(&target) else {
                continue;
            };
            if target_layer > layer {
                offences.push(format!(
                    "{module} ({name}) imports {target} ({target_name}), a layer above"
                ));
            }
            if let (Some(a), Some(b)) = (program_of(&module), program_of(&target)) {
                if a != b {
                    offences.push(format!(
                        "program {a} imports program {b}: {module} → {target}"
                    ));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "layering broken:\n{}",
        offences.join("\n")
    );
}

/// Architecture Invariant: no file imports itself through others. A module and its own children
/// are one unit (a parent declares and may use its children), so only other edges count.
#[test]
fn no_import_cycles_between_files() {
    let graph = Crate::load().imports();
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles:\n{}",
        cycles
            .iter()
            .map(|c| c.join(" → "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The cycles a depth-first search closes (one per back edge): enough to name at least one
/// cycle through every group of files that import each other.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let start = stack.iter().position(|m| m == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    found.push(cycle);
                }
                Some(Mark::Done) => {}
                None => visit(next, graph, marks, stack, found),
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if !marks.contains_key(node.as_str()) {
            visit(node, graph, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// The checks themselves must catch what they look for, or they prove nothing.
#[test]
fn the_checks_can_fail() {
    let line = "use tokio::sync::watch;";
    assert!(IO_CRATES.iter().any(|k| line.contains(&format!("use {k}"))));

    // Use trees expand, and `super` resolves against the file's module.
    let code = "use crate::core::{model::ObjectKey, translate::{self, Translation}};\n\
                use super::super::expand::ClusterView;";
    let paths = imported_paths("core::refs::inner", code);
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "core::model::ObjectKey",
            "core::translate",
            "core::translate::Translation",
            "core::expand::ClusterView"
        ]
    );

    // An upward import is an offence; the model importing translation is one.
    let (model, _) = layer_of("core::model::tls").unwrap();
    let (translate, _) = layer_of("core::translate::route").unwrap();
    assert!(translate > model);
    assert_eq!(layer_of("control_plane::serve").map(|l| l.0), Some(5));
    assert_eq!(program_of("proxy::router"), Some("proxy"));

    // A cycle of three is found and named.
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()])))
        .collect();
    assert_eq!(cycles(&graph), [["a", "b", "c", "a"]]);
}

/// The Envoy protos in proto/envoy-api (rendering JSON) are those of the envoy-types version
/// whose compiled types the code uses; otherwise a field could encode and never render.
#[test]
fn vendored_envoy_protos_match_the_envoy_types_in_use() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let locked = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("envoy-types in Cargo.lock");
    let vendored = std::fs::read_to_string(root.join("proto/envoy-api/VERSION")).unwrap();
    assert_eq!(
        vendored.trim(),
        format!("envoy-types {locked}"),
        "run python3 proto/envoy-api/vendor.py"
    );
}
