//! Secret keys that live only in Rust and are wiped when dropped.
//!
//! A `SecretKey` is 32 bytes (a KEK, an audit key) or 64 bytes (a scope key: the first half wraps
//! record DEKs and child scope keys, the second half keys the blind index of record names, so
//! that every version of a scope shares one index key and rotation keeps names findable).
//! Wrapped form: `nonce (12) || AES-256-GCM(ciphertext || tag)`, with caller-chosen AAD.

use aws_lc_rs::aead::LessSafeKey;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use zeroize::Zeroizing;

use crate::aead::{gcm_key, open_into, seal_into, GCM_NONCE_LEN, KEY_LEN, TAG_LEN};
use crate::error::{invalid, CoreError, Result};
use crate::random::fill_random;

/// Length of a scope key: wrapping half and name-index half.
pub const SCOPE_KEY_LEN: usize = 2 * KEY_LEN;
/// Bytes added by wrapping a key: nonce and tag.
pub const WRAP_OVERHEAD: usize = GCM_NONCE_LEN + TAG_LEN;

/// A 32- or 64-byte secret key. Not `Debug`, not `Clone`: the bytes stay here and are zeroized.
pub struct SecretKey {
    material: Zeroizing<Vec<u8>>,
    // The AES key schedule and HMAC state are aws-lc objects, wiped by their own cleanup on drop.
    aead: LessSafeKey,
    index: Option<hmac::Key>,
}

impl SecretKey {
    /// Takes a copy of `material` (32 or 64 bytes). The caller wipes its own copy.
    pub fn from_bytes(material: &[u8]) -> Result<Self> {
        if material.len() != KEY_LEN && material.len() != SCOPE_KEY_LEN {
            return Err(invalid(format!(
                "a key must be {KEY_LEN} or {SCOPE_KEY_LEN} bytes, got {} bytes",
                material.len()
            )));
        }
        let material = Zeroizing::new(material.to_vec());
        let aead = gcm_key(&material[..KEY_LEN])?;
        let index = (material.len() == SCOPE_KEY_LEN)
            .then(|| hmac::Key::new(hmac::HMAC_SHA256, &material[KEY_LEN..]));
        Ok(Self {
            material,
            aead,
            index,
        })
    }

    /// A fresh key of `len` bytes (32 or 64) from the operating system's CSPRNG.
    pub fn generate(len: usize) -> Result<Self> {
        let mut material = Zeroizing::new(vec![0u8; len]);
        fill_random(&mut material)?;
        Self::from_bytes(&material)
    }

    /// A new scope key version: fresh wrapping half, the same name-index half.
    pub fn rotated(&self) -> Result<Self> {
        if self.index.is_none() {
            return Err(invalid(
                "only scope keys (64 bytes) can be rotated this way",
            ));
        }
        let mut material = Zeroizing::new(vec![0u8; SCOPE_KEY_LEN]);
        fill_random(&mut material[..KEY_LEN])?;
        material[KEY_LEN..].copy_from_slice(&self.material[KEY_LEN..]);
        Self::from_bytes(&material)
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.material.len()
    }

    /// Always false: a key has 32 or 64 bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The raw bytes, for handing to a KMS SDK that needs them. Keep the copy short-lived.
    pub fn expose_secret(&self) -> &[u8] {
        &self.material
    }

    pub(crate) fn aead(&self) -> &LessSafeKey {
        &self.aead
    }

    /// Keyed blind index of a record name: HMAC-SHA-256 under the name-index half.
    pub fn name_index(&self, name: &[u8]) -> Result<[u8; 32]> {
        let key = self
            .index
            .as_ref()
            .ok_or_else(|| invalid("this key has no name-index half"))?;
        let tag = hmac::sign(key, name);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Whether both keys share one name-index half (versions of the same scope), in constant time.
    pub fn same_index(&self, other: &SecretKey) -> bool {
        self.index.is_some()
            && other.index.is_some()
            && verify_slices_are_equal(&self.material[KEY_LEN..], &other.material[KEY_LEN..])
                .is_ok()
    }

    /// HMAC-SHA-256 of `msg` under this key (all of its bytes): the audit trail's seal.
    pub fn mac(&self, msg: &[u8]) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.material);
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&key, msg).as_ref());
        out
    }

    /// Wraps `child` under this key with `aad`: `nonce || ciphertext || tag`.
    pub fn wrap(&self, child: &SecretKey, aad: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; GCM_NONCE_LEN + child.len() + TAG_LEN];
        let (nonce, sealed) = out.split_at_mut(GCM_NONCE_LEN);
        fill_random(nonce)?;
        seal_into(&self.aead, nonce, aad, &child.material, sealed)?;
        Ok(out)
    }

    /// Unwraps a key produced by [`SecretKey::wrap`] with the same `aad`.
    pub fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey> {
        if wrapped.len() != KEY_LEN + WRAP_OVERHEAD
            && wrapped.len() != SCOPE_KEY_LEN + WRAP_OVERHEAD
        {
            return Err(CoreError::Integrity);
        }
        let (nonce, sealed) = wrapped.split_at(GCM_NONCE_LEN);
        let mut material = Zeroizing::new(vec![0u8; sealed.len() - TAG_LEN]);
        open_into(&self.aead, nonce, aad, sealed, &mut material)?;
        Self::from_bytes(&material)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip_and_aad_binding() {
        let kek = SecretKey::generate(32).unwrap();
        let child = SecretKey::generate(64).unwrap();
        let wrapped = kek.wrap(&child, b"ctx").unwrap();
        let back = kek.unwrap(&wrapped, b"ctx").unwrap();
        assert_eq!(back.expose_secret(), child.expose_secret());
        assert!(matches!(
            kek.unwrap(&wrapped, b"other"),
            Err(CoreError::Integrity)
        ));
    }

    #[test]
    fn rotation_keeps_the_index_half() {
        let k1 = SecretKey::generate(64).unwrap();
        let k2 = k1.rotated().unwrap();
        assert_ne!(k1.expose_secret()[..32], k2.expose_secret()[..32]);
        assert_eq!(k1.name_index(b"a").unwrap(), k2.name_index(b"a").unwrap());
    }
}
