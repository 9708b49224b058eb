//! The browser's side of Web Push message encryption: RFC 8291 key derivation over the
//! `aes128gcm` content coding of RFC 8188, written from the RFCs (independently of the crate mps
//! encrypts with, so that a mistake there shows here) and checked against RFC 8291's example.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use sha2::Sha256;

/// Length of the `aes128gcm` header before the key id: salt (16), record size (4), idlen (1).
const HEADER: usize = 21;
/// An uncompressed P-256 point, the key id RFC 8291 requires.
const POINT: usize = 65;
const TAG: usize = 16;

/// Decrypts a push message body for the user agent holding `ua_secret` and `auth`.
pub fn decrypt(body: &[u8], ua_secret: &p256::SecretKey, auth: &[u8]) -> Result<Vec<u8>, String> {
    if body.len() < HEADER {
        return Err("body shorter than the aes128gcm header".into());
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    let idlen = usize::from(body[20]);
    if idlen != POINT {
        return Err(format!(
            "keyid is {idlen} bytes; RFC 8291 requires the sender's 65-byte public key"
        ));
    }
    let Some(keyid) = body.get(HEADER..HEADER + POINT) else {
        return Err("body ends inside the keyid".into());
    };
    let as_public =
        p256::PublicKey::from_sec1_bytes(keyid).map_err(|_| "keyid is not a P-256 point")?;
    let record = &body[HEADER + POINT..];
    if rs < 18 {
        return Err(format!("record size {rs} is below the minimum of 18"));
    }
    if record.len() > rs {
        return Err("more than one record; RFC 8291 allows a single record".into());
    }
    if record.len() <= TAG {
        return Err("record too short for a tag and a padding delimiter".into());
    }

    // RFC 8291 section 3.3: combine the ECDH secret with the authentication secret.
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_public.as_affine());
    let ua_public = ua_secret.public_key().to_encoded_point(false);
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public.as_bytes());
    key_info.extend_from_slice(keyid);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|e| e.to_string())?;

    // RFC 8188 sections 2.2 and 2.3: content-encryption key and nonce from the salt.
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|e| e.to_string())?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|e| e.to_string())?;
    // The first record's sequence number is 0, so its nonce is the derived one unchanged.
    let padded = Aes128Gcm::new(&cek.into())
        .decrypt(&Nonce::from(nonce), record)
        .map_err(|_| "authentication tag does not verify")?;

    // The last record ends with the delimiter 0x02 followed by zero padding.
    let Some(end) = padded.iter().rposition(|&b| b != 0) else {
        return Err("no padding delimiter".into());
    };
    if padded[end] != 2 {
        return Err(format!(
            "padding delimiter is {:#04x}, not 0x02 (last record)",
            padded[end]
        ));
    }
    Ok(padded[..end].to_vec())
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// RFC 8291 section 5 and appendix A.
    #[test]
    fn decrypts_the_rfc_8291_example() {
        let ua_secret =
            p256::SecretKey::from_slice(&b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"))
                .unwrap();
        let body = b64(concat!(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_",
            "yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        ));
        let plain = decrypt(&body, &ua_secret, &b64("BTBZMqHH6r4Tts7J_aSIgg")).unwrap();
        assert_eq!(plain, b"When I grow up, I want to be a watermelon");
    }

    #[test]
    fn refuses_a_tampered_body() {
        let ua_secret =
            p256::SecretKey::from_slice(&b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"))
                .unwrap();
        let mut body = b64(concat!(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_",
            "yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        ));
        let last = body.len() - 1;
        body[last] ^= 1;
        assert!(decrypt(&body, &ua_secret, &b64("BTBZMqHH6r4Tts7J_aSIgg")).is_err());
        assert!(decrypt(&body[..30], &ua_secret, &b64("BTBZMqHH6r4Tts7J_aSIgg")).is_err());
    }
}
