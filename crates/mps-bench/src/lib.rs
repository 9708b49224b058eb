//! The load generator behind `mps bench`. It talks to the server from the outside, like any
//! client: WebSocket or Server-Sent Events subscribers, HTTP publishers, and `/proc` for the
//! server's CPU time and memory. The same loads run against Nchan (`--target nchan`) so the two
//! can be compared in one run (`bench/compare.sh`).
//!
//! Layout:
//! - [`conn`]: connections: source-address spreading, WebSocket (open frame) and SSE subscribers,
//!   tokens, publishing.
//! - [`stats`]: latency histogram, `/proc` CPU and memory readings, the report printed at the end.
//! - [`fanout`], [`idle`], [`directed`], [`connect`]: one file per mode.

use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};

pub mod conn;
pub mod connect;
pub mod directed;
pub mod fanout;
pub mod idle;
pub mod stats;

/// The server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// mps: `/ws` with an open frame, `/sse`, `POST /api/v1/messages`.
    Mps,
    /// Nchan: subscribe at `/sub/CHANNEL` (WebSocket or EventSource), publish with
    /// `POST /pub/CHANNEL`, raw payloads.
    Nchan,
}

/// How subscribers connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// WebSocket.
    Ws,
    /// Server-Sent Events (EventSource).
    Sse,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Mps => "mps",
            Target::Nchan => "nchan",
        }
    }
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
}

/// Flags every mode accepts.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Base URL of the server under test (loopback only). `fanout` takes it several times (nodes
    /// of one cluster): subscribers are spread round-robin over the URLs and messages are
    /// published to the first; the other modes take one.
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    pub urls: Vec<String>,
    /// The kind of server under test.
    #[arg(long, value_enum, default_value_t = Target::Mps)]
    pub target: Target,
    /// Admin key for `POST /api/v1/messages` and `POST /api/v1/tokens`.
    #[arg(
        long,
        env = "MPS_ADMIN_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub admin_key: String,
    /// Sign client tokens locally with this HS256 secret (sub=user, exp) instead of asking
    /// `POST /api/v1/tokens` for each.
    #[arg(long, env = "MPS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A server process to measure (CPU from /proc/PID/stat, VmRSS); repeat for several
    /// processes (nginx master and workers), whose figures are added up.
    #[arg(long = "server-pid")]
    pub server_pid: Vec<u32>,
    /// Spread client sockets over source addresses 127.0.0.2 .. 127.0.0.(1+N), so tens of
    /// thousands of connections do not exhaust one address's ephemeral ports; 0 lets the kernel
    /// choose. Only used when the server is on 127.0.0.0/8.
    #[arg(long, default_value_t = 40)]
    pub source_addrs: u8,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// WebSocket read buffer per client connection, bytes (small keeps ~19,000 connections in
    /// one process cheap).
    #[arg(long, default_value_t = 1024)]
    pub read_buffer: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    /// The first (for modes other than `fanout`, the only) `--url`.
    pub fn url(&self) -> &str {
        &self.urls[0]
    }

    /// Refuses more than one `--url` in a mode that uses only one.
    fn one_url(&self, mode: &str) -> anyhow::Result<()> {
        if self.urls.len() > 1 {
            anyhow::bail!("`mps bench {mode}` takes one --url (only fanout takes several)");
        }
        Ok(())
    }
}

/// `mps bench MODE`.
#[derive(Subcommand, Clone, Debug)]
pub enum Mode {
    /// N subscribers receive M published messages; deliveries/s, publish-to-receipt latency,
    /// losses, duplicates, server CPU per delivery.
    Fanout(fanout::FanoutArgs),
    /// Hold N idle connections (optionally over several processes); server memory per
    /// connection.
    Idle(idle::IdleArgs),
    /// Durable directed messages to N distinct users, online or offline; accepted/s and
    /// delivered/s.
    Directed(directed::DirectedArgs),
    /// Connection rate: connects (and opens) per second.
    Connect(connect::ConnectArgs),
    /// A child of `idle --procs P`: holds its share of the connections until its stdin closes.
    #[command(hide = true)]
    IdleChild(idle::IdleChildArgs),
}

/// Runs one mode on its own runtime and prints its report.
pub fn run(mode: Mode) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (common, report) = match mode {
            Mode::Fanout(args) => {
                let ctx = Arc::new(conn::Ctx::new(&args.common).await?);
                (args.common.clone(), fanout::run(ctx, args).await?)
            }
            Mode::Idle(args) => {
                args.common.one_url("idle")?;
                let ctx = Arc::new(conn::Ctx::new(&args.common).await?);
                (args.common.clone(), idle::run(ctx, args).await?)
            }
            Mode::Directed(args) => {
                args.common.one_url("directed")?;
                let ctx = Arc::new(conn::Ctx::new(&args.common).await?);
                (args.common.clone(), directed::run(ctx, args).await?)
            }
            Mode::Connect(args) => {
                args.common.one_url("connect")?;
                let ctx = Arc::new(conn::Ctx::new(&args.common).await?);
                (args.common.clone(), connect::run(ctx, args).await?)
            }
            Mode::IdleChild(args) => {
                args.common.one_url("idle-child")?;
                let ctx = Arc::new(conn::Ctx::new(&args.common).await?);
                return idle::child(ctx, args).await;
            }
        };
        report.print(common.json);
        Ok(())
    })
}
