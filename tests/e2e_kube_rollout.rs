//! Staged rollout in Kubernetes mode: a real kube-apiserver, two controller replicas, three
//! member clusters with a real Envoy each, and an approver who may only create RolloutActions,
//! which Meridian's admission webhook stamps with who the API server says they are.

mod support;

use std::time::Duration;

use support::kube::{repo, Controller, KubeCluster};
use support::rollout::*;
use support::{client, eventually, free_port};

const WAIT: Duration = Duration::from_secs(60);

const APPROVER_BINDING: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: approver, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: meridian-rollout-approver}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: approver}]
"#;

fn phase(cluster: &KubeCluster) -> String {
    cluster.jsonpath(
        &["get", "accesspoint", "web", "-n", "shop"],
        "{.status.rollout.phase}/{.status.rollout.stage}",
    )
}

/// `meridian` as the approver, through the API server.
fn as_approver(cluster: &KubeCluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .args(["web", "-n", "shop", "--kubernetes", "--kubeconfig"])
        .arg(&cluster.approver_kubeconfig)
        .output()
        .expect("run meridian")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_waits_for_an_approval_on_status_across_a_leader_change() {
    let cluster = KubeCluster::start();
    cluster.kubectl_ok(&["apply", "-f", &repo("crds")]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/accesspoints.meridian.dev",
        "crd/memberclusters.meridian.dev",
        "crd/rolloutactions.meridian.dev",
    ]);
    cluster.kubectl_ok(&["apply", "-f", &repo("deploy/meridian.yaml")]);
    cluster.apply_ok(FLEET);
    cluster.apply_ok(APPROVER_BINDING);

    let work = tempfile::tempdir().unwrap();
    let lease_flags = ["--lease-duration", "4s", "--renew-every", "1s"];
    let start = |identity: &str| {
        Controller::start(
            &cluster.controller_kubeconfig,
            work.path(),
            identity,
            &lease_flags,
        )
    };
    let mut leader = start("replica-a");
    let holder = || cluster.lease_holder();
    eventually(WAIT, "replica-a holds the lease", || async {
        holder() == "replica-a"
    })
    .await;
    // The gateways connect to the standby, which serves what the leader persisted.
    let standby = start("replica-b");
    let fleet = Fleet {
        dir: tempfile::tempdir().unwrap(),
        xds_port: standby.xds_port,
        ports: [free_port(), free_port(), free_port()],
        client: client(),
    };
    let _envoys = fleet.start_envoys(work.path(), true);
    cluster.apply_ok(&web(&fleet.ports, "v1", "Serve", ""));
    fleet.wait_for(["v1", "v1", "v1"], "v1 everywhere").await;
    eventually(WAIT, "rollout Succeeded", || async {
        phase(&cluster) == "Succeeded/"
    })
    .await;

    // A route change reaches the canary only and waits there.
    cluster.apply_ok(&web(&fleet.ports, "v2", "Serve", ""));
    fleet.wait_for(["v2", "v1", "v1"], "v2 on the canary").await;
    eventually(WAIT, "AwaitingApproval", || async {
        phase(&cluster) == "AwaitingApproval/canary"
    })
    .await;
    let table = cluster.kubectl_ok(&["get", "accesspoints", "-n", "shop"]);
    assert!(
        table.contains("AwaitingApproval") && table.contains("canary"),
        "{table}"
    );
    fleet.stays(["v2", "v1", "v1"]).await;

    // The leader dies mid-rollout; the standby takes over from the persisted state and no
    // cluster changes revision.
    leader.kill();
    eventually(WAIT, "replica-b holds the lease", || async {
        holder() == "replica-b"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.stays(["v2", "v1", "v1"]).await;
    assert_eq!(phase(&cluster), "AwaitingApproval/canary");
    // Two clusters still serve v1: the new leader must not call this generation programmed.
    let programmed = || {
        cluster.jsonpath(
            &["get", "accesspoint", "web", "-n", "shop"],
            r#"{.status.conditions[?(@.type=="Programmed")].status}/{.status.conditions[?(@.type=="Programmed")].reason}/{.status.conditions[?(@.type=="Programmed")].message}"#,
        )
    };
    eventually(
        WAIT,
        "Programmed=False naming the clusters left",
        || async {
            let shown = programmed();
            shown.starts_with("False/RollingOut/")
                && shown.contains("east")
                && shown.contains("west")
        },
    )
    .await;
    assert!(!programmed().contains("canary"), "{}", programmed());

    // The approver may not touch the spec, only record the approval.
    let denied = std::process::Command::new(cluster.assets.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&cluster.approver_kubeconfig)
        .args([
            "patch",
            "accesspoint",
            "web",
            "-n",
            "shop",
            "--type",
            "merge",
        ])
        .args(["-p", r#"{"spec":{"orphan":true}}"#])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("forbidden"));
    let wrong = as_approver(&cluster, &["approve", "--stage", "nope"]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("its stages are canary, rest"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    // Naming someone else is refused: the approver is who the API server authenticated.
    let claimed = as_approver(&cluster, &["approve", "--stage", "canary", "--by", "alice"]);
    assert!(!claimed.status.success());
    // Nor can the approver write an approval into the status (the old way) any more.
    let forged_status = std::process::Command::new(cluster.assets.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&cluster.approver_kubeconfig)
        .args(["patch", "accesspoint", "web", "-n", "shop", "--subresource=status"])
        .args(["--type", "merge", "-p"])
        .arg(r#"{"status":{"rollout":{"controls":{"approvals":[{"revision":"x","stage":"canary"}]}}}}"#)
        .output()
        .unwrap();
    assert!(!forged_status.status.success(), "{forged_status:?}");
    // A RolloutAction claiming another author is stamped with the real one.
    let revision = cluster.jsonpath(
        &["get", "accesspoint", "web", "-n", "shop"],
        "{.status.rollout.revision}",
    );
    let forged = format!(
        "apiVersion: meridian.dev/v1alpha1\nkind: RolloutAction\nmetadata: {{name: claims-alice, namespace: shop, annotations: {{meridian.dev/requested-by: alice}}}}\nspec: {{accessPoint: web, action: Approve, stage: rest, revision: \"{revision}\"}}\n"
    );
    let create_as_approver = |name: &str, yaml: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        std::process::Command::new(cluster.assets.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&cluster.approver_kubeconfig)
            .args(["create", "-f"])
            .arg(&path)
            .output()
            .unwrap()
    };
    // A revision left unquoted in YAML can read as a number: refused naming the field.
    let numeric = create_as_approver(
        "numeric.yaml",
        &forged.replace(&format!("\"{revision}\""), "1234567890"),
    );
    assert!(!numeric.status.success());
    let told = String::from_utf8_lossy(&numeric.stderr);
    assert!(
        told.contains("RolloutAction spec.revision: invalid type"),
        "{told}"
    );
    let created = create_as_approver("forged.yaml", &forged);
    assert!(created.status.success(), "{created:?}");
    let by = cluster.jsonpath(
        &["get", "rolloutaction", "claims-alice", "-n", "shop"],
        "{.metadata.annotations.meridian\\.dev/requested-by}",
    );
    assert_eq!(by, "approver", "the webhook wrote the authenticated user");
    // A record cannot be rewritten afterwards.
    let rewritten = std::process::Command::new(cluster.assets.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&cluster.admin_kubeconfig)
        .args([
            "annotate",
            "--overwrite",
            "rolloutaction",
            "claims-alice",
            "-n",
            "shop",
        ])
        .arg("meridian.dev/requested-by=alice")
        .output()
        .unwrap();
    assert!(!rewritten.status.success(), "{rewritten:?}");
    assert!(
        String::from_utf8_lossy(&rewritten.stderr).contains("is a record"),
        "{}",
        String::from_utf8_lossy(&rewritten.stderr)
    );
    let approved = as_approver(&cluster, &["approve", "--stage", "canary"]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    fleet.wait_for(["v2", "v2", "v2"], "v2 everywhere").await;
    eventually(WAIT, "rollout Succeeded", || async {
        phase(&cluster) == "Succeeded/"
    })
    .await;
    let by = cluster.jsonpath(
        &["get", "accesspoint", "web", "-n", "shop"],
        "{.status.rollout.controls.approvals[0].by}",
    );
    assert_eq!(
        by, "approver",
        "the status shows the authenticated approver"
    );
    let status = as_approver(&cluster, &["rollout", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("Succeeded") && text.contains("cluster west"),
        "{text}"
    );
    drop(standby);
}
