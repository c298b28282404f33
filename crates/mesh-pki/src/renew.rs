//! When to renew a node certificate.

/// Whether a certificate valid from `not_before_ms` to `not_after_ms` should be renewed at
/// `now_ms`: once more than half of its lifetime has passed, or once it has expired.
pub fn should_renew(not_before_ms: u64, not_after_ms: u64, now_ms: u64) -> bool {
    if now_ms >= not_after_ms {
        return true;
    }
    if now_ms <= not_before_ms {
        return false;
    }
    let lifetime = not_after_ms - not_before_ms;
    let elapsed = now_ms - not_before_ms;
    // elapsed > lifetime / 2, without losing the odd millisecond.
    elapsed.saturating_mul(2) > lifetime
}

#[cfg(test)]
mod tests {
    use super::should_renew;

    #[test]
    fn renews_after_half_life() {
        assert!(!should_renew(1_000, 2_000, 1_000));
        assert!(!should_renew(1_000, 2_000, 1_499));
        assert!(!should_renew(1_000, 2_000, 1_500));
        assert!(should_renew(1_000, 2_000, 1_501));
        assert!(should_renew(1_000, 2_000, 1_999));
    }

    #[test]
    fn renews_when_expired() {
        assert!(should_renew(1_000, 2_000, 2_000));
        assert!(should_renew(1_000, 2_000, u64::MAX));
        // Degenerate certificates are always due.
        assert!(should_renew(2_000, 2_000, 2_000));
        assert!(should_renew(3_000, 2_000, 2_500));
    }

    #[test]
    fn not_yet_valid_is_not_renewed() {
        // A clock behind the issuer's: not valid yet, not due either.
        assert!(!should_renew(1_000, 2_000, 0));
        assert!(!should_renew(1_000, 2_000, 999));
    }

    #[test]
    fn odd_lifetimes_and_large_values() {
        assert!(!should_renew(0, 3, 1));
        assert!(should_renew(0, 3, 2));
        let big = u64::MAX - 10;
        assert!(!should_renew(big - 100, big, big - 60));
        assert!(should_renew(big - 100, big, big - 40));
    }
}
