//! Checksums of stored `.npy` files: XXH3-64 over every byte of the file, header included,
//! computed by the writer in the same pass that writes the bytes.
//!
//! A checksum travels as text, `xxh3-64:<16 lowercase hex digits>`. The algorithm name makes it
//! self-describing, so a reader knows what it holds and a later algorithm can be added beside
//! it. XXH3-64 was chosen over CRC32C because it hashes at memory bandwidth on the baseline
//! x86-64 and aarch64 targets the wheels are built for (its SIMD path is chosen at compile
//! time). It detects accidental damage (bit rot, truncation, a torn copy), not tampering.
//!
//! Hashing the header too means a flipped bit anywhere in the file changes the checksum, even
//! one that leaves a valid header behind (a byte-order mark `<` turned into `>`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use xxhash_rust::xxh3::Xxh3Default;

/// The name of the algorithm new checksums are computed with, as it appears in their text.
pub const ALGORITHM: &str = "xxh3-64";

/// The checksum of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(u64);

impl Digest {
    /// The digest's value.
    pub fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Digest {
    /// `xxh3-64:` followed by the value as 16 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ALGORITHM}:{:016x}", self.0)
    }
}

/// A streaming hasher: feed the bytes in file order, in pieces of any size.
#[derive(Clone)]
pub struct Hasher {
    // Boxed: the state carries a 256-byte buffer and would make every writer that holds one
    // expensive to move.
    state: Box<Xxh3Default>,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher").finish_non_exhaustive()
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self {
            state: Box::new(Xxh3Default::new()),
        }
    }

    /// A new hasher, or `None` while hashing is switched off (see [`set_enabled`]).
    pub fn if_enabled() -> Option<Self> {
        ENABLED.load(Ordering::Relaxed).then(Self::new)
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.state.update(bytes);
    }

    /// The digest of everything fed so far.
    pub fn digest(&self) -> Digest {
        Digest(self.state.digest())
    }
}

/// The digest of `bytes` in one call.
pub fn digest_of(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new();
    hasher.update(bytes);
    hasher.digest()
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Benchmark seam: whether writers started from now on hash what they write (on by default).
///
/// Switched off, a store write records no checksum, exactly as stores written before checksums
/// existed. Only the benchmark that prices the checksum switches it off, to time the same write
/// path with and without it in one process.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn digest_text_names_the_algorithm_and_has_sixteen_lowercase_hex_digits() {
        assert_eq!(Digest(0xAB).to_string(), "xxh3-64:00000000000000ab");
        assert_eq!(Digest(u64::MAX).to_string(), "xxh3-64:ffffffffffffffff");
    }

    #[test]
    fn the_empty_input_has_the_published_xxh3_64_value() {
        // XXH3_64bits("", 0) with the default secret and seed 0, from the reference implementation.
        assert_eq!(digest_of(b"").value(), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn streaming_in_any_pieces_gives_the_one_shot_digest() {
        let data: Vec<u8> = (0..100_000u32).map(|index| (index * 31 % 251) as u8).collect();
        let whole = digest_of(&data);

        for piece in [1, 7, 64, 240, 4096, 65_536, 100_000] {
            let mut hasher = Hasher::new();
            for chunk in data.chunks(piece) {
                hasher.update(chunk);
            }
            assert_eq!(hasher.digest(), whole, "pieces of {piece}");
        }
    }

    #[test]
    fn one_flipped_bit_changes_the_digest() {
        let data = vec![0x5Au8; 10_000];
        let clean = digest_of(&data);

        for bit in [0, 1, 7, 4_000 * 8 + 3, 10_000 * 8 - 1] {
            let mut damaged = data.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(digest_of(&damaged), clean, "bit {bit}");
        }
    }
}
