//! Message ids: 64-bit, increasing with time on each node, unique across nodes.
//!
//! Layout (high to low): 41 bits of milliseconds since 2024-01-01, 13 bits of sequence,
//! 10 bits of node number. Consecutive ids of one node differ by at least 1024 in the low bits,
//! so a burst beyond 8192 ids in one millisecond borrows from the next millisecond instead of
//! colliding with another node.
//!
//! On the wire and in the store's text a message id is a decimal string; [`MessageId`] is the
//! one way back to a number, failing on anything else rather than reading it as 0.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const EPOCH_MS: u64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const TIME_SHIFT: u32 = 23;

/// A message id read from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u64);

impl MessageId {
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Text that is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a message id")]
pub struct BadId(pub String);

impl FromStr for MessageId {
    type Err = BadId;

    fn from_str(text: &str) -> Result<MessageId, BadId> {
        text.parse()
            .map(MessageId)
            .map_err(|_| BadId(text.to_owned()))
    }
}

/// A message id the server wrote itself, read back from the store or from another node: one
/// that does not parse is logged, and the caller skips its message.
pub fn read_back(text: &str) -> Option<u64> {
    match text.parse::<MessageId>() {
        Ok(id) => Some(id.get()),
        Err(e) => {
            tracing::error!(error = %e, "skipping a message whose id does not parse");
            None
        }
    }
}

pub struct IdGen {
    node: u64,
    last: AtomicU64,
}

impl IdGen {
    pub fn new(node: u16) -> Self {
        IdGen {
            node: u64::from(node) & ((1 << NODE_BITS) - 1),
            last: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> u64 {
        let floor = (now_ms().saturating_sub(EPOCH_MS) << TIME_SHIFT) | self.node;
        let step = 1 << NODE_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let id = floor.max(prev + step);
            match self
                .last
                .compare_exchange_weak(prev, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(seen) => prev = seen,
            }
        }
    }
}

/// The smallest id any node assigns at Unix millisecond `ms`: ids above it were assigned then
/// or later.
pub fn first_id_at(ms: u64) -> u64 {
    ms.saturating_sub(EPOCH_MS) << TIME_SHIFT
}

/// The smallest id of any node `ms` milliseconds before `id`.
pub fn minus_millis(id: u64, ms: u64) -> u64 {
    (id >> TIME_SHIFT).saturating_sub(ms) << TIME_SHIFT
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_keep_the_node() {
        let ids = IdGen::new(5);
        let mut prev = 0;
        for _ in 0..20_000 {
            let id = ids.next();
            assert!(id > prev);
            assert_eq!(id & 1023, 5);
            prev = id;
        }
        assert!(prev < i64::MAX as u64);
    }

    #[test]
    fn message_ids_parse_decimal_only() {
        let id: MessageId = "123456789".parse().unwrap();
        assert_eq!(id.get(), 123_456_789);
        for bad in ["", "abc", "-1", "1.5", " 7", "18446744073709551616"] {
            let err = bad.parse::<MessageId>().unwrap_err();
            assert_eq!(err.to_string(), format!("{bad:?} is not a message id"));
        }
    }
}
