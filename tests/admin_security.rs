//! The admin port against a browser: DNS rebinding and cross-site requests are refused, the
//! CLI's own requests are not.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cannot_rebind_or_post_to_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let meridian = start_meridian(&config, &dir.path().join("state"), free_port()).await;
    let admin = meridian.admin_addr;
    let client = client();
    let url = |path: &str| format!("http://{admin}{path}");

    // Addressed by IP or as localhost: answered.
    let ok = client.get(url("/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let local = client
        .get(url("/debug/problems"))
        .header("host", format!("localhost:{}", admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200);

    // A rebound name: refused, reads included.
    let rebound = client
        .get(url("/debug/config_dump"))
        .header("host", format!("evil.example:{}", admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);

    // A cross-site "simple" POST, as a form or text/plain: refused before it is read.
    let approve = url("/rollouts/shop/web/approve?stage=canary");
    let simple = client
        .post(&approve)
        .header("content-type", "text/plain")
        .header("origin", "http://evil.example")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(simple.status(), 403);
    // Even with the header, a browser's Origin is refused.
    let with_origin = client
        .post(&approve)
        .header("x-meridian-request", "cli")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(with_origin.status(), 403);
    // The CLI's request reaches the handler (which answers: no such rollout).
    let cli = client
        .post(&approve)
        .header("x-meridian-request", "cli")
        .send()
        .await
        .unwrap();
    assert_eq!(cli.status(), 409, "{}", cli.text().await.unwrap());
    meridian.shutdown().await.unwrap();
}
