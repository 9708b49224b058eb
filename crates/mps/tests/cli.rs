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
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        written.is_empty(),
        "with --secret nothing is written: {written:?}"
    );
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

/// Runs `mps ARGS` against `server` (`--url`, `--key`); returns stdout, failing on a non-zero
/// exit.
fn operator(server: &Server, args: &[&str]) -> String {
    let url = server.http();
    let mut all = args.to_vec();
    all.extend(["--url", &url, "--key", ADMIN_KEY]);
    String::from_utf8(mps(&all, &[]).stdout).unwrap()
}

/// `mps ARGS` that must fail; returns stderr.
fn operator_fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mps"));
    command.args(args).env_remove("MPS_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run mps");
    assert!(!output.status.success(), "mps {args:?} succeeded");
    String::from_utf8(output.stderr).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn send_directed_topic_and_broadcast_from_flags_and_stdin() {
    let server = Server::start();
    let mut alice = server.connect("alice", "bs", &["esbm"]).await;

    // Directed, with everything the flags can set; the answer as JSON.
    let sent = json(&operator(
        &server,
        &[
            "send",
            "--to",
            "alice,bob",
            "--content",
            r#"{"alarm":"fire"}"#,
            "--title",
            "Fire",
            "--type",
            "7",
            "--ttl",
            "600",
            "--component",
            "esbm",
            "--push",
            "never",
            "--json",
        ],
    ));
    assert_eq!(sent["class"], "directed");
    assert_eq!(sent["recipients"], 2);
    let pushed = alice.next_push(WAIT).await.unwrap();
    assert_eq!(pushed.id, sent["id"].as_str().unwrap());
    assert_eq!(pushed.title.as_deref(), Some("Fire"));
    assert_eq!(pushed.kind, 7);
    assert_eq!(pushed.event_data.ext.get(), r#"{"alarm":"fire"}"#);
    let record = server.api().message(&pushed.id).await.unwrap();
    assert_eq!(record.expires - record.created, 600_000);

    // Content on standard input, to a component; the answer as a line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mps"))
        .args([
            "send",
            "--component",
            "esbm",
            "--url",
            &server.http(),
            "--key",
            ADMIN_KEY,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"from":"stdin"}"#)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let line = String::from_utf8(output.stdout).unwrap();
    assert!(
        line.starts_with("sent ") && line.contains("(component)"),
        "{line}"
    );
    let pushed = alice.next_push(WAIT).await.unwrap();
    assert_eq!(pushed.event_data.ext.get(), r#"{"from":"stdin"}"#);

    // A topic, and a broadcast, which must be asked for by name.
    let line = operator(
        &server,
        &["send", "--topic", "alarms/site1", "--content", "1"],
    );
    assert!(line.contains("(topic)"), "{line}");
    let error = operator_fails(
        &[
            "send",
            "--content",
            "1",
            "--url",
            &server.http(),
            "--key",
            ADMIN_KEY,
        ],
        &[],
    );
    assert!(error.contains("--broadcast"), "{error}");
    operator(&server, &["send", "--broadcast", "--content", r#""all""#]);
    assert_eq!(
        alice.next_push(WAIT).await.unwrap().event_data.ext.get(),
        r#""all""#
    );

    // Bad JSON content and a wrong key are clear errors.
    let error = operator_fails(
        &[
            "send",
            "--to",
            "a",
            "--content",
            "{bad",
            "--url",
            &server.http(),
            "--key",
            ADMIN_KEY,
        ],
        &[],
    );
    assert!(error.contains("not valid JSON"), "{error}");
    // --push is one of three policies, and for directed messages only.
    let url = server.http();
    let push = |target: &str, policy: &str| {
        operator_fails(
            &[
                "send",
                target,
                "t",
                "--push",
                policy,
                "--content",
                "1",
                "--url",
                &url,
                "--key",
                ADMIN_KEY,
            ],
            &[],
        )
    };
    let error = push("--to", "sometimes");
    assert!(
        error.contains("possible values: offline, always, never"),
        "{error}"
    );
    let error = push("--topic", "always");
    assert!(error.contains("invalid_push"), "{error}");
    let error = operator_fails(
        &[
            "send",
            "--to",
            "a",
            "--content",
            "1",
            "--url",
            &server.http(),
            "--key",
            "wrong",
        ],
        &[],
    );
    assert!(
        error.contains("401") && error.contains("wrong_key"),
        "{error}"
    );
}

#[tokio::test]
async fn messages_lists_filters_shows_and_deletes() {
    let server = Server::start();
    let api = server.api();
    let first = api
        .send(&message(r#"{"n":1}"#, Some(&["alice"])))
        .await
        .unwrap();
    let second = api
        .send(&message(r#"{"n":2}"#, Some(&["bob", "carol"])))
        .await
        .unwrap();
    let mut bob = server.connect("bob", "cs", &[]).await;
    let pushed = bob.next_push(WAIT).await.unwrap();
    bob.ack(&[pushed.id]).await.unwrap();

    let page = json(&operator(&server, &["messages", "--json"]));
    assert_eq!(page["total"], 2);
    let page = json(&operator(
        &server,
        &[
            "messages",
            "--receiver",
            "alice",
            "--status",
            "pending",
            "--json",
        ],
    ));
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], first.id.as_str());
    let page = json(&operator(
        &server,
        &["messages", "--size", "1", "--page", "2", "--json"],
    ));
    assert_eq!(page["items"][0]["id"], first.id.as_str(), "newest first");

    // The table: one row per message with its recipients per status.
    let table = operator(&server, &["messages"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("RECIPIENTS"),
        "{table}"
    );
    assert!(
        lines[1].starts_with(&second.id) && lines[1].contains("pending=1 acked=1"),
        "{table}"
    );
    assert!(
        lines[2].starts_with(&first.id) && lines[2].contains("pending=1"),
        "{table}"
    );
    assert!(table.contains("2 messages in all"), "{table}");

    // One message with each recipient's status.
    let shown = json(&operator(
        &server,
        &["messages", "--id", &second.id, "--json"],
    ));
    let recipients = shown["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 2);
    let shown = operator(&server, &["messages", "--id", &second.id]);
    assert!(
        shown.contains("USER") && shown.contains("STATUS"),
        "{shown}"
    );
    let bob_line = shown.lines().find(|l| l.starts_with("bob ")).expect(&shown);
    assert!(bob_line.contains("acked"), "{shown}");
    let carol_line = shown
        .lines()
        .find(|l| l.starts_with("carol "))
        .expect(&shown);
    assert!(carol_line.contains("pending"), "{shown}");

    // Delete, then it is gone.
    let out = operator(&server, &["messages", "--delete", &first.id]);
    assert_eq!(out.trim(), format!("deleted {}", first.id));
    let error = operator_fails(
        &[
            "messages",
            "--id",
            &first.id,
            "--url",
            &server.http(),
            "--key",
            ADMIN_KEY,
        ],
        &[],
    );
    assert!(
        error.contains("404") && error.contains("not_found"),
        "{error}"
    );
    let error = operator_fails(
        &[
            "messages",
            "--status",
            "lost",
            "--url",
            &server.http(),
            "--key",
            ADMIN_KEY,
        ],
        &[],
    );
    assert!(error.contains("--status must be one of"), "{error}");
}

#[tokio::test]
async fn clients_lists_filters_and_disconnects() {
    let server = Server::start();
    let mut alice = server.connect("alice", "ios", &[]).await;
    let _bob = server.connect("bob", "bs", &[]).await;
    server.wait_clients("bob", 1).await;

    let all = json(&operator(&server, &["clients", "--json"]));
    assert_eq!(all.as_array().unwrap().len(), 2);
    let ios = json(&operator(&server, &["clients", "--agent", "ios", "--json"]));
    let ios = ios.as_array().unwrap();
    assert_eq!(ios.len(), 1);
    assert_eq!(ios[0]["user"], "alice");
    let id = ios[0]["id"].as_str().unwrap().to_owned();
    let none = json(&operator(
        &server,
        &["clients", "--user", "nobody", "--json"],
    ));
    assert!(none.as_array().unwrap().is_empty());

    let table = operator(&server, &["clients", "--transport", "websocket"]);
    assert!(table.lines().next().unwrap().starts_with("ID "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("alice")),
        "{table}"
    );
    assert!(table.contains("2 online"), "{table}");

    let out = operator(&server, &["clients", "--disconnect", &id]);
    assert_eq!(out.trim(), format!("disconnected {id}"));
    let (code, _) = alice.closed(WAIT).await.unwrap();
    assert_eq!(code, 4403);
    server.wait_clients("alice", 0).await;
    let error = operator_fails(
        &[
            "clients",
            "--disconnect",
            &id,
            "--url",
            &server.http(),
            "--key",
            ADMIN_KEY,
        ],
        &[],
    );
    assert!(error.contains("404"), "{error}");
}

/// The URL and key come from `MPS_URL` and `MPS_ADMIN_KEY`, or the key from `admin.key` in the
/// data directory, as `mps token` finds its secret.
#[tokio::test]
async fn operator_commands_find_the_server_and_key_from_env_or_data_dir() {
    let server = Server::start();
    let url = server.http();
    let output = mps(
        &["messages", "--json"],
        &[("MPS_URL", &url), ("MPS_ADMIN_KEY", ADMIN_KEY)],
    );
    assert_eq!(json(&String::from_utf8(output.stdout).unwrap())["total"], 0);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.key"), format!("{ADMIN_KEY}\n")).unwrap();
    let data = dir.path().to_str().unwrap();
    let output = mps(
        &[
            "send",
            "--to",
            "alice",
            "--content",
            "1",
            "--data-dir",
            data,
        ],
        &[("MPS_URL", &url)],
    );
    assert!(
        String::from_utf8(output.stdout)
            .unwrap()
            .starts_with("sent ")
    );

    // No key anywhere: a clear error, not a request without credentials.
    let empty = tempfile::tempdir().unwrap();
    let error = operator_fails(
        &["clients", "--data-dir", empty.path().to_str().unwrap()],
        &[("MPS_URL", &url)],
    );
    assert!(error.contains("no admin key"), "{error}");
}
