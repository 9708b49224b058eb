//! `mps bench fanout`: N subscribers, M messages published over HTTP as fast as possible (with
//! bounded concurrency) or at a fixed rate. Each payload carries its send time (ns since the
//! epoch); each subscriber records publish-to-receipt latency and which sequence numbers it saw,
//! so losses and duplicates are counted exactly. With several `--url`s (nodes of one cluster),
//! subscriber `i` connects to URL `i % urls`, messages go to the first, and the `--server-pid`s
//! are added up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use crate::conn::{Ctx, Subscription, number_after};
use crate::stats::{Histogram, Report, now_ns, own_cpu_s, sample};
use crate::{Common, Transport};

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages to publish.
    #[arg(long, short = 'm', default_value_t = 100)]
    pub messages: u64,
    /// Messages per second; 0 publishes as fast as `--concurrency` allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publish requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// mps: the component subscribers ask for and messages carry.
    #[arg(long, default_value = "bench")]
    pub component: String,
    /// mps: subscribe to this topic pattern and publish to it, instead of a component.
    #[arg(long)]
    pub topic: Option<String>,
    /// Nchan: the channel id.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Extra payload bytes per message (a padding string in the content).
    #[arg(long, default_value_t = 0)]
    pub payload: usize,
    /// Seconds to wait for missing deliveries once nothing more arrives.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Seconds to wait after all subscribers connected before measuring and publishing.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
}

const SEQ_KEY: &[u8] = b"\"mpsb_seq\":";
const TS_KEY: &[u8] = b"\"mpsb_ts\":";

/// What all subscribers add up to.
#[derive(Default)]
pub struct Tally {
    pub connected: AtomicUsize,
    pub failed: AtomicUsize,
    pub first_error: std::sync::Mutex<Option<String>>,
    /// Distinct (subscriber, message) receipts.
    pub unique: AtomicU64,
    pub duplicates: AtomicU64,
    /// Messages with a sequence number outside this run.
    pub stray: AtomicU64,
    /// Subscribers whose connection ended during the run.
    pub ended: AtomicUsize,
    pub last_ns: AtomicU64,
    pub latency: Histogram,
}

