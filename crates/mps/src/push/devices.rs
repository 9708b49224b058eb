//! Opening and closing push modes: the checks a device registration passes and the store calls
//! behind them, shared by the API (`/api/v1/devices`, `/api/v1/logout`) and the protocol's
//! short connection, so both accept and refuse exactly the same things.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mps_proto::{ClientInfo, DeviceRegistration};
use p256::elliptic_curve::sec1::ToEncodedPoint;

use super::PushConfig;
use super::webpush::{Subscription, host_allowed};
use crate::id::now_ms;
use crate::store::{DeviceSelector, Store, StoreError};
use crate::words::{Device, Invalid, Way, check_name, invalid};

/// Most components one device registration may list.
const MAX_COMPONENTS: usize = 256;
/// Longest FCM registration token or Web Push endpoint, bytes (real ones are a few hundred).
pub const MAX_TOKEN: usize = 1024;
/// APNs device tokens are 32 bytes today; Apple says they may grow, so up to 100.
const APNS_TOKEN_BYTES: std::ops::RangeInclusive<usize> = 32..=100;

/// What a device asks for when it opens a push mode, on the API or the protocol.
#[derive(Debug, Clone, Default)]
pub struct PushModeRequest {
    pub way: String,
    pub device: Option<String>,
    pub agent: Option<String>,
    /// APNs or FCM token, or a Web Push subscription as a JSON string.
    pub token: Option<String>,
    /// A Web Push subscription object.
    pub subscription: Option<serde_json::Value>,
    pub components: Option<Vec<String>>,
}

impl From<ClientInfo> for PushModeRequest {
    /// The push mode an open frame's `Client` asks for (the protocol's short connection).
    fn from(client: ClientInfo) -> Self {
        PushModeRequest {
            way: client.way.unwrap_or_default(),
            device: client.device,
            agent: client.agent,
            token: client.device_token,
            subscription: client.subscription,
            components: client.component_set,
        }
    }
}

/// Parses a way name; anything but `apns`, `fcm` and `webpush` is refused.
pub fn parse_way(way: &str) -> Result<Way, Invalid> {
    Way::parse(way).ok_or_else(|| {
        invalid(
            "unsupported_way",
            format!("way {way:?} is not supported; use apns, fcm or webpush"),
        )
    })
}

/// Checks a device id (required to open or close a push mode).
pub fn check_device_id(device: Option<&str>) -> Result<&str, Invalid> {
    let device = device.ok_or_else(|| {
        invalid(
            "invalid_device",
            "device is required: the app's own id of the device",
        )
    })?;
    check_name("device", device).map_err(|e| invalid("invalid_device", e.to_string()))?;
    Ok(device)
}

/// Checks a registration and returns it in stored form: the token normalized (APNs lower-case
/// hex, Web Push subscription reduced to endpoint and keys), agent defaulted by way.
pub fn check_registration(
    app: &str,
    user: &str,
    request: PushModeRequest,
    allowed_hosts: &[String],
    now: i64,
) -> Result<Device, Invalid> {
    let way = parse_way(&request.way)?;
    let device = check_device_id(request.device.as_deref())?.to_owned();
    let agent = match request.agent {
        Some(agent) => {
            check_name("agent", &agent).map_err(|e| invalid("invalid_device", e.to_string()))?;
            agent
        }
        None => default_agent(way).to_owned(),
    };
    let components = request.components.unwrap_or_default();
    if components.len() > MAX_COMPONENTS {
        return Err(invalid(
            "invalid_device",
            format!("at most {MAX_COMPONENTS} components"),
        ));
    }
    for c in &components {
        check_name("component", c).map_err(|e| invalid("invalid_device", e.to_string()))?;
    }
    let token = match way {
        Way::Apns => apns_token(vendor_token(way, request.token, request.subscription)?)?,
        Way::Fcm => fcm_token(vendor_token(way, request.token, request.subscription)?)?,
        Way::Webpush => subscription(request.token, request.subscription, allowed_hosts)?,
    };
    Ok(Device {
        app: app.to_owned(),
        user: user.to_owned(),
        agent,
        device,
        way,
        token,
        components,
        refreshed: now,
    })
}

/// The agent a registration is for when the app names none.
fn default_agent(way: Way) -> &'static str {
    match way {
        Way::Apns => "ios",
        Way::Fcm => "android",
        Way::Webpush => "bs",
    }
}

fn vendor_token(
    way: Way,
    token: Option<String>,
    subscription: Option<serde_json::Value>,
) -> Result<String, Invalid> {
    if subscription.is_some() {
        return Err(invalid(
            "invalid_device_token",
            format!(
                "subscription is for webpush; {} takes a token",
                way.as_str()
            ),
        ));
    }
    token.ok_or_else(|| {
        invalid(
            "invalid_device_token",
            format!("token is required for {}", way.as_str()),
        )
    })
}

