//! What one client may use, and the accounting behind it: connections in total and per remote
//! address ([`Admission`], counted per TCP connection by the listener), request rates per
//! credential ([`KeyedRate`]), and the token bucket ([`TokenBucket`]) that a WebSocket session
//! keeps inline for its own message rate. Connections per user are counted by the hub, which
//! holds the user index. Every refusal is counted in `mps_limit_rejections_total{limit}` (topic
//! names through [`check_topic`] and [`check_pattern`]), every bad client input in
//! `mps_bad_input_total{kind}`; the table of limits, answers and settings is in
//! docs/security.md.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::auth::Identity;
use crate::config::LimitsConfig;
use crate::topic::{Exceeded, TopicError};

/// The limits, as counted in `mps_limit_rejections_total{limit}` (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxConnections,
    ConnectionsPerAddress,
    ConnectionsPerUser,
    RequestTimeout,
    OpenTimeout,
    MessageRate,
    ApiRate,
    ClientRate,
    FrameSize,
    BodySize,
    OutboundQueue,
    Subscriptions,
    TopicLength,
    TopicDepth,
    /// `http.allowed_origins`: a browser page of another origin.
    Origin,
    /// Not a setting: accepting failed (out of file descriptors, say).
    AcceptFailed,
}

impl Limit {
    pub const ALL: [Limit; 16] = [
        Limit::MaxConnections,
        Limit::ConnectionsPerAddress,
        Limit::ConnectionsPerUser,
        Limit::RequestTimeout,
        Limit::OpenTimeout,
        Limit::MessageRate,
        Limit::ApiRate,
        Limit::ClientRate,
        Limit::FrameSize,
        Limit::BodySize,
        Limit::OutboundQueue,
        Limit::Subscriptions,
        Limit::TopicLength,
        Limit::TopicDepth,
        Limit::Origin,
        Limit::AcceptFailed,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::ConnectionsPerAddress => "connections_per_address",
            Limit::ConnectionsPerUser => "connections_per_user",
            Limit::RequestTimeout => "request_timeout",
            Limit::OpenTimeout => "open_timeout",
            Limit::MessageRate => "message_rate",
            Limit::ApiRate => "api_rate",
            Limit::ClientRate => "client_rate",
            Limit::FrameSize => "frame_size",
            Limit::BodySize => "body_size",
            Limit::OutboundQueue => "outbound_queue",
            Limit::Subscriptions => "subscriptions",
            Limit::TopicLength => "topic_length",
            Limit::TopicDepth => "topic_depth",
            Limit::Origin => "origin",
            Limit::AcceptFailed => "accept_failed",
        }
    }
}

/// Counts a request, connection or frame refused by a limit.
pub fn rejected(limit: Limit) {
    metrics::counter!("mps_limit_rejections_total", "limit" => limit.label()).increment(1);
}

/// Records a rejected client input in metrics.
pub fn count_bad_input(kind: &'static str) {
    metrics::counter!("mps_bad_input_total", "kind" => kind).increment(1);
}

/// Checks a published topic ([`crate::topic::check_topic`]), counting a refusal by a limit.
pub fn check_topic(name: &str, limits: crate::topic::Limits) -> Result<(), TopicError> {
    crate::topic::check_topic(name, limits).inspect_err(count_exceeded)
}

/// Checks a subscription pattern ([`crate::topic::check_pattern`]), counting a refusal by a
/// limit.
pub fn check_pattern(pattern: &str, limits: crate::topic::Limits) -> Result<(), TopicError> {
    crate::topic::check_pattern(pattern, limits).inspect_err(count_exceeded)
}

fn count_exceeded(e: &TopicError) {
    match e.exceeded {
        Some(Exceeded::Length) => rejected(Limit::TopicLength),
        Some(Exceeded::Depth) => rejected(Limit::TopicDepth),
        None => {}
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Small and allocation-free,
/// so that a session can keep one inline; the rate and burst are passed in on every take.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes one token; when there is none, how long until there is.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(rate.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst.max(1)));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    /// Whether the bucket would be full again at `now` (so forgetting it changes nothing).
    fn refilled(&self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * f64::from(rate.max(1)) >= f64::from(burst.max(1))
    }
}

/// A rate limit per key (a credential): one token bucket per key seen recently. Keys are
/// hashed, so a check allocates nothing; buckets that have filled up again are forgotten, so
/// memory follows the keys active in the last `burst / rate` seconds.
pub struct KeyedRate {
    /// Requests a second per key; 0 turns the limit off.
    rate: u32,
    burst: u32,
    hasher: RandomState,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<u64, TokenBucket>,
    /// When full buckets are next looked for.
    sweep_at: Instant,
}

/// How many keys are kept before full buckets are looked for.
const SWEEP_ABOVE: usize = 1024;

impl KeyedRate {
    pub fn new(rate: u32, burst: u32) -> Self {
        KeyedRate {
            rate,
            burst: burst.max(1),
            hasher: RandomState::new(),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                sweep_at: Instant::now(),
            }),
        }
    }

    /// Counts one request of `key`; `Err` carries how long until the next would be accepted.
    pub fn check(&self, key: impl Hash) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: impl Hash, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let key = self.hasher.hash_one(key);
        let (rate, burst) = (self.rate, self.burst);
        let mut buckets = self.buckets.lock();
        if buckets.map.len() > SWEEP_ABOVE && now >= buckets.sweep_at {
            buckets.map.retain(|_, b| !b.refilled(rate, burst, now));
            buckets.sweep_at = now + Duration::from_secs(1);
        }
        buckets
            .map
            .entry(key)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(rate, burst, now)
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.buckets.lock().map.len()
    }
}

