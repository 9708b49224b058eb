//! The behaviour every [`Store`] must show, written once and run against each implementation.

use mps_proto::{ChannelStatus, Status};
use serde_json::value::RawValue;

use super::{
    Claimed, DeviceQuery, DeviceSelector, IdempotencyKey, KeyedWrite, MessageQuery, NewMessage,
    PushRecord, Registered, StepRecord, Store, TermSet, TopicEntry,
};
use crate::audience::Audience;
use crate::words::AgentFilter;
use crate::words::{Device, Way};

fn message(id: u64, recipients: &[&str], agents: Option<&[&str]>, expires: i64) -> NewMessage {
    NewMessage {
        id,
        app: "default".into(),
        title: Some(format!("title {id}")),
        kind: 1,
        component: Some("esbm".into()),
        sender: Some("report".into()),
        agents: AgentFilter::only(agents.map(|a| a.iter().map(|s| s.to_string()).collect())),
        formats: Default::default(),
        content: RawValue::from_string(format!(r#"{{"n":{id}}}"#)).unwrap(),
        created: 1_000 + id as i64,
        expires,
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        steps: Vec::new(),
        own_steps: Vec::new(),
    }
}

const FAR: i64 = i64::MAX / 2;

mod users;

use users::{
    devices_register_refresh_and_move, devices_removed_by_selector_token_and_age,
    preferences_replaced_and_read, tags_and_audiences,
};

pub async fn run(store: &dyn Store) {
    pending_oldest_first_and_filtered_by_agent(store).await;
    delivery_and_ack_change_status(store).await;
    listing_filters_and_pages(store).await;
    delete_and_sweep(store).await;
    topic_logs_resume_and_trim(store).await;
    idempotency_keys(store).await;
    push_results_keep_messages_owed(store).await;
    devices_register_refresh_and_move(store).await;
    devices_removed_by_selector_token_and_age(store).await;
    tags_and_audiences(store).await;
    agents_excepted(store).await;
    preferences_replaced_and_read(store).await;
    formats_shape_what_an_agent_is_owed(store).await;
    channel_steps_come_due_once_and_are_recorded(store).await;
}

async fn channel_steps_come_due_once_and_are_recorded(store: &dyn Store) {
    let mut m = message(95, &["s1", "s2"], None, FAR);
    m.steps = vec![("email".into(), 5_000), ("push".into(), 9_000)];
    store.insert(m).await.unwrap();
    let channels = |record: &mps_proto::MessageRecord, user: &str| {
        record
            .recipients
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.user == user)
            .unwrap()
            .channels
            .clone()
    };
    let record = store.get(95).await.unwrap().unwrap();
    let s1 = channels(&record, "s1");
    assert_eq!(s1["live"].status, ChannelStatus::Pending);
    assert_eq!(s1["email"].status, ChannelStatus::Scheduled);
    assert_eq!(s1["email"].due, Some(5_000));
    assert_eq!(s1["push"].due, Some(9_000));

    assert!(
        store
            .claim_steps(4_999, 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.ack("default", "s2", vec![95]).await.unwrap();
    let mut due = store.claim_steps(5_000, 60_000, 10).await.unwrap();
    due.sort_by(|a, b| a.user.cmp(&b.user));
    let seen: Vec<_> = due
        .iter()
        .map(|d| (d.user.as_str(), d.channel.as_str(), d.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("s1", "email", Status::Pending),
            ("s2", "email", Status::Acked)
        ]
    );
    assert_eq!(due[0].title.as_deref(), Some("title 95"));
    assert_eq!(due[0].content.get(), r#"{"n":95}"#);
    assert_eq!(due[0].app, "default");
    // Claimed steps are not due again before their retry time.
    assert!(
        store
            .claim_steps(8_999, 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let record = |user: &str, channel: &str, status, reason: Option<&str>| StepRecord {
        id: 95,
        user: user.into(),
        channel: channel.into(),
        status,
        reason: reason.map(str::to_owned),
    };
    let changed = store
        .record_steps(
            "default",
            vec![
                record("s1", "email", ChannelStatus::Sent, None),
                record("s2", "email", ChannelStatus::Cancelled, None),
                record("nobody", "email", ChannelStatus::Sent, None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(changed, 2, "only recipients of the message are recorded");
    let due = store.claim_steps(60_000, 120_000, 10).await.unwrap();
    assert_eq!(due.len(), 2, "the push steps only: {due:?}");
    assert!(due.iter().all(|d| d.channel == "push"));
    store
        .record_steps(
            "default",
            vec![
                record("s1", "push", ChannelStatus::Failed, Some("no device")),
                record("s2", "push", ChannelStatus::Cancelled, None),
                record("s1", "webhook", ChannelStatus::Sent, None),
            ],
        )
        .await
        .unwrap();
    assert!(store.claim_steps(FAR, FAR, 10).await.unwrap().is_empty());
    let record = store.get(95).await.unwrap().unwrap();
    let s1 = channels(&record, "s1");
    assert_eq!(s1["email"].status, ChannelStatus::Sent);
    assert_eq!(s1["email"].due, None);
    assert_eq!(s1["push"].status, ChannelStatus::Failed);
    assert_eq!(s1["push"].reason.as_deref(), Some("no device"));
    assert_eq!(s1["webhook"].status, ChannelStatus::Sent);
    let s2 = channels(&record, "s2");
    assert_eq!(s2["live"].status, ChannelStatus::Acked);
    assert_eq!(s2["email"].status, ChannelStatus::Cancelled);

    // A recipient's own chain: steps for that recipient only.
    let mut m = message(97, &["s1", "s2"], None, FAR);
    m.own_steps = vec![("s2".into(), "webhook".into(), 7_000)];
    store.insert(m).await.unwrap();
    let due = store.claim_steps(FAR, FAR, 10).await.unwrap();
    let seen: Vec<_> = due
        .iter()
        .map(|d| (d.id, d.user.as_str(), d.channel.as_str()))
        .collect();
    assert_eq!(seen, [(97, "s2", "webhook")]);
    let sent = StepRecord {
        id: 97,
        user: "s2".into(),
        channel: "webhook".into(),
        status: ChannelStatus::Sent,
        reason: None,
    };
    assert_eq!(store.record_steps("default", vec![sent]).await.unwrap(), 1);

    // Deleting a message drops its steps.
    let mut m = message(96, &["s1"], None, FAR);
    m.steps = vec![("email".into(), 5_000)];
    store.insert(m).await.unwrap();
    assert!(store.delete(96).await.unwrap());
    assert!(store.claim_steps(FAR, FAR, 10).await.unwrap().is_empty());
}

async fn formats_shape_what_an_agent_is_owed(store: &dyn Store) {
    let mut m = message(92, &["fm"], None, FAR);
    m.formats = std::collections::BTreeMap::from([(
        "ios".to_owned(),
        mps_proto::Format {
            title: Some("for ios".into()),
            content: Some(RawValue::from_string(r#"{"aps":1}"#.into()).unwrap()),
        },
    )]);
    store.insert(m).await.unwrap();
    let ios = store
        .pending("default", "fm", Some("ios"), 0, 10)
        .await
        .unwrap();
    assert_eq!(ios[0].title.as_deref(), Some("for ios"));
    assert_eq!(ios[0].event_data.ext.get(), r#"{"aps":1}"#);
    for agent in [Some("bs"), None] {
        let plain = store.pending("default", "fm", agent, 0, 10).await.unwrap();
        assert_eq!(plain[0].title.as_deref(), Some("title 92"));
        assert_eq!(plain[0].event_data.ext.get(), r#"{"n":92}"#);
    }
    let record = store.get(92).await.unwrap().unwrap();
    assert_eq!(
        record.formats.unwrap()["ios"].title.as_deref(),
        Some("for ios")
    );
    assert!(store.get(91).await.unwrap().unwrap().formats.is_none());
}

async fn push_results_keep_messages_owed(store: &dyn Store) {
    store
        .insert(message(61, &["v1", "v2", "v3"], None, FAR))
        .await
        .unwrap();
    let results = vec![
        PushRecord {
            user: "v1".into(),
            pushed: true,
            reason: None,
        },
        PushRecord {
            user: "v2".into(),
            pushed: false,
            reason: Some("apns: BadDeviceToken".into()),
        },
    ];
    assert_eq!(store.record_push("default", 61, results).await.unwrap(), 2);
    let record = store.get(61).await.unwrap().unwrap();
    let recipients = record.recipients.unwrap();
    let by_user = |u: &str| recipients.iter().find(|r| r.user == u).unwrap().clone();
    assert_eq!(by_user("v1").status, Status::Pushed);
    assert_eq!(by_user("v1").reason, None);
    assert_eq!(by_user("v2").status, Status::Failed);
    assert_eq!(
        by_user("v2").reason.as_deref(),
        Some("apns: BadDeviceToken")
    );
    assert_eq!(by_user("v3").status, Status::Pending);
    assert_eq!(record.summary.get(&Status::Pushed), Some(&1));
    assert_eq!(record.summary.get(&Status::Failed), Some(&1));
    assert_eq!(record.summary.get(&Status::Pending), Some(&1));
    // Pushed and failed recipients are still owed the message on their live channel.
    for user in ["v1", "v2"] {
        let pending = store.pending("default", user, None, 0, 10).await.unwrap();
        assert_eq!(pending.len(), 1, "{user}");
    }
    let pushed = |status| MessageQuery {
        status: Some(status),
        receiver: Some("v1".into()),
        page: 1,
        size: 10,
        ..MessageQuery::default()
    };
    assert_eq!(store.list(pushed(Status::Pushed)).await.unwrap().total, 1);
    assert_eq!(store.list(pushed(Status::Pending)).await.unwrap().total, 0);
    let failed = MessageQuery {
        status: Some(Status::Failed),
        page: 1,
        size: 10,
        ..MessageQuery::default()
    };
    assert_eq!(store.list(failed).await.unwrap().total, 1);
    // Then delivered and acked as usual; a late push result changes nothing after that.
    assert_eq!(
        store
            .mark_delivered("default", "v1", vec![61])
            .await
            .unwrap(),
        [61]
    );
    assert_eq!(store.ack("default", "v2", vec![61]).await.unwrap(), [61]);
    let late = vec![PushRecord {
        user: "v1".into(),
        pushed: false,
        reason: Some("late".into()),
    }];
    assert_eq!(store.record_push("default", 61, late).await.unwrap(), 0);
    let record = store.get(61).await.unwrap().unwrap();
    let recipients = record.recipients.unwrap();
    assert_eq!(recipients[0].status, Status::Delivered);
    assert_eq!(recipients[0].reason, None);
    assert_eq!(recipients[1].status, Status::Acked);
    // An expired message leaves pushed recipients expired too.
    store
        .insert(message(62, &["v4"], None, 20_000))
        .await
        .unwrap();
    let results = vec![PushRecord {
        user: "v4".into(),
        pushed: true,
        reason: None,
    }];
    store.record_push("default", 62, results).await.unwrap();
    let swept = store.sweep(30_000, 1_000_000, 10).await.unwrap();
    assert!(
        swept.reported.iter().any(|r| r.id == 62 && r.user == "v4"),
        "{swept:?}"
    );
    let record = store.get(62).await.unwrap().unwrap();
    assert_eq!(record.recipients.unwrap()[0].status, Status::Expired);
}

async fn agents_excepted(store: &dyn Store) {
    let mut m = message(91, &["ex"], None, FAR);
    m.agents = AgentFilter::Except(vec!["cs".into(), "bs".into()]);
    store.insert(m).await.unwrap();
    let ids = |list: Vec<mps_proto::PushedMessage>| list.len();
    assert_eq!(
        ids(store
            .pending("default", "ex", Some("ios"), 0, 10)
            .await
            .unwrap()),
        1
    );
    assert_eq!(
        ids(store
            .pending("default", "ex", Some("cs"), 0, 10)
            .await
            .unwrap()),
        0
    );
    assert_eq!(
        ids(store
            .pending("default", "ex", Some("bs"), 0, 10)
            .await
            .unwrap()),
        0
    );
    assert_eq!(
        ids(store.pending("default", "ex", None, 0, 10).await.unwrap()),
        1
    );
    let record = store.get(91).await.unwrap().unwrap();
    assert_eq!(record.agents, None);
    assert_eq!(record.except_agents.unwrap(), ["cs", "bs"]);
}

fn key(app: &str, key: &str, id: u64, created: i64) -> IdempotencyKey {
    IdempotencyKey {
        app: app.into(),
        key: key.into(),
        id,
        created,
        expires: created + 1_000,
    }
}

async fn idempotency_keys(store: &dyn Store) {
    let first = KeyedWrite::Message(message(51, &["k1"], None, FAR));
    assert_eq!(
        store
            .write_keyed(key("default", "order-1", 51, 5_000), first)
            .await
            .unwrap(),
        Claimed::Fresh
    );
    // The same key again, before it lapses: nothing is written, the first id comes back.
    let again = KeyedWrite::Message(message(52, &["k1"], None, FAR));
    assert_eq!(
        store
            .write_keyed(key("default", "order-1", 52, 5_500), again)
            .await
            .unwrap(),
        Claimed::Duplicate(51)
    );
    assert!(store.get(52).await.unwrap().is_none());
    let pending = store.pending("default", "k1", None, 0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    // Keys belong to an app; live-only messages hold keys too.
    assert_eq!(
        store
            .write_keyed(key("oa", "order-1", 53, 5_500), KeyedWrite::KeyOnly)
            .await
            .unwrap(),
        Claimed::Fresh
    );
    assert_eq!(
        store
            .write_keyed(key("oa", "order-1", 54, 5_600), KeyedWrite::KeyOnly)
            .await
            .unwrap(),
        Claimed::Duplicate(53)
    );
    // Topic messages.
    let topic = |id| KeyedWrite::Topic {
        entry: entry(id, "keyed/t"),
        created: 5_000,
        keep: 10,
    };
    assert_eq!(
        store
            .write_keyed(key("default", "t-1", 55, 5_000), topic(55))
            .await
            .unwrap(),
        Claimed::Fresh
    );
    assert_eq!(
        store
            .write_keyed(key("default", "t-1", 56, 5_001), topic(56))
            .await
            .unwrap(),
        Claimed::Duplicate(55)
    );
    let replay = store
        .topic_since("default", &["keyed/t".to_owned()], 0, 10)
        .await
        .unwrap();
    let ids: Vec<u64> = replay.entries.iter().map(|e| e.id).collect();
    assert_eq!(ids, [55]);
    // A lapsed key is free again and now names the new message.
    let later = KeyedWrite::Message(message(57, &["k1"], None, FAR));
    assert_eq!(
        store
            .write_keyed(key("default", "order-1", 57, 6_000), later)
            .await
            .unwrap(),
        Claimed::Fresh
    );
    assert_eq!(
        store
            .write_keyed(key("default", "order-1", 58, 6_100), KeyedWrite::KeyOnly)
            .await
            .unwrap(),
        Claimed::Duplicate(57)
    );
    // The sweep deletes keys lapsed at its `now`: a write dated before the lapse finds the
    // key gone.
    store.sweep(7_000, 0, 0).await.unwrap();
    assert_eq!(
        store
            .write_keyed(key("default", "order-1", 59, 6_100), KeyedWrite::KeyOnly)
            .await
            .unwrap(),
        Claimed::Fresh
    );
}

fn entry(id: u64, topic: &str) -> TopicEntry {
    TopicEntry {
        id,
        topic: topic.into(),
        frame: format!(r#"{{"Type":3,"Message":{{"id":"{id}"}}}}"#).into(),
    }
}

async fn topic_logs_resume_and_trim(store: &dyn Store) {
    let app = "default";
    for id in 101..=105 {
        store
            .append_topic(app, entry(id, "alarms/site1"), id as i64, 3)
            .await
            .unwrap();
    }
    store
        .append_topic(app, entry(106, "alarms/site2"), 106, 3)
        .await
        .unwrap();
    store
        .append_topic(app, entry(107, "news/today"), 107, 3)
        .await
        .unwrap();
    store
        .append_topic("oa", entry(108, "alarms/site1"), 108, 3)
        .await
        .unwrap();

    let patterns = vec!["alarms/#".to_owned()];
    // Resuming from 103: 104, 105 and 106 are retained; nothing was missed.
    let replay = store.topic_since(app, &patterns, 103, 100).await.unwrap();
    let ids: Vec<u64> = replay.entries.iter().map(|e| e.id).collect();
    assert_eq!(ids, [104, 105, 106]);
    assert!(replay.truncated.is_empty());
    assert_eq!(replay.entries[0].frame, entry(104, "x").frame);
    // Resuming from 101: 102 was dropped by the count limit.
    let replay = store.topic_since(app, &patterns, 101, 100).await.unwrap();
    assert_eq!(replay.entries.first().map(|e| e.id), Some(103));
    assert_eq!(replay.truncated, patterns);
    // Exact topic patterns and the limit.
    let exact = vec!["alarms/site2".to_owned(), "news/+".to_owned()];
    let replay = store.topic_since(app, &exact, 0, 1).await.unwrap();
    assert_eq!(replay.entries.len(), 1);
    assert_eq!(replay.entries[0].id, 106);
    assert!(
        store
            .topic_since(app, &[], 0, 10)
            .await
            .unwrap()
            .entries
            .is_empty()
    );

    let topics = store.topics().await.unwrap();
    assert!(topics.contains(&("oa".to_owned(), "alarms/site1".to_owned())));
    // Age trimming: drop alarms/site2 entirely.
    let dropped = store
        .trim_topics(vec![(app.into(), "alarms/site2".into(), 1_000)])
        .await
        .unwrap();
    assert_eq!(dropped, 1);
    let replay = store.topic_since(app, &exact, 0, 10).await.unwrap();
    assert_eq!(replay.entries.len(), 1, "only news/today is left");
    assert_eq!(replay.truncated, vec!["alarms/site2".to_owned()]);
}

async fn pending_oldest_first_and_filtered_by_agent(store: &dyn Store) {
    store.insert(message(12, &["p1"], None, FAR)).await.unwrap();
    store.insert(message(11, &["p1"], None, FAR)).await.unwrap();
    store
        .insert(message(13, &["p1"], Some(&["ios"]), FAR))
        .await
        .unwrap();
    store.insert(message(14, &["p2"], None, FAR)).await.unwrap();

    let all = store.pending("default", "p1", None, 0, 100).await.unwrap();
    let ids: Vec<_> = all.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["11", "12", "13"]);
    assert_eq!(all[0].event_data.ext.get(), r#"{"n":11}"#);
    assert!(all[0].ack);

    let bs = store
        .pending("default", "p1", Some("bs"), 0, 100)
        .await
        .unwrap();
    assert_eq!(bs.len(), 2);
    let ios = store
        .pending("default", "p1", Some("ios"), 11, 1)
        .await
        .unwrap();
    assert_eq!(ios[0].id, "12");
    assert!(
        store
            .pending("other", "p1", None, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn delivery_and_ack_change_status(store: &dyn Store) {
    store
        .insert(message(21, &["d1", "d2"], None, FAR))
        .await
        .unwrap();
    assert_eq!(
        store
            .mark_delivered("default", "d1", vec![21, 998])
            .await
            .unwrap(),
        [21],
        "the ids that changed"
    );
    assert!(
        store
            .mark_delivered("default", "d1", vec![21])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .pending("default", "d1", None, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.ack("default", "d1", vec![21, 999]).await.unwrap(),
        [21]
    );
    assert_eq!(store.ack("default", "d2", vec![21]).await.unwrap(), [21]);
    assert!(
        store
            .ack("default", "d2", vec![21])
            .await
            .unwrap()
            .is_empty()
    );
    // Acked never goes back to delivered.
    assert!(
        store
            .mark_delivered("default", "d2", vec![21])
            .await
            .unwrap()
            .is_empty()
    );
    // Another user's ack changes nothing.
    assert!(
        store
            .ack("default", "intruder", vec![21])
            .await
            .unwrap()
            .is_empty()
    );
    let record = store.get(21).await.unwrap().unwrap();
    let recipients = record.recipients.unwrap();
    assert_eq!(recipients.len(), 2);
    assert!(recipients.iter().all(|r| r.status == Status::Acked));
    assert_eq!(record.summary.get(&Status::Acked), Some(&2));
}

async fn listing_filters_and_pages(store: &dyn Store) {
    for id in 31..=35 {
        let mut m = message(id, &["l1"], None, FAR);
        if id == 35 {
            m.sender = Some("oa".into());
        }
        store.insert(m).await.unwrap();
    }
    let page = store
        .list(MessageQuery {
            receiver: Some("l1".into()),
            page: 1,
            size: 2,
            ..MessageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 5);
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].id, "35", "newest first");
    assert_eq!(page.items[0].summary.get(&Status::Pending), Some(&1));
    let by_sender = store
        .list(MessageQuery {
            sender: Some("oa".into()),
            page: 1,
            size: 10,
            ..MessageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(by_sender.total, 1);
    store.ack("default", "l1", vec![31]).await.unwrap();
    let acked = store
        .list(MessageQuery {
            receiver: Some("l1".into()),
            status: Some(Status::Acked),
            page: 1,
            size: 10,
            ..MessageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(acked.total, 1);
    let window = store
        .list(MessageQuery {
            receiver: Some("l1".into()),
            from: Some(1_000 + 32),
            to: Some(1_000 + 34),
            page: 1,
            size: 10,
            ..MessageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(window.total, 2);
}

async fn delete_and_sweep(store: &dyn Store) {
    store.insert(message(41, &["s1"], None, FAR)).await.unwrap();
    assert!(store.delete(41).await.unwrap());
    assert!(!store.delete(41).await.unwrap());
    assert!(store.get(41).await.unwrap().is_none());

    store
        .insert(message(42, &["s2"], None, 5_000))
        .await
        .unwrap();
    store
        .insert(message(43, &["s2"], None, 9_000))
        .await
        .unwrap();
    store
        .insert(message(44, &["s3", "s4"], None, 8_000))
        .await
        .unwrap();
    store.ack("default", "s2", vec![43]).await.unwrap();
    let swept = store.sweep(10_000, 4_000, 2).await.unwrap();
    assert_eq!(swept.expired, 3, "only the unacked ones expire");
    assert_eq!(swept.reported.len(), 2, "as many listed as asked for");
    let expected = [(42, "s2"), (44, "s3"), (44, "s4")];
    for r in &swept.reported {
        assert_eq!(r.app, "default");
        assert!(expected.contains(&(r.id, r.user.as_str())), "{r:?}");
    }
    assert_eq!(
        swept.deleted, 1,
        "only the one expired before the retention"
    );
    assert!(store.get(42).await.unwrap().is_none());
    let kept = store.get(43).await.unwrap().unwrap();
    assert_eq!(kept.recipients.unwrap()[0].status, Status::Acked);
}
