//! The e-mail channel and the channel chain against the real binary: a small SMTP receiver in
//! this process (EHLO, MAIL, RCPT, DATA, QUIT; no TLS) records each e-mail, and can answer the
//! next DATA with a temporary failure to show the retry.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mps_client::proto::{ChannelChoice, ChannelStatus, ChannelStep, Delay, SendMessage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone, Default)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

#[derive(Default)]
struct Relay {
    mails: Mutex<Vec<Mail>>,
    /// Answers to the next DATA ends, in order; `250` when empty.
    script: Mutex<VecDeque<&'static str>>,
}

impl Relay {
    fn to(&self, address: &str) -> Vec<Mail> {
        let wanted = format!("<{address}>");
        self.mails
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.to.contains(&wanted))
            .cloned()
            .collect()
    }
}

/// Starts the receiver; its port and what it records.
async fn relay(script: &[&'static str]) -> (u16, Arc<Relay>) {
    let relay = Arc::new(Relay::default());
    relay.script.lock().unwrap().extend(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shared = relay.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(session(socket, shared.clone()));
        }
    });
    (port, relay)
}

async fn session(socket: tokio::net::TcpStream, relay: Arc<Relay>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut mail = Mail::default();
    if write.write_all(b"220 relay.test ESMTP\r\n").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let answer = if upper.starts_with("EHLO") {
            "250-relay.test\r\n250 8BITMIME\r\n".to_owned()
        } else if let Some(from) = line.get(10..).filter(|_| upper.starts_with("MAIL FROM:")) {
            mail = Mail {
                from: from.trim().to_owned(),
                ..Mail::default()
            };
            "250 ok\r\n".to_owned()
        } else if let Some(to) = line.get(8..).filter(|_| upper.starts_with("RCPT TO:")) {
            mail.to.push(to.trim().to_owned());
            "250 ok\r\n".to_owned()
        } else if upper == "DATA" {
            if write.write_all(b"354 go on\r\n").await.is_err() {
                return;
            }
            let mut data = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push('\n');
            }
            let answer = relay.script.lock().unwrap().pop_front().unwrap_or("250");
            if answer == "250" {
                mail.data = data;
                relay.mails.lock().unwrap().push(mail.clone());
                "250 queued\r\n".to_owned()
            } else {
                format!("{answer} try again later\r\n")
            }
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            "250 ok\r\n".to_owned()
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn config(port: u16) -> String {
    format!(
        "[push.apps.default.email]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         from = \"Shop <noreply@shop.test>\"\nsubject = \"[${{app}}] ${{title}}\"\n\
         backoff_ms = 20\nmax_backoff_ms = 50\n"
    )
}

fn with_channels(content: &str, to: &[&str], channels: Vec<ChannelChoice>) -> SendMessage {
    SendMessage {
        title: Some("Order shipped".into()),
        channels: Some(channels),
        ..message(content, Some(to))
    }
}

fn later(channel: &str, after: Delay) -> ChannelChoice {
    ChannelChoice::Step(ChannelStep {
        channel: channel.into(),
        after: Some(after),
    })
}

/// The status of `channel` for `user` in the message's record.
async fn channel_status(
    server: &Server,
    id: &str,
    user: &str,
    channel: &str,
) -> Option<(ChannelStatus, Option<String>)> {
    let record = server.api().message(id).await.expect("record");
    let recipient = record.recipients?.into_iter().find(|r| r.user == user)?;
    let state = recipient.channels.get(channel)?;
    Some((state.status, state.reason.clone()))
}

async fn wait_status(server: &Server, id: &str, user: &str, channel: &str, status: ChannelStatus) {
    eventually(&format!("{user}'s {channel} to be {status:?}"), || async {
        channel_status(server, id, user, channel)
            .await
            .is_some_and(|(s, _)| s == status)
    })
    .await;
}

#[tokio::test]
async fn email_goes_to_the_users_address_and_is_retried() {
    // The first DATA is refused for now (451): the same e-mail comes again.
    let (port, relay) = relay(&["451"]).await;
    let server = Server::with_config(&config(port), &[]);
    let api = server.api();
    api.set_attributes("alice", &[("email", "alice@example.com"), ("lang", "en")])
        .await
        .unwrap();

    let sent = api
        .send(&with_channels(
            r#"{"text":"It is on its way","order":42}"#,
            &["alice", "bob"],
            vec!["email".into()],
        ))
        .await
        .unwrap();
    wait_status(&server, &sent.id, "alice", "email", ChannelStatus::Sent).await;
    let mails = relay.to("alice@example.com");
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert_eq!(mail.from, "<noreply@shop.test>");
    assert!(
        mail.data.contains("Subject: [default] Order shipped"),
        "{}",
        mail.data
    );
    assert!(
        mail.data.contains("From: Shop <noreply@shop.test>"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("To: alice@example.com"), "{}", mail.data);
    assert!(
        mail.data
            .contains(&format!("Message-ID: <{}.alice@mps>", sent.id)),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("text/plain"), "{}", mail.data);
    assert!(mail.data.contains("\nIt is on its way\n"), "{}", mail.data);

    // bob has no address: skipped, with the reason.
    wait_status(&server, &sent.id, "bob", "email", ChannelStatus::Skipped).await;
    let (_, reason) = channel_status(&server, &sent.id, "bob", "email")
        .await
        .unwrap();
    assert!(reason.unwrap().contains("email attribute"));
    // The message stays owed to the live channel.
    assert_eq!(
        channel_status(&server, &sent.id, "alice", "live").await,
        Some((ChannelStatus::Pending, None))
    );
    let text = server.metrics().await;
    assert_eq!(
        metric(
            &text,
            "mps_channel_messages_total",
            &["channel=\"email\"", "result=\"sent\""]
        ),
        1.0
    );
    assert_eq!(metric(&text, "mps_email_retries_total", &[]), 1.0);

    // An app without an e-mail channel, and a bad delay, are refused.
    let error = api
        .send(&SendMessage {
            app: Some("other".into()),
            ..with_channels("{}", &["alice"], vec!["email".into()])
        })
        .await
        .unwrap_err();
    assert_eq!(refused(error).1, "channel_not_configured");
    let error = api
        .send(&with_channels(
            "{}",
            &["alice"],
            vec![later("email", Delay::Text("soon".into()))],
        ))
        .await
        .unwrap_err();
    assert_eq!(refused(error).1, "invalid_channels");
}

#[tokio::test]
async fn an_unacked_message_escalates_to_email_an_acked_or_muted_one_does_not() {
    let (port, relay) = relay(&[]).await;
    let server = Server::with_config(&config(port), &[]);
    let api = server.api();
    for user in ["alice", "carol", "dave"] {
        api.set_attributes(user, &[("email", &format!("{user}@example.com"))])
            .await
            .unwrap();
    }
    let muted = server
        .request(
            "PUT",
            "/api/v1/users/dave/preferences",
            Some(&format!("Bearer {ADMIN_KEY}")),
            Some(r#"{"muted_channels":["email"]}"#),
        )
        .await;
    assert_eq!(muted.status, 200, "{}", muted.body);

    let mut alice = server.connect("alice", "bs", &[]).await;
    let sent = api
        .send(&with_channels(
            r#"{"text":"Smoke in room 2"}"#,
            &["alice", "carol", "dave"],
            vec!["push".into(), later("email", Delay::Text("2s".into()))],
        ))
        .await
        .unwrap();
    // alice reads and acks it live, before the e-mail step's time.
    let got = alice.next_push(WAIT).await.unwrap();
    assert_eq!(alice.ack(std::slice::from_ref(&got.id)).await.unwrap(), 1);
    let (status, _) = channel_status(&server, &sent.id, "carol", "email")
        .await
        .unwrap();
    assert_eq!(status, ChannelStatus::Scheduled);
    assert!(
        relay.to("carol@example.com").is_empty(),
        "not before its time"
    );

    wait_status(&server, &sent.id, "carol", "email", ChannelStatus::Sent).await;
    wait_status(
        &server,
        &sent.id,
        "alice",
        "email",
        ChannelStatus::Cancelled,
    )
    .await;
    wait_status(&server, &sent.id, "dave", "email", ChannelStatus::Muted).await;
    assert_eq!(relay.to("carol@example.com").len(), 1);
    assert!(relay.to("alice@example.com").is_empty());
    assert!(relay.to("dave@example.com").is_empty());
    assert_eq!(
        channel_status(&server, &sent.id, "alice", "live").await,
        Some((ChannelStatus::Acked, None))
    );
    // dave is still owed the message on the live channel.
    let mut dave = server.connect("dave", "bs", &[]).await;
    assert_eq!(dave.next_push(WAIT).await.unwrap().id, sent.id);
}

#[tokio::test]
async fn the_chain_goes_on_after_a_kill_and_restart() {
    let (port, relay) = relay(&[]).await;
    let mut server = Server::with_config(&config(port), &[]);
    let api = server.api();
    api.set_attributes("erin", &[("email", "erin@example.com")])
        .await
        .unwrap();
    let sent = api
        .send(&with_channels(
            r#""Your code is 1234""#,
            &["erin"],
            vec![later("email", Delay::Seconds(3))],
        ))
        .await
        .unwrap();
    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart();
    wait_status(&server, &sent.id, "erin", "email", ChannelStatus::Sent).await;
    let mails = relay.to("erin@example.com");
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].data.contains("\nYour code is 1234\n"),
        "{}",
        mails[0].data
    );
}

#[tokio::test]
async fn a_users_own_chain_applies_to_messages_without_channels() {
    let (port, relay) = relay(&[]).await;
    let server = Server::with_config(&config(port), &[]);
    let api = server.api();
    for user in ["frank", "gina"] {
        api.set_attributes(user, &[("email", &format!("{user}@example.com"))])
            .await
            .unwrap();
    }
    let own = server
        .request(
            "PUT",
            "/api/v1/users/frank/preferences",
            Some(&format!("Bearer {ADMIN_KEY}")),
            Some(r#"{"channels":["push",{"channel":"email","after":1}]}"#),
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert!(own.body.contains(r#""after":1"#), "{}", own.body);
    let bad = server
        .request(
            "PUT",
            "/api/v1/users/gina/preferences",
            Some(&format!("Bearer {ADMIN_KEY}")),
            Some(r#"{"channels":["pigeon"]}"#),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Without `channels`: frank's own chain, gina the default (the vendor push only).
    let sent = api
        .send(&message(
            r#"{"text":"Weekly report"}"#,
            Some(&["frank", "gina"]),
        ))
        .await
        .unwrap();
    wait_status(&server, &sent.id, "frank", "email", ChannelStatus::Sent).await;
    assert_eq!(relay.to("frank@example.com").len(), 1);
    assert_eq!(
        channel_status(&server, &sent.id, "gina", "email").await,
        None
    );
    assert!(relay.to("gina@example.com").is_empty());
    // A message that names its channels does not follow the user's.
    let named = api
        .send(&with_channels("{}", &["frank"], vec!["push".into()]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        channel_status(&server, &named.id, "frank", "email").await,
        None
    );
    assert_eq!(relay.to("frank@example.com").len(), 1);
}

/// A fresh schema of the test database for the PostgreSQL store, or `None` (outside CI) when
/// PostgreSQL is not there.
async fn postgres_schema() -> Option<(String, String)> {
    let base = std::env::var("MPS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let client = match tokio_postgres::connect(&base, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL at {base} is needed under CI: {e}"
            );
            eprintln!("skipped: PostgreSQL at {base} unreachable ({e})");
            return None;
        }
    };
    let name = format!("mps_email_{}", unix_now_nanos());
    client
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .await
        .unwrap();
    let separator = if base.contains('?') { '&' } else { '?' };
    Some((
        name.clone(),
        format!("{base}{separator}options=-c%20search_path%3D{name}"),
    ))
}

fn unix_now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn the_chain_and_its_states_on_postgresql() {
    let Some((schema, url)) = postgres_schema().await else {
        return;
    };
    let (port, relay) = relay(&[]).await;
    let server = Server::with_config(&config(port), &[("MPS_STORE__POSTGRES_URL", &url)]);
    let api = server.api();
    for user in ["hank", "ivy"] {
        api.set_attributes(user, &[("email", &format!("{user}@example.com"))])
            .await
            .unwrap();
    }
    let sent = api
        .send(&with_channels(
            r#"{"text":"Invoice due"}"#,
            &["hank", "ivy"],
            vec![later("email", Delay::Seconds(2))],
        ))
        .await
        .unwrap();
    // hank acks over HTTP before the step's time.
    let token = server.token("hank").await;
    api.ack(&token, std::slice::from_ref(&sent.id))
        .await
        .unwrap();
    wait_status(&server, &sent.id, "ivy", "email", ChannelStatus::Sent).await;
    wait_status(&server, &sent.id, "hank", "email", ChannelStatus::Cancelled).await;
    assert_eq!(
        channel_status(&server, &sent.id, "hank", "live").await,
        Some((ChannelStatus::Acked, None))
    );
    assert_eq!(relay.to("ivy@example.com").len(), 1);
    assert!(relay.to("hank@example.com").is_empty());
    drop(server);
    let base = url.split('?').next().unwrap().to_owned();
    if let Ok((client, connection)) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await;
    }
}