/// Which connection limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `limits.max_connections`: the node has as many connections as it takes.
    Node,
    /// `limits.connections_per_address`.
    Address,
}

/// Connections in total and per remote address, counted from accept to close. A [`Permit`]
/// is one connection; dropping it (with the socket) frees its place.
pub struct Admission {
    max_total: usize,
    per_address: usize,
    total: AtomicUsize,
    /// Only kept when `per_address` is set.
    addresses: Mutex<HashMap<IpAddr, u32>>,
    /// Connections being answered with a refusal; past [`MAX_REFUSING`] more are dropped at once.
    refusing: AtomicUsize,
}

/// Refused connections being answered at once; more are closed without an answer, so that a
/// flood of refused connections cannot use up file descriptors.
pub const MAX_REFUSING: usize = 256;

impl Admission {
    pub fn new(config: &LimitsConfig) -> Arc<Self> {
        Arc::new(Admission {
            max_total: config.max_connections(),
            per_address: config.connections_per_address,
            total: AtomicUsize::new(0),
            addresses: Mutex::new(HashMap::new()),
            refusing: AtomicUsize::new(0),
        })
    }

    /// Admits a connection from `ip`, or says which limit it is over.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Full> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Full::Node);
        }
        if self.per_address > 0 {
            let mut addresses = self.addresses.lock();
            let count = addresses.entry(ip).or_insert(0);
            if *count as usize >= self.per_address {
                if *count == 0 {
                    addresses.remove(&ip);
                }
                drop(addresses);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err(Full::Address);
            }
            *count += 1;
        }
        Ok(Permit {
            admission: self.clone(),
            ip,
            refusal: false,
        })
    }

    /// A place for answering a refused connection, unless too many are being answered.
    pub fn refusing(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        if self.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Permit {
            admission: self.clone(),
            ip,
            refusal: true,
        })
    }

    /// Connections admitted and not yet closed.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// One admitted (or refused, being answered) connection; frees its place when dropped.
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
    refusal: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let admission = &self.admission;
        if self.refusal {
            admission.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        admission.total.fetch_sub(1, Ordering::Relaxed);
        if admission.per_address > 0 {
            let mut addresses = admission.addresses.lock();
            if let Some(count) = addresses.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    addresses.remove(&self.ip);
                }
            }
        }
    }
}

/// The rate limits of requests and logins: per admin key and per client-token user.
pub struct RequestRates {
    admin: KeyedRate,
    client: KeyedRate,
}

impl RequestRates {
    pub fn new(config: &LimitsConfig) -> Self {
        RequestRates {
            admin: KeyedRate::new(config.api_rate, config.api_burst),
            client: KeyedRate::new(config.client_rate, config.client_burst),
        }
    }

    /// Counts a request with the admin key; `Err` carries how long to wait.
    pub fn admin(&self) -> Result<(), Duration> {
        self.admin.check(())
    }

    /// Counts a request or login of a client-token user; `Err` carries how long to wait.
    pub fn client(&self, identity: &Identity) -> Result<(), Duration> {
        self.client.check((&identity.app, &identity.user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(3, start);
        for _ in 0..3 {
            assert!(bucket.take(2, 3, start).is_ok());
        }
        let wait = bucket.take(2, 3, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(
            bucket
                .take(2, 3, start + Duration::from_millis(499))
                .is_err()
        );
        assert!(
            bucket
                .take(2, 3, start + Duration::from_millis(1000))
                .is_ok()
        );
        // Never more than the burst, however long it rested.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(bucket.take(2, 3, later).is_ok());
        }
        assert!(bucket.take(2, 3, later).is_err());
    }

    #[test]
    fn keyed_rates_are_per_key_and_forget_full_buckets() {
        let rate = KeyedRate::new(1, 2);
        assert!(rate.check("alice").is_ok());
        assert!(rate.check("alice").is_ok());
        assert!(rate.check("alice").is_err());
        assert!(rate.check("bob").is_ok());
        let now = Instant::now();
        for n in 0..=SWEEP_ABOVE {
            let _ = rate.check_at(n, now);
        }
        assert!(rate.keys() > SWEEP_ABOVE);
        // Two seconds on, every bucket but the one just used is full again and forgotten.
        let later = now + Duration::from_secs(2);
        assert!(rate.check_at("carol", later).is_ok());
        assert_eq!(rate.keys(), 1);
        assert!(KeyedRate::new(0, 0).check("anyone").is_ok(), "0 is off");
    }

    #[test]
    fn admission_counts_per_address_and_in_total() {
        let config = LimitsConfig {
            max_connections: 3,
            connections_per_address: 2,
            ..LimitsConfig::default()
        };
        let admission = Admission::new(&config);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Full::Address));
        let _b1 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).err(), Some(Full::Node));
        assert_eq!(admission.connections(), 3);
        drop(a1);
        assert_eq!(admission.connections(), 2);
        assert!(admission.admit(a).is_ok());
        let refusals: Vec<_> = (0..MAX_REFUSING)
            .map(|_| admission.refusing(a).unwrap())
            .collect();
        assert!(admission.refusing(a).is_none());
        drop(refusals);
        assert!(admission.refusing(a).is_some());
        assert_eq!(admission.connections(), 2, "refusals are not connections");
    }
}