fn apns_token(token: String) -> Result<String, Invalid> {
    let hex_ok = token.len().is_multiple_of(2) && token.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex_ok || !APNS_TOKEN_BYTES.contains(&(token.len() / 2)) {
        return Err(invalid(
            "invalid_device_token",
            format!(
                "an APNs device token is {} to {} bytes in hexadecimal",
                APNS_TOKEN_BYTES.start(),
                APNS_TOKEN_BYTES.end()
            ),
        ));
    }
    Ok(token.to_ascii_lowercase())
}

fn fcm_token(token: String) -> Result<String, Invalid> {
    if token.is_empty() || token.len() > MAX_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "invalid_device_token",
            format!("an FCM registration token is 1 to {MAX_TOKEN} visible ASCII characters"),
        ));
    }
    Ok(token)
}

fn bad_subscription(message: impl Into<String>) -> Invalid {
    invalid("invalid_subscription", message)
}

/// A Web Push subscription as stored: `{"endpoint": ..., "keys": {"auth": ..., "p256dh": ...}}`,
/// keys in unpadded base64url, checked by the Web Push client's own parser; its endpoint's host
/// must be one the app's `allowed_hosts` admits.
fn subscription(
    token: Option<String>,
    subscription: Option<serde_json::Value>,
    allowed_hosts: &[String],
) -> Result<String, Invalid> {
    let text = match (token, subscription) {
        (Some(_), Some(_)) => {
            return Err(bad_subscription(
                "give the subscription once, not also as token",
            ));
        }
        (None, Some(value)) => value.to_string(),
        (Some(text), None) => text,
        (None, None) => {
            return Err(bad_subscription(
                "subscription is required for webpush (PushSubscription.toJSON())",
            ));
        }
    };
    let parsed = Subscription::parse(&text).map_err(bad_subscription)?;
    let endpoint = parsed.endpoint.as_str();
    if endpoint.len() > MAX_TOKEN {
        return Err(bad_subscription(format!(
            "subscription.endpoint is longer than {MAX_TOKEN} bytes"
        )));
    }
    let host = parsed.endpoint.host_str().unwrap_or_default();
    if !host_allowed(allowed_hosts, host) {
        return Err(bad_subscription(format!(
            "the endpoint's host {host} is not one of this app's push services (allowed_hosts)"
        )));
    }
    let stored = serde_json::json!({
        "endpoint": endpoint,
        "keys": {
            "p256dh": URL_SAFE_NO_PAD.encode(parsed.p256dh.to_encoded_point(false).as_bytes()),
            "auth": URL_SAFE_NO_PAD.encode(parsed.auth),
        },
    });
    Ok(stored.to_string())
}

/// Why a push mode could not be opened or closed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens (or refreshes) a push mode: checks it, stores it, and takes its token from any other
/// user.
pub async fn open(
    store: &dyn Store,
    config: &PushConfig,
    app: &str,
    user: &str,
    request: PushModeRequest,
) -> Result<(Device, bool), DeviceError> {
    let allowed_hosts = config
        .apps
        .get(app)
        .and_then(|a| a.webpush.as_ref())
        .map_or(&[][..], |w| w.allowed_hosts.as_slice());
    let device = check_registration(app, user, request, allowed_hosts, now_ms() as i64)?;
    let registered = store.register_device(device.clone()).await?;
    let way = device.way.as_str();
    let event = if registered.created {
        "registered"
    } else {
        "refreshed"
    };
    metrics::counter!("mps_devices_total", "way" => way, "event" => event).increment(1);
    if !registered.taken_from.is_empty() {
        metrics::counter!("mps_devices_removed_total", "reason" => "taken")
            .increment(registered.taken_from.len() as u64);
        tracing::info!(
            app,
            user,
            way,
            from = ?registered.taken_from,
            "device token moved to another user"
        );
    }
    Ok((device, registered.created))
}

/// Closes push modes (one way of a device, every way of a device, or every device of the
/// user); returns how many registrations were removed. `reason` labels the metric.
pub async fn close(
    store: &dyn Store,
    selector: DeviceSelector,
    reason: &'static str,
) -> Result<u64, DeviceError> {
    let removed = store.remove_devices(selector).await?;
    metrics::counter!("mps_devices_removed_total", "reason" => reason).increment(removed);
    Ok(removed)
}

