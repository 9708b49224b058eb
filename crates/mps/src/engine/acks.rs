//! Acks of directed messages, and pulls (`collect`): what changes a message to acked or
//! delivered at the client's word.

use mps_proto::{EventType, PushedMessage};

use super::{Engine, EngineError};
use crate::id::MessageId;
use crate::words::invalid;

/// Most ids one ack may carry.
pub const MAX_ACK_IDS: usize = 1000;

/// Parses message ids given as decimal strings.
pub fn parse_ids(ids: &[String]) -> Result<Vec<u64>, EngineError> {
    ids.iter()
        .map(|id| {
            id.parse::<MessageId>()
                .map(MessageId::get)
                .map_err(|e| invalid::<EngineError>("invalid_id", e.to_string()))
        })
        .collect()
}

impl Engine {
    /// A client's ack of message ids (decimal strings); returns how many changed to `acked`.
    pub async fn ack(&self, app: &str, user: &str, ids: &[String]) -> Result<u64, EngineError> {
        if ids.len() > MAX_ACK_IDS {
            return Err(invalid(
                "too_many_ids",
                format!("at most {MAX_ACK_IDS} ids per ack"),
            ));
        }
        let ids = parse_ids(ids)?;
        let acked = self.store.ack(app, user, ids).await?;
        metrics::counter!("mps_acks_total").increment(acked.len() as u64);
        self.channels
            .events()
            .recipients(EventType::MessageAcked, app, user, &acked);
        Ok(acked.len() as u64)
    }

    /// Pull: the user's pending messages (any agent), marked delivered.
    pub async fn collect(
        &self,
        app: &str,
        user: &str,
        limit: usize,
    ) -> Result<Vec<PushedMessage>, EngineError> {
        let pending = self.store.pending(app, user, None, 0, limit).await?;
        let ids = pending
            .iter()
            .filter_map(|m| crate::id::read_back(&m.id))
            .collect();
        let changed = self.store.mark_delivered(app, user, ids).await?;
        self.channels
            .events()
            .recipients(EventType::MessageDelivered, app, user, &changed);
        Ok(pending)
    }
}