impl Tally {
    pub fn fail(&self, error: anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(format!("{error:#}"));
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `n` subscribers connected or failed (or `limit` passes), printing progress.
    pub async fn wait_connected(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        let mut shown = Instant::now();
        loop {
            let connected = self.connected.load(Ordering::Relaxed);
            let failed = self.failed.load(Ordering::Relaxed);
            if connected + failed >= n || start.elapsed() > limit {
                return;
            }
            if shown.elapsed() > Duration::from_secs(5) {
                eprintln!("bench: {connected} connected, {failed} failed of {n}");
                shown = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The content of message `seq`: `{"mpsb_seq":SEQ,"mpsb_ts":NS,"pad":"..."}`.
pub fn content(seq: u64, pad: &str) -> String {
    let ts = now_ns();
    if pad.is_empty() {
        format!("{{\"mpsb_seq\":{seq},\"mpsb_ts\":{ts}}}")
    } else {
        format!("{{\"mpsb_seq\":{seq},\"mpsb_ts\":{ts},\"pad\":\"{pad}\"}}")
    }
}

/// Records one received message of a run of `messages` into `seen` and `tally`.
pub fn receive(tally: &Tally, seen: &mut [u64], messages: u64, payload: &[u8]) {
    let now = now_ns();
    let Some(seq) = number_after(payload, SEQ_KEY) else {
        return;
    };
    if seq >= messages {
        tally.stray.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
    if seen[word] & bit != 0 {
        tally.duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    }
    seen[word] |= bit;
    tally.unique.fetch_add(1, Ordering::Relaxed);
    if let Some(ts) = number_after(payload, TS_KEY) {
        tally.latency.record(now.saturating_sub(ts));
    }
    tally.last_ns.fetch_max(now, Ordering::Relaxed);
}

/// Starts one subscriber per user index in `users`, recording into `tally`; returns their tasks.
pub fn spawn_subscribers(
    ctx: &Arc<Ctx>,
    transport: Transport,
    subscription: &Subscription,
    users: std::ops::Range<usize>,
    messages: u64,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    users
        .map(|i| {
            let ctx = ctx.clone();
            let subscription = subscription.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut subscriber = match ctx.subscribe(transport, i, &subscription).await {
                    Ok(s) => s,
                    Err(e) => return tally.fail(e),
                };
                tally.connected.fetch_add(1, Ordering::Relaxed);
                let mut seen = vec![0u64; messages.div_ceil(64) as usize];
                let mut on_message = |payload: &[u8]| receive(&tally, &mut seen, messages, payload);
                let _ = subscriber.run(&mut on_message).await;
                tally.ended.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect()
}

/// Publishes `messages` messages at `rate` per second (0: as fast as `concurrency` allows);
/// returns (published, errors, first error).
pub async fn publish_all(
    ctx: &Arc<Ctx>,
    subscription: &Subscription,
    messages: u64,
    rate: f64,
    concurrency: usize,
    pad: &str,
) -> (u64, u64, Option<String>) {
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = tokio::time::Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (ctx, subscription, pad) = (ctx.clone(), subscription.clone(), pad.to_owned());
            let (next, ok, errors, first_error) = (
                next.clone(),
                ok.clone(),
                errors.clone(),
                first_error.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= messages {
                        return;
                    }
                    if rate > 0.0 {
                        let at = start + Duration::from_secs_f64(seq as f64 / rate);
                        tokio::time::sleep_until(at).await;
                    }
                    match ctx.publish(&subscription, &content(seq, &pad)).await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| format!("{e:#}"));
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let first = first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    (
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        first,
    )
}

/// Waits until `unique` reaches `expected`, or nothing new arrived for `drain` seconds.
pub async fn drain(unique: &AtomicU64, expected: u64, drain: f64) {
    let mut last = unique.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        let now = unique.load(Ordering::Relaxed);
        if now >= expected {
            return;
        }
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed().as_secs_f64() > drain {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn run(ctx: Arc<Ctx>, args: FanoutArgs) -> anyhow::Result<Report> {
    let pids = &args.common.server_pid;
    let subscription = Subscription {
        components: vec![args.component.clone()],
        topics: args.topic.clone().into_iter().collect(),
        channel: args.channel.clone(),
    };
    let before = sample(pids)?;
    let tally = Arc::new(Tally::default());
    let connect_start = Instant::now();
    let tasks = spawn_subscribers(
        &ctx,
        args.transport,
        &subscription,
        0..args.subscribers,
        args.messages,
        &tally,
    );
    tally
        .wait_connected(args.subscribers, Duration::from_secs(600))
        .await;
    let connect_s = connect_start.elapsed().as_secs_f64();
    let connected = tally.connected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let at_connected = sample(pids)?;

    let pad = "x".repeat(args.payload);
    eprintln!("bench: {connected} subscribers connected; publishing");
    let client_cpu = own_cpu_s();
    let start_ns = now_ns();
    let start = Instant::now();
    let (published, publish_errors, publish_error) = publish_all(
        &ctx,
        &subscription,
        args.messages,
        args.rate,
        args.concurrency,
        &pad,
    )
    .await;
    let publish_s = start.elapsed().as_secs_f64();
    // Subscribers that lost their connection cannot receive; they count as losses.
    let expected = connected as u64 * published;
    drain(&tally.unique, expected, args.drain_timeout).await;
    let at_end = sample(pids)?;
    let client_cpu = own_cpu_s() - client_cpu;
    let unique = tally.unique.load(Ordering::Relaxed);
    let last_ns = tally.last_ns.load(Ordering::Relaxed);
    let elapsed_s = if last_ns > start_ns {
        (last_ns - start_ns) as f64 / 1e9
    } else {
        start.elapsed().as_secs_f64()
    };
    let ended = tally.ended.load(Ordering::Relaxed);

    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sample(pids)?;

    let mut report = Report::new("fanout");
    report
        .text("target", ctx.target.name())
        .text("transport", args.transport.name());
    if ctx.nodes.len() > 1 {
        report.int("nodes", ctx.nodes.len() as u64, "");
    }
    report
        .int("subscribers", args.subscribers as u64, "")
        .int("connected", connected as u64, "")
        .int(
            "connect_errors",
            tally.failed.load(Ordering::Relaxed) as u64,
            "",
        )
        .num("connect_s", connect_s, "s")
        .int("messages", args.messages, "")
        .int("published", published, "")
        .int("publish_errors", publish_errors, "")
        .num("rate", args.rate, "msg/s")
        .num("publish_per_s", published as f64 / publish_s, "msg/s")
        .int("expected", expected, "")
        .int("deliveries", unique, "")
        .int("losses", expected.saturating_sub(unique), "")
        .int("duplicates", tally.duplicates.load(Ordering::Relaxed), "")
        .int("stray", tally.stray.load(Ordering::Relaxed), "")
        .int("disconnected_during_run", ended as u64, "")
        .num("elapsed_s", elapsed_s, "s")
        .num("deliveries_per_s", unique as f64 / elapsed_s, "/s")
        .latency("latency", &tally.latency)
        .server(
            before,
            at_connected,
            after,
            at_connected.zip(at_end),
            unique,
            "delivery",
        )
        .num("client_cpu_s", client_cpu, "s");
    if let Some(error) = tally.first_error() {
        report.note(format!("first connect error: {error}"));
    }
    if let Some(error) = publish_error {
        report.note(format!("first publish error: {error}"));
    }
    Ok(report)
}
