//! The vendor fallback: after a directed message is durable, its recipients' registered devices
//! that hold no live connection get it through their vendor (APNs, FCM, Web Push).
//!
//! The engine offers each message to a bounded queue and never waits: when the queue is full
//! (by count, or by the bytes its messages hold) the push is dropped (counted), and the message
//! is still delivered from the store when the user connects. A few messages are worked on at once (the vendor clients bound their own
//! requests in flight by `push.concurrency`). Each recipient's status becomes `pushed` (some device's
//! vendor accepted it) or `failed` with the vendors' reasons; either way it stays owed to the
//! live channel. A token the vendor says is gone is removed at once.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mps_proto::{Preferences, PushPolicy};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{Device, Notification, Outcome, Pushers};
use crate::preferences::Muting;
use crate::presence::Presence;
use crate::shutdown::Tasks;
use crate::store::{PushRecord, Store};
use crate::webhooks::Webhooks;
use crate::words::AgentFilter;

/// Messages waiting for the fallback; past this, pushes are dropped (the store still has them).
const QUEUE: usize = 4096;
/// Bytes the waiting and running messages may hold (content and recipients): a message may be
/// a megabyte for ten thousand users, so the count alone would not bound memory.
const QUEUE_BYTES: usize = 64 << 20;
/// Messages worked on at once (each may push to many devices).
const MESSAGES_IN_FLIGHT: usize = 16;

/// One durable directed message to push.
#[derive(Debug, Clone)]
pub struct Job {
    pub note: Notification,
    pub recipients: Vec<String>,
    /// Only devices registered for the agents this admits (the message's agent filter).
    pub agents: AgentFilter,
    pub policy: PushPolicy,
}

/// A queued job with its share of the byte budget, given back when the job is done.
type Queued = (Job, OwnedSemaphorePermit);

pub struct Fallback {
    pushers: Arc<Pushers>,
    jobs: mpsc::Sender<Queued>,
    /// The byte budget of queued and running jobs.
    bytes: Arc<Semaphore>,
}

/// What the workers share.
struct Worker {
    store: Arc<dyn Store>,
    presence: Arc<dyn Presence>,
    pushers: Arc<Pushers>,
    /// Told of every push that failed.
    events: Arc<Webhooks>,
}

impl Fallback {
    /// Starts the workers, which take jobs until `tasks` stop, then push what is queued. With
    /// no vendor configured nothing is ever queued.
    pub fn start(
        store: Arc<dyn Store>,
        presence: Arc<dyn Presence>,
        pushers: Arc<Pushers>,
        events: Arc<Webhooks>,
        tasks: &Tasks,
    ) -> Arc<Fallback> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let worker = Arc::new(Worker {
            store,
            presence,
            pushers: pushers.clone(),
            events,
        });
        tasks.spawn(dispatch(worker, rx, tasks.clone()));
        Arc::new(Fallback {
            pushers,
            jobs,
            bytes: Arc::new(Semaphore::new(QUEUE_BYTES)),
        })
    }

    pub fn pushers(&self) -> &Pushers {
        &self.pushers
    }

    /// Whether a message of `app` with this policy could be pushed at all.
    pub fn wanted(&self, app: &str, policy: PushPolicy) -> bool {
        policy != PushPolicy::Never && self.pushers.any(app)
    }

    /// Queues a message for the fallback; never waits.
    pub fn offer(&self, job: Job) {
        let weight = job.weight().min(QUEUE_BYTES) as u32;
        let Ok(budget) = self.bytes.clone().try_acquire_many_owned(weight) else {
            return dropped(&job);
        };
        match self.jobs.try_send((job, budget)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((job, _))) => dropped(&job),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl Job {
    /// About how many bytes the job holds while it waits.
    fn weight(&self) -> usize {
        let names: usize = self.recipients.iter().map(|r| r.len() + 24).sum();
        self.note.content.get().len() + names + 512
    }
}

/// Counts a push dropped for a full queue; warns at most every ten seconds, since a full queue
/// drops many in a row.
fn dropped(job: &Job) {
    static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
    metrics::counter!("mps_push_dropped_total").increment(1);
    let now = crate::id::now_ms();
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            id = job.note.id,
            "vendor push queue full: pushes are dropped (mps_push_dropped_total); their \
             messages wait for the live channel"
        );
    }
}

