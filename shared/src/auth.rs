//! Secret comparison in constant time, and API keys kept only as hashes in memory.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Compares two secrets without leaking, through timing, how much of them matched. Both sides
/// are hashed first so the comparison also takes the same time whatever their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    bool::from(ha.as_slice().ct_eq(hb.as_slice()))
}

/// The accepted API keys, as SHA-256 digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> ApiKeys {
        ApiKeys {
            digests: keys
                .into_iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// A stable, non-secret name for a key (for limits and logs): a prefix of its digest.
    pub fn id(key: &str) -> String {
        hex::encode(&Sha256::digest(key.as_bytes())[..8])
    }

    /// Whether `key` is one of the accepted keys (every key is compared, in constant time).
    pub fn accepts(&self, key: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.digests
            .iter()
            .fold(false, |found, k| found | bool::from(k.ct_eq(&d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_secrets() {
        assert!(constant_time_eq(b"secret-value", b"secret-value"));
        assert!(!constant_time_eq(b"secret-value", b"secret-valuf"));
        assert!(!constant_time_eq(b"secret", b"secret-value"));
        let keys = ApiKeys::new(["key-one-0123456789", "key-two-0123456789"]);
        assert!(
            keys.accepts("key-two-0123456789") && !keys.accepts("key-three") && !keys.accepts("")
        );
    }
}
