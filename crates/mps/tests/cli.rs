//! The `mps` command line: `mps token` and `mps serve --print-config`.

mod common;

use std::process::{Command, Output};

use common::*;
use mps_client::PushClient;

fn mps(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mps"));
    command.args(args).env_remove("MPS_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run mps");
    assert!(
        output.status.success(),
        "mps {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test]
async fn token_command_issues_a_token_the_server_accepts() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let output = mps(
        &[
            "token",
            "--user",
            "alice",
            "--data-dir",
            data,
            "--secret",
            JWT_SECRET,
        ],
        &[],
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.trim();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the token on stdout: {stdout:?}"
    );
    assert_eq!(token.split('.').count(), 3, "a JWT: {token:?}");

    let mut client = PushClient::open(&server.ws(), token, client_info("alice", "cs", &[]))
        .await
        .unwrap();
    assert_eq!(client.session.user, "alice");
    assert_eq!(client.session.app, "default");
    let sent = server
        .api()
        .send(&message(r#"{"cli":true}"#, Some(&["alice"])))
        .await
        .unwrap();
    assert_eq!(client.next_push(WAIT).await.unwrap().id, sent.id);

    // The same command with another secret yields a token this server refuses.
    let output = mps(
        &[
            "token",
            "--user",
            "alice",
            "--data-dir",
            data,
            "--secret",
            "other",
        ],
        &[],
    );
    let forged = String::from_utf8(output.stdout).unwrap();
    let error = PushClient::open(&server.ws(), forged.trim(), client_info("alice", "cs", &[]))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused(error).1, "invalid_token");

    // An app and a lifetime can be given.
    let output = mps(
        &[
            "token",
            "--user",
            "bob",
            "--app",
            "oa",
            "--ttl",
            "60",
            "--data-dir",
            data,
            "--secret",
            JWT_SECRET,
        ],
        &[],
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let client = PushClient::open(&server.ws(), token.trim(), client_info("bob", "cs", &[]))
        .await
        .unwrap();
    assert_eq!(client.session.app, "oa");
}

#[test]
fn print_config_merges_file_env_and_flags_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mps.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\nnode = \"from-file\"\n\
         [connection]\nqueue = 5\nheartbeat = 9\n\
         [auth]\njwt_secret = \"file-secret\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let output = mps(
        &[
            "serve",
            "--print-config",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-key",
            "super-secret-admin-key",
            "--listen",
            "127.0.0.1:7001",
        ],
        &[
            ("MPS_CONNECTION__QUEUE", "77"),
            ("MPS_NODE", "from-env"),
            ("MPS_ADMIN_KEY", "env-admin-key"),
        ],
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains("super-secret-admin-key"), "{text}");
    assert!(!text.contains("env-admin-key"), "{text}");
    assert!(!text.contains("file-secret"), "{text}");
    let config: toml::Value = toml::from_str(&text).expect("TOML");
    assert_eq!(
        config["listen"].as_str(),
        Some("127.0.0.1:7001"),
        "flag beats file"
    );
    assert_eq!(config["node"].as_str(), Some("from-env"), "env beats file");
    assert_eq!(
        config["connection"]["queue"].as_integer(),
        Some(77),
        "env beats file"
    );
    assert_eq!(
        config["connection"]["heartbeat"].as_integer(),
        Some(9),
        "file beats default"
    );
    assert_eq!(
        config["connection"]["timeout"].as_integer(),
        Some(60),
        "default"
    );
    assert_eq!(config["admin_key"].as_str(), Some("<hidden>"));
    assert_eq!(config["auth"]["jwt_secret"].as_str(), Some("<hidden>"));
    assert_eq!(config["data_dir"].as_str(), data.to_str());
    assert!(!data.exists(), "printing the configuration writes nothing");

    // Without a configured secret there is nothing to hide and nothing is made up.
    let output = mps(
        &[
            "serve",
            "--print-config",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let config: toml::Value = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(config["listen"].as_str(), Some("127.0.0.1:8080"));
    assert!(config.get("admin_key").is_none());
}
