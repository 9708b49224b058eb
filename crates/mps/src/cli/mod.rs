//! Operator commands of the `mps` binary: `mps send`, `mps clients` and `mps messages` call a
//! running server's HTTP API through the `mps-client` crate and print a table, or with `--json`
//! the API's own JSON. The server is `--url` (`MPS_URL`, else the configured `admin_listen`, else
//! the listen address); the admin key is `--key` (`MPS_ADMIN_KEY`, else the configured key, else
//! `admin.key` in the data directory, as `mps token` finds its secret). [`bench`] is `mps bench
//! audience`, which times audience resolution against a store of its own.

pub mod bench;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use mps_client::Api;
use mps_proto::{MessageRecord, OnlineClient, PushPolicy, SendMessage, Status};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::{Config, Overrides};

/// Where the server is and how to authenticate: shared by every operator command.
#[derive(Args)]
pub struct Target {
    /// Base URL of the server [default: the configured admin_listen, else the listen address].
    #[arg(long, env = "MPS_URL")]
    pub url: Option<String>,
    /// Admin key [default: the configured one, else admin.key in the data directory].
    #[arg(long, env = "MPS_ADMIN_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// TOML configuration file to take the listen address and data directory from.
    #[arg(long, env = "MPS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory holding admin.key [default: ./mps-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    /// The API client for the server this command talks to.
    fn api(&self) -> anyhow::Result<Api> {
        let config = Config::load(
            self.config.as_deref(),
            Overrides {
                data_dir: self.data_dir.clone(),
                ..Overrides::default()
            },
        )?;
        let url = match &self.url {
            Some(url) => url.clone(),
            None => {
                // The admin routes are on the admin listener when there is one (always plain
                // HTTP), else on the client listener (with TLS when it is on).
                let (mut listen, scheme) = match config.admin_listen {
                    Some(admin) => (admin, "http"),
                    None if config.tls.cert.is_some() => (config.listen, "https"),
                    None => (config.listen, "http"),
                };
                if listen.ip().is_unspecified() {
                    listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("{scheme}://{listen}")
            }
        };
        let key = match &self.key {
            Some(key) => key.clone(),
            None => crate::server::admin_key(&config).context(
                "no admin key: give --key or MPS_ADMIN_KEY, or run where the server's data \
                 directory is (--data-dir)",
            )?,
        };
        Ok(Api::new(&url, &key))
    }
}

/// `mps send`: one message, directed, to a topic, to a component, or broadcast.
#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    target: Target,
    /// Directed: these users (comma-separated); durable, with per-recipient status.
    #[arg(long, value_delimiter = ',')]
    to: Vec<String>,
    /// Publish to this topic (kept in its retained log).
    #[arg(long, conflicts_with = "to")]
    topic: Option<String>,
    /// The producing system; without --to, the message goes to clients subscribed to it.
    #[arg(long)]
    component: Option<String>,
    /// To every online client of the app (live only). Needed when no --to, --topic or
    /// --component is given, so that nothing is broadcast by mistake.
    #[arg(long, conflicts_with_all = ["to", "topic", "component"])]
    broadcast: bool,
    /// The content, any JSON; read from standard input when absent or `-`.
    #[arg(long)]
    content: Option<String>,
    #[arg(long)]
    title: Option<String>,
    /// Message type, a number the clients interpret.
    #[arg(long = "type", default_value_t = 0)]
    kind: i64,
    /// Seconds until the message expires [default: messages.ttl of the server].
    #[arg(long)]
    ttl: Option<u64>,
    /// Only connections of these agents receive it (comma-separated: ios,bs).
    #[arg(long, value_delimiter = ',')]
    agents: Vec<String>,
    /// Sender shown in the records [default: mps-cli].
    #[arg(long, default_value = "mps-cli")]
    sender: String,
    /// The app (tenant) [default: default].
    #[arg(long)]
    app: Option<String>,
    /// Idempotency key: a repeat within the server's window is not sent again.
    #[arg(long)]
    id: Option<String>,
    /// Directed: also through the recipients' registered devices (APNs, FCM, Web Push):
    /// `offline` (those without a live connection), `always` or `never` [default: offline].
    #[arg(long, value_parser = ["offline", "always", "never"])]
    push: Option<String>,
}

