//! A hasher for the transaction tables. The std default (SipHash) showed up
//! at 5 % of all instructions per call; keys here are our own ids or
//! branches, hashed with xxh3 under a per-process random seed so that a peer
//! cannot aim collisions at a known function.

use std::hash::{BuildHasher, Hasher};

/// Builds [`FastHasher`]s sharing one random seed.
#[derive(Clone, Copy, Debug)]
pub struct FastHash {
    seed: u64,
}

impl Default for FastHash {
    fn default() -> Self {
        FastHash {
            seed: rand::random(),
        }
    }
}

impl BuildHasher for FastHash {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher { state: self.seed }
    }
}

pub struct FastHasher {
    state: u64,
}

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.state = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.state);
    }

    fn write_u64(&mut self, n: u64) {
        self.state = (self.state ^ n).wrapping_mul(MIX).rotate_left(29);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // A last multiply spreads the entropy into the top bits, which the
        // table uses for its control bytes.
        (self.state ^ (self.state >> 32)).wrapping_mul(MIX)
    }
}

/// A `HashMap` with [`FastHash`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHash>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_hash_equal_and_neighbours_differ() {
        let build = FastHash::default();
        let hash = |n: u64| build.hash_one(n);
        assert_eq!(hash(7), hash(7));
        assert_ne!(hash(7), hash(8));
        assert_eq!(build.hash_one("z9hG4bK1"), build.hash_one("z9hG4bK1"));
        assert_ne!(build.hash_one("z9hG4bK1"), build.hash_one("z9hG4bK2"));
        let mut map: FastMap<u64, u64> = FastMap::default();
        for n in 0..10_000 {
            map.insert(n, n * 2);
        }
        assert!((0..10_000).all(|n| map.get(&n) == Some(&(n * 2))));
    }
}
