//! Checked size arithmetic: every file offset and length the core computes goes through these,
//! so an overflow is [`Error::SizeOverflow`] and never a wrapped size or a panic.

use crate::error::{Error, Result};

/// `a + b` or [`Error::SizeOverflow`].
pub(crate) fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).ok_or(Error::SizeOverflow)
}

/// `n` as `usize` or [`Error::SizeOverflow`].
pub(crate) fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::SizeOverflow)
}

/// `n` as `u64` (lossless on every supported target).
pub(crate) fn to_u64(n: usize) -> u64 {
    n as u64
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn checked_add_overflows_into_size_overflow() {
        assert_eq!(add(u64::MAX - 1, 1).unwrap(), u64::MAX);
        assert!(matches!(add(u64::MAX, 1), Err(Error::SizeOverflow)));
    }

    #[test]
    fn to_usize_round_trips_every_address_space_size() {
        for n in [0, 1, 4096, usize::MAX] {
            assert_eq!(to_usize(to_u64(n)).unwrap(), n);
        }
    }
}