/// `mps clients`: the online clients, filtered; or disconnect one.
#[derive(Args)]
pub struct ClientsArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    app: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    /// websocket, websocket-simple, sse or poll.
    #[arg(long)]
    transport: Option<String>,
    #[arg(long)]
    node: Option<String>,
    /// Disconnect this client (close code 4403) instead of listing.
    #[arg(long, value_name = "ID")]
    disconnect: Option<String>,
}

/// `mps messages`: page the message records, show one with per-recipient status, or delete one.
#[derive(Args)]
pub struct MessagesArgs {
    #[command(flatten)]
    target: Target,
    /// Show this message with every recipient's status.
    #[arg(long, conflicts_with = "delete")]
    id: Option<String>,
    /// Delete this message.
    #[arg(long, value_name = "ID")]
    delete: Option<String>,
    /// pending, pushed, failed, delivered, acked or expired.
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    sender: Option<String>,
    #[arg(long)]
    receiver: Option<String>,
    #[arg(long)]
    component: Option<String>,
    #[arg(long)]
    app: Option<String>,
    /// Created at or after, Unix ms.
    #[arg(long)]
    from: Option<i64>,
    /// Created before, Unix ms.
    #[arg(long)]
    to: Option<i64>,
    /// Page number, from 1.
    #[arg(long, default_value_t = 1)]
    page: u64,
    /// Records per page, 1 to 1000.
    #[arg(long, default_value_t = 20)]
    size: u64,
}

/// Runs an operator command to its end on a small runtime of its own.
fn block_on<F: Future<Output = anyhow::Result<()>>>(work: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn send(args: SendArgs) -> anyhow::Result<()> {
    if args.to.is_empty() && args.topic.is_none() && args.component.is_none() && !args.broadcast {
        bail!("give --to USERS, --topic, --component, or --broadcast for every online client");
    }
    let content = match args.content.as_deref() {
        Some(text) if text != "-" => text.to_owned(),
        _ => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("give --content JSON, or pipe the JSON content on standard input");
            }
            let mut text = String::new();
            stdin.read_to_string(&mut text)?;
            text
        }
    };
    let content = RawValue::from_string(content.trim().to_owned())
        .context("the content is not valid JSON")?;
    let message = SendMessage {
        content,
        receiver: (!args.to.is_empty()).then_some(args.to),
        title: args.title,
        kind: args.kind,
        component: args.component,
        topic: args.topic,
        agents: (!args.agents.is_empty()).then_some(args.agents),
        ttl: args.ttl,
        sender: Some(args.sender),
        app: args.app,
        id: args.id,
        push: args.push.as_deref().map(|policy| match policy {
            "always" => PushPolicy::Always,
            "never" => PushPolicy::Never,
            _ => PushPolicy::Offline,
        }),
        channels: None,
        audience: None,
        live: false,
        formats: None,
    };
    let api = args.target.api()?;
    block_on(async move {
        let sent = api.send(&message).await?;
        if args.target.json {
            return print_json(&sent);
        }
        let class = serde_json::to_value(sent.class)?;
        let class = class.as_str().unwrap_or("?");
        let mut line = format!("sent {} ({class}", sent.id);
        if class == "directed" {
            line.push_str(&format!(", {} recipients", sent.recipients));
        }
        if sent.duplicate {
            line.push_str(", a repeat of its idempotency key: not sent again");
        }
        println!("{line})");
        Ok(())
    })
}

pub fn clients(args: ClientsArgs) -> anyhow::Result<()> {
    let api = args.target.api()?;
    block_on(async move {
        if let Some(id) = &args.disconnect {
            api.disconnect(id).await?;
            if args.target.json {
                return print_json(&serde_json::json!({ "disconnected": id }));
            }
            println!("disconnected {id}");
            return Ok(());
        }
        let wanted =
            |value: &str, filter: &Option<String>| filter.as_deref().is_none_or(|f| f == value);
        let clients: Vec<OnlineClient> = api
            .clients()
            .await?
            .into_iter()
            .filter(|c| {
                wanted(&c.user, &args.user)
                    && wanted(&c.app, &args.app)
                    && wanted(&c.agent, &args.agent)
                    && wanted(&c.transport, &args.transport)
                    && wanted(&c.node, &args.node)
            })
            .collect();
        if args.target.json {
            return print_json(&clients);
        }
        let mut table = Table::new(&[
            "ID",
            "APP",
            "USER",
            "AGENT",
            "DEVICE",
            "TRANSPORT",
            "LOGIN",
            "REMOTE",
            "NODE",
        ]);
        for c in &clients {
            table.row(vec![
                c.id.clone(),
                c.app.clone(),
                c.user.clone(),
                c.agent.clone(),
                c.device.clone().unwrap_or_default(),
                c.transport.clone(),
                utc(c.login),
                c.remote.clone(),
                c.node.clone(),
            ]);
        }
        table.print();
        println!("{} online", clients.len());
        Ok(())
    })
}

