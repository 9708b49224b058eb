//! The behaviour every [`Store`] must show, written once and run against each implementation.

use mps_proto::Status;
use serde_json::value::RawValue;

use super::{Claimed, IdempotencyKey, KeyedWrite, MessageQuery, NewMessage, Store, TopicEntry};

fn message(id: u64, recipients: &[&str], agents: Option<&[&str]>, expires: i64) -> NewMessage {
    NewMessage {
        id,
        app: "default".into(),
        title: Some(format!("title {id}")),
        kind: 1,
        component: Some("esbm".into()),
        sender: Some("report".into()),
        agents: agents.map(|a| a.iter().map(|s| s.to_string()).collect()),
        content: RawValue::from_string(format!(r#"{{"n":{id}}}"#)).unwrap(),
        created: 1_000 + id as i64,
        expires,
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
    }
}

const FAR: i64 = i64::MAX / 2;

pub async fn run(store: &dyn Store) {
    pending_oldest_first_and_filtered_by_agent(store).await;
    delivery_and_ack_change_status(store).await;
    listing_filters_and_pages(store).await;
    delete_and_sweep(store).await;
    topic_logs_resume_and_trim(store).await;
    idempotency_keys(store).await;
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
    store.sweep(7_000, 0).await.unwrap();
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
            .mark_delivered("default", "d1", vec![21])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .mark_delivered("default", "d1", vec![21])
            .await
            .unwrap(),
        0
    );
    assert!(
        store
            .pending("default", "d1", None, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.ack("default", "d1", vec![21, 999]).await.unwrap(), 1);
    assert_eq!(store.ack("default", "d2", vec![21]).await.unwrap(), 1);
    // Acked never goes back to delivered.
    assert_eq!(
        store
            .mark_delivered("default", "d2", vec![21])
            .await
            .unwrap(),
        0
    );
    // Another user's ack changes nothing.
    assert_eq!(store.ack("default", "intruder", vec![21]).await.unwrap(), 0);
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
    store.ack("default", "s2", vec![43]).await.unwrap();
    let swept = store.sweep(10_000, 4_000).await.unwrap();
    assert_eq!(swept.expired, 1, "only the unacked one expires");
    assert_eq!(
        swept.deleted, 1,
        "only the one expired before the retention"
    );
    assert!(store.get(42).await.unwrap().is_none());
    let kept = store.get(43).await.unwrap().unwrap();
    assert_eq!(kept.recipients.unwrap()[0].status, Status::Acked);
}
