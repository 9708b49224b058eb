//! `mps bench idle`: hold N subscribed connections and report the server's memory per
//! connection. Every process here may open at most 20,000 files, so `--procs P` spreads the
//! connections over P child processes of this same binary (`mps bench idle-child`), each of
//! which holds its share until its standard input closes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;

use crate::conn::{Ctx, Subscription};
use crate::fanout::{Tally, spawn_subscribers};
use crate::stats::{Report, sample};
use crate::{Common, Transport};

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to hold.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Child processes to spread the connections over (each process may open at most 20,000
    /// files here, so about 19,000 connections per process at most).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Seconds to hold all connections before reading the server's memory.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
    /// After the hold, at most this many more seconds to wait for the server's memory to
    /// settle (to change by less than 1% in a second): an allocator gives the pages of the
    /// handshakes' transient buffers back gradually, and the figure sought is what the idle
    /// connections keep. 0 reads it right after the hold.
    #[arg(long, default_value_t = 30.0)]
    pub settle: f64,
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// mps: the component each connection subscribes to.
    #[arg(long, default_value = "bench")]
    pub component: String,
    /// Nchan: the channel id.
    #[arg(long, default_value = "bench")]
    pub channel: String,
}

#[derive(Args, Clone, Debug)]
pub struct IdleChildArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub connections: usize,
    /// Index of this child's first connection (users are `bench{index}`).
    #[arg(long)]
    pub offset: usize,
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    #[arg(long, default_value = "bench")]
    pub component: String,
    #[arg(long, default_value = "bench")]
    pub channel: String,
}

fn subscription(component: &str, channel: &str) -> Subscription {
    Subscription {
        components: vec![component.to_owned()],
        topics: Vec::new(),
        channel: channel.to_owned(),
    }
}

/// Holds `n` connections in this process, starting at user index `offset`.
async fn hold(
    ctx: &Arc<Ctx>,
    transport: Transport,
    subscription: &Subscription,
    n: usize,
    offset: usize,
) -> (Arc<Tally>, Vec<tokio::task::JoinHandle<()>>) {
    let tally = Arc::new(Tally::default());
    let tasks = spawn_subscribers(ctx, transport, subscription, offset..offset + n, 0, &tally);
    tally.wait_connected(n, Duration::from_secs(600)).await;
    (tally, tasks)
}

pub async fn run(ctx: Arc<Ctx>, args: IdleArgs) -> anyhow::Result<Report> {
    let pids = &args.common.server_pid;
    let subscription = subscription(&args.component, &args.channel);
    let before = sample(pids)?;
    let start = Instant::now();
    let (connected, failed, first_error, held) = if args.procs <= 1 {
        let (tally, tasks) = hold(&ctx, args.transport, &subscription, args.connections, 0).await;
        (
            tally.connected.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            tally.first_error(),
            Held::Tasks(tally, tasks),
        )
    } else {
        let children = spawn_children(&args)?;
        let (connected, failed, first_error, children) =
            tokio::task::spawn_blocking(move || wait_children(children)).await??;
        (connected, failed, first_error, Held::Children(children))
    };
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let held_at = Instant::now();
    let mut at_connected = sample(pids)?;
    while held_at.elapsed().as_secs_f64() < args.settle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sample(pids)?;
        let settled = match (&at_connected, &now) {
            (Some(then), Some(now)) => now.rss_kib.abs_diff(then.rss_kib) * 100 < then.rss_kib,
            _ => true,
        };
        at_connected = now;
        if settled {
            break;
        }
    }
    let settle_s = held_at.elapsed().as_secs_f64();
    let still_open = match &held {
        Held::Tasks(tally, _) => connected - tally.ended.load(Ordering::Relaxed),
        Held::Children(_) => connected,
    };
    held.release().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sample(pids)?;

    let mut report = Report::new("idle");
    report
        .text("target", ctx.target.name())
        .text("transport", args.transport.name())
        .int("connections", args.connections as u64, "")
        .int("procs", args.procs.max(1) as u64, "")
        .int("connected", connected as u64, "")
        .int("connect_errors", failed as u64, "")
        .int("open_at_measurement", still_open as u64, "")
        .num("connect_s", connect_s, "s")
        .num("connects_per_s", connected as f64 / connect_s, "/s")
        .num("settle_s", settle_s, "s")
        .server(before, at_connected, after, None, 0, "connection");
    if let (Some(before), Some(connected_sample)) = (before, at_connected)
        && connected > 0
    {
        let per = (connected_sample.rss_kib as f64 - before.rss_kib as f64) / connected as f64;
        report.num("server_kib_per_connection", per, "KiB");
    }
    if let Some(error) = first_error {
        report.note(format!("first connect error: {error}"));
    }
    Ok(report)
}