pub fn messages(args: MessagesArgs) -> anyhow::Result<()> {
    if let Some(status) = &args.status
        && Status::parse(status).is_none()
    {
        let all: Vec<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
        bail!("--status must be one of {}", all.join(", "));
    }
    let api = args.target.api()?;
    block_on(async move {
        if let Some(id) = &args.delete {
            api.delete(id).await?;
            if args.target.json {
                return print_json(&serde_json::json!({ "deleted": id }));
            }
            println!("deleted {id}");
            return Ok(());
        }
        if let Some(id) = &args.id {
            let record = api.message(id).await?;
            if args.target.json {
                return print_json(&record);
            }
            print_record(&record);
            return Ok(());
        }
        let mut query: Vec<(&str, String)> = vec![
            ("page", args.page.to_string()),
            ("size", args.size.to_string()),
        ];
        for (name, value) in [
            ("status", &args.status),
            ("sender", &args.sender),
            ("receiver", &args.receiver),
            ("component", &args.component),
            ("app", &args.app),
        ] {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        for (name, value) in [("from", args.from), ("to", args.to)] {
            if let Some(value) = value {
                query.push((name, value.to_string()));
            }
        }
        let page = api.messages(&query).await?;
        if args.target.json {
            return print_json(&page);
        }
        let mut table = Table::new(&[
            "ID",
            "CREATED",
            "APP",
            "SENDER",
            "COMPONENT",
            "TITLE",
            "RECIPIENTS",
        ]);
        for m in &page.items {
            table.row(vec![
                m.id.clone(),
                utc(m.created),
                m.app.clone(),
                m.sender.clone().unwrap_or_default(),
                m.component.clone().unwrap_or_default(),
                m.title.clone().unwrap_or_default(),
                summary(m),
            ]);
        }
        table.print();
        let pages = page.total.div_ceil(page.size.max(1));
        println!(
            "page {} of {pages}, {} messages in all",
            page.page, page.total
        );
        Ok(())
    })
}

/// Recipients per status: `pending=1 acked=2`.
fn summary(record: &MessageRecord) -> String {
    record
        .summary
        .iter()
        .map(|(status, count)| format!("{}={count}", status.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_record(record: &MessageRecord) {
    let fields = [
        ("id", record.id.clone()),
        ("app", record.app.clone()),
        ("title", record.title.clone().unwrap_or_default()),
        ("type", record.kind.to_string()),
        ("component", record.component.clone().unwrap_or_default()),
        ("sender", record.sender.clone().unwrap_or_default()),
        (
            "agents",
            record
                .agents
                .as_ref()
                .map(|a| a.join(","))
                .unwrap_or_default(),
        ),
        ("created", utc(record.created)),
        ("expires", utc(record.expires)),
        ("content", record.content.get().to_owned()),
        ("summary", summary(record)),
    ];
    for (name, value) in fields {
        println!("{}", format!("{name:<10} {value}").trim_end());
    }
    println!();
    let mut table = Table::new(&["USER", "STATUS", "UPDATED", "REASON"]);
    for r in record.recipients.iter().flatten() {
        table.row(vec![
            r.user.clone(),
            r.status.as_str().to_owned(),
            utc(r.updated),
            r.reason.clone().unwrap_or_default(),
        ]);
    }
    table.print();
}

/// A plain text table: columns as wide as their widest cell, two spaces apart.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        // One line per row, whatever the cell holds.
        self.rows.push(
            cells
                .into_iter()
                .map(|c| c.replace(['\n', '\r', '\t'], " "))
                .collect(),
        );
    }

    fn print(&self) {
        let columns = self.rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// Unix milliseconds as `2026-11-22 06:34:15Z`.
fn utc(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_795_329_255_999), "2026-11-22 06:34:15Z");
    }
}
