//! Raw AES-256-GCM, exposed for known-answer tests and nothing else.

use keycustody_core::aead;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::Input;
use crate::errors::PyResultCore;
use crate::gil::run_detached;

/// AES-256-GCM encryption: returns `ciphertext || tag`. Nonces must be 12 bytes.
#[pyfunction]
pub fn aes256gcm_seal<'py>(
    py: Python<'py>,
    key: Input,
    nonce: Input,
    aad: Input,
    plaintext: Input,
) -> PyResultCore<Bound<'py, PyBytes>> {
    let out = run_detached(py, plaintext.len(), || {
        aead::aes256gcm_seal(&key, &nonce, &aad, &plaintext)
    })?;
    Ok(PyBytes::new(py, &out))
}

/// AES-256-GCM decryption of `ciphertext || tag`; IntegrityError if it does not authenticate.
#[pyfunction]
pub fn aes256gcm_open<'py>(
    py: Python<'py>,
    key: Input,
    nonce: Input,
    aad: Input,
    ciphertext: Input,
) -> PyResultCore<Bound<'py, PyBytes>> {
    let out = run_detached(py, ciphertext.len(), || {
        aead::aes256gcm_open(&key, &nonce, &aad, &ciphertext)
    })?;
    Ok(PyBytes::new(py, &out))
}
