//! `mps bench directed`: durable directed messages, each to one of N distinct users, published
//! with bounded concurrency. Online: the users are connected while messages are sent (accepted/s,
//! delivered/s, latency). Offline: nobody is connected while messages are sent; then every user
//! connects and receives its backlog (delivered/s from the first connect).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use crate::conn::{Ctx, Subscription, user_name};
use crate::fanout::{Tally, content, drain, spawn_subscribers};
use crate::stats::{Histogram, Report, now_ns, own_cpu_s, sample};
use crate::{Common, Target, Transport};

#[derive(Args, Clone, Debug)]
pub struct DirectedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Distinct users; message i goes to user i mod N.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub users: usize,
    /// Messages to send.
    #[arg(long, short = 'm', default_value_t = 10_000)]
    pub messages: u64,
    /// Send requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Send while every user is offline, then connect them all and measure the backlog.
    #[arg(long)]
    pub offline: bool,
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Seconds to wait for missing deliveries once nothing more arrives.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
}

pub async fn run(ctx: Arc<Ctx>, args: DirectedArgs) -> anyhow::Result<Report> {
    if ctx.target != Target::Mps {
        bail!("directed messages are an mps feature; use --target mps");
    }
    let pids = &args.common.server_pid;
    let users = args.users.max(1);
    let subscription = Subscription::default();
    let before = sample(pids)?;
    let tally = Arc::new(Tally::default());
    let spawn = |tally: &Arc<Tally>| {
        spawn_subscribers(
            &ctx,
            args.transport,
            &subscription,
            0..users,
            args.messages,
            tally,
        )
    };
    let mut tasks = Vec::new();
    if !args.offline {
        tasks = spawn(&tally);
        tally.wait_connected(users, Duration::from_secs(600)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let at_connected = sample(pids)?;
    let client_cpu = own_cpu_s();

    let start_ns = now_ns();
    let start = Instant::now();
    let accept_latency = Arc::new(Histogram::default());
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (ctx, next, ok, errors) = (ctx.clone(), next.clone(), ok.clone(), errors.clone());
            let (accept_latency, first_error) = (accept_latency.clone(), first_error.clone());
            let messages = args.messages;
            tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= messages {
                        return;
                    }
                    let sent = Instant::now();
                    match send_directed(&ctx, &user_name(seq as usize % users), seq).await {
                        Ok(()) => {
                            accept_latency.record(sent.elapsed().as_nanos() as u64);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| format!("{e:#}"));
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let publish_s = start.elapsed().as_secs_f64();
    let accepted = ok.load(Ordering::Relaxed);
    let at_accepted = sample(pids)?;

    let deliver_start_ns = if args.offline {
        let at = now_ns();
        tasks = spawn(&tally);
        tally.wait_connected(users, Duration::from_secs(600)).await;
        at
    } else {
        start_ns
    };
    drain(&tally.unique, accepted, args.drain_timeout).await;
    let at_end = sample(pids)?;
    let client_cpu = own_cpu_s() - client_cpu;
    let unique = tally.unique.load(Ordering::Relaxed);
    let last_ns = tally.last_ns.load(Ordering::Relaxed);
    let deliver_s = last_ns.saturating_sub(deliver_start_ns) as f64 / 1e9;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sample(pids)?;

    let mut report = Report::new("directed");
    report
        .text("target", ctx.target.name())
        .text("transport", args.transport.name())
        .text("users_online", if args.offline { "no" } else { "yes" })
        .int("users", users as u64, "")
        .int(
            "connected",
            tally.connected.load(Ordering::Relaxed) as u64,
            "",
        )
        .int(
            "connect_errors",
            tally.failed.load(Ordering::Relaxed) as u64,
            "",
        )
        .int("messages", args.messages, "")
        .int("concurrency", args.concurrency as u64, "")
        .int("accepted", accepted, "")
        .int("send_errors", errors.load(Ordering::Relaxed), "")
        .num("accept_s", publish_s, "s")
        .num("accepted_per_s", accepted as f64 / publish_s, "/s")
        .latency("accept_latency", &accept_latency)
        .int("delivered", unique, "")
        .int("losses", accepted.saturating_sub(unique), "")
        .int("duplicates", tally.duplicates.load(Ordering::Relaxed), "")
        .num("deliver_s", deliver_s, "s")
        .num(
            "delivered_per_s",
            if deliver_s > 0.0 {
                unique as f64 / deliver_s
            } else {
                0.0
            },
            "/s",
        );
    if !args.offline {
        report.latency("latency", &tally.latency);
    }
    report.server(
        before,
        at_connected,
        after,
        at_connected.zip(at_end),
        accepted,
        "message",
    );
    if let (Some(from), Some(to)) = (at_connected, at_accepted) {
        report.num(
            "server_cpu_s_accepting",
            (to.cpu_s - from.cpu_s).max(0.0),
            "s",
        );
    }
    report.num("client_cpu_s", client_cpu, "s");
    if let Some(error) = tally.first_error() {
        report.note(format!("first connect error: {error}"));
    }
    if let Some(error) = first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        report.note(format!("first send error: {error}"));
    }
    Ok(report)
}

/// One durable message to `user`, answered 201 once it is stored.
async fn send_directed(ctx: &Ctx, user: &str, seq: u64) -> anyhow::Result<()> {
    let mut body = serde_json::json!({"title": "bench", "type": 0, "sender": "bench"});
    body["content"] = serde_json::from_str(&content(seq, ""))?;
    body["receiver"] = serde_json::json!([user]);
    let (status, answer) = ctx
        .post_admin("/api/v1/messages", serde_json::to_vec(&body)?)
        .await?;
    if status != 201 {
        bail!(
            "POST /api/v1/messages answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(())
}