async fn dispatch(worker: Arc<Worker>, mut rx: mpsc::Receiver<Queued>, tasks: Tasks) {
    let in_flight = Arc::new(Semaphore::new(MESSAGES_IN_FLIGHT));
    let stop = tasks.token();
    while let Some((job, budget)) = crate::shutdown::next(&mut rx, &stop).await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let worker = worker.clone();
        tasks.spawn(async move {
            worker.push(job).await;
            drop((permit, budget));
        });
    }
}

impl Worker {
    async fn push(&self, job: Job) {
        let app = job.note.app.as_str();
        let devices = match self.store.devices_of(app, &job.recipients).await {
            Ok(devices) => devices,
            Err(e) => {
                tracing::warn!(id = job.note.id, error = %e, "reading registrations failed");
                metrics::counter!("mps_push_skipped_total", "reason" => "store").increment(1);
                return;
            }
        };
        let mut devices: Vec<Device> = devices
            .into_iter()
            .filter(|d| wants(d, &job))
            .filter(|d| self.pushers.get(app, d.way).is_some())
            .collect();
        if devices.is_empty() {
            return;
        }
        if job.policy == PushPolicy::Offline {
            let users: Vec<String> = devices
                .iter()
                .map(|d| d.user.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            match self.presence.online_devices(app, &users).await {
                Ok(online) => devices.retain(|d| !is_online(&online, d)),
                // Not knowing who is online, push: a notification twice beats none.
                Err(e) => {
                    tracing::warn!(error = %e, "presence unavailable; pushing to every device");
                    metrics::counter!("mps_push_presence_unknown_total").increment(1);
                }
            }
        }
        self.leave_out_muted(app, &job, &mut devices).await;
        if devices.is_empty() {
            return;
        }
        let pushes = devices
            .into_iter()
            .map(|device| self.push_one(device, &job.note));
        let outcomes = futures_util::future::join_all(pushes).await;
        let mut results: BTreeMap<String, PushRecord> = BTreeMap::new();
        for (device, outcome) in outcomes {
            let record = results
                .entry(device.user.clone())
                .or_insert_with(|| PushRecord {
                    user: device.user.clone(),
                    pushed: false,
                    reason: None,
                });
            let reason = match outcome {
                Outcome::Sent => {
                    record.pushed = true;
                    continue;
                }
                Outcome::Gone { reason } => {
                    self.forget(&device).await;
                    reason
                }
                Outcome::Failed { reason } => reason,
            };
            self.events.push_failed(
                app,
                &device.user,
                job.note.id,
                &device.device,
                device.way.as_str(),
                &reason,
            );
            let reason = format!("{}: {reason}", device.way.as_str());
            record.reason = Some(match record.reason.take() {
                Some(earlier) => format!("{earlier}; {reason}"),
                None => reason,
            });
        }
        let records: Vec<PushRecord> = results
            .into_values()
            .map(|mut r| {
                if r.pushed {
                    r.reason = None;
                }
                r
            })
            .collect();
        if let Err(e) = self.store.record_push(app, job.note.id, records).await {
            tracing::warn!(id = job.note.id, error = %e, "recording push results failed");
        }
    }

    /// Leaves out the devices whose user muted this message's component or the device's
    /// channel, or is in quiet hours. The message stays owed to the live channel.
    async fn leave_out_muted(&self, app: &str, job: &Job, devices: &mut Vec<Device>) {
        let users: Vec<String> = devices
            .iter()
            .map(|d| d.user.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let preferences: BTreeMap<String, Preferences> =
            match self.store.preferences(app, &users).await {
                Ok(found) => found.into_iter().collect(),
                // Not knowing the preferences, push: a notification too many beats none.
                Err(e) => {
                    tracing::warn!(error = %e, "reading preferences failed; pushing regardless");
                    return;
                }
            };
        if preferences.is_empty() {
            return;
        }
        let now = crate::id::now_ms() as i64;
        let component = job.note.component.as_deref();
        devices.retain(|d| {
            let muted = preferences
                .get(&d.user)
                .and_then(|p| p.mutes(component, d.way.as_str(), now));
            if let Some(reason) = muted {
                metrics::counter!("mps_push_muted_total", "reason" => reason).increment(1);
            }
            muted.is_none()
        });
    }

    /// One device through its vendor.
    async fn push_one(&self, device: Device, note: &Notification) -> (Device, Outcome) {
        let outcome = match self.pushers.get(&note.app, device.way) {
            Some(vendor) => vendor.push(&device, &note.for_way(device.way)).await,
            None => Outcome::Failed {
                reason: "vendor not configured".into(),
            },
        };
        (device, outcome)
    }

    /// Removes a registration whose token the vendor no longer knows.
    async fn forget(&self, device: &Device) {
        match self
            .store
            .remove_device_token(&device.app, device.way, &device.token)
            .await
        {
            Ok(removed) => {
                metrics::counter!("mps_devices_removed_total", "reason" => "gone")
                    .increment(removed);
                tracing::info!(
                    app = %device.app,
                    user = %device.user,
                    device = %device.device,
                    way = device.way.as_str(),
                    "removed a registration the vendor says is gone"
                );
            }
            Err(e) => tracing::warn!(error = %e, "removing a gone registration failed"),
        }
    }
}

/// Whether a registration takes this message: its agent passes the message's agent filter and
/// the message's component is one it listed (an empty list takes every message).
fn wants(device: &Device, job: &Job) -> bool {
    let agent_ok = job.agents.admits(&device.agent);
    let component_ok = device.components.is_empty()
        || job
            .note
            .component
            .as_ref()
            .is_some_and(|c| device.components.contains(c));
    agent_ok && component_ok
}

fn is_online(online: &HashSet<(String, String)>, device: &Device) -> bool {
    online.contains(&(device.user.clone(), device.device.clone()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use async_trait::async_trait;
    use mps_proto::Status;
    use parking_lot::Mutex;
    use serde_json::value::RawValue;

    use super::*;
    use crate::hub::{ConnInfo, Hub, Subscriptions};
    use crate::presence::LocalPresence;
    use crate::push::{Priority, Vendor};
    use crate::store::NewMessage;
    use crate::store::sqlite::SqliteStore;
    use crate::words::Way;

    /// Answers by token and remembers what it was asked to push.
    struct FakeVendor {
        way: Way,
        answers: HashMap<String, Outcome>,
        pushed: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Vendor for FakeVendor {
        fn way(&self) -> Way {
            self.way
        }

        async fn push(&self, device: &Device, _note: &Notification) -> Outcome {
            self.pushed.lock().push(device.token.clone());
            self.answers
                .get(&device.token)
                .cloned()
                .unwrap_or(Outcome::Sent)
        }
    }

    fn vendor(way: Way, answers: &[(&str, Outcome)]) -> Arc<FakeVendor> {
        Arc::new(FakeVendor {
            way,
            answers: answers
                .iter()
                .map(|(t, o)| (t.to_string(), o.clone()))
                .collect(),
            pushed: Mutex::new(Vec::new()),
        })
    }

    fn device(user: &str, id: &str, way: Way, token: &str, agent: &str) -> Device {
        Device {
            app: "default".into(),
            user: user.into(),
            agent: agent.into(),
            device: id.into(),
            way,
            token: token.into(),
            components: Vec::new(),
            refreshed: 1,
        }
    }

    fn job(id: u64, recipients: &[&str], policy: PushPolicy) -> Job {
        Job {
            note: Notification {
                id,
                app: "default".into(),
                title: Some("t".into()),
                kind: 0,
                component: Some("esbm".into()),
                content: Arc::from(RawValue::from_string("{}".into()).unwrap()),
                expires: i64::MAX,
                collapse_id: None,
                priority: Priority::High,
                formats: BTreeMap::new(),
            },
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
            agents: AgentFilter::Any,
            policy,
        }
    }

    /// A worker that pushes through `vendors` for the default app, with `hub` as presence.
    fn worker(store: &Arc<dyn Store>, hub: &Arc<Hub>, vendors: &[Arc<FakeVendor>]) -> Worker {
        let mut pushers = Pushers::default();
        for vendor in vendors {
            pushers.insert("default", vendor.clone());
        }
        Worker {
            store: store.clone(),
            presence: Arc::new(LocalPresence::new(hub.clone())),
            pushers: Arc::new(pushers),
            events: Webhooks::start(&[], "n1", 1, &Tasks::new()).unwrap(),
        }
    }

    async fn message(store: &dyn Store, id: u64, recipients: &[&str]) {
        store
            .insert(NewMessage {
                id,
                app: "default".into(),
                title: None,
                kind: 0,
                component: Some("esbm".into()),
                sender: None,
                agents: AgentFilter::Any,
                formats: BTreeMap::new(),
                content: RawValue::from_string("{}".into()).unwrap(),
                created: 1,
                expires: i64::MAX / 2,
                recipients: recipients.iter().map(|s| s.to_string()).collect(),
                steps: Vec::new(),
                own_steps: Vec::new(),
            })
            .await
            .unwrap();
    }

    async fn status(store: &dyn Store, id: u64, user: &str) -> (Status, Option<String>) {
        let record = store.get(id).await.unwrap().unwrap();
        let r = record
            .recipients
            .unwrap()
            .into_iter()
            .find(|r| r.user == user)
            .unwrap();
        (r.status, r.reason)
    }

    #[tokio::test]
    async fn muted_components_and_channels_are_not_pushed_but_stay_owed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let hub = Arc::new(Hub::new("n", 0, 8));
        let (apns, fcm) = (vendor(Way::Apns, &[]), vendor(Way::Fcm, &[]));
        let worker = worker(&store, &hub, &[apns.clone(), fcm.clone()]);
        for d in [
            device("m1", "phone", Way::Apns, "a1", "ios"),
            device("m2", "phone", Way::Apns, "a2", "ios"),
            device("m2", "tablet", Way::Fcm, "f2", "android"),
            device("m3", "phone", Way::Fcm, "f3", "android"),
        ] {
            store.register_device(d).await.unwrap();
        }
        // m1 muted the message's component; m2 muted FCM only; m3 muted nothing relevant.
        let mute = |components: &[&str], channels: &[&str]| Preferences {
            muted_components: components.iter().map(|s| s.to_string()).collect(),
            muted_channels: channels.iter().map(|s| s.to_string()).collect(),
            quiet_hours: None,
            channels: Vec::new(),
        };
        store
            .set_preferences("default", "m1", mute(&["esbm"], &[]))
            .await
            .unwrap();
        store
            .set_preferences("default", "m2", mute(&[], &["fcm"]))
            .await
            .unwrap();
        store
            .set_preferences("default", "m3", mute(&["oa"], &["webpush"]))
            .await
            .unwrap();
        message(store.as_ref(), 70, &["m1", "m2", "m3"]).await;
        worker
            .push(job(70, &["m1", "m2", "m3"], PushPolicy::Offline))
            .await;
        assert_eq!(*apns.pushed.lock(), ["a2"]);
        assert_eq!(*fcm.pushed.lock(), ["f3"]);
        // The muted recipient is still owed the message on the live channel.
        assert_eq!(status(store.as_ref(), 70, "m1").await.0, Status::Pending);
        assert_eq!(status(store.as_ref(), 70, "m2").await.0, Status::Pushed);
        let pending = store.pending("default", "m1", None, 0, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
    }

    #[tokio::test]
    async fn pushes_offline_devices_records_results_and_forgets_gone_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let hub = Arc::new(Hub::new("n", 0, 8));
        let apns = vendor(
            Way::Apns,
            &[(
                "bb",
                Outcome::Failed {
                    reason: "BadTopic".into(),
                },
            )],
        );
        let fcm = vendor(
            Way::Fcm,
            &[(
                "gone",
                Outcome::Gone {
                    reason: "UNREGISTERED".into(),
                },
            )],
        );
        let worker = worker(&store, &hub, &[apns.clone(), fcm.clone()]);
        for d in [
            device("u1", "phone", Way::Apns, "aa", "ios"),
            device("u1", "tablet", Way::Fcm, "gone", "android"),
            device("u2", "phone", Way::Apns, "bb", "ios"),
            device("u3", "phone", Way::Fcm, "cc", "android"),
            // No Web Push vendor is configured: never tried.
            device("u3", "browser", Way::Webpush, "{}", "bs"),
        ] {
            store.register_device(d).await.unwrap();
        }
        // u3's phone holds a live connection.
        let _online = hub.register(
            ConnInfo {
                app: "default".into(),
                user: "u3".into(),
                agent: "android".into(),
                device: Some("phone".into()),
                transport: crate::words::TransportKind::Websocket,
                login: 0,
                remote: SocketAddr::from(([127, 0, 0, 1], 1)),
                topic_claim: None,
            },
            Subscriptions::default(),
        );
        message(store.as_ref(), 1, &["u1", "u2", "u3"]).await;
        worker
            .push(job(1, &["u1", "u2", "u3"], PushPolicy::Offline))
            .await;
        assert_eq!(
            status(store.as_ref(), 1, "u1").await,
            (Status::Pushed, None)
        );
        assert_eq!(
            status(store.as_ref(), 1, "u2").await,
            (Status::Failed, Some("apns: BadTopic".into()))
        );
        assert_eq!(status(store.as_ref(), 1, "u3").await.0, Status::Pending);
        assert_eq!(*apns.pushed.lock(), ["aa", "bb"]);
        assert_eq!(*fcm.pushed.lock(), ["gone"]);
        let u1: Vec<String> = store
            .devices_of("default", &["u1".to_owned()])
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.device)
            .collect();
        assert_eq!(u1, ["phone"], "the gone token is forgotten");

        // `always` pushes the online phone too; the agent filter keeps APNs out.
        message(store.as_ref(), 2, &["u1", "u3"]).await;
        let mut always = job(2, &["u1", "u3"], PushPolicy::Always);
        always.agents = AgentFilter::Only(vec!["android".into()]);
        worker.push(always).await;
        assert_eq!(*fcm.pushed.lock(), ["gone", "cc"]);
        assert_eq!(apns.pushed.lock().len(), 2);
        assert_eq!(status(store.as_ref(), 2, "u3").await.0, Status::Pushed);
        assert_eq!(status(store.as_ref(), 2, "u1").await.0, Status::Pending);

        // A registration limited to other components is not pushed.
        let mut oa_only = device("u2", "phone", Way::Apns, "bb", "ios");
        oa_only.components = vec!["oa".into()];
        store.register_device(oa_only).await.unwrap();
        message(store.as_ref(), 3, &["u2"]).await;
        worker.push(job(3, &["u2"], PushPolicy::Offline)).await;
        assert_eq!(apns.pushed.lock().len(), 2);
        assert_eq!(status(store.as_ref(), 3, "u2").await.0, Status::Pending);
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let (jobs, _rx) = mpsc::channel(1);
        let fallback = Fallback {
            pushers: Arc::new(Pushers::default()),
            jobs,
            bytes: Arc::new(Semaphore::new(QUEUE_BYTES)),
        };
        // Nothing takes jobs: the second offer finds the queue full and returns at once,
        // giving its share of the byte budget back.
        fallback.offer(job(1, &["u"], PushPolicy::Offline));
        let held = QUEUE_BYTES - fallback.bytes.available_permits();
        assert_eq!(held, job(1, &["u"], PushPolicy::Offline).weight());
        fallback.offer(job(2, &["u"], PushPolicy::Offline));
        assert_eq!(fallback.jobs.capacity(), 0);
        assert_eq!(QUEUE_BYTES - fallback.bytes.available_permits(), held);
        assert!(!fallback.wanted("default", PushPolicy::Always));
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_what_waits() {
        let (jobs, _rx) = mpsc::channel(QUEUE);
        let fallback = Fallback {
            pushers: Arc::new(Pushers::default()),
            jobs,
            bytes: Arc::new(Semaphore::new(QUEUE_BYTES)),
        };
        let big = |id| {
            let mut big = job(id, &[], PushPolicy::Offline);
            big.recipients = (0..10_000).map(|n| format!("user-{n}")).collect();
            big.note.content =
                Arc::from(RawValue::from_string(format!("\"{}\"", "x".repeat(1 << 20))).unwrap());
            big
        };
        let fits = QUEUE_BYTES / big(0).weight();
        for id in 0..fits as u64 + 5 {
            fallback.offer(big(id));
        }
        assert_eq!(QUEUE - fallback.jobs.capacity(), fits);
    }
}