enum Held {
    Tasks(Arc<Tally>, Vec<tokio::task::JoinHandle<()>>),
    Children(Vec<std::process::Child>),
}

impl Held {
    async fn release(self) {
        match self {
            Held::Tasks(_, tasks) => {
                for task in &tasks {
                    task.abort();
                }
                for task in tasks {
                    let _ = task.await;
                }
            }
            Held::Children(children) => {
                let _ = tokio::task::spawn_blocking(move || {
                    for mut child in children {
                        // Closing its stdin tells the child to let go and exit.
                        drop(child.stdin.take());
                        let _ = child.wait();
                    }
                })
                .await;
            }
        }
    }
}

fn spawn_children(args: &IdleArgs) -> anyhow::Result<Vec<std::process::Child>> {
    let exe = std::env::current_exe().context("finding this program")?;
    let procs = args.procs;
    let mut children = Vec::new();
    let mut offset = 0;
    for i in 0..procs {
        let n = args.connections / procs + usize::from(i < args.connections % procs);
        let c = &args.common;
        let mut command = Command::new(&exe);
        command
            .args(["bench", "idle-child", "--url", c.url()])
            .args(["--target", c.target.name()])
            .args(["--source-addrs", &c.source_addrs.to_string()])
            .args(["--connect-concurrency", &c.connect_concurrency.to_string()])
            .args(["--read-buffer", &c.read_buffer.to_string()])
            .args(["--connections", &n.to_string()])
            .args(["--offset", &offset.to_string()])
            .args(["--transport", args.transport.name()])
            .args(["--component", &args.component])
            .args(["--channel", &args.channel])
            // Secrets go by environment, not on the command line.
            .env("MPS_ADMIN_KEY", &c.admin_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match &c.jwt_secret {
            Some(secret) => command.env("MPS_JWT_SECRET", secret),
            None => command.env_remove("MPS_JWT_SECRET"),
        };
        children.push(command.spawn().context("starting a child process")?);
        offset += n;
    }
    Ok(children)
}

type ChildrenReady = (usize, usize, Option<String>, Vec<std::process::Child>);

/// Reads each child's `ready CONNECTED FAILED [ERROR]` line.
fn wait_children(mut children: Vec<std::process::Child>) -> anyhow::Result<ChildrenReady> {
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    for child in &mut children {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("child without stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let mut parts = line.trim_end().splitn(4, ' ');
        if parts.next() != Some("ready") {
            bail!("a child process failed: {line:?}");
        }
        connected += parts.next().and_then(|p| p.parse().ok()).unwrap_or(0usize);
        failed += parts.next().and_then(|p| p.parse().ok()).unwrap_or(0usize);
        if let Some(error) = parts.next()
            && first_error.is_none()
        {
            first_error = Some(error.to_owned());
        }
    }
    Ok((connected, failed, first_error, children))
}

/// `mps bench idle-child`: connect, say `ready`, hold until stdin closes.
pub async fn child(ctx: Arc<Ctx>, args: IdleChildArgs) -> anyhow::Result<()> {
    let subscription = subscription(&args.component, &args.channel);
    let (tally, tasks) = hold(
        &ctx,
        args.transport,
        &subscription,
        args.connections,
        args.offset,
    )
    .await;
    {
        let mut out = std::io::stdout().lock();
        let error = tally.first_error().unwrap_or_default().replace('\n', " ");
        writeln!(
            out,
            "ready {} {} {error}",
            tally.connected.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed)
        )?;
        out.flush()?;
    }
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    for task in &tasks {
        task.abort();
    }
    Ok(())
}
