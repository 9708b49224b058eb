//! The `mps` command: `serve` runs the server; `token` issues a client token; `send`,
//! `clients` and `messages` operate a running server through its API ([`mps::cli`]); `bench`
//! measures a running server (or Nchan) from the outside (the `mps-bench` crate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mps::config::{AuthOverrides, ClusterOverrides, Config, Overrides, StoreOverrides};

/// mps, the message push service: holds long connections to browsers, desktop clients and
/// phones, and delivers what back ends send it, durably, with per-recipient status.
#[derive(Parser)]
#[command(name = "mps", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded store, no external service needed).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on for HTTP and WebSocket [default: 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Key for the back-end API; generated into the data directory when unset.
        #[arg(long)]
        admin_key: Option<String>,
        /// HS256 secret for client tokens; generated into the data directory when unset.
        #[arg(long)]
        jwt_secret: Option<String>,
        /// Redis shared by the nodes of a cluster (cluster.redis_url), e.g. redis://10.0.0.5:6379.
        #[arg(long)]
        redis_url: Option<String>,
        /// PostgreSQL message store shared by the nodes (store.postgres_url), e.g.
        /// postgres://mps@10.0.0.6/mps.
        #[arg(long)]
        postgres_url: Option<String>,
        /// Print the merged configuration (secrets hidden) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Issue a client token signed with the server's key.
    Token {
        #[command(flatten)]
        common: Common,
        /// The user the token speaks for (its `sub`).
        #[arg(long)]
        user: String,
        /// The app (tenant); `default` when omitted.
        #[arg(long)]
        app: Option<String>,
        /// Lifetime in seconds [default: auth.token_ttl, 86400].
        #[arg(long)]
        ttl: Option<u64>,
        /// HS256 secret to sign with, instead of the configured or generated one.
        #[arg(long)]
        secret: Option<String>,
        /// A topic pattern the client may subscribe to (repeatable); none means any.
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// Send a message through a running server: directed (--to), to a topic, to a component,
    /// or broadcast.
    Send(mps::cli::SendArgs),
    /// List the online clients of a running server, or disconnect one.
    Clients(mps::cli::ClientsArgs),
    /// Page a running server's message records, show one with per-recipient status, or
    /// delete one.
    Messages(mps::cli::MessagesArgs),
    /// Load-test a running server (or Nchan): fan-out, idle connections, directed messages,
    /// connection rate.
    Bench {
        #[command(subcommand)]
        mode: BenchMode,
    },
}

#[derive(Subcommand)]
enum BenchMode {
    #[command(flatten)]
    Load(mps_bench::Mode),
    /// Audience resolution: loads users with tags and attributes into the embedded store (or
    /// PostgreSQL) and times resolving several expressions (medians).
    Audience(mps::cli::bench::AudienceArgs),
}

/// Flags every command that reads the configuration accepts.
#[derive(Args)]
struct Common {
    /// TOML configuration file (settings there are overridden by MPS_* variables and flags).
    #[arg(long, env = "MPS_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the embedded store and generated secrets [default: ./mps-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// jemalloc instead of the system allocator: a node holds tens of thousands of idle
/// connections whose small, long-lived allocations sit between the short-lived ones of their
/// handshakes. glibc's malloc keeps the pages those leave behind (7 KiB of RSS per idle
/// connection, against about 3 KiB live); jemalloc's size classes and decay give them back.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (`_RJEM_MALLOC_CONF` in the environment overrides them): a background
/// thread returns unused dirty pages after a second instead of on the next allocation.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mps: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(common: &Common, overrides: Overrides) -> anyhow::Result<Config> {
    Ok(Config::load(
        common.config.as_deref(),
        Overrides {
            data_dir: common.data_dir.clone(),
            ..overrides
        },
    )?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            common,
            listen,
            admin_key,
            jwt_secret,
            redis_url,
            postgres_url,
            print_config,
        } => {
            let config = load(
                &common,
                Overrides {
                    listen,
                    admin_key,
                    auth: jwt_secret.map(|s| AuthOverrides {
                        jwt_secret: Some(s),
                    }),
                    store: postgres_url.map(|postgres_url| StoreOverrides { postgres_url }),
                    cluster: redis_url.map(|redis_url| ClusterOverrides { redis_url }),
                    ..Overrides::default()
                },
            )?;
            if print_config {
                print!("{}", config.to_toml_masked());
                return Ok(());
            }
            mps::telemetry::init_logs(&config.log);
            tokio::runtime::Runtime::new()?.block_on(mps::server::serve(config))
        }
        Command::Token {
            common,
            user,
            app,
            ttl,
            secret,
            topics,
        } => {
            let config = load(
                &common,
                Overrides {
                    auth: secret.map(|s| AuthOverrides {
                        jwt_secret: Some(s),
                    }),
                    ..Overrides::default()
                },
            )?;
            let secrets = mps::server::Secrets::for_tokens(&config)?;
            let auth = mps::server::authenticator(&config, &secrets)?;
            mps::words::check_name("user", &user)?;
            let app = app.unwrap_or_else(|| mps::auth::DEFAULT_APP.to_owned());
            mps::words::check_name("app", &app)?;
            let topics = (!topics.is_empty()).then_some(topics);
            let (token, _) = auth.issue(&app, &user, ttl, topics)?;
            println!("{token}");
            Ok(())
        }
        Command::Send(args) => mps::cli::send(args),
        Command::Clients(args) => mps::cli::clients(args),
        Command::Messages(args) => mps::cli::messages(args),
        Command::Bench {
            mode: BenchMode::Load(mode),
        } => mps_bench::run(mode),
        Command::Bench {
            mode: BenchMode::Audience(args),
        } => mps::cli::bench::run(args),
    }
}
