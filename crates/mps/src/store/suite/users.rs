//! The suite's part on users: device registrations, tags and attributes with the audiences
//! that select on them, and preferences.

use super::*;

fn device(user: &str, device: &str, way: Way, token: &str, refreshed: i64) -> Device {
    Device {
        app: "default".into(),
        user: user.into(),
        agent: "ios".into(),
        device: device.into(),
        way,
        token: token.into(),
        components: vec!["esbm".into()],
        refreshed,
    }
}

pub(super) async fn devices_register_refresh_and_move(store: &dyn Store) {
    let phone = device("r1", "phone", Way::Apns, "aa01", 1_000);
    assert_eq!(
        store.register_device(phone.clone()).await.unwrap(),
        Registered {
            created: true,
            taken_from: vec![],
        }
    );
    // The same device and way again is a refresh: new token, components and time.
    let mut refreshed = phone.clone();
    refreshed.token = "aa02".into();
    refreshed.components = vec![];
    refreshed.refreshed = 2_000;
    assert!(
        !store
            .register_device(refreshed.clone())
            .await
            .unwrap()
            .created
    );
    store
        .register_device(device("r1", "phone", Way::Fcm, "fcm-1", 2_000))
        .await
        .unwrap();
    let mine = store
        .devices_of("default", &["r1".to_owned()])
        .await
        .unwrap();
    assert_eq!(mine.len(), 2);
    assert!(mine.contains(&refreshed), "{mine:?}");
    // The token moves to another user: it belongs to one user at a time.
    let taken = store
        .register_device(device("r2", "tablet", Way::Apns, "aa02", 3_000))
        .await
        .unwrap();
    assert_eq!(taken.taken_from, vec!["r1".to_owned()]);
    let left: Vec<Way> = store
        .devices_of("default", &["r1".to_owned()])
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.way)
        .collect();
    assert_eq!(left, [Way::Fcm]);
    // The same token under another device id of the same user moves too, silently.
    let moved = store
        .register_device(device("r2", "tablet-2", Way::Apns, "aa02", 3_100))
        .await
        .unwrap();
    assert!(moved.created && moved.taken_from.is_empty(), "{moved:?}");
    // Tokens are per way and per app.
    let mut other_app = device("r3", "phone", Way::Apns, "aa02", 3_000);
    other_app.app = "oa".into();
    store.register_device(other_app).await.unwrap();
    store
        .register_device(device("r3", "phone", Way::Fcm, "aa02", 3_000))
        .await
        .unwrap();
    let both = store
        .devices_of(
            "default",
            &["r1".to_owned(), "r2".to_owned(), "r3".to_owned()],
        )
        .await
        .unwrap();
    assert_eq!(both.len(), 3, "{both:?}");
    // The operator's listing, filtered and paged.
    let page = store
        .list_devices(DeviceQuery {
            user: Some("r2".into()),
            page: 1,
            size: 10,
            ..DeviceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.items[0].device, "tablet-2");
    let page = store
        .list_devices(DeviceQuery {
            app: Some("oa".into()),
            way: Some(Way::Apns),
            page: 1,
            size: 10,
            ..DeviceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    let all = store
        .list_devices(DeviceQuery {
            page: 2,
            size: 2,
            ..DeviceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.total, 4);
    assert_eq!(all.items.len(), 2);
}

pub(super) async fn devices_removed_by_selector_token_and_age(store: &dyn Store) {
    for (user, dev, way, token) in [
        ("x1", "phone", Way::Apns, "bb01"),
        ("x1", "phone", Way::Fcm, "x1-fcm"),
        (
            "x1",
            "laptop",
            Way::Webpush,
            r#"{"endpoint":"https://push.example/x1"}"#,
        ),
        ("x2", "phone", Way::Apns, "bb02"),
    ] {
        store
            .register_device(device(user, dev, way, token, 10_000))
            .await
            .unwrap();
    }
    let select = |device: Option<&str>, way: Option<Way>| DeviceSelector {
        app: "default".into(),
        user: "x1".into(),
        device: device.map(str::to_owned),
        way,
    };
    // One way of one device.
    assert_eq!(
        store
            .remove_devices(select(Some("phone"), Some(Way::Fcm)))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .remove_devices(select(Some("phone"), Some(Way::Fcm)))
            .await
            .unwrap(),
        0
    );
    // Another user's selector never reaches x2.
    assert_eq!(
        store
            .remove_devices(select(None, Some(Way::Apns)))
            .await
            .unwrap(),
        1
    );
    // Logout: everything of the user.
    assert_eq!(store.remove_devices(select(None, None)).await.unwrap(), 1);
    let users = ["x1".to_owned(), "x2".to_owned()];
    assert_eq!(store.devices_of("default", &users).await.unwrap().len(), 1);
    // The vendor says the token is gone.
    assert_eq!(
        store
            .remove_device_token("default", Way::Fcm, "bb02")
            .await
            .unwrap(),
        0,
        "tokens are per way"
    );
    assert_eq!(
        store
            .remove_device_token("default", Way::Apns, "bb02")
            .await
            .unwrap(),
        1
    );
    assert!(
        store
            .devices_of("default", &users)
            .await
            .unwrap()
            .is_empty()
    );
    // Expiry by refresh time.
    store
        .register_device(device("x3", "old", Way::Fcm, "x3-old", 5_000))
        .await
        .unwrap();
    store
        .register_device(device("x3", "new", Way::Fcm, "x3-new", 9_000))
        .await
        .unwrap();
    let everything = || DeviceQuery {
        page: 1,
        size: 1000,
        ..DeviceQuery::default()
    };
    let before = store.list_devices(everything()).await.unwrap().total;
    // Every earlier registration of the suite is older than 9 s too.
    assert_eq!(store.expire_devices(9_000).await.unwrap(), before - 1);
    let left = store.list_devices(everything()).await.unwrap().items;
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].user.as_str(), left[0].device.as_str()),
        ("x3", "new")
    );
}

