//! Object identifiers: 25 lowercase base-36 characters, like swarmkit's.

use rand::Rng;

/// Length of every object ID.
pub const ID_LEN: usize = 25;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A fresh random object ID (about 129 bits of entropy).
pub fn new_id() -> String {
    let mut rng = rand::rng();
    (0..ID_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Whether `s` has the shape of an object ID.
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// The first 12 characters of an ID, as `ls` tables print it... except node IDs,
/// which docker prints whole; kept here so every table truncates the same way.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert!(is_id(&a), "{a}");
        assert!(is_id(&b), "{b}");
        assert_ne!(a, b);
        assert!(!is_id("ABC"));
        assert!(!is_id(&"A".repeat(ID_LEN)));
        assert_eq!(short_id(&a).len(), 12);
        assert_eq!(short_id("abc"), "abc");
    }
}
