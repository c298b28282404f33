//! CA digests and join tokens `SWMTKN-1-<CA digest>-<secret>`.
//!
//! The digest pins the root certificate: a joining node fetches the CA certificate from the
//! manager without trusting it, computes [`ca_digest`] of what it received and compares it with
//! the token's digest before it sends anything else.

use std::fmt;
use std::str::FromStr;

use mesh_api::ValidationError;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::pem::certificate_der;

/// Length of a CA digest in a token (base-36 SHA-256, zero-padded, as docker prints it).
pub const DIGEST_LEN: usize = 50;
/// Length of a token secret (base-36, about 129 bits).
pub const SECRET_LEN: usize = 25;
/// First part of every token.
pub const TOKEN_PREFIX: &str = "SWMTKN";
/// The token format version this code writes and reads.
pub const TOKEN_VERSION: &str = "1";

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const TOKEN_FIELD: &str = "--token";
const TOKEN_FIX: &str = "run 'swarm join-token worker' on a manager to print a valid token";

/// SHA-256 of the certificate's DER, as a fixed-width (50 characters) lowercase base-36 number.
pub fn ca_digest(cert_pem: &str) -> Result<String> {
    let der = certificate_der("CA certificate", cert_pem)?;
    Ok(digest_der(&der))
}

/// [`ca_digest`] of a certificate already in DER form.
pub fn digest_der(der: &[u8]) -> String {
    let hash = Sha256::digest(der);
    base36_fixed(&hash, DIGEST_LEN)
}

/// Big-endian bytes as a base-36 number, left-padded with `0` to `width` characters.
fn base36_fixed(bytes: &[u8], width: usize) -> String {
    let mut number: Vec<u8> = bytes.to_vec();
    let mut digits: Vec<u8> = Vec::with_capacity(width);
    while number.iter().any(|&b| b != 0) {
        let mut remainder: u32 = 0;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u32::from(*byte);
            // acc < 36 * 256, so the quotient fits in a byte.
            *byte = (acc / 36) as u8;
            remainder = acc % 36;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

fn is_base36(s: &str) -> bool {
    s.bytes().all(|b| ALPHABET.contains(&b))
}

/// A join token: the CA digest that pins the root certificate, and the secret that admits a
/// node with one role.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// [`ca_digest`] of the cluster's root certificate.
    pub digest: String,
    /// The role's secret: 25 lowercase base-36 characters.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("digest", &self.digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl JoinToken {
    /// A fresh token for the CA with `digest`, with a new random secret.
    pub fn generate(digest: &str) -> Self {
        let mut rng = rand::rng();
        let secret = (0..SECRET_LEN)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect();
        Self {
            digest: digest.to_owned(),
            secret,
        }
    }

    /// Whether `other` is this token's secret, compared in constant time.
    pub fn secret_matches(&self, other: &str) -> bool {
        constant_time_eq(self.secret.as_bytes(), other.as_bytes())
    }

    /// Whether the token pins the CA certificate `cert_pem` (its digest equals the token's).
    pub fn pins(&self, cert_pem: &str) -> Result<bool> {
        let digest = ca_digest(cert_pem)?;
        Ok(constant_time_eq(digest.as_bytes(), self.digest.as_bytes()))
    }
}

/// Compares two byte strings without an early exit on the first difference. The length is not
/// secret (every secret has the same length).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            self.digest, self.secret
        )
    }
}

fn token_error(problem: impl Into<String>) -> ValidationError {
    ValidationError::new(TOKEN_FIELD, problem, TOKEN_FIX)
}

