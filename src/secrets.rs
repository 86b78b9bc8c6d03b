//! Secrets the server must read back (orgs' LiveKit API secrets, which sign and verify
//! tokens) are stored sealed: AES-256-GCM under the configured `secret_key`, a random 96-bit
//! nonce per value, and the row's identity as associated data, so a sealed value copied into
//! another row or org does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;

/// Which key sealed a value (stored beside it), so keys can be rotated later.
pub const KEY_ID: &str = "k1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret_key must be base64 of 32 bytes")]
    BadKey,
    #[error("sealed value does not open (wrong key, row or corruption)")]
    Open,
}

/// Seals and opens values under one key.
#[derive(Clone)]
pub struct SecretBox {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// From the configured `secret_key` (base64 of 32 bytes).
    pub fn from_base64(key: &str) -> Result<SecretBox, SecretError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(key.trim()).map_err(|_| SecretError::BadKey)?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SecretError::BadKey)?;
        Ok(SecretBox { key: std::sync::Arc::new(LessSafeKey::new(key)) })
    }

    /// A fresh random key in the form `from_base64` reads.
    pub fn generate_key() -> String {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// `nonce ‖ ciphertext ‖ tag`, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        let mut out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut out)
            .expect("AES-GCM seals any length we store");
        [nonce.as_slice(), &out].concat()
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut buf = body.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf).map_err(|_| SecretError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let b = SecretBox::from_base64(&SecretBox::generate_key()).unwrap();
        let sealed = b.seal(b"s3cret", "org_a/APIx");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"), "not stored in the clear");
        assert_eq!(b.open(&sealed, "org_a/APIx").unwrap(), b"s3cret");
        assert_eq!(b.open(&sealed, "org_b/APIx"), Err(SecretError::Open));
        let other = SecretBox::from_base64(&SecretBox::generate_key()).unwrap();
        assert_eq!(other.open(&sealed, "org_a/APIx"), Err(SecretError::Open));
        assert_eq!(b.open(&sealed[..5], "org_a/APIx"), Err(SecretError::Open));
        assert_eq!(SecretBox::from_base64("c2hvcnQ=").unwrap_err(), SecretError::BadKey);
    }
}
