//! Local stand-ins of APNs, FCM and a Web Push service (crate `mps-standins`, which checks the
//! real protocols) and the `[push]` configuration that points the binary at them. Included by
//! the tests that push through vendors.

#![allow(dead_code)]

use mps_standins::{ApnsStandIn, FcmStandIn, VapidKey, WebPushStandIn};

/// The three stand-ins and the `[push]` configuration that points mps at them.
pub struct Vendors {
    pub apns: ApnsStandIn,
    pub fcm: FcmStandIn,
    pub webpush: WebPushStandIn,
    vapid: tempfile::TempDir,
}

impl Vendors {
    pub async fn start() -> Vendors {
        Vendors {
            apns: ApnsStandIn::start().await,
            fcm: FcmStandIn::start().await,
            webpush: WebPushStandIn::start().await,
            vapid: tempfile::tempdir().unwrap(),
        }
    }

    pub fn config(&self) -> String {
        let vapid = VapidKey::generate().write(self.vapid.path());
        format!(
            r#"
[push]
attempts = 2
backoff_ms = 5

[push.apps.default.apns]
key_file = "{apns_key}"
key_id = "{key_id}"
team_id = "{team_id}"
topic = "{topic}"
endpoint = "{apns}"
ca_file = "{apns_ca}"

[push.apps.default.fcm]
service_account_file = "{fcm_account}"
endpoint = "{fcm}"
ca_file = "{fcm_ca}"

[push.apps.default.webpush]
vapid_key_file = "{vapid}"
subject = "mailto:ops@example.com"
ca_file = "{webpush_ca}"
"#,
            apns_key = self.apns.key_file().display(),
            key_id = ApnsStandIn::KEY_ID,
            team_id = ApnsStandIn::TEAM_ID,
            topic = ApnsStandIn::TOPIC,
            apns = self.apns.endpoint(),
            apns_ca = self.apns.ca_file().display(),
            fcm_account = self.fcm.service_account_file().display(),
            fcm = self.fcm.endpoint(),
            fcm_ca = self.fcm.ca_file().display(),
            vapid = vapid.display(),
            webpush_ca = self.webpush.ca_file().display(),
        )
    }

    /// Nothing the stand-ins received broke the vendors' protocols.
    pub fn clean(&self) {
        assert!(
            self.apns.violations().is_empty(),
            "{:?}",
            self.apns.violations()
        );
        assert!(
            self.fcm.violations().is_empty(),
            "{:?}",
            self.fcm.violations()
        );
        assert!(
            self.webpush.violations().is_empty(),
            "{:?}",
            self.webpush.violations()
        );
    }

    /// Tokens of the APNs notifications accepted.
    pub fn apns_tokens(&self) -> Vec<String> {
        self.apns.accepted().into_iter().map(|p| p.token).collect()
    }

    /// Tokens of the FCM messages accepted.
    pub fn fcm_tokens(&self) -> Vec<String> {
        self.fcm
            .accepted()
            .into_iter()
            .map(|p| p.message["token"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}
