//! `boxrun pull`, `images`, `rmi` and `gc` against a real registry, as the unprivileged user.

#![allow(clippy::disallowed_methods)] // tests report failures by panicking with context

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use common::proxy::{Fault, Proxy};
use common::{Env, REGISTRY_PASSWORD, REGISTRY_USER, Registry, images};

/// Every blob (hex digest) an OCI layout of `images/` holds.
fn layout_blobs(image: &str) -> BTreeSet<String> {
    std::fs::read_dir(images().join(image).join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn hex(digest: &str) -> String {
    digest.trim().trim_start_matches("sha256:").to_string()
}

/// The records `boxrun images --json` prints.
fn image_records(env: &Env) -> Vec<serde_json::Value> {
    let run = env.run(&["images", "--json"]);
    serde_json::from_str(&run.ok().stdout).unwrap()
}

/// The blob digests one image record names.
fn record_blobs(record: &serde_json::Value) -> BTreeSet<String> {
    let mut blobs: BTreeSet<String> =
        record["layers"].as_array().unwrap().iter().map(|d| hex(d.as_str().unwrap())).collect();
    blobs.insert(hex(record["manifest"].as_str().unwrap()));
    blobs.insert(hex(record["config"].as_str().unwrap()));
    if let Some(index) = record["index"].as_str() {
        blobs.insert(hex(index));
    }
    blobs
}

fn assert_no_blob_of(env: &Env, unwanted: &BTreeSet<String>) {
    let cached: BTreeSet<String> = env.cached_blobs().into_iter().collect();
    let left: Vec<_> = cached.intersection(unwanted).collect();
    assert!(left.is_empty(), "blobs left in the cache: {left:?}");
}

fn assert_cache_empty(env: &Env) {
    assert!(env.cached_blobs().is_empty(), "cache has blobs: {:?}", env.cached_blobs());
    assert!(image_records(env).is_empty());
    let staging: Vec<_> = std::fs::read_dir(env.cache().join("tmp")).unwrap().collect();
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
}

#[test]
fn pulls_every_test_image_from_a_plain_registry_with_the_pushed_digests() {
    let registry = Registry::start();
    let env = Env::new();
    for image in ["tiny", "layered", "tiny-docker"] {
        let pushed = registry.push(image, image);
        let run = env.run(&["pull", &format!("{}/{image}", registry.host())]);
        assert_eq!(run.ok().stdout.trim(), pushed, "{image}: printed digest");
    }
    let cached: BTreeSet<String> = env.cached_blobs().into_iter().collect();
    for image in ["tiny", "layered"] {
        let missing: Vec<_> = layout_blobs(image).difference(&cached).cloned().collect();
        assert!(missing.is_empty(), "{image}: blobs not pulled: {missing:?}");
    }
    for blob in &cached {
        let bytes = std::fs::read(env.cache().join("blobs/sha256").join(blob)).unwrap();
        assert_eq!(&sha256(&bytes), blob, "cached blob does not match its name");
    }
    let records = image_records(&env);
    assert_eq!(records.len(), 3);
    assert!(records.iter().any(|r| r["reference"] == format!("{}/layered:latest", registry.host())));
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn pulls_from_a_tls_registry_with_basic_auth() {
    let registry = Registry::start_tls_auth();
    let pushed = registry.push("tiny", "tiny");
    let env = Env::new();
    env.config(&registry.config_toml());
    env.docker_login(&registry.host(), REGISTRY_USER, REGISTRY_PASSWORD);
    let run = env.run(&["pull", "-q", &format!("{}/tiny", registry.host())]);
    assert_eq!(run.ok().stdout.trim(), pushed);
    assert!(run.stderr.is_empty(), "-q printed: {}", run.stderr);
    let expected = layout_blobs("tiny");
    let cached: BTreeSet<String> = env.cached_blobs().into_iter().collect();
    assert!(expected.is_subset(&cached));
}

#[test]
fn a_wrong_password_is_one_clear_error_and_leaves_the_cache_empty() {
    let registry = Registry::start_tls_auth();
    registry.push("tiny", "tiny");
    let env = Env::new();
    env.config(&registry.config_toml());
    env.docker_login(&registry.host(), REGISTRY_USER, "wrong");
    let run = env.run(&["pull", &format!("{}/tiny", registry.host())]);
    run.fails_with(125, "credentials for user 'tester'");
    assert!(run.stderr.contains("401"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "not one line: {}", run.stderr);
    assert_cache_empty(&env);
}

#[test]
fn a_tls_registry_without_its_ca_configured_is_refused_with_advice() {
    let registry = Registry::start_tls_auth();
    let env = Env::new();
    // A ca_file makes boxrun speak TLS to loopback; the system bundle lacks the test CA.
    env.config(&format!(
        "[registries.\"{}\"]\nca_file = \"/etc/ssl/certs/ca-certificates.crt\"\n",
        registry.host()
    ));
    let run = env.run(&["pull", &format!("{}/tiny", registry.host())]);
    run.fails_with(125, "ca_file");
    assert_cache_empty(&env);
}

#[test]
fn an_index_resolves_to_the_host_platform_and_platform_overrides_it() {
    let registry = Registry::start();
    let index = registry.push("multiarch", "multiarch");
    let env = Env::new();
    let reference = format!("{}/multiarch", registry.host());
    let amd64 = env.run(&["pull", &reference]).ok().stdout.trim().to_string();
    let arm64 = env.run(&["pull", "--platform", "linux/arm64", &reference]).ok().stdout.trim().to_string();
    assert_ne!(amd64, arm64);
    assert_ne!(amd64, index, "printed the index, not the platform's manifest");
    let records = image_records(&env);
    let platform_of = |digest: &str| {
        let record = records.iter().find(|r| r["manifest"] == digest).expect("record");
        assert_eq!(record["index"], index.as_str());
        format!(
            "{}/{}",
            record["platform"]["os"].as_str().unwrap(),
            record["platform"]["architecture"].as_str().unwrap()
        )
    };
    assert_eq!(platform_of(&amd64), format!("linux/{}", host_arch()));
    assert_eq!(platform_of(&arm64), "linux/arm64");
    let run = env.run(&["pull", "--platform", "linux/s390x", &reference]);
    run.fails_with(125, "no linux/s390x variant");
    assert!(run.stderr.contains("linux/arm64/v8"), "does not list what exists: {}", run.stderr);
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[test]
fn sixteen_concurrent_pulls_all_succeed_and_fetch_each_blob_once() {
    let registry = Registry::start();
    registry.push("layered", "layered");
    let proxy = Proxy::start(registry.addr, Fault::None);
    let env = Env::new();
    let reference = format!("{}/layered", proxy.addr());
    let children: Vec<_> = (0..16)
        .map(|_| {
            env.boxrun()
                .args(["pull", &reference])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "a pull failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let blobs = layout_blobs("layered");
    let manifest_and_blobs = blobs.len();
    for blob in &blobs {
        let gets = proxy.blob_gets(Some(&format!("sha256:{blob}")));
        assert!(gets <= 1, "blob {blob} fetched {gets} times");
    }
    // Config + layers are fetched as blobs; the manifest by the manifests endpoint.
    assert_eq!(proxy.blob_gets(None), manifest_and_blobs - 1);
}

#[test]
fn a_corrupted_blob_is_an_error_naming_its_digest_and_is_never_stored() {
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    let proxy = Proxy::start(registry.addr, Fault::FlipByteInBlobs);
    let env = Env::new();
    let run = env.run(&["pull", &format!("{}/tiny", proxy.addr())]);
    run.fails_with(125, "failed verification");
    let named = layout_blobs("tiny").into_iter().any(|b| run.stderr.contains(&format!("sha256:{b}")));
    assert!(named, "the error does not name the blob: {}", run.stderr);
    let cached: BTreeSet<String> = env.cached_blobs().into_iter().collect();
    let records = image_records(&env);
    assert!(records.is_empty());
    // Only the manifest (verified by its own digest) may be kept; no config or layer.
    assert!(cached.len() <= 1, "corrupted blobs stored: {cached:?}");
    let staging: Vec<_> = std::fs::read_dir(env.cache().join("tmp")).unwrap().collect();
    assert!(staging.is_empty(), "partial download kept: {staging:?}");
}

#[test]
fn a_warm_pull_asks_only_for_the_manifest_and_offline_needs_no_registry() {
    let registry = Registry::start();
    registry.push("multiarch", "multiarch");
    let proxy = Proxy::start(registry.addr, Fault::None);
    let env = Env::new();
    let reference = format!("{}/multiarch", proxy.addr());
    let cold = env.run(&["pull", &reference]).ok().stdout.clone();
    let before = proxy.seen().len();
    let warm = env.run(&["pull", &reference]).ok().stdout.clone();
    assert_eq!(cold, warm);
    let warm_requests: Vec<_> = proxy.seen()[before..].to_vec();
    assert_eq!(warm_requests.len(), 1, "warm pull sent: {warm_requests:?}");
    assert!(warm_requests[0].path.ends_with("/manifests/latest"));
    drop(proxy);
    drop(registry);
    let offline = env.run(&["pull", "--offline", &reference]);
    assert_eq!(offline.ok().stdout, cold);
    let missing = env.run(&["pull", "--offline", &format!("{reference}:other")]);
    missing.fails_with(125, "not in the cache");
}

#[test]
fn rmi_then_gc_frees_the_image_but_keeps_blobs_another_image_uses() {
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    registry.push("multiarch", "multiarch");
    let env = Env::new();
    env.run(&["pull", &format!("{}/tiny", registry.host())]).ok();
    env.run(&["pull", &format!("{}/multiarch", registry.host())]).ok();
    let records = image_records(&env);
    let blobs_of = |name: &str| {
        let record = records.iter().find(|r| r["reference"].as_str().unwrap().contains(name)).unwrap();
        record_blobs(record)
    };
    let (tiny, multiarch) = (blobs_of("/tiny:"), blobs_of("/multiarch:"));
    let shared: BTreeSet<String> = tiny.intersection(&multiarch).cloned().collect();
    assert!(!shared.is_empty(), "the test images should share busybox's layer");
    env.run(&["rmi", &format!("{}/multiarch", registry.host())]).ok();
    env.run(&["gc"]).ok();
    assert_no_blob_of(&env, &multiarch.difference(&shared).cloned().collect());
    let cached: BTreeSet<String> = env.cached_blobs().into_iter().collect();
    assert!(tiny.is_subset(&cached), "gc removed blobs tiny still needs");
    env.run(&["rmi", &format!("{}/tiny", registry.host())]).ok();
    env.run(&["gc"]).ok();
    assert_cache_empty(&env);
    env.run(&["rmi", &format!("{}/tiny", registry.host())]).fails_with(125, "no image");
}

#[test]
fn gc_clears_staging_left_by_a_killed_pull() {
    let env = Env::new();
    env.run(&["images"]).ok(); // creates the cache layout
    let partial = env.cache().join("tmp").join(format!("{}.partial", "a".repeat(64)));
    std::fs::write(&partial, b"half a layer").unwrap();
    let run = env.run(&["gc"]);
    assert!(run.ok().stdout.contains("1 staging"), "{}", run.stdout);
    assert!(!partial.exists());
}

#[test]
fn server_errors_are_retried() {
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    let proxy = Proxy::start(registry.addr, Fault::ServerErrors(3));
    let env = Env::new();
    env.run(&["pull", &format!("{}/tiny", proxy.addr())]).ok();
    let errors = proxy.seen().iter().filter(|s| s.status == 503).count();
    assert_eq!(errors, 3);
}

#[test]
fn an_interrupted_blob_resumes_with_a_range_request() {
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    let proxy = Proxy::start(registry.addr, Fault::ResetBlobsAfter(100_000));
    let env = Env::new();
    env.run(&["pull", &format!("{}/tiny", proxy.addr())]).ok();
    let resumed = proxy.seen().iter().any(|s| s.range.as_deref() == Some("bytes=100000-") && s.status == 206);
    assert!(resumed, "no resumed request: {:#?}", proxy.seen());
    let cached: BTreeSet<String> = env.cached_blobs().into_iter().collect();
    assert!(layout_blobs("tiny").is_subset(&cached));
}

#[test]
fn bearer_token_challenge_uses_the_credentials_file() {
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    let gate = Fault::BearerGate { user: "alice".into(), pass: "s3cret".into() };
    let proxy = Proxy::start(registry.addr, gate);
    let reference = format!("{}/tiny", proxy.addr());
    let anonymous = Env::new();
    anonymous.run(&["pull", &reference]).fails_with(125, "needs credentials");
    let env = Env::new();
    env.docker_login(&proxy.addr().to_string(), "alice", "s3cret");
    env.run(&["pull", &reference]).ok();
    let token_requests = proxy.seen().iter().filter(|s| s.path.starts_with("/token")).count();
    assert!(token_requests >= 1);
}

#[test]
fn blobs_follow_redirects_to_another_host_without_the_authorization_header() {
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    let proxy = Proxy::start(registry.addr, Fault::RedirectBlobs);
    let env = Env::new();
    env.run(&["pull", &format!("{}/tiny", proxy.addr())]).ok();
    let storage: Vec<_> = proxy.seen().into_iter().filter(|s| s.path.starts_with("/_storage")).collect();
    assert!(!storage.is_empty());
    assert!(storage.iter().all(|s| s.authorization.is_none()));
}

#[test]
fn a_configured_mirror_serves_the_pull_when_the_registry_is_down() {
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    let mirror = Proxy::start(registry.addr, Fault::None);
    let env = Env::new();
    // Nothing listens on the origin's port: only the mirror can answer.
    let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    env.config(&format!("[registries.\"{origin}\"]\nmirror = \"{}\"\n", mirror.addr()));
    env.run(&["pull", &format!("{origin}/tiny")]).ok();
    assert!(proxy_saw_manifest(&mirror));
}

fn proxy_saw_manifest(proxy: &Proxy) -> bool {
    proxy.seen().iter().any(|s| s.path.contains("/manifests/"))
}

#[test]
fn a_registry_outside_allowed_registries_is_refused_before_any_request() {
    let registry = Registry::start();
    let proxy = Proxy::start(registry.addr, Fault::None);
    let env = Env::new();
    env.config("allowed_registries = [\"registry.example.org\"]\n");
    let run = env.run(&["pull", &format!("{}/tiny", proxy.addr())]);
    run.fails_with(125, "is not allowed");
    assert!(proxy.seen().is_empty());
}

#[test]
fn malformed_references_name_the_bad_part() {
    let env = Env::new();
    env.run(&["pull", "UPPER/x"]).fails_with(125, "'UPPER' must be lowercase");
    env.run(&["pull", "x:-tag"]).fails_with(125, "tag '-tag'");
    env.run(&["pull", "--platform", "linux", "x"]).fails_with(125, "invalid platform 'linux'");
}

#[test]
fn progress_is_one_line_per_blob_off_a_terminal_and_silent_with_q() {
    let registry = Registry::start();
    registry.push("layered", "layered");
    let env = Env::new();
    let run = env.run(&["pull", &format!("{}/layered", registry.host())]);
    let lines = run.ok().stderr.lines().filter(|l| l.contains("downloaded")).count();
    assert_eq!(lines, layout_blobs("layered").len() - 1, "{}", run.stderr);
    let quiet = Env::new();
    let run = quiet.run(&["pull", "-q", &format!("{}/layered", registry.host())]);
    assert!(run.ok().stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn help_and_version_speak_to_newcomers() {
    let env = Env::new();
    let help = env.run(&["--help"]);
    for needle in ["pull", "images", "rmi", "gc", "Examples", "125"] {
        assert!(help.ok().stdout.contains(needle), "--help lacks {needle}");
    }
    let version = env.run(&["--version"]);
    assert!(version.ok().stdout.starts_with("boxrun "));
}

#[test]
fn images_lists_a_table_with_a_header() {
    let registry = Registry::start();
    registry.push("tiny", "tiny");
    let env = Env::new();
    env.run(&["pull", &format!("{}/tiny", registry.host())]).ok();
    let table = env.run(&["images"]);
    let mut lines = table.ok().stdout.lines();
    assert!(lines.next().unwrap().starts_with("IMAGE"));
    assert!(lines.next().unwrap().contains("/tiny:latest"));
    assert!(Path::new(&env.cache()).is_dir());
}
