//! Raw AES-256-GCM (96-bit nonce, 128-bit tag) from aws-lc-rs.
//!
//! Used by the record format and exposed for known-answer tests (Wycheproof).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::error::{invalid, CoreError, Result};

/// AES-256 key length in bytes.
pub const KEY_LEN: usize = 32;
/// GCM tag length in bytes.
pub const TAG_LEN: usize = 16;
/// GCM nonce length in bytes; no other size is accepted.
pub const GCM_NONCE_LEN: usize = NONCE_LEN;
/// Largest plaintext GCM can protect under one nonce (SP 800-38D: 2^39 - 256 bits).
pub const MAX_PLAINTEXT_LEN: u64 = (1 << 36) - 32;

/// Builds an AES-256-GCM key (its schedule is computed once and reused).
pub fn gcm_key(key: &[u8]) -> Result<LessSafeKey> {
    if key.len() != KEY_LEN {
        return Err(invalid(format!(
            "AES-256-GCM needs a {KEY_LEN}-byte key, got {} bytes",
            key.len()
        )));
    }
    let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| invalid("invalid AES-256 key"))?;
    Ok(LessSafeKey::new(unbound))
}

fn gcm_nonce(nonce: &[u8]) -> Result<Nonce> {
    Nonce::try_assume_unique_for_key(nonce).map_err(|_| {
        invalid(format!(
            "unsupported nonce size: AES-256-GCM here takes {GCM_NONCE_LEN}-byte nonces only, got {} bytes",
            nonce.len()
        ))
    })
}

/// Encrypts `plaintext` into `out` (`plaintext.len() + TAG_LEN` bytes: ciphertext then tag).
pub fn seal_into(
    key: &LessSafeKey,
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<()> {
    if out.len() != plaintext.len() + TAG_LEN {
        return Err(invalid("output buffer has the wrong length"));
    }
    if plaintext.len() as u64 > MAX_PLAINTEXT_LEN {
        return Err(invalid(
            "plaintext exceeds the AES-GCM limit of 2^36 - 32 bytes",
        ));
    }
    let (ct, tag) = out.split_at_mut(plaintext.len());
    key.seal_out_of_place_scatter(gcm_nonce(nonce)?, Aad::from(aad), plaintext, ct, &[], tag)
        .map_err(|_| invalid("AES-GCM encryption failed"))
}

/// Decrypts `ciphertext || tag` into `out` (`ciphertext.len() - TAG_LEN` bytes).
///
/// On failure `out` is zeroed, so no unauthenticated plaintext is left behind.
pub fn open_into(
    key: &LessSafeKey,
    nonce: &[u8],
    aad: &[u8],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<()> {
    if sealed.len() < TAG_LEN {
        return Err(CoreError::Integrity);
    }
    let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    if out.len() != ct.len() {
        return Err(invalid("output buffer has the wrong length"));
    }
    let nonce = gcm_nonce(nonce)?;
    key.open_separate_gather(nonce, Aad::from(aad), ct, tag, out)
        .map_err(|_| {
            out.fill(0);
            CoreError::Integrity
        })
}

/// One-shot AES-256-GCM encryption: returns `ciphertext || tag`.
pub fn aes256gcm_seal(key: &[u8], nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let key = gcm_key(key)?;
    let mut out = vec![0u8; plaintext.len() + TAG_LEN];
    seal_into(&key, nonce, aad, plaintext, &mut out)?;
    Ok(out)
}

/// One-shot AES-256-GCM decryption of `ciphertext || tag`; `CoreError::Integrity` on any mismatch.
pub fn aes256gcm_open(key: &[u8], nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let key = gcm_key(key)?;
    let mut out = vec![0u8; sealed.len().saturating_sub(TAG_LEN)];
    open_into(&key, nonce, aad, sealed, &mut out)?;
    Ok(out)
}
