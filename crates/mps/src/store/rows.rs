//! The row mapping of both stores: how a stored status is coded, and how a selected row (its
//! columns in the order the constants here give) becomes a record, a pending message, a due
//! step or a device registration. A backend only says how it reads one column ([`Columns`]).

use std::collections::BTreeMap;

use mps_proto::{
    ChannelState, ChannelStatus, EventData, MessageRecord, PushedMessage, RecipientStatus, Status,
};
use serde_json::value::RawValue;

use super::{DueStep, formats_from};
use crate::words::AgentFilter;
use crate::words::{Channel, Device, Way};

/// The columns of a message's record, read by [`record`].
pub const RECORD_COLUMNS: &str = "m.id, m.app, m.title, m.kind, m.component, m.sender, m.agents, m.content, m.created, m.expires, m.except_agents, m.formats";

/// How a backend reads one column of a row, by position.
pub trait Columns {
    type Error;
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    /// A status or push code (a small integer).
    fn code(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    /// A list of agents; `None`: the column is NULL.
    fn agents(&self, i: usize) -> Result<Option<Vec<String>>, Self::Error>;
    /// A device's components.
    fn components(&self, i: usize) -> Result<Vec<String>, Self::Error>;
}

/// The stored `status` column: `pushed` and `failed` are pending rows with a `push` mark.
pub fn status_code(status: Status) -> i64 {
    match status {
        Status::Pending | Status::Pushed | Status::Failed => 0,
        Status::Delivered => 1,
        Status::Acked => 2,
        Status::Expired => 3,
    }
}

/// A recipient's status from its `status` and `push` columns.
pub fn status_from(code: i64, push: Option<i64>) -> Status {
    match (code, push) {
        (0, Some(1)) => Status::Pushed,
        (0, Some(_)) => Status::Failed,
        (0, None) => Status::Pending,
        (1, _) => Status::Delivered,
        (2, _) => Status::Acked,
        _ => Status::Expired,
    }
}

/// The `push` column of a vendor push result.
pub fn push_code(pushed: bool) -> i64 {
    if pushed { 1 } else { 2 }
}

/// The condition on a recipient row `r` that it is in `status`.
pub fn status_condition(status: Status) -> String {
    match status {
        Status::Pending => "r.status = 0 AND r.push IS NULL".into(),
        Status::Pushed => "r.status = 0 AND r.push = 1".into(),
        Status::Failed => "r.status = 0 AND r.push = 2".into(),
        other => format!("r.status = {}", status_code(other)),
    }
}

/// The agent filter of a stored message from its `agents` and `except_agents` columns.
fn agent_filter(only: Option<Vec<String>>, except: Option<Vec<String>>) -> AgentFilter {
    match (only, except) {
        (Some(list), _) => AgentFilter::Only(list),
        (None, Some(list)) => AgentFilter::Except(list),
        (None, None) => AgentFilter::Any,
    }
}

/// A stored channel row of one recipient, as read for a message's record.
pub struct ChannelRow {
    pub channel: String,
    pub status: String,
    pub due: Option<i64>,
    pub reason: Option<String>,
    pub updated: i64,
}

/// A recipient's `channels` in a record: `live` from its status, `push` from the vendor push
/// result, and the rows of its channel chain (a vendor push result wins over its step's row).
fn channels_of(
    status: Status,
    updated: i64,
    reason: Option<&str>,
    rows: Vec<ChannelRow>,
) -> BTreeMap<String, ChannelState> {
    let state = |status, reason: Option<&str>| ChannelState {
        status,
        updated,
        due: None,
        reason: reason.map(str::to_owned),
    };
    let mut channels = BTreeMap::new();
    let live = match status {
        Status::Pending | Status::Pushed | Status::Failed => ChannelStatus::Pending,
        Status::Delivered => ChannelStatus::Delivered,
        Status::Acked => ChannelStatus::Acked,
        Status::Expired => ChannelStatus::Expired,
    };
    channels.insert("live".to_owned(), state(live, None));
    for row in rows {
        channels.insert(
            row.channel,
            ChannelState {
                // Only the stores write the column, from a `ChannelStatus`.
                status: ChannelStatus::parse(&row.status).unwrap_or(ChannelStatus::Failed),
                updated: row.updated,
                due: row.due,
                reason: row.reason,
            },
        );
    }
    match status {
        Status::Pushed => {
            channels.insert(
                Channel::Push.as_str().to_owned(),
                state(ChannelStatus::Pushed, None),
            );
        }
        Status::Failed => {
            channels.insert(
                Channel::Push.as_str().to_owned(),
                state(ChannelStatus::Failed, reason),
            );
        }
        _ => {}
    }
    channels
}

/// Content was valid JSON when stored; a damaged row still comes back as a JSON string.
pub fn raw(content: String) -> Box<RawValue> {
    RawValue::from_string(content).unwrap_or_else(|e| {
        RawValue::from_string(serde_json::Value::String(e.to_string()).to_string())
            .unwrap_or_default()
    })
}

/// A message's record without its recipients, from [`RECORD_COLUMNS`].
pub fn record<R: Columns>(row: &R) -> Result<MessageRecord, R::Error> {
    Ok(MessageRecord {
        id: row.int(0)?.to_string(),
        app: row.text(1)?,
        title: row.opt_text(2)?,
        kind: row.int(3)?,
        component: row.opt_text(4)?,
        sender: row.opt_text(5)?,
        agents: row.agents(6)?,
        except_agents: row.agents(10)?,
        formats: formats_from(row.opt_text(11)?.as_deref()),
        content: raw(row.text(7)?),
        created: row.int(8)?,
        expires: row.int(9)?,
        summary: BTreeMap::new(),
        recipients: None,
    })
}

/// A backlog message in the shape `agent`'s connections get it, from `m.id, m.title, m.kind,
/// m.component, m.sender, m.created, m.content, m.formats`.
pub fn pushed<R: Columns>(row: &R, agent: Option<&str>) -> Result<PushedMessage, R::Error> {
    let mut message = PushedMessage {
        id: row.int(0)?.to_string(),
        title: row.opt_text(1)?,
        kind: row.int(2)?,
        component: row.opt_text(3)?,
        topic: None,
        sender: row.opt_text(4)?,
        created: row.int(5)?,
        ack: true,
        event_data: EventData {
            ext: raw(row.text(6)?),
        },
    };
    crate::formats::apply_stored(&mut message, row.opt_text(7)?.as_deref(), agent);
    Ok(message)
}

/// A claimed step from `message_id, app, user, channel, r.status, r.push, m.title, m.kind,
/// m.component, m.sender, m.agents, m.except_agents, m.formats, m.content, m.created,
/// m.expires`.
pub fn due_step<R: Columns>(row: &R) -> Result<DueStep, R::Error> {
    Ok(DueStep {
        id: row.int(0)? as u64,
        app: row.text(1)?,
        user: row.text(2)?,
        channel: row.text(3)?,
        // A recipient no longer there counts as expired.
        status: match row.code(4)? {
            Some(code) => status_from(code, row.code(5)?),
            None => Status::Expired,
        },
        title: row.opt_text(6)?,
        kind: row.int(7)?,
        component: row.opt_text(8)?,
        sender: row.opt_text(9)?,
        agents: agent_filter(row.agents(10)?, row.agents(11)?),
        formats: row.opt_text(12)?,
        content: raw(row.text(13)?),
        created: row.int(14)?,
        expires: row.int(15)?,
    })
}

/// One recipient's channel row, with the recipient, from `user, channel, status, due, reason,
/// updated`.
pub fn channel_row<R: Columns>(row: &R) -> Result<(String, ChannelRow), R::Error> {
    Ok((
        row.text(0)?,
        ChannelRow {
            channel: row.text(1)?,
            status: row.text(2)?,
            due: row.opt_int(3)?,
            reason: row.opt_text(4)?,
            updated: row.int(5)?,
        },
    ))
}

/// A recipient of a record from `user, status, push, updated, reason`, with its channel rows
/// (taken from `channels`).
pub fn recipient<R: Columns>(
    row: &R,
    channels: &mut BTreeMap<String, Vec<ChannelRow>>,
) -> Result<RecipientStatus, R::Error> {
    let status = status_from(row.code(1)?.unwrap_or_default(), row.code(2)?);
    let user = row.text(0)?;
    let updated = row.int(3)?;
    let reason = if status == Status::Failed {
        row.opt_text(4)?
    } else {
        None
    };
    let channels = channels_of(
        status,
        updated,
        reason.as_deref(),
        channels.remove(&user).unwrap_or_default(),
    );
    Ok(RecipientStatus {
        user,
        status,
        updated,
        reason,
        channels,
    })
}

/// A status and how many recipients are in it, from `status, push, count` columns from `at`.
pub fn status_count<R: Columns>(row: &R, at: usize) -> Result<(Status, u64), R::Error> {
    let status = status_from(row.code(at)?.unwrap_or_default(), row.code(at + 1)?);
    Ok((status, row.int(at + 2)? as u64))
}

/// A registration from the device columns, in this order: app, user, device, way, agent,
/// token, components, refreshed.
pub fn device<R: Columns>(row: &R) -> Result<Device, R::Error> {
    Ok(Device {
        app: row.text(0)?,
        user: row.text(1)?,
        device: row.text(2)?,
        // Only the stores write the column, from a `Way`.
        way: Way::parse(&row.text(3)?).unwrap_or(Way::Webpush),
        agent: row.text(4)?,
        token: row.text(5)?,
        components: row.components(6)?,
        refreshed: row.int(7)?,
    })
}
