//! Message ids: 64-bit, increasing with time on each node, unique across nodes.
//!
//! Layout (high to low): 41 bits of milliseconds since 2024-01-01, 13 bits of sequence,
//! 10 bits of node number. Consecutive ids of one node differ by at least 1024 in the low bits,
//! so a burst beyond 8192 ids in one millisecond borrows from the next millisecond instead of
//! colliding with another node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const EPOCH_MS: u64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const TIME_SHIFT: u32 = 23;

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
}
