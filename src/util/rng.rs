//! Keyed randomness: every random draw is derived from `(seed, domain, item, sample)`, never from a
//! shared stream, so results do not depend on batching, ordering or threads.

use chacha20::ChaCha8Rng;
use rand::SeedableRng;

/// A reproducible generator for one `(seed, domain, item, sample)` tuple.
pub fn keyed(seed: u64, domain: &str, item: u64, sample: u64) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"asymm-rng-v1");
    h.update(&seed.to_le_bytes());
    h.update(&(domain.len() as u64).to_le_bytes());
    h.update(domain.as_bytes());
    h.update(&item.to_le_bytes());
    h.update(&sample.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Like [`keyed`], with a string item id (hashed into the key).
pub fn keyed_str(seed: u64, domain: &str, item: &str, sample: u64) -> ChaCha8Rng {
    let id = u64::from_le_bytes(
        blake3::hash(item.as_bytes()).as_bytes()[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    keyed(seed, domain, id, sample)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn same_key_same_stream_different_key_different_stream() {
        let a: u64 = keyed(1, "x", 2, 3).random();
        let b: u64 = keyed(1, "x", 2, 3).random();
        let c: u64 = keyed(1, "x", 2, 4).random();
        let d: u64 = keyed(1, "y", 2, 3).random();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
