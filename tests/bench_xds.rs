//! `meridian bench-xds` end to end, small: a real server, real ADS streams in both protocols,
//! every stream ACKs every round or the command fails.

use std::process::Command;

fn bench(extra: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["bench-xds", "--streams", "12", "--access-points", "30"])
        .args(["--gateways", "4", "--rounds", "2", "--timeout", "30s"])
        .args(extra)
        .output()
        .expect("running meridian bench-xds");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bench-xds failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The p99 convergence figure, in milliseconds.
fn p99(report: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.starts_with("convergence"))
        .unwrap_or_else(|| panic!("no convergence line in:\n{report}"));
    let after = line.split("p99 ").nth(1).expect("p99 figure");
    after.split(" ms").next().unwrap().trim().parse().unwrap()
}

#[test]
fn state_of_the_world_streams_converge_on_every_change() {
    let report = bench(&[]);
    assert!(report.contains("12 SotW streams"), "{report}");
    assert!(
        report.contains("convergence (2 rounds × 12 streams)"),
        "{report}"
    );
    assert!(p99(&report) > 0.0, "{report}");
}

#[test]
fn delta_streams_sharing_connections_converge_on_every_change() {
    let report = bench(&["--delta", "--streams-per-connection", "4"]);
    assert!(
        report.contains("12 delta streams, 4 per connection"),
        "{report}"
    );
    assert!(p99(&report) > 0.0, "{report}");
}
