//! Starts the real `mps` binary on an ephemeral port with a temporary data directory, as a user
//! would, and gives tests its addresses and clients.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mps_client::proto::{ClientInfo, SendMessage};
use mps_client::{Api, PushClient};
use serde_json::value::RawValue;

pub const ADMIN_KEY: &str = "test-admin-key";
pub const JWT_SECRET: &str = "test-jwt-secret";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    child: Child,
    pub addr: String,
    pub data: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Server {
    pub fn start() -> Server {
        Server::with_env(&[])
    }

    /// Starts with extra `MPS_*` variables (`("MPS_CONNECTION__QUEUE", "4")`).
    pub fn with_env(env: &[(&str, &str)]) -> Server {
        let data = tempfile::tempdir().expect("temp dir");
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr) = spawn(data.path(), &env, "127.0.0.1:0");
        Server {
            child,
            addr,
            data,
            env,
        }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn api(&self) -> Api {
        Api::new(&self.http(), ADMIN_KEY)
    }

    /// `kill -9`, then start again on the same port and data directory.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
        let (child, addr) = spawn(self.data.path(), &self.env, &self.addr);
        self.child = child;
        self.addr = addr;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    pub async fn token(&self, user: &str) -> String {
        self.api().token(user).await.expect("token").token
    }

    /// Opens a Message Push Protocol session as `user` with `agent` and components.
    pub async fn connect(&self, user: &str, agent: &str, components: &[&str]) -> PushClient {
        let token = self.token(user).await;
        PushClient::open(&self.ws(), &token, client_info(user, agent, components))
            .await
            .expect("open session")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

fn spawn(data: &std::path::Path, env: &[(String, String)], listen: &str) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mps"));
    command
        .args(["serve", "--listen", listen, "--admin-key", ADMIN_KEY])
        .args(["--jwt-secret", JWT_SECRET, "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn mps");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("mps exited before listening")
            .expect("read stdout");
        if let Some(rest) = line.strip_prefix("mps listening on http://") {
            break rest.trim().to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

pub fn client_info(user: &str, agent: &str, components: &[&str]) -> ClientInfo {
    ClientInfo {
        agent: Some(agent.into()),
        user: Some(user.into()),
        way: Some("websocket".into()),
        component_set: Some(components.iter().map(|c| c.to_string()).collect()),
        device: None,
    }
}

/// A send request with JSON content.
pub fn message(content: &str, receiver: Option<&[&str]>) -> SendMessage {
    SendMessage {
        content: RawValue::from_string(content.to_owned()).expect("json"),
        receiver: receiver.map(|r| r.iter().map(|s| s.to_string()).collect()),
        title: Some("title".into()),
        kind: 0,
        component: None,
        agents: None,
        ttl: None,
        sender: Some("tests".into()),
        app: None,
    }
}
