//! Comparing secrets (tokens, CSRF values, nonces, webhook signatures).

/// Whether two secrets are equal, in time independent of where they differ
/// (aws-lc's constant-time comparison; only the lengths may show).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"ab"));
        assert!(!super::same(b"", b"a"));
        assert!(super::same(b"", b""));
    }
}