fn terms(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn resolve(store: &dyn Store, app: &str, text: &str, within: Option<&[&str]>) -> Vec<String> {
    let expr = Audience::parse(text).unwrap().users.unwrap();
    store
        .resolve(app, &expr, within.map(terms), 100)
        .await
        .unwrap()
}

pub(super) async fn tags_and_audiences(store: &dyn Store) {
    let people: &[(&str, &[&str], &[&str])] = &[
        ("ann", &["tag:vip", "tag:beta"], &["lang:zh", "region:cn"]),
        ("ben", &["tag:vip"], &["lang:en", "region:eu"]),
        ("cat", &["tag:beta"], &["lang:zh", "region:hong kong"]),
        ("dan", &[], &["lang:en"]),
    ];
    for (user, tags, attributes) in people {
        store
            .set_terms("default", user, TermSet::Tags, terms(tags))
            .await
            .unwrap();
        store
            .set_terms("default", user, TermSet::Attributes, terms(attributes))
            .await
            .unwrap();
    }
    // Another app's users are apart.
    store
        .set_terms("oa", "ann", TermSet::Tags, terms(&["tag:vip"]))
        .await
        .unwrap();
    assert_eq!(
        store.terms("default", "ann").await.unwrap(),
        ["lang:zh", "region:cn", "tag:beta", "tag:vip"]
    );
    // Replacing the tags leaves the attributes, and the other way round.
    store
        .set_terms(
            "default",
            "ann",
            TermSet::Tags,
            terms(&["tag:vip", "tag:new"]),
        )
        .await
        .unwrap();
    store
        .set_terms("default", "dan", TermSet::Attributes, terms(&["lang:ja"]))
        .await
        .unwrap();
    assert_eq!(
        store.terms("default", "ann").await.unwrap(),
        ["lang:zh", "region:cn", "tag:new", "tag:vip"]
    );
    assert_eq!(store.terms("default", "dan").await.unwrap(), ["lang:ja"]);
    assert!(store.terms("default", "nobody").await.unwrap().is_empty());

    let cases: &[(&str, &[&str])] = &[
        ("tag:vip", &["ann", "ben"]),
        ("tag:vip AND lang:zh", &["ann"]),
        ("tag:vip OR lang:zh", &["ann", "ben", "cat"]),
        ("NOT tag:vip", &["cat", "dan"]),
        ("lang:zh AND NOT tag:vip", &["cat"]),
        ("region:\"hong kong\" OR user:dan", &["cat", "dan"]),
        (
            "(tag:vip OR tag:beta) AND NOT (lang:en OR region:cn)",
            &["cat"],
        ),
        ("user:zed", &["zed"]),
        ("user:zed AND tag:vip", &[]),
        ("NOT NOT tag:beta", &["cat"]),
        ("tag:none", &[]),
        ("tag:vip AND NOT agent:cs", &["ann", "ben"]),
    ];
    for (text, expected) in cases {
        assert_eq!(
            resolve(store, "default", text, None).await,
            *expected,
            "{text}"
        );
    }
    assert_eq!(resolve(store, "oa", "tag:vip", None).await, ["ann"]);
    // Among given users (the online ones).
    let online = &["ben", "cat", "zed"][..];
    assert_eq!(
        resolve(store, "default", "tag:vip", Some(online)).await,
        ["ben"]
    );
    assert_eq!(
        resolve(store, "default", "NOT tag:vip", Some(online)).await,
        ["cat", "zed"]
    );
    // The limit cuts the answer (the engine asks for one more than it accepts).
    let expr = Audience::parse("tag:vip OR lang:zh")
        .unwrap()
        .users
        .unwrap();
    assert_eq!(
        store
            .resolve("default", &expr, None, 2)
            .await
            .unwrap()
            .len(),
        2
    );
}

pub(super) async fn preferences_replaced_and_read(store: &dyn Store) {
    let prefs = mps_proto::Preferences {
        muted_components: vec!["oa".into()],
        muted_channels: vec!["fcm".into()],
        quiet_hours: Some(mps_proto::QuietHours {
            start: "22:00".into(),
            end: "07:00".into(),
            utc_offset: Some("+08:00".into()),
        }),
        channels: vec![
            "push".into(),
            mps_proto::ChannelChoice::Step(mps_proto::ChannelStep {
                channel: "email".into(),
                after: Some(mps_proto::Delay::Text("30m".into())),
            }),
        ],
    };
    store
        .set_preferences("default", "p1", prefs.clone())
        .await
        .unwrap();
    let other = mps_proto::Preferences {
        muted_channels: vec!["apns".into()],
        ..Default::default()
    };
    store
        .set_preferences("oa", "p1", other.clone())
        .await
        .unwrap();
    let users = terms(&["p1", "p2"]);
    assert_eq!(
        store.preferences("default", &users).await.unwrap(),
        [("p1".to_owned(), prefs)]
    );
    assert_eq!(
        store.preferences("oa", &users).await.unwrap(),
        [("p1".to_owned(), other.clone())]
    );
    // Replaced; empty ones are removed.
    let replaced = mps_proto::Preferences {
        muted_components: vec!["esbm".into()],
        ..Default::default()
    };
    store
        .set_preferences("default", "p1", replaced.clone())
        .await
        .unwrap();
    assert_eq!(
        store.preferences("default", &users).await.unwrap(),
        [("p1".to_owned(), replaced)]
    );
    store
        .set_preferences("default", "p1", Default::default())
        .await
        .unwrap();
    assert!(
        store
            .preferences("default", &users)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.preferences("default", &[]).await.unwrap().is_empty());
}
