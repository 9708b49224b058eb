//! The one place that checks credentials: client tokens (JWT, `sub` = user, optional `app`,
//! `exp` and `nbf` enforced, names checked as when they are issued) and the back-end admin key.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::words::check_name;

/// App used when a token or request names none.
pub const DEFAULT_APP: &str = "default";

/// Why a credential was refused. The message is safe to show to the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("wrong admin key")]
    WrongKey,
}

impl AuthError {
    /// Stable code for error frames, API bodies and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::WrongKey => "wrong_key",
        }
    }
}

/// Claims of a client token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not valid before (Unix seconds), checked with the same leeway as `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Topic patterns the client may subscribe to; absent means any (unless the server
    /// requires the claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
}

/// A verified client identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub app: String,
    pub user: String,
    /// The token's `topics` claim.
    pub topics: Option<Vec<String>>,
}

impl Identity {
    /// Whether this identity may subscribe to a topic pattern.
    pub fn may_subscribe(&self, pattern: &str, require_claim: bool) -> bool {
        match &self.topics {
            Some(allowed) => allowed.iter().any(|a| crate::topic::covers(a, pattern)),
            None => !require_claim,
        }
    }
}

/// Verifies and issues client tokens; checks the admin key.
pub struct Authenticator {
    admin_key: String,
    algorithm: Algorithm,
    decoding: DecodingKey,
    /// Absent when only a public key was configured: the server can verify but not issue.
    encoding: Option<EncodingKey>,
    validation: Validation,
    token_ttl: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported algorithm {0:?} (use HS256, RS256 or ES256)")]
    Algorithm(String),
    #[error("{0} needs auth.public_key_file")]
    NoPublicKey(String),
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("key: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
}

impl Authenticator {
    pub fn new(config: &AuthConfig, admin_key: String, secret: &str) -> Result<Self, KeyError> {
        let algorithm = match config.algorithm.to_ascii_uppercase().as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => return Err(KeyError::Algorithm(other.to_owned())),
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| KeyError::Read(path.display().to_string(), e))
        };
        let (decoding, encoding) = match algorithm {
            Algorithm::HS256 => (
                DecodingKey::from_secret(secret.as_bytes()),
                Some(EncodingKey::from_secret(secret.as_bytes())),
            ),
            _ => {
                let public = config
                    .public_key_file
                    .as_deref()
                    .ok_or_else(|| KeyError::NoPublicKey(config.algorithm.clone()))?;
                let public = read(public)?;
                let private = config.private_key_file.as_deref().map(read).transpose()?;
                if algorithm == Algorithm::RS256 {
                    (
                        DecodingKey::from_rsa_pem(&public)?,
                        private.map(|p| EncodingKey::from_rsa_pem(&p)).transpose()?,
                    )
                } else {
                    (
                        DecodingKey::from_ec_pem(&public)?,
                        private.map(|p| EncodingKey::from_ec_pem(&p)).transpose()?,
                    )
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Authenticator {
            admin_key,
            algorithm,
            decoding,
            encoding,
            validation,
            token_ttl: config.token_ttl,
        })
    }

    /// Checks a client token and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        // The same rules as for issuing: a token signed elsewhere may carry any string.
        check_name("sub", &claims.sub).map_err(|e| AuthError::Invalid(e.message))?;
        if let Some(app) = &claims.app {
            check_name("app", app).map_err(|e| AuthError::Invalid(e.message))?;
        }
        Ok(Identity {
            app: claims.app.unwrap_or_else(|| DEFAULT_APP.to_owned()),
            user: claims.sub,
            topics: claims.topics,
        })
    }

    /// Issues a client token; returns it with its expiry (Unix seconds).
    pub fn issue(
        &self,
        app: &str,
        user: &str,
        ttl: Option<u64>,
        topics: Option<Vec<String>>,
    ) -> Result<(String, i64), AuthError> {
        let encoding = self.encoding.as_ref().ok_or_else(|| {
            AuthError::Invalid("this server has no signing key (auth.private_key_file)".into())
        })?;
        let now = unix_seconds();
        let exp = now + ttl.unwrap_or(self.token_ttl).min(i64::MAX as u64 / 4) as i64;
        let claims = Claims {
            sub: user.to_owned(),
            app: (app != DEFAULT_APP).then(|| app.to_owned()),
            exp,
            iat: Some(now),
            nbf: None,
            topics,
        };
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok((token, exp))
    }

    /// Checks an `Authorization` header value against the admin key, in constant time.
    pub fn check_admin(&self, header: Option<&str>) -> Result<(), AuthError> {
        let given = header.and_then(bearer).ok_or(AuthError::Missing)?;
        if constant_time_eq::constant_time_eq(given.as_bytes(), self.admin_key.as_bytes()) {
            Ok(())
        } else {
            Err(AuthError::WrongKey)
        }
    }
}