/// The wire form of a registration.
pub fn describe(device: Device) -> DeviceRegistration {
    DeviceRegistration {
        app: device.app,
        user: device.user,
        agent: device.agent,
        device: device.device,
        way: device.way.as_str().to_owned(),
        token: device.token,
        components: device.components,
        refreshed: device.refreshed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256DH: &str =
        "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
    const AUTH: &str = "tBHItJI5svbpez7KI4CCXg";

    fn request(way: &str) -> PushModeRequest {
        PushModeRequest {
            way: way.into(),
            device: Some("phone-1".into()),
            ..PushModeRequest::default()
        }
    }

    fn code(result: Result<Device, Invalid>) -> &'static str {
        match result {
            Err(Invalid { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// The code that refuses `request` from user `u` of the default app.
    fn refusal(request: PushModeRequest) -> &'static str {
        code(check_registration("default", "u", request, &[], 0))
    }

    #[test]
    fn apns_tokens_are_hex_and_lower_cased() {
        let token = "AB".repeat(32);
        let device = check_registration(
            "default",
            "u",
            PushModeRequest {
                token: Some(token),
                ..request("apns")
            },
            &[],
            7,
        )
        .unwrap();
        assert_eq!(device.token, "ab".repeat(32));
        assert_eq!(device.agent, "ios");
        assert_eq!(device.refreshed, 7);
        for bad in [
            "xyz".to_owned(),
            "ab".repeat(31),
            "abc".repeat(31),
            "ab".repeat(101),
        ] {
            assert_eq!(
                refusal(PushModeRequest {
                    token: Some(bad),
                    ..request("apns")
                }),
                "invalid_device_token"
            );
        }
    }

    #[test]
    fn fcm_tokens_are_bounded_visible_ascii() {
        let ok = PushModeRequest {
            token: Some("fcm:APA91b-token_x".into()),
            ..request("fcm")
        };
        assert_eq!(
            check_registration("default", "u", ok, &[], 0)
                .unwrap()
                .agent,
            "android"
        );
        for bad in ["", "has space", "é", &"x".repeat(MAX_TOKEN + 1)] {
            assert_eq!(
                refusal(PushModeRequest {
                    token: Some(bad.into()),
                    ..request("fcm")
                }),
                "invalid_device_token",
                "{bad:?}"
            );
        }
        assert_eq!(refusal(request("fcm")), "invalid_device_token");
    }

    #[test]
    fn web_push_subscriptions_are_checked_and_normalized() {
        let browser = serde_json::json!({
            "endpoint": "https://push.example.net/send/abc",
            "expirationTime": null,
            "keys": {"p256dh": P256DH, "auth": format!("{AUTH}==")},
        });
        let from_object = check_registration(
            "default",
            "u",
            PushModeRequest {
                subscription: Some(browser.clone()),
                ..request("webpush")
            },
            &[],
            0,
        )
        .unwrap();
        let from_string = check_registration(
            "default",
            "u",
            PushModeRequest {
                token: Some(browser.to_string()),
                ..request("webpush")
            },
            &[],
            0,
        )
        .unwrap();
        assert_eq!(from_object.token, from_string.token);
        let stored: serde_json::Value = serde_json::from_str(&from_object.token).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"endpoint": "https://push.example.net/send/abc",
                               "keys": {"p256dh": P256DH, "auth": AUTH}})
        );
        assert_eq!(from_object.agent, "bs");
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut s = browser.clone();
            f(&mut s);
            refusal(PushModeRequest {
                subscription: Some(s),
                ..request("webpush")
            })
        };
        assert_eq!(
            with(&|s| s["endpoint"] = "http://push.example.net/x".into()),
            "invalid_subscription"
        );
        assert_eq!(
            with(&|s| s["endpoint"] = "not a url".into()),
            "invalid_subscription"
        );
        assert_eq!(
            with(&|s| s["keys"]["auth"] = "short".into()),
            "invalid_subscription"
        );
        assert_eq!(
            with(&|s| s["keys"]["p256dh"] = AUTH.into()),
            "invalid_subscription"
        );
        assert_eq!(
            with(&|s| {
                s.as_object_mut().unwrap().remove("keys");
            }),
            "invalid_subscription"
        );
        assert_eq!(refusal(request("webpush")), "invalid_subscription");
        // Only the app's push services, when it names them.
        let allowed = ["example.net".to_owned()];
        let on = |endpoint: &str| {
            let mut s = browser.clone();
            s["endpoint"] = endpoint.into();
            let request = PushModeRequest {
                subscription: Some(s),
                ..request("webpush")
            };
            check_registration("default", "u", request, &allowed, 0)
        };
        assert!(on("https://push.example.net/x").is_ok());
        assert!(on("https://example.net/x").is_ok());
        assert_eq!(
            code(on("https://evil-example.net/x")),
            "invalid_subscription"
        );
        assert_eq!(code(on("https://127.0.0.1/x")), "invalid_subscription");
    }

    #[test]
    fn way_device_agent_and_components_are_checked() {
        let token = || Some("t".to_owned());
        assert_eq!(
            refusal(PushModeRequest {
                token: token(),
                ..request("sms")
            }),
            "unsupported_way"
        );
        assert_eq!(
            refusal(PushModeRequest {
                token: token(),
                device: None,
                ..request("fcm")
            }),
            "invalid_device"
        );
        assert_eq!(
            refusal(PushModeRequest {
                token: token(),
                components: Some(vec!["".into()]),
                ..request("fcm")
            }),
            "invalid_device"
        );
        assert_eq!(
            refusal(PushModeRequest {
                token: token(),
                agent: Some("a\nb".into()),
                ..request("fcm")
            }),
            "invalid_device"
        );
        assert_eq!(
            refusal(PushModeRequest {
                token: token(),
                subscription: Some(serde_json::json!({})),
                ..request("fcm")
            }),
            "invalid_device_token"
        );
    }
}
