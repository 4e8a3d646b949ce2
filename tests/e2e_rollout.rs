//! Staged rollout end to end (standalone mode): three member clusters, one real Envoy 1.40 in
//! each, HTTP requests to see which revision each serves, and the `meridian` CLI to approve,
//! undo and diff.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::rollout::*;
use support::*;

/// Runs the `meridian` CLI against `admin`; returns stdout, panicking with stderr on failure.
fn meridian_cli(admin: SocketAddr, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .args(["-n", "shop", "--admin", &admin.to_string()])
        .output()
        .expect("run meridian");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "meridian {args:?}: {stderr}{stdout}"
    );
    stdout
}

fn rollout_status(admin: SocketAddr) -> serde_json::Value {
    let text = meridian_cli(admin, &["rollout", "status", "web", "--json"]);
    serde_json::from_str(&text).unwrap()
}

async fn wait_phase(admin: SocketAddr, phase: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        last = tokio::task::spawn_blocking(move || rollout_status(admin))
            .await
            .unwrap();
        if last["phase"] == phase {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("rollout never reached {phase}: {last:#}");
}

async fn proxy_states(client: &reqwest::Client, admin: SocketAddr) -> Vec<(String, String)> {
    let syncz = admin_json(client, admin, "/debug/syncz").await;
    let mut states: Vec<(String, String)> = syncz["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let nacked = p["types"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["state"] == "NACKED");
            let node = p["node_id"].as_str().unwrap_or_default().to_owned();
            (node, if nacked { "NACKED" } else { "ok" }.to_owned())
        })
        .collect();
    states.sort();
    states
}

