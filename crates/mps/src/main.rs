//! The `mps` command: `serve` runs the server; `token` issues a client token; `bench` measures a
//! running server (or Nchan) from the outside (the `mps-bench` crate).

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
    /// Load-test a running server (or Nchan): fan-out, idle connections, directed messages,
    /// connection rate.
    Bench {
        #[command(subcommand)]
        mode: mps_bench::Mode,
    },
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
            let secrets = mps::server::Secrets::resolve(&config, true)?;
            let auth = mps::server::authenticator(&config, &secrets)?;
            mps::engine::check_name("user", &user)?;
            let app = app.unwrap_or_else(|| mps::auth::DEFAULT_APP.to_owned());
            let topics = (!topics.is_empty()).then_some(topics);
            let (token, _) = auth.issue(&app, &user, ttl, topics)?;
            println!("{token}");
            Ok(())
        }
        Command::Bench { mode } => mps_bench::run(mode),
    }
}
