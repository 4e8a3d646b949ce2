//! Generated artefacts must match the code that generates them.

use std::path::Path;

#[test]
fn crds_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (name, yaml) in meridian::api::crds::all().unwrap() {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "crds/{name} is stale: run `cargo run -- crds` and commit the result"
        );
    }
}