/// The credential of an `Authorization: Bearer X` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// A token the JWT library refused, said in the product's words (not the library's).
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    AuthError::Invalid(
        match kind {
            ErrorKind::ExpiredSignature => return AuthError::Expired,
            ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
            ErrorKind::InvalidSignature => "bad signature",
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                "token signed with another algorithm than the server's"
            }
            ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => "token without exp",
            ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => "token without sub",
            ErrorKind::Json(_) => {
                "token claims are malformed: sub (text) and exp (seconds) are required"
            }
            _ => "malformed token",
        }
        .to_owned(),
    )
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig::default(), "key".into(), "secret").unwrap()
    }

    #[test]
    fn issued_tokens_verify() {
        let auth = auth();
        let (token, _) = auth.issue("default", "alice", None, None).unwrap();
        let id = auth.verify(&token).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.app, "default");
        let (token, _) = auth.issue("oa", "bob", Some(60), None).unwrap();
        assert_eq!(auth.verify(&token).unwrap().app, "oa");
    }

    #[test]
    fn expired_forged_and_garbage_tokens_fail() {
        let auth = auth();
        let claims = Claims {
            sub: "alice".into(),
            app: None,
            exp: unix_seconds() - 60,
            iat: None,
            nbf: None,
            topics: None,
        };
        let expired = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(matches!(auth.verify(&expired), Err(AuthError::Expired)));
        let other = Authenticator::new(&AuthConfig::default(), "k".into(), "other").unwrap();
        let (forged, _) = other.issue("default", "alice", None, None).unwrap();
        assert!(matches!(auth.verify(&forged), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify("a.b.c"), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify(""), Err(AuthError::Missing)));
    }

    /// A token signed with the server's secret, with these claims.
    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap()
    }

    #[test]
    fn a_token_is_refused_before_its_nbf() {
        let auth = auth();
        let exp = unix_seconds() + 3600;
        let later =
            signed(serde_json::json!({"sub": "alice", "exp": exp, "nbf": unix_seconds() + 3600}));
        let refused = auth.verify(&later).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "invalid token: token not valid yet (nbf)"
        );
        let now =
            signed(serde_json::json!({"sub": "alice", "exp": exp, "nbf": unix_seconds() - 1}));
        assert_eq!(auth.verify(&now).unwrap().user, "alice");
    }

    #[test]
    fn claims_follow_the_rules_of_issued_tokens() {
        let auth = auth();
        let exp = unix_seconds() + 3600;
        let forged_line = "w\n2026-12-06T00:00:00Z  INFO mps::server: FORGED";
        for (sub, app) in [
            (forged_line.to_owned(), None),
            ("x".repeat(100_000), None),
            ("alice".to_owned(), Some("a\u{7}pp".to_owned())),
            ("alice".to_owned(), Some("p".repeat(257))),
        ] {
            let token = signed(serde_json::json!({"sub": sub, "app": app, "exp": exp}));
            let refused = auth.verify(&token).unwrap_err();
            assert_eq!(refused.code(), "invalid_token");
            assert!(
                refused.to_string().contains("without control characters"),
                "{refused}"
            );
        }
        let token = signed(serde_json::json!({"sub": "bob", "app": "oa", "exp": exp}));
        assert_eq!(auth.verify(&token).unwrap().app, "oa");
    }

    #[test]
    fn refusals_are_in_the_products_words() {
        let auth = auth();
        let exp = unix_seconds() + 3600;
        let other = Authenticator::new(&AuthConfig::default(), "k".into(), "other").unwrap();
        let (forged, _) = other.issue("default", "alice", None, None).unwrap();
        let said = |token: &str| auth.verify(token).unwrap_err().to_string();
        assert_eq!(said(&forged), "invalid token: bad signature");
        assert_eq!(said("a.b.c"), "invalid token: malformed token");
        let no_exp = signed(serde_json::json!({"sub": "alice"}));
        assert_eq!(
            said(&no_exp),
            "invalid token: token claims are malformed: sub (text) and exp (seconds) are required"
        );
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({"sub": "alice", "exp": exp}),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(
            said(&hs384),
            "invalid token: token signed with another algorithm than the server's"
        );
    }

    #[test]
    fn admin_key_is_a_bearer_credential() {
        let auth = auth();
        assert!(auth.check_admin(Some("Bearer key")).is_ok());
        assert!(auth.check_admin(Some("bearer key")).is_ok());
        assert!(auth.check_admin(Some("Bearer nope")).is_err());
        assert!(auth.check_admin(Some("key")).is_err());
        assert!(auth.check_admin(None).is_err());
    }
}
