//! `mps bench audience`: loads users with tags and attributes into the embedded store (or
//! PostgreSQL) and times the resolution of several audience expressions, as the engine does on
//! a send; prints the median of several runs of each.
//!
//! Every user `u<i>` has the attributes `lang` (zh 40%, en 40%, ja 20%), `region` (r0..r9, 10%
//! each) and `platform` (ios, android, web, a third each), and the tags `vip` (5%), `beta`
//! (20%) and `staff` (1%).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;

use crate::audience::Audience;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, TermSet};

const APP: &str = "bench";

#[derive(Args, Clone, Debug)]
pub struct AudienceArgs {
    /// Users to load.
    #[arg(long, default_value_t = 1_000_000)]
    pub users: usize,
    /// Timed runs of each expression (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub runs: usize,
    /// Keep the embedded store here (loaded once, reused by later runs); a temporary directory
    /// when unset.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use this PostgreSQL database instead of the embedded store (loaded once, reused).
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// Online users a live audience is resolved among.
    #[arg(long, default_value_t = 10_000)]
    pub online: usize,
}

/// The expressions timed, from one term to a negation over every user.
pub const EXPRESSIONS: &[&str] = &[
    "tag:vip",
    "tag:vip AND lang:zh",
    "tag:vip AND lang:zh AND NOT agent:cs",
    "lang:zh AND region:r3 AND platform:ios",
    "(tag:beta OR tag:staff) AND NOT lang:en",
    "tag:staff OR user:u12345",
    "lang:en",
    "NOT tag:beta",
];

fn terms_of(i: usize) -> (Vec<String>, Vec<String>) {
    let mut tags = Vec::new();
    if i.is_multiple_of(20) {
        tags.push("tag:vip".to_owned());
    }
    if i % 5 == 1 {
        tags.push("tag:beta".to_owned());
    }
    if i % 100 == 7 {
        tags.push("tag:staff".to_owned());
    }
    let lang = match i % 10 {
        0..=3 => "zh",
        4..=7 => "en",
        _ => "ja",
    };
    let platform = ["ios", "android", "web"][i % 3];
    let attributes = vec![
        format!("lang:{lang}"),
        format!("platform:{platform}"),
        format!("region:r{}", (i / 7) % 10),
    ];
    (tags, attributes)
}

async fn load(store: Arc<dyn Store>, users: usize) -> anyhow::Result<()> {
    let last = format!("u{}", users - 1);
    if !store.terms(APP, &last).await?.is_empty() {
        println!("users already loaded");
        return Ok(());
    }
    let started = Instant::now();
    let writes = (0..users).flat_map(|i| {
        let (tags, attributes) = terms_of(i);
        [
            (i, TermSet::Tags, tags),
            (i, TermSet::Attributes, attributes),
        ]
    });
    let mut done = futures_util::stream::iter(writes)
        .map(|(i, set, terms)| {
            let store = store.clone();
            async move { store.set_terms(APP, &format!("u{i}"), set, terms).await }
        })
        .buffer_unordered(4096);
    let mut count = 0usize;
    while let Some(result) = done.next().await {
        result?;
        count += 1;
        if count.is_multiple_of(200_000) {
            eprintln!("  {} of {users} users loaded", count / 2);
        }
    }
    println!(
        "loaded {users} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

async fn measure(store: &dyn Store, args: &AudienceArgs) -> anyhow::Result<()> {
    let online: Vec<String> = (0..args.users)
        .step_by((args.users / args.online.max(1)).max(1))
        .map(|i| format!("u{i}"))
        .collect();
    println!(
        "| expression | resolved among | users matched | median ms | min ms | max ms |\n|---|---|---|---|---|---|"
    );
    for text in EXPRESSIONS {
        let audience = Audience::parse(text)?;
        let expr = audience.users.context("no user terms")?;
        for within in [None, Some(&online)] {
            let mut times = Vec::with_capacity(args.runs);
            let mut matched = 0;
            for _ in 0..args.runs.max(1) {
                let started = Instant::now();
                // Parsing is part of what a send pays.
                Audience::parse(text)?;
                let users = store
                    .resolve(APP, &expr, within.cloned(), args.users + 1)
                    .await?;
                times.push(started.elapsed());
                matched = users.len();
            }
            let among = match within {
                None => format!("all {} users", args.users),
                Some(list) => format!("{} online", list.len()),
            };
            let (min, max) = (
                *times.iter().min().unwrap_or(&Duration::ZERO),
                *times.iter().max().unwrap_or(&Duration::ZERO),
            );
            println!(
                "| `{text}` | {among} | {matched} | {} | {} | {} |",
                ms(median(times)),
                ms(min),
                ms(max)
            );
        }
    }
    Ok(())
}

/// Runs the benchmark and prints its table.
pub fn run(args: AudienceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // Removed at the end unless the caller chose where the store lives.
        let mut scratch = None;
        let store: Arc<dyn Store> = match &args.postgres_url {
            Some(url) => Arc::new(PostgresStore::connect(url, 8).await?),
            None => {
                let dir = args.data_dir.clone().unwrap_or_else(|| {
                    let dir = std::env::temp_dir()
                        .join(format!("mps-bench-audience-{}", std::process::id()));
                    scratch = Some(dir.clone());
                    dir
                });
                println!("embedded store in {}", dir.display());
                Arc::new(SqliteStore::open(&dir)?)
            }
        };
        let result = async {
            load(store.clone(), args.users).await?;
            measure(store.as_ref(), &args).await
        }
        .await;
        if let Some(dir) = scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    })
}
