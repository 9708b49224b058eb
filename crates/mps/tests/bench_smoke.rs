//! `mps bench` against the real server, briefly: every mode runs, reports sane non-zero figures
//! and loses nothing. Timings are never asserted (the machine is shared).

mod common;

use std::process::Command;

use common::{ADMIN_KEY, JWT_SECRET, Server};
use serde_json::Value;

/// Runs `mps bench ARGS --json` against `server` and returns its report.
fn bench(server: &Server, args: &[&str], sign_locally: bool) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mps"));
    command
        .arg("bench")
        .args(args)
        .args(["--url", &server.http(), "--admin-key", ADMIN_KEY])
        .args(["--server-pid", &server.pid().to_string(), "--json"])
        .env_remove("MPS_JWT_SECRET")
        .env_remove("MPS_ADMIN_KEY");
    if sign_locally {
        command.args(["--jwt-secret", JWT_SECRET]);
    }
    let output = command.output().expect("run mps bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "mps bench {args:?} failed: {stderr}"
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON report ({e}): {stdout}"));
    assert!(report.get("notes").is_none(), "errors reported: {report}");
    report
}

fn int(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not an integer in {report}"))
}

fn num(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {report}"))
}

/// A fan-out run delivered everything exactly once and measured it.
fn assert_complete_fanout(report: &Value, subscribers: u64, messages: u64) {
    assert_eq!(int(report, "connected"), subscribers, "{report}");
    assert_eq!(int(report, "published"), messages, "{report}");
    assert_eq!(
        int(report, "deliveries"),
        subscribers * messages,
        "{report}"
    );
    assert_eq!(int(report, "losses"), 0, "{report}");
    assert_eq!(int(report, "duplicates"), 0, "{report}");
    assert_eq!(int(report, "stray"), 0, "{report}");
    assert!(num(report, "deliveries_per_s") > 0.0, "{report}");
    assert!(num(report, "latency_p50_ms") > 0.0, "{report}");
    assert!(num(report, "latency_max_ms") >= num(report, "latency_p99_ms"));
    assert!(num(report, "latency_p99_ms") >= num(report, "latency_p50_ms"));
    assert!(num(report, "server_cpu_s") >= 0.0, "{report}");
    assert!(int(report, "server_rss_connected_kib") > 0, "{report}");
}

#[test]
fn fanout_over_websocket() {
    let server = Server::start();
    let report = bench(&server, &["fanout", "-n", "20", "-m", "10"], true);
    assert_eq!(report["target"], "mps");
    assert_eq!(report["transport"], "ws");
    assert_complete_fanout(&report, 20, 10);
}

#[test]
fn fanout_over_sse_at_a_fixed_rate() {
    let server = Server::start();
    let report = bench(
        &server,
        &[
            "fanout",
            "-n",
            "10",
            "-m",
            "10",
            "--rate",
            "50",
            "--transport",
            "sse",
        ],
        true,
    );
    assert_eq!(report["transport"], "sse");
    assert_complete_fanout(&report, 10, 10);
}

#[test]
fn fanout_to_a_topic_with_api_tokens() {
    let server = Server::start();
    let report = bench(
        &server,
        &["fanout", "-n", "10", "-m", "5", "--topic", "bench/smoke"],
        false,
    );
    assert_complete_fanout(&report, 10, 5);
}

#[test]
fn idle_connections_over_two_processes() {
    let server = Server::start();
    let report = bench(
        &server,
        &["idle", "-n", "30", "--procs", "2", "--hold", "0.2"],
        true,
    );
    assert_eq!(int(&report, "connected"), 30, "{report}");
    assert_eq!(int(&report, "connect_errors"), 0, "{report}");
    assert_eq!(int(&report, "procs"), 2, "{report}");
    assert!(report["server_kib_per_connection"].is_number(), "{report}");
    assert!(int(&report, "server_rss_connected_kib") > 0, "{report}");
}

#[test]
fn directed_online_and_offline() {
    let server = Server::start();
    for offline in [false, true] {
        let mut args = vec!["directed", "-n", "5", "-m", "40", "--concurrency", "4"];
        if offline {
            args.push("--offline");
        }
        let report = bench(&server, &args, true);
        assert_eq!(int(&report, "accepted"), 40, "{report}");
        assert_eq!(int(&report, "delivered"), 40, "{report}");
        assert_eq!(int(&report, "losses"), 0, "{report}");
        assert_eq!(int(&report, "duplicates"), 0, "{report}");
        assert!(num(&report, "accepted_per_s") > 0.0, "{report}");
        assert!(num(&report, "delivered_per_s") > 0.0, "{report}");
    }
}

#[test]
fn connection_rate() {
    let server = Server::start();
    let report = bench(&server, &["connect", "-n", "50"], true);
    assert_eq!(int(&report, "connected"), 50, "{report}");
    assert!(num(&report, "connects_per_s") > 0.0, "{report}");
    assert!(num(&report, "connect_latency_p50_ms") > 0.0, "{report}");
}

#[test]
fn nchan_target_refuses_directed() {
    let output = Command::new(env!("CARGO_BIN_EXE_mps"))
        .args(["bench", "directed", "--target", "nchan", "--url"])
        .arg("http://127.0.0.1:9")
        .output()
        .expect("run mps bench");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("mps feature"));
}
