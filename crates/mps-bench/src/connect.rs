//! `mps bench connect`: how fast the server takes new connections: TCP connect, upgrade (or SSE
//! answer) and, on mps `/ws`, the open frame and its answer, with `--connect-concurrency` in
//! flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;

use crate::conn::{Ctx, Subscription};
use crate::fanout::{Tally, spawn_subscribers};
use crate::stats::{Report, own_cpu_s, sample};
use crate::{Common, Transport};

#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 5000)]
    pub connections: usize,
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// mps: the component each connection subscribes to.
    #[arg(long, default_value = "bench")]
    pub component: String,
    /// Nchan: the channel id.
    #[arg(long, default_value = "bench")]
    pub channel: String,
}

pub async fn run(ctx: Arc<Ctx>, args: ConnectArgs) -> anyhow::Result<Report> {
    let pids = &args.common.server_pid;
    let subscription = Subscription {
        components: vec![args.component.clone()],
        topics: Vec::new(),
        channel: args.channel.clone(),
    };
    let before = sample(pids)?;
    let client_cpu = own_cpu_s();
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let tasks = spawn_subscribers(
        &ctx,
        args.transport,
        &subscription,
        0..args.connections,
        0,
        &tally,
    );
    tally
        .wait_connected(args.connections, Duration::from_secs(600))
        .await;
    let elapsed = start.elapsed().as_secs_f64();
    let connected_sample = sample(pids)?;
    let client_cpu = own_cpu_s() - client_cpu;
    let connected = tally.connected.load(Ordering::Relaxed) as u64;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sample(pids)?;

    let mut report = Report::new("connect");
    report
        .text("target", ctx.target.name())
        .text("transport", args.transport.name())
        .int("connections", args.connections as u64, "")
        .int("connected", connected, "")
        .int(
            "connect_errors",
            tally.failed.load(Ordering::Relaxed) as u64,
            "",
        )
        .int("concurrency", args.common.connect_concurrency as u64, "")
        .num("elapsed_s", elapsed, "s")
        .num("connects_per_s", connected as f64 / elapsed, "/s")
        .latency("connect_latency", &ctx.connect_latency)
        .server(
            before,
            connected_sample,
            after,
            before.zip(connected_sample),
            connected,
            "connect",
        )
        .num("client_cpu_s", client_cpu, "s");
    if let Some(error) = tally.first_error() {
        report.note(format!("first connect error: {error}"));
    }
    Ok(report)
}