impl FromStr for JoinToken {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(token_error("the token is empty"));
        }
        let parts: Vec<&str> = s.split('-').collect();
        let prefix = parts.first().copied().unwrap_or_default();
        if prefix != TOKEN_PREFIX {
            return Err(token_error(format!(
                "the token must start with `{TOKEN_PREFIX}-`, not {prefix:?}"
            )));
        }
        let Some(&version) = parts.get(1) else {
            return Err(token_error(format!(
                "the token ends after `{TOKEN_PREFIX}`: the version, CA digest and secret are missing"
            )));
        };
        if version != TOKEN_VERSION {
            return Err(token_error(format!(
                "token format version {version:?} is not supported (only version {TOKEN_VERSION})"
            )));
        }
        if parts.len() != 4 {
            return Err(token_error(format!(
                "the token has {} dash-separated parts, expected 4 \
                 (`{TOKEN_PREFIX}-{TOKEN_VERSION}-<CA digest>-<secret>`)",
                parts.len()
            )));
        }
        let (digest, secret) = (parts[2], parts[3]);
        if digest.len() != DIGEST_LEN {
            return Err(token_error(format!(
                "the CA digest has {} characters, expected {DIGEST_LEN}",
                digest.len()
            )));
        }
        if !is_base36(digest) {
            return Err(token_error(
                "the CA digest may contain only lowercase letters and digits",
            ));
        }
        if secret.len() != SECRET_LEN {
            return Err(token_error(format!(
                "the secret has {} characters, expected {SECRET_LEN}",
                secret.len()
            )));
        }
        if !is_base36(secret) {
            return Err(token_error(
                "the secret may contain only lowercase letters and digits",
            ));
        }
        Ok(Self {
            digest: digest.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::generate_root_ca;

    fn digest() -> String {
        "a".repeat(DIGEST_LEN)
    }

    #[test]
    fn base36_matches_known_values() {
        assert_eq!(base36_fixed(&[0], 3), "000");
        assert_eq!(base36_fixed(&[35], 1), "z");
        assert_eq!(base36_fixed(&[36], 2), "10");
        assert_eq!(base36_fixed(&[0x01, 0x00], 4), "0074"); // 256 = 7*36 + 4
        // The largest SHA-256 value still fits in 50 digits.
        let max = base36_fixed(&[0xff; 32], DIGEST_LEN);
        assert_eq!(max.len(), DIGEST_LEN);
        assert!(is_base36(&max));
    }

    #[test]
    fn digest_is_stable_and_fixed_width() {
        let ca = generate_root_ca("cluster1").unwrap();
        let a = ca_digest(&ca.cert_pem).unwrap();
        let b = ca_digest(&ca.cert_pem).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, ca.digest);
        assert_eq!(a.len(), DIGEST_LEN);
        assert!(is_base36(&a));
        let other = generate_root_ca("cluster1").unwrap();
        assert_ne!(a, ca_digest(&other.cert_pem).unwrap());
    }

    #[test]
    fn digest_of_garbage_names_the_field() {
        let err = ca_digest("not a pem").unwrap_err().to_string();
        assert!(err.contains("CA certificate"), "{err}");
    }

    #[test]
    fn token_round_trips() {
        let token = JoinToken::generate(&digest());
        assert_eq!(token.secret.len(), SECRET_LEN);
        assert!(is_base36(&token.secret));
        let text = token.to_string();
        assert!(text.starts_with("SWMTKN-1-"));
        let parsed: JoinToken = text.parse().unwrap();
        assert_eq!(parsed, token);
        // Surrounding whitespace (copy-paste) is tolerated.
        let parsed: JoinToken = format!("  {text}\n").parse().unwrap();
        assert_eq!(parsed, token);
        assert_ne!(JoinToken::generate(&digest()).secret, token.secret);
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let token = JoinToken::generate(&digest());
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    fn parse_err(s: &str) -> ValidationError {
        s.parse::<JoinToken>().unwrap_err()
    }

    fn assert_malformed(s: &str, expect: &str) {
        let err = parse_err(s);
        assert_eq!(err.field, "--token");
        assert!(err.problem.contains(expect), "{s:?}: {err}");
        assert!(err.to_string().contains("swarm join-token worker"), "{err}");
    }

    #[test]
    fn malformed_tokens_are_explained() {
        let d = digest();
        let s = "b".repeat(SECRET_LEN);
        assert_malformed("", "empty");
        assert_malformed(&format!("SWMTOK-1-{d}-{s}"), "must start with `SWMTKN-`");
        assert_malformed(&format!("swmtkn-1-{d}-{s}"), "must start with `SWMTKN-`");
        assert_malformed("SWMTKN", "version, CA digest and secret are missing");
        assert_malformed(
            &format!("SWMTKN-2-{d}-{s}"),
            "version \"2\" is not supported",
        );
        assert_malformed(&format!("SWMTKN-1-{d}"), "expected 4");
        assert_malformed(&format!("SWMTKN-1-{d}-{s}-x"), "expected 4");
        assert_malformed(&format!("SWMTKN-1-{}-{s}", &d[1..]), "CA digest has 49");
        assert_malformed(
            &format!("SWMTKN-1-{}A-{s}", &d[1..]),
            "CA digest may contain only",
        );
        assert_malformed(&format!("SWMTKN-1-{d}-{}", &s[1..]), "secret has 24");
        assert_malformed(&format!("SWMTKN-1-{d}-{}", "_".repeat(25)), "secret may");
        assert_malformed(&format!("SWMTKN-1-{d}-"), "secret has 0");
    }

    #[test]
    fn secret_comparison() {
        let token = JoinToken::generate(&digest());
        assert!(token.secret_matches(&token.secret.clone()));
        let mut wrong = token.secret.clone().into_bytes();
        wrong[SECRET_LEN - 1] = if wrong[SECRET_LEN - 1] == b'0' {
            b'1'
        } else {
            b'0'
        };
        assert!(!token.secret_matches(std::str::from_utf8(&wrong).unwrap()));
        assert!(!token.secret_matches(""));
        assert!(!token.secret_matches(&token.secret[1..]));
    }

    #[test]
    fn token_pins_its_ca() {
        let ca = generate_root_ca("c").unwrap();
        let other = generate_root_ca("c").unwrap();
        let token = JoinToken::generate(&ca.digest);
        assert!(token.pins(&ca.cert_pem).unwrap());
        assert!(!token.pins(&other.cert_pem).unwrap());
    }
}
