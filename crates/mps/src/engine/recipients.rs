//! Who a message goes to: its receiver list, or the users its audience matches (in the store
//! for a durable message, among the clients online now for a live one).

use mps_proto::SendMessage;

use super::{Engine, EngineError};
use crate::audience::Audience;
use crate::words::{check_name, invalid};

impl Engine {
    /// Parses and checks a message's audience, if it has one.
    pub(super) fn check_audience(
        &self,
        req: &SendMessage,
    ) -> Result<Option<Audience>, EngineError> {
        let Some(text) = &req.audience else {
            if req.live {
                return Err(invalid(
                    "live_without_audience",
                    "live is for audiences; a message without receiver is live already",
                ));
            }
            return Ok(None);
        };
        for (given, field) in [
            (req.receiver.is_some(), "receiver"),
            (req.topic.is_some(), "topic"),
            (req.agents.is_some(), "agents"),
        ] {
            if given {
                return Err(invalid(
                    "audience_conflict",
                    format!(
                        "a message has either an audience or {field}, not both (agents go into the audience as agent: terms)"
                    ),
                ));
            }
        }
        let audience = Audience::parse(text)
            .map_err(|e| invalid::<EngineError>("invalid_audience", e.to_string()))?;
        if audience.users.is_none() && !req.live {
            return Err(invalid(
                "invalid_audience",
                "audience: a stored audience needs a term other than agent: (send it live to \
                 reach every online client of those agents)",
            ));
        }
        Ok(Some(audience))
    }

    /// The users of a durable audience, online or not, from the store.
    pub(super) async fn stored_audience(
        &self,
        app: &str,
        audience: &Audience,
    ) -> Result<Vec<String>, EngineError> {
        let Some(expr) = &audience.users else {
            return Ok(Vec::new());
        };
        let max = self.config.max_audience;
        let started = std::time::Instant::now();
        let users = self
            .store
            .resolve(app, expr, None, max.saturating_add(1))
            .await?;
        metrics::histogram!("mps_audience_resolve_seconds", "class" => "stored")
            .record(started.elapsed().as_secs_f64());
        if users.len() > max {
            return Err(invalid(
                "audience_too_large",
                format!("the audience matches more than {max} users (messages.max_audience)"),
            ));
        }
        Ok(users)
    }

    /// The users of a live audience: those online now on any node with a matching client (of an
    /// admitted agent and, for a component message, subscribed to it).
    pub(super) async fn online_audience(
        &self,
        app: &str,
        audience: &Audience,
        component: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let started = std::time::Instant::now();
        let mut online: Vec<String> = self
            .presence
            .list()
            .await?
            .into_iter()
            .filter(|c| {
                c.app == app
                    && audience.agents.admits(&c.agent)
                    && component.is_none_or(|wanted| c.components.iter().any(|c| c == wanted))
            })
            .map(|c| c.user)
            .collect();
        online.sort_unstable();
        online.dedup();
        let users = match &audience.users {
            Some(expr) if !online.is_empty() => {
                let limit = online.len();
                self.store.resolve(app, expr, Some(online), limit).await?
            }
            Some(_) => Vec::new(),
            None => online,
        };
        metrics::histogram!("mps_audience_resolve_seconds", "class" => "live")
            .record(started.elapsed().as_secs_f64());
        Ok(users)
    }

    /// Checks a receiver list; returns it sorted, without repeats.
    pub(super) fn check_recipients(&self, list: Vec<String>) -> Result<Vec<String>, EngineError> {
        if list.is_empty() {
            return Err(invalid(
                "invalid_receiver",
                "receiver is empty; omit it to broadcast",
            ));
        }
        if list.len() > self.config.max_recipients {
            return Err(invalid(
                "too_many_recipients",
                format!("at most {} recipients", self.config.max_recipients),
            ));
        }
        for user in &list {
            check_name("receiver", user)?;
        }
        let mut list = list;
        list.sort_unstable();
        list.dedup();
        Ok(list)
    }
}
