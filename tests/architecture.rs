//! Tidy checks that keep the architecture true.

use std::path::Path;

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

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Architecture Invariant: `src/core` and the xDS state machines are pure.
#[test]
fn pure_modules_import_no_io_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/core"), &mut files);
    rust_files(&root.join("src/api"), &mut files);
    for f in ["sotw.rs", "delta.rs", "status.rs", "identity.rs"] {
        files.push(root.join("src/xds").join(f));
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

/// The check itself must catch an import, or it proves nothing.
#[test]
fn the_purity_check_can_fail() {
    let line = "use tokio::sync::watch;";
    assert!(IO_CRATES.iter().any(|k| line.contains(&format!("use {k}"))));
}
