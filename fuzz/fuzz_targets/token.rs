//! Client tokens and the admin key (`crate::auth`): any text offered as a token is refused
//! without a panic; a token signed with the server's key over any payload is verified without a
//! panic and speaks for its `sub`; a token the server issues verifies to the identity it was
//! issued for.

#![no_main]

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use mps::auth::{AuthError, Authenticator, Claims, DEFAULT_APP, bearer};
use mps::config::AuthConfig;

const SECRET: &str = "fuzzing secret";
const ADMIN_KEY: &str = "admin key";

static AUTH: LazyLock<Authenticator> = LazyLock::new(|| {
    Authenticator::new(&AuthConfig::default(), ADMIN_KEY.into(), SECRET).expect("HS256 key")
});

#[derive(Arbitrary, Debug)]
enum Input {
    /// Whatever a client sends as its token.
    Text(String),
    /// Three base64url parts around any header and payload text, with a forged signature.
    Forged {
        header: String,
        payload: String,
        signature: Vec<u8>,
    },
    /// Any header and payload text, signed with the server's secret (HS256).
    Signed { header: String, payload: String },
    /// Claims of any values, encoded and signed as the server would.
    Claims {
        sub: String,
        app: Option<String>,
        exp: i64,
        iat: Option<i64>,
        topics: Option<Vec<String>>,
    },
    /// A token the server issues.
    Issued {
        app: String,
        user: String,
        ttl: Option<u64>,
        topics: Option<Vec<String>>,
    },
    /// An `Authorization` header offered as the admin key.
    Admin(String),
}

/// A `sub` or `app` the server issues tokens for: 1 to 256 bytes, no control characters.
fn good_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(header: &str, payload: &str) -> String {
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

fuzz_target!(|input: Input| {
    let auth = &*AUTH;
    match input {
        Input::Text(text) => {
            assert!(
                auth.verify(&text).is_err(),
                "{text:?} was taken for a token"
            );
        }
        Input::Forged {
            header,
            payload,
            signature,
        } => {
            let token = format!(
                "{}.{}.{}",
                b64(header.as_bytes()),
                b64(payload.as_bytes()),
                b64(&signature)
            );
            assert!(auth.verify(&token).is_err(), "forged {token:?} was taken");
        }
        Input::Signed { header, payload } => {
            let token = sign(&header, &payload);
            if let Ok(identity) = auth.verify(&token) {
                assert!(!identity.user.is_empty());
                let claims: serde_json::Value =
                    serde_json::from_str(&payload).expect("a verified payload is JSON");
                assert_eq!(claims["sub"].as_str(), Some(identity.user.as_str()));
            }
        }
        Input::Claims {
            sub,
            app,
            exp,
            iat,
            topics,
        } => {
            let claims = Claims {
                sub: sub.clone(),
                app: app.clone(),
                exp,
                iat,
                nbf: None,
                topics: topics.clone(),
            };
            let header = jsonwebtoken::Header::default();
            let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
            let token = jsonwebtoken::encode(&header, &claims, &key).expect("claims encode");
            let verified = auth.verify(&token);
            let now = now();
            if exp < 0 {
                // Not a time: the claim is refused as malformed.
                assert!(
                    matches!(verified, Err(AuthError::Invalid(_))),
                    "{verified:?}"
                );
            } else if exp < now - 10 {
                assert!(matches!(verified, Err(AuthError::Expired)), "{verified:?}");
            } else if exp > now + 10 && good_name(&sub) && app.as_deref().is_none_or(good_name) {
                let identity = verified.expect("a live token with a good subject verifies");
                assert_eq!(identity.user, sub);
                assert_eq!(identity.app, app.unwrap_or_else(|| DEFAULT_APP.into()));
                assert_eq!(identity.topics, topics);
            } else if !good_name(&sub) || !app.as_deref().is_none_or(good_name) {
                assert!(
                    verified.is_err(),
                    "a token with a bad subject or app verifies"
                );
            }
        }
        Input::Issued {
            app,
            user,
            ttl,
            topics,
        } => {
            let (token, expires) = auth
                .issue(&app, &user, ttl, topics.clone())
                .expect("HS256 issues");
            assert!(expires >= now() - 1);
            match auth.verify(&token) {
                Ok(identity) => {
                    assert_eq!(identity.user, user);
                    assert_eq!(identity.app, app);
                    assert_eq!(identity.topics, topics);
                }
                Err(e) => assert!(
                    !good_name(&user) || (app != DEFAULT_APP && !good_name(&app)),
                    "issued token refused: {e}"
                ),
            }
        }
        Input::Admin(header) => {
            let accepted = auth.check_admin(Some(&header)).is_ok();
            assert_eq!(accepted, bearer(&header) == Some(ADMIN_KEY), "{header:?}");
        }
    }
});