async fn start(
    config_dir: &Path,
    state_dir: &Path,
    xds_port: u16,
) -> meridian::control_plane::standalone::Running {
    start_meridian(config_dir, state_dir, xds_port).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_goes_canary_first_waits_for_approval_halts_on_nack_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let fleet = Fleet {
        xds_port: free_port(),
        ports: [free_port(), free_port(), free_port()],
        client: client(),
        dir,
    };
    std::fs::write(fleet.config_dir().join("fleet.yaml"), FLEET).unwrap();
    fleet.write_web("v1", "Serve", "");
    let state_dir = fleet.dir.path().join("state");
    let mut meridian = start(&fleet.config_dir(), &state_dir, fleet.xds_port).await;
    let _envoys = fleet.start_envoys(fleet.dir.path(), false);
    fleet.wait_for(["v1", "v1", "v1"], "v1 everywhere").await;
    let admin = meridian.admin_addr;
    assert_eq!(
        wait_phase(admin, "Succeeded").await["stage"],
        serde_json::Value::Null
    );

    // A route change reaches only the canary, which then waits for approval.
    fleet.write_web("v2", "Serve", "");
    fleet.wait_for(["v2", "v1", "v1"], "v2 on the canary").await;
    let status = wait_phase(admin, "AwaitingApproval").await;
    assert_eq!(status["stage"], "canary");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("meridian approve web -n shop --stage canary"));
    fleet.stays(["v2", "v1", "v1"]).await;
    let debug_status = admin_json(&fleet.client, admin, "/debug/status").await;
    assert_eq!(
        debug_status["shop/web"]["rollout"]["phase"],
        "AwaitingApproval"
    );

    // Restarted mid-rollout: no cluster changes revision.
    meridian.shutdown().await.unwrap();
    meridian = start(&fleet.config_dir(), &state_dir, fleet.xds_port).await;
    let admin = meridian.admin_addr;
    let status = wait_phase(admin, "AwaitingApproval").await;
    assert_eq!(status["stage"], "canary");
    eventually(Duration::from_secs(20), "Envoys reconnected", || async {
        proxy_states(&fleet.client, admin).await.len() == 3
    })
    .await;
    fleet.stays(["v2", "v1", "v1"]).await;

    // Approval (through the CLI) lets the rest follow.
    let out = meridian_cli(
        admin,
        &["approve", "web", "--stage", "canary", "--by", "e2e"],
    );
    assert!(out.contains("approved stage canary"), "{out}");
    fleet.wait_for(["v2", "v2", "v2"], "v2 everywhere").await;
    let status = wait_phase(admin, "Succeeded").await;
    assert_eq!(status["completedRevision"], status["revision"]);
    assert_eq!(status["controls"]["approvals"][0]["by"], "e2e");

    // A change the canary's Envoy rejects halts the rollout, and the canary is sent back to
    // the last completed revision by itself (onFailure: Revert, the default), which it
    // accepts; the others never get the change.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    fleet.write_web_unbindable("v2", taken.local_addr().unwrap().port());
    let status = wait_phase(admin, "Halted").await;
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("cluster canary rejected revision") && message.contains("canary back on"),
        "{message}"
    );
    eventually(
        Duration::from_secs(20),
        "the canary back in sync without an undo",
        || async {
            proxy_states(&fleet.client, admin)
                .await
                .iter()
                .all(|(_, state)| state == "ok")
        },
    )
    .await;
    fleet.stays(["v2", "v2", "v2"]).await;
    let status = tokio::task::spawn_blocking(move || rollout_status(admin))
        .await
        .unwrap();
    assert_eq!(status["phase"], "Halted", "{status:#}");

    // Undo still marks the revision abandoned.
    meridian_cli(admin, &["rollout", "undo", "web"]);
    wait_phase(admin, "RolledBack").await;
    fleet.stays(["v2", "v2", "v2"]).await;

    // Shadow mode: the next revision is only diffed.
    fleet.write_web("v4", "Shadow", "");
    wait_phase(admin, "Shadow").await;
    fleet.stays(["v2", "v2", "v2"]).await;
    let diff = meridian_cli(admin, &["diff", "web", "--cluster", "east"]);
    assert!(
        diff.contains("cluster east gateway shop/public: RDS") && diff.contains("Changed"),
        "{diff}"
    );
    assert!(
        diff.contains("-") && diff.contains("\"v2\"") && diff.contains("\"v4\""),
        "{diff}"
    );

    meridian.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_seen_by_the_canary_halt_the_rollout_before_the_rest() {
    let healthy = Backend::start("healthy").await;
    let other = Backend::start("other").await;
    let broken = Backend::failing("broken").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let fleet = Fleet {
        xds_port: free_port(),
        ports: [free_port(), free_port(), free_port()],
        client: client(),
        dir,
    };
    let config = fleet.config_dir();
    std::fs::write(config.join("fleet.yaml"), FLEET).unwrap();
    let services = [
        ("healthy", &healthy),
        ("other", &other),
        ("broken", &broken),
    ]
    .iter()
    .map(|(name, backend)| loopback_service(name, backend.port))
    .collect::<String>();
    std::fs::write(config.join("services.yaml"), services).unwrap();
    let write_web = |backend: &str| {
        std::fs::write(config.join("web.yaml"), routed_web(&fleet.ports, backend)).unwrap()
    };
    write_web("healthy");
    let meridian = start(&config, &fleet.dir.path().join("state"), fleet.xds_port).await;
    let admin = meridian.admin_addr;
    let _envoys = fleet.start_envoys(fleet.dir.path(), false);
    fleet
        .wait_for(["healthy", "healthy", "healthy"], "v1 everywhere")
        .await;
    wait_phase(admin, "Succeeded").await;

    // Users' requests through the canary's gateway, all along.
    let canary_port = fleet.ports[0];
    let users = tokio::spawn({
        let client = fleet.client.clone();
        async move {
            loop {
                let _ = get(&client, canary_port, "web.test", "/").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // A change whose upstream answers well passes the canary's health check.
    write_web("other");
    fleet
        .wait_for(["other", "healthy", "healthy"], "the change on the canary")
        .await;
    wait_phase(admin, "AwaitingApproval").await;
    // Several load reports (one a second) later it still only waits for approval.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = tokio::task::spawn_blocking(move || rollout_status(admin))
            .await
            .unwrap();
        assert_eq!(status["phase"], "AwaitingApproval", "{status:#}");
    }
    meridian_cli(admin, &["approve", "web", "--stage", "canary"]);
    fleet
        .wait_for(["other", "other", "other"], "the change everywhere")
        .await;
    wait_phase(admin, "Succeeded").await;

    // A change whose upstream fails: the canary's gateway reports the errors and the
    // rollout halts by itself; east and west never get it.
    write_web("broken");
    let status = wait_phase(admin, "Halted").await;
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("cluster canary unhealthy") && message.contains("failed"),
        "{message}"
    );
    assert_eq!(status["stage"], "canary", "{status:#}");
    fleet
        .wait_for(["other", "other", "other"], "the canary restored by itself")
        .await;

    meridian_cli(admin, &["rollout", "undo", "web"]);
    wait_phase(admin, "RolledBack").await;
    fleet.stays(["other", "other", "other"]).await;
    users.abort();
    meridian.shutdown().await.unwrap();
}
