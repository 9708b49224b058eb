//! The stand-ins refuse what the real services refuse: a client that passes them has been
//! checked. Each test sends one well-formed request (accepted) and variations that break one
//! rule each (refused with the vendor's answer and recorded as a violation).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mps_standins::{ApnsKey, ApnsStandIn, FcmStandIn, Subscription, VapidKey, WebPushStandIn};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};

const TOKEN: &str = "0a1b2c3d4e5f";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn client(ca_file: &std::path::Path, http1_only: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).unwrap()).unwrap();
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10));
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    builder.build().unwrap()
}

// ---------------------------------------------------------------- APNs

fn provider_token(key_pem: &str, kid: &str, iss: &str, iat: i64) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let key = EncodingKey::from_ec_pem(key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &json!({ "iss": iss, "iat": iat }), &key).unwrap()
}

struct ApnsRequest {
    jwt: String,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl ApnsRequest {
    fn valid(key_pem: &str) -> ApnsRequest {
        ApnsRequest {
            jwt: provider_token(key_pem, ApnsStandIn::KEY_ID, ApnsStandIn::TEAM_ID, now()),
            headers: vec![
                ("apns-topic", ApnsStandIn::TOPIC.into()),
                ("apns-push-type", "alert".into()),
                ("apns-priority", "10".into()),
                ("apns-expiration", "0".into()),
            ],
            body: json!({ "aps": { "alert": { "body": "hi" } } }).to_string(),
        }
    }

    fn set(mut self, name: &'static str, value: &str) -> ApnsRequest {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    async fn send(self, http: &reqwest::Client, apns: &ApnsStandIn) -> (u16, String) {
        let mut request = http
            .post(format!("{}/3/device/{TOKEN}", apns.endpoint()))
            .header("authorization", format!("bearer {}", self.jwt))
            .body(self.body);
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (
            status,
            body["reason"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

#[tokio::test]
async fn apns_refuses_what_apns_refuses() {
    let apns = ApnsStandIn::start().await;
    let key = std::fs::read_to_string(apns.key_file()).unwrap();
    let http = client(apns.ca_file(), false);

    assert_eq!(
        ApnsRequest::valid(&key).send(&http, &apns).await,
        (200, String::new())
    );
    assert_eq!(apns.accepted().len(), 1);

    let other_key = ApnsKey::generate().pem;
    let mut cases: Vec<(ApnsRequest, u16, &str)> = vec![
        (
            ApnsRequest {
                jwt: provider_token(&other_key, ApnsStandIn::KEY_ID, ApnsStandIn::TEAM_ID, now()),
                ..ApnsRequest::valid(&key)
            },
            403,
            "InvalidProviderToken",
        ),
        (
            ApnsRequest {
                jwt: provider_token(&key, "OTHERKEYID", ApnsStandIn::TEAM_ID, now()),
                ..ApnsRequest::valid(&key)
            },
            403,
            "InvalidProviderToken",
        ),
        (
            ApnsRequest {
                jwt: provider_token(&key, ApnsStandIn::KEY_ID, "OTHERTEAM", now()),
                ..ApnsRequest::valid(&key)
            },
            403,
            "InvalidProviderToken",
        ),
        (
            ApnsRequest {
                jwt: provider_token(
                    &key,
                    ApnsStandIn::KEY_ID,
                    ApnsStandIn::TEAM_ID,
                    now() - 3700,
                ),
                ..ApnsRequest::valid(&key)
            },
            403,
            "ExpiredProviderToken",
        ),
        (
            ApnsRequest::valid(&key).set("apns-topic", "com.other"),
            400,
            "BadTopic",
        ),
        (
            ApnsRequest::valid(&key).set("apns-push-type", "voip"),
            400,
            "InvalidPushType",
        ),
        (
            ApnsRequest::valid(&key).set("apns-priority", "7"),
            400,
            "BadPriority",
        ),
        (
            ApnsRequest::valid(&key).set("apns-expiration", "soon"),
            400,
            "BadExpirationDate",
        ),
        (
            ApnsRequest::valid(&key).set("apns-collapse-id", &"c".repeat(65)),
            400,
            "BadCollapseId",
        ),
        (
            ApnsRequest {
                body: json!({ "aps": { "alert": "x".repeat(4100) } }).to_string(),
                ..ApnsRequest::valid(&key)
            },
            413,
            "PayloadTooLarge",
        ),
        (
            ApnsRequest {
                body: json!({ "alert": "no aps" }).to_string(),
                ..ApnsRequest::valid(&key)
            },
            400,
            "BadPayload",
        ),
    ];
    let count = cases.len();
    for (request, status, reason) in cases.drain(..) {
        assert_eq!(
            request.send(&http, &apns).await,
            (status, reason.to_owned())
        );
    }
    assert_eq!(apns.violations().len(), count, "{:?}", apns.violations());
    assert_eq!(apns.accepted().len(), 1);

    let http1 = client(apns.ca_file(), true);
    assert!(
        http1
            .post(format!("{}/3/device/{TOKEN}", apns.endpoint()))
            .send()
            .await
            .is_err(),
        "HTTP/1.1 is not spoken"
    );
}

// ---------------------------------------------------------------- FCM

fn assertion(fcm: &FcmStandIn, claims: Value) -> String {
    let account = fcm.service_account();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(account.private_key_id.clone());
    let key = EncodingKey::from_rsa_pem(account.private_key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn good_claims(fcm: &FcmStandIn) -> Value {
    json!({
        "iss": fcm.service_account().client_email,
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": fcm.token_uri(),
        "iat": now(),
        "exp": now() + 3600,
    })
}

async fn token_answer(http: &reqwest::Client, fcm: &FcmStandIn, jwt: &str) -> (u16, Value) {
    let response = http
        .post(fcm.token_uri())
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", jwt),
        ])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn send(http: &reqwest::Client, fcm: &FcmStandIn, bearer: &str, body: Value) -> (u16, Value) {
    let response = http
        .post(format!(
            "{}/v1/projects/{}/messages:send",
            fcm.endpoint(),
            FcmStandIn::PROJECT
        ))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn fcm_refuses_what_google_refuses() {
    let fcm = FcmStandIn::start().await;
    let http = client(fcm.ca_file(), false);

    let (status, token) = token_answer(&http, &fcm, &assertion(&fcm, good_claims(&fcm))).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    let bearer = token["access_token"].as_str().unwrap().to_owned();

    let mut bad_claims = Vec::new();
    for (field, value) in [
        ("aud", json!("https://oauth2.googleapis.com/token")),
        ("iss", json!("someone@else.iam.gserviceaccount.com")),
        (
            "scope",
            json!("https://www.googleapis.com/auth/cloud-platform.read-only"),
        ),
        ("exp", json!(now() + 7200)),
    ] {
        let mut claims = good_claims(&fcm);
        claims[field] = value;
        bad_claims.push(claims);
    }
    for claims in bad_claims {
        let (status, answer) = token_answer(&http, &fcm, &assertion(&fcm, claims)).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_grant"))
        );
    }
    assert_eq!(fcm.token_requests(), 1);

    let message = json!({ "token": "t", "data": { "k": "v" }, "android": { "priority": "HIGH", "ttl": "60s" } });
    let (status, answer) = send(&http, &fcm, &bearer, json!({ "message": message })).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["name"]
            .as_str()
            .unwrap()
            .starts_with("projects/mps-test/messages/")
    );

    for bad in [
        json!({ "message": message, "extra": 1 }),
        json!({ "message": { "token": "t", "data": { "k": 1 } } }),
        json!({ "message": { "token": "t", "android": { "ttl": "60" } } }),
        json!({ "message": { "token": "t", "android": { "priority": "high" } } }),
        json!({ "message": { "token": "t", "topic": "news" } }),
        json!({ "message": { "data": { "k": "v" } } }),
        json!({ "message": { "token": "t", "data": { "k": "x".repeat(4100) } } }),
    ] {
        let (status, answer) = send(&http, &fcm, &bearer, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {answer}");
        assert_eq!(answer["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(
            answer["error"]["details"][0]["@type"],
            "type.googleapis.com/google.firebase.fcm.v1.FcmError"
        );
    }
    let (status, answer) = send(&http, &fcm, "ya29.made-up", json!({ "message": message })).await;
    assert_eq!(
        (status, answer["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    fcm.expire_access_tokens();
    let (status, _) = send(&http, &fcm, &bearer, json!({ "message": message })).await;
    assert_eq!(status, 401);

    assert_eq!(fcm.accepted().len(), 1);
    // Four refused grants, seven refused messages, one made-up token; the expired token is not
    // a violation.
    assert_eq!(fcm.violations().len(), 12, "{:?}", fcm.violations());
}

// ---------------------------------------------------------------- Web Push

struct Push {
    vapid: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn vapid_jwt(key: &VapidKey, claims: Value) -> String {
    let secret = p256::SecretKey::from_sec1_pem(&key.pem).unwrap();
    let der = secret.to_pkcs8_der().unwrap();
    let key = EncodingKey::from_ec_der(der.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
}

fn encrypt(subscription: &Subscription, plaintext: &[u8]) -> Vec<u8> {
    let ua =
        p256::PublicKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(&subscription.p256dh).unwrap())
            .unwrap();
    let auth: [u8; 16] = URL_SAFE_NO_PAD
        .decode(&subscription.auth)
        .unwrap()
        .try_into()
        .unwrap();
    web_push_native::encrypt(plaintext.to_vec(), &ua, &auth.into()).unwrap()
}

impl Push {
    fn valid(standin: &WebPushStandIn, key: &VapidKey, subscription: &Subscription) -> Push {
        let claims =
            json!({ "aud": standin.origin(), "exp": now() + 3600, "sub": "mailto:a@example.com" });
        Push {
            vapid: format!("vapid t={}, k={}", vapid_jwt(key, claims), key.public_key),
            headers: vec![
                ("ttl", "60".into()),
                ("content-encoding", "aes128gcm".into()),
                ("urgency", "normal".into()),
                ("topic", "room-2".into()),
            ],
            body: encrypt(subscription, b"hello"),
        }
    }

    fn with_claims(self, key: &VapidKey, claims: Value) -> Push {
        Push {
            vapid: format!("vapid t={}, k={}", vapid_jwt(key, claims), key.public_key),
            ..self
        }
    }

    fn set(mut self, name: &'static str, value: Option<&str>) -> Push {
        self.headers.retain(|(n, _)| *n != name);
        if let Some(value) = value {
            self.headers.push((name, value.into()));
        }
        self
    }

    async fn send(self, http: &reqwest::Client, subscription: &Subscription) -> u16 {
        let mut request = http
            .post(&subscription.endpoint)
            .header("authorization", self.vapid)
            .body(self.body);
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        request.send().await.unwrap().status().as_u16()
    }
}

#[tokio::test]
async fn webpush_refuses_what_push_services_refuse_and_decrypts_the_rest() {
    let standin = WebPushStandIn::start().await;
    let key = VapidKey::generate();
    let subscription = standin.subscribe(&key.public_key);
    let http = client(standin.ca_file(), false);
    let valid = || Push::valid(&standin, &key, &subscription);

    assert_eq!(valid().send(&http, &subscription).await, 201);
    let delivered = standin.delivered();
    assert_eq!(delivered[0].plaintext, b"hello");
    assert_eq!(delivered[0].ttl, 60);

    let origin = standin.origin();
    let other = VapidKey::generate();
    let other_subscription = standin.subscribe(&key.public_key);
    let cases: Vec<(Push, u16)> = vec![
        (valid().set("ttl", None), 400),
        (valid().set("ttl", Some("-1")), 400),
        (valid().set("urgency", Some("urgent")), 400),
        (valid().set("topic", Some("has spaces")), 400),
        (valid().set("topic", Some(&"t".repeat(33))), 400),
        (valid().set("content-encoding", Some("aesgcm")), 415),
        (
            valid().with_claims(&key, json!({ "aud": "https://elsewhere.example", "exp": now() + 60, "sub": "mailto:a@example.com" })),
            403,
        ),
        (
            valid().with_claims(&key, json!({ "aud": origin, "exp": now() + 25 * 3600, "sub": "mailto:a@example.com" })),
            403,
        ),
        (
            valid().with_claims(&key, json!({ "aud": origin, "exp": now() - 10, "sub": "mailto:a@example.com" })),
            403,
        ),
        (
            valid().with_claims(&key, json!({ "aud": origin, "exp": now() + 60, "sub": "a@example.com" })),
            403,
        ),
        (
            Push {
                vapid: format!("vapid t={}, k={}", vapid_jwt(&other, json!({ "aud": origin, "exp": now() + 60, "sub": "mailto:a@example.com" })), other.public_key),
                ..valid()
            },
            403,
        ),
        (
            Push {
                vapid: "WebPush abc".into(),
                ..valid()
            },
            401,
        ),
        (
            Push {
                body: encrypt(&other_subscription, b"for someone else"),
                ..valid()
            },
            400,
        ),
        (
            Push {
                body: encrypt(&subscription, &[b'x'; 4100]),
                ..valid()
            },
            413,
        ),
    ];
    let count = cases.len();
    for (i, (push, status)) in cases.into_iter().enumerate() {
        assert_eq!(push.send(&http, &subscription).await, status, "case {i}");
    }
    assert_eq!(
        standin.violations().len(),
        count,
        "{:?}",
        standin.violations()
    );
    assert_eq!(standin.delivered().len(), 1);
}
