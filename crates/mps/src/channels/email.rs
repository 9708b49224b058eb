//! The e-mail channel: a directed message sent as a plain-text e-mail to each recipient's
//! `email` attribute through the app's SMTP relay (`[push.apps.<app>.email]`,
//! docs/channels.md).
//!
//! Every e-mail is a step of the message's channel chain ([`super::chain`]): the chain's runner
//! hands due steps to [`Mailer::offer`], each app's bounded queue feeds a few senders, and each outcome
//! (`sent`, `failed`, `muted`, `skipped`) is recorded in the store. Temporary SMTP failures
//! (4xx answers, connection errors, timeouts) are retried with a bounded exponential backoff;
//! a permanent one (5xx) gives up at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::{Semaphore, mpsc};

use crate::config::{EmailConfig, TlsMode};
use crate::preferences::Muting;
use crate::retry::Backoff;
use crate::shutdown::Tasks;
use crate::store::{StepRecord, Store};
use crate::words::Channel;
use mps_proto::ChannelStatus;

/// The attribute that holds a user's e-mail address (`PUT /api/v1/users/{user}/attributes`).
pub const ADDRESS_ATTRIBUTE: &str = "email";
/// E-mails of one app being sent at once.
const SENDERS: usize = 4;

/// One e-mail to send: a message for one recipient, in its `email` shape.
#[derive(Debug, Clone)]
pub struct Email {
    pub app: String,
    pub id: u64,
    pub user: String,
    pub title: Option<String>,
    pub component: Option<String>,
    pub sender: Option<String>,
    /// The content as JSON text.
    pub content: String,
}

struct AppEmail {
    queue: mpsc::Sender<Email>,
}

/// The e-mail channels of a server's apps.
pub struct Mailer {
    apps: BTreeMap<String, AppEmail>,
}

/// What each app's senders share.
struct Sender {
    app: String,
    config: EmailConfig,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    store: Arc<dyn Store>,
}

impl Mailer {
    /// Checks the apps' e-mail channels and starts their senders, which take e-mails until
    /// `tasks` stop, then send what is queued. Call in a runtime.
    pub fn start<'a>(
        apps: impl Iterator<Item = (&'a String, &'a EmailConfig)>,
        store: Arc<dyn Store>,
        tasks: &Tasks,
    ) -> anyhow::Result<Mailer> {
        let mut started = BTreeMap::new();
        for (app, config) in apps {
            started.insert(app.clone(), start(app, config, &store, tasks)?);
        }
        Ok(Mailer { apps: started })
    }

    /// Whether `app` has an e-mail channel.
    pub fn configured(&self, app: &str) -> bool {
        self.apps.contains_key(app)
    }

    /// Queues an e-mail; false when the app's queue is full (or it has no e-mail channel).
    pub fn offer(&self, email: Email) -> bool {
        let Some(app) = self.apps.get(&email.app) else {
            return false;
        };
        let taken = app.queue.try_send(email).is_ok();
        if !taken {
            count("dropped");
        }
        taken
    }
}

/// Checks one app's e-mail channel and starts its senders.
fn start(
    app: &str,
    config: &EmailConfig,
    store: &Arc<dyn Store>,
    tasks: &Tasks,
) -> anyhow::Result<AppEmail> {
    let what = format!("[push.apps.{app}.email]");
    anyhow::ensure!(!config.host.is_empty(), "{what}: host is empty");
    anyhow::ensure!(config.queue > 0, "{what}: queue must be at least 1");
    anyhow::ensure!(config.attempts > 0, "{what}: attempts must be at least 1");
    let from: Mailbox = config
        .from
        .parse()
        .with_context(|| format!("{what}: from {:?} is not an address", config.from))?;
    let tls = match config.tls {
        TlsMode::None => Tls::None,
        TlsMode::Starttls => Tls::Required(
            TlsParameters::new(config.host.clone()).with_context(|| format!("{what}: TLS"))?,
        ),
        TlsMode::Tls => Tls::Wrapper(
            TlsParameters::new(config.host.clone()).with_context(|| format!("{what}: TLS"))?,
        ),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(config.timeout.max(1))));
    match (&config.username, &config.password) {
        (Some(user), Some(password)) => {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        (None, None) => {}
        _ => anyhow::bail!("{what}: give both username and password, or neither"),
    }
    for result in ["sent", "failed", "muted", "skipped", "dropped"] {
        metrics::counter!("mps_channel_messages_total", "channel" => Channel::Email.as_str(), "result" => result)
            .absolute(0);
    }
    metrics::counter!("mps_email_retries_total").absolute(0);
    let (tx, rx) = mpsc::channel(config.queue);
    let sender = Arc::new(Sender {
        app: app.to_owned(),
        config: config.clone(),
        from,
        transport: builder.build(),
        store: store.clone(),
    });
    tasks.spawn(run(sender, rx, tasks.clone()));
    Ok(AppEmail { queue: tx })
}

fn count(result: &'static str) {
    metrics::counter!("mps_channel_messages_total", "channel" => Channel::Email.as_str(), "result" => result)
        .increment(1);
}

