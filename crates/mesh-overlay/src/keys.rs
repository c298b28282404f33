//! WireGuard keys: x25519 key pairs and public keys in standard WireGuard base64.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;

use crate::error::OverlayError;

/// Length of a WireGuard key in bytes.
pub const KEY_LEN: usize = 32;

/// A WireGuard public key (x25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// Parses the 44-character standard base64 form printed by `wg pubkey`; `field` names the
    /// input in the error.
    pub fn from_b64(field: &str, text: &str) -> Result<PublicKey, OverlayError> {
        decode_key(field, text).map(PublicKey)
    }

    /// The standard base64 form (44 characters).
    pub fn to_b64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_b64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_b64())
    }
}

/// A WireGuard key pair: one per (host, network), which keeps networks apart on the shared
/// UDP socket.
#[derive(Clone)]
pub struct KeyPair {
    secret: [u8; KEY_LEN],
    public: PublicKey,
}

impl KeyPair {
    /// A fresh random key pair (the private key clamped as `wg genkey` does).
    pub fn generate() -> KeyPair {
        let mut secret: [u8; KEY_LEN] = rand::random();
        clamp(&mut secret);
        KeyPair::from_secret(secret)
    }

    /// The key pair of a private key given in standard base64 (as `wg genkey` prints it).
    pub fn from_private_b64(text: &str) -> Result<KeyPair, OverlayError> {
        decode_key("private key", text).map(KeyPair::from_secret)
    }

    /// The key pair of a raw 32-byte private key.
    pub fn from_secret(secret: [u8; KEY_LEN]) -> KeyPair {
        let public = x25519::PublicKey::from(&x25519::StaticSecret::from(secret));
        KeyPair {
            secret,
            public: PublicKey(public.to_bytes()),
        }
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The public key in standard base64.
    pub fn public_b64(&self) -> String {
        self.public.to_b64()
    }

    /// The private key in standard base64 (what meshd persists).
    pub fn private_b64(&self) -> String {
        STANDARD.encode(self.secret)
    }

    pub(crate) fn static_secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.secret)
    }

    pub(crate) fn static_public(&self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.public.0)
    }
}

impl PartialEq for KeyPair {
    fn eq(&self, other: &Self) -> bool {
        // Comparing public keys is enough (one private key per public key) and keeps the
        // private key out of a timing-sensitive comparison.
        self.public == other.public
    }
}

impl Eq for KeyPair {}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("private", &"<redacted>")
            .finish()
    }
}

fn clamp(k: &mut [u8; KEY_LEN]) {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
}

fn decode_key(field: &str, text: &str) -> Result<[u8; KEY_LEN], OverlayError> {
    let invalid = |problem: String| OverlayError::InvalidPlan {
        field: field.to_string(),
        problem,
        fix: "give the 44-character standard base64 form that `wg genkey`/`wg pubkey` print"
            .to_string(),
    };
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| invalid(format!("{text:?} is not base64 ({e})")))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| invalid(format!("decodes to {} bytes, not {KEY_LEN}", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_derives_public_key() {
        let kp = KeyPair::generate();
        let again = KeyPair::from_private_b64(&kp.private_b64()).unwrap();
        assert_eq!(kp.public_b64(), again.public_b64());
        assert_eq!(kp.public_b64().len(), 44);
        let pk = PublicKey::from_b64("public key", &kp.public_b64()).unwrap();
        assert_eq!(pk, kp.public());
        assert_ne!(KeyPair::generate().public(), kp.public());
    }

    #[test]
    fn matches_rfc7748_vector() {
        // RFC 7748 section 6.1, Alice's key pair, in WireGuard's base64.
        let kp = KeyPair::from_private_b64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").unwrap();
        assert_eq!(
            kp.public_b64(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn bad_keys_name_the_field() {
        let e = PublicKey::from_b64("peers[0].public_key", "short").unwrap_err();
        assert!(e.to_string().contains("peers[0].public_key"), "{e}");
        let e = KeyPair::from_private_b64("AAAA").unwrap_err();
        assert!(e.to_string().contains("3 bytes"), "{e}");
    }

    #[test]
    fn debug_hides_the_private_key() {
        let kp = KeyPair::generate();
        assert!(!format!("{kp:?}").contains(&kp.private_b64()));
    }
}
