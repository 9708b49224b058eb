//! Credentials as the vendors hand them out, generated fresh for tests: an APNs `.p8` signing
//! key, an FCM service-account JSON with its RSA key, and a VAPID key pair.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;

/// An APNs token-signing key: P-256, PKCS#8 PEM, as Apple's `AuthKey_<KEYID>.p8` files are.
#[derive(Clone)]
pub struct ApnsKey {
    /// The `.p8` file's text.
    pub pem: String,
    /// The public key (SPKI PEM) APNs checks provider tokens against.
    pub public_pem: String,
}

impl ApnsKey {
    pub fn generate() -> ApnsKey {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        ApnsKey {
            pem: secret
                .to_pkcs8_pem(LineEnding::LF)
                .expect("PKCS#8 encoding")
                .to_string(),
            public_pem: secret
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("SPKI encoding"),
        }
    }

    /// Writes the key as `AuthKey_<key_id>.p8` in `dir`.
    pub fn write(&self, dir: &Path, key_id: &str) -> PathBuf {
        write(dir, &format!("AuthKey_{key_id}.p8"), &self.pem)
    }
}

/// A Google service account, as the JSON file the Firebase console downloads.
#[derive(Clone)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key_id: String,
    /// PKCS#8 PEM of the RSA key (`private_key` in the JSON).
    pub private_key_pem: String,
    /// The RSA public key's modulus and exponent, base64url, to check assertions with.
    pub n: String,
    pub e: String,
    pub token_uri: String,
}

impl ServiceAccount {
    /// A service account of `project_id` whose token endpoint is `token_uri`. The RSA key is
    /// generated once per process (2048-bit generation is slow in debug builds) and shared.
    pub fn generate(project_id: &str, token_uri: &str) -> ServiceAccount {
        let key = rsa_key();
        let public = key.to_public_key();
        ServiceAccount {
            project_id: project_id.to_owned(),
            client_email: format!("firebase-adminsdk@{project_id}.iam.gserviceaccount.com"),
            private_key_id: hex::encode(rand::random::<[u8; 20]>()),
            private_key_pem: key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .expect("PKCS#8 encoding")
                .to_string(),
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            token_uri: token_uri.to_owned(),
        }
    }

    /// The service-account JSON, field for field as Google writes it.
    pub fn json(&self) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": format!(
                "https://www.googleapis.com/robot/v1/metadata/x509/{}",
                self.client_email
            ),
            "universe_domain": "googleapis.com",
        })
        .to_string()
    }

    /// Writes the JSON as `service-account.json` in `dir`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write(dir, "service-account.json", &self.json())
    }
}

fn rsa_key() -> rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key generation")
    })
    .clone()
}

/// A VAPID key pair (RFC 8292): P-256.
#[derive(Clone)]
pub struct VapidKey {
    /// SEC1 PEM (`BEGIN EC PRIVATE KEY`), as `openssl ecparam -genkey` and the web-push tools
    /// write it.
    pub pem: String,
    /// The public key as an uncompressed point, base64url without padding: what pages pass to
    /// `PushManager.subscribe` as `applicationServerKey`.
    pub public_key: String,
}

impl VapidKey {
    pub fn generate() -> VapidKey {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        VapidKey {
            pem: secret
                .to_sec1_pem(LineEnding::LF)
                .expect("SEC1")
                .to_string(),
            public_key: URL_SAFE_NO_PAD
                .encode(secret.public_key().to_encoded_point(false).as_bytes()),
        }
    }

    /// Writes the PEM as `vapid.pem` in `dir`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write(dir, "vapid.pem", &self.pem)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a key file");
    path
}