async fn run(sender: Arc<Sender>, mut rx: mpsc::Receiver<Email>, tasks: Tasks) {
    let senders = Arc::new(Semaphore::new(SENDERS));
    let stop = tasks.token();
    while let Some(email) = crate::shutdown::next(&mut rx, &stop).await {
        let Ok(permit) = senders.clone().acquire_owned().await else {
            return;
        };
        let sender = sender.clone();
        tasks.spawn(async move {
            let (status, reason) = sender.deliver(&email).await;
            count(status.as_str());
            let record = StepRecord {
                id: email.id,
                user: email.user.clone(),
                channel: Channel::Email.as_str().into(),
                status,
                reason,
            };
            if let Err(e) = sender.store.record_steps(&sender.app, vec![record]).await {
                tracing::warn!(id = email.id, error = %e, "recording an e-mail's outcome failed");
            }
            drop(permit);
        });
    }
}

impl Sender {
    /// Sends one e-mail unless the user has no address or muted it; the outcome and why.
    async fn deliver(&self, email: &Email) -> (ChannelStatus, Option<String>) {
        let store = &self.store;
        let terms = match store.terms(&email.app, &email.user).await {
            Ok(terms) => terms,
            Err(e) => {
                return (
                    ChannelStatus::Failed,
                    Some(format!("reading the address: {e}")),
                );
            }
        };
        let prefix = format!("{ADDRESS_ATTRIBUTE}:");
        let Some(address) = terms.iter().find_map(|t| t.strip_prefix(&prefix)) else {
            return (
                ChannelStatus::Skipped,
                Some("the user has no email attribute".into()),
            );
        };
        let to: Mailbox = match address.parse() {
            Ok(to) => to,
            Err(e) => {
                return (
                    ChannelStatus::Skipped,
                    Some(format!("email attribute {address:?}: {e}")),
                );
            }
        };
        // Not knowing the preferences, send: an e-mail too many beats none.
        if let Ok(found) = store
            .preferences(&email.app, std::slice::from_ref(&email.user))
            .await
        {
            let now = crate::id::now_ms() as i64;
            let muted = found.first().and_then(|(_, p)| {
                p.mutes(email.component.as_deref(), Channel::Email.as_str(), now)
            });
            if let Some(reason) = muted {
                return (ChannelStatus::Muted, Some(reason.into()));
            }
        }
        let message = match lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject(&self.config.subject, email))
            .message_id(Some(format!("<{}.{}@mps>", email.id, email.user)))
            .header(ContentType::TEXT_PLAIN)
            .body(body(email))
        {
            Ok(message) => message,
            Err(e) => return (ChannelStatus::Failed, Some(e.to_string())),
        };
        let backoff = Backoff::new(
            Duration::from_millis(self.config.backoff_ms),
            Duration::from_millis(self.config.max_backoff_ms),
            self.config.attempts,
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.transport.send(message.clone()).await {
                Ok(_) => return (ChannelStatus::Sent, None),
                Err(e) if e.is_permanent() => {
                    tracing::warn!(app = %email.app, id = email.id, error = %e, "the SMTP relay refused an e-mail");
                    return (ChannelStatus::Failed, Some(e.to_string()));
                }
                Err(e) if backoff.gives_up(attempt) => {
                    tracing::warn!(app = %email.app, id = email.id, error = %e, "e-mail not sent after its retries");
                    return (
                        ChannelStatus::Failed,
                        Some(format!("after {attempt} attempts: {e}")),
                    );
                }
                Err(e) => {
                    tracing::debug!(app = %email.app, id = email.id, attempt, error = %e, "e-mail failed; retrying");
                    metrics::counter!("mps_email_retries_total").increment(1);
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
            }
        }
    }
}

/// The subject template filled in; `New message` when it comes out empty.
fn subject(template: &str, email: &Email) -> String {
    let id = email.id.to_string();
    let mut text = template.to_owned();
    for (name, value) in [
        ("title", email.title.as_deref()),
        ("app", Some(email.app.as_str())),
        ("id", Some(id.as_str())),
        ("user", Some(email.user.as_str())),
        ("component", email.component.as_deref()),
        ("sender", email.sender.as_deref()),
    ] {
        text = text.replace(&format!("${{{name}}}"), value.unwrap_or(""));
    }
    let text = text.trim();
    if text.is_empty() {
        "New message".into()
    } else {
        text.to_owned()
    }
}

/// The plain-text body: the content when it is a string, else its `text` or `body` field when
/// that is a string, else the content as indented JSON.
fn body(email: &Email) -> String {
    let content: serde_json::Value = serde_json::from_str(&email.content).unwrap_or_default();
    let text = match &content {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(fields) => ["text", "body"]
            .iter()
            .find_map(|k| fields.get(*k).and_then(|v| v.as_str()).map(str::to_owned)),
        _ => None,
    };
    let mut body =
        text.unwrap_or_else(|| serde_json::to_string_pretty(&content).unwrap_or_default());
    body.push('\n');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(title: Option<&str>, content: &str) -> Email {
        Email {
            app: "shop".into(),
            id: 7,
            user: "alice".into(),
            title: title.map(str::to_owned),
            component: None,
            sender: None,
            content: content.into(),
        }
    }

    #[test]
    fn subjects_and_bodies() {
        let e = email(
            Some("Order shipped"),
            r#"{"text":"It is on its way","n":1}"#,
        );
        assert_eq!(subject("[${app}] ${title}", &e), "[shop] Order shipped");
        assert_eq!(body(&e), "It is on its way\n");
        let bare = email(None, r#"{"n":1}"#);
        assert_eq!(subject("${title}", &bare), "New message");
        assert_eq!(body(&bare), "{\n  \"n\": 1\n}\n");
        assert_eq!(body(&email(None, r#""plain""#)), "plain\n");
    }
}
