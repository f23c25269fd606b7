//! `KeyHandle`: a secret key held in Rust; Python holds the handle, never the bytes.

use keycustody_core::SecretKey;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

use crate::buffers::Input;
use crate::errors::PyResultCore;

/// An opaque 32- or 64-byte secret key, zeroized when dropped.
#[pyclass(frozen, module = "keycustody._core", name = "KeyHandle")]
pub struct KeyHandle {
    pub(crate) key: SecretKey,
}

#[pymethods]
impl KeyHandle {
    /// A fresh random key of `size` bytes (64 for scope keys, 32 for KEKs).
    #[staticmethod]
    #[pyo3(signature = (size = 64))]
    fn generate(size: usize) -> PyResultCore<Self> {
        Ok(Self {
            key: SecretKey::generate(size)?,
        })
    }

    /// Takes a copy of `secret` (32 or 64 bytes); the caller wipes its own buffer.
    #[staticmethod]
    fn from_secret(secret: Input) -> PyResultCore<Self> {
        Ok(Self {
            key: SecretKey::from_bytes(&secret)?,
        })
    }

    /// The key bytes in a new bytearray, for a KMS SDK that needs them; wipe it after use.
    fn export_secret<'py>(&self, py: Python<'py>) -> Bound<'py, PyByteArray> {
        PyByteArray::new(py, self.key.expose_secret())
    }

    /// A new scope key version: fresh wrapping half, same name-index half.
    fn rotated(&self) -> PyResultCore<Self> {
        Ok(Self {
            key: self.key.rotated()?,
        })
    }

    /// Wraps `child` under this key, bound to `aad`.
    fn wrap<'py>(
        &self,
        py: Python<'py>,
        child: &KeyHandle,
        aad: Input,
    ) -> PyResultCore<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.key.wrap(&child.key, &aad)?))
    }

    /// Unwraps a key made by `wrap` with the same `aad`; IntegrityError otherwise.
    fn unwrap(&self, wrapped: Input, aad: Input) -> PyResultCore<Self> {
        Ok(Self {
            key: self.key.unwrap(&wrapped, &aad)?,
        })
    }

    /// Keyed blind index (HMAC-SHA-256) of a name under the name-index half.
    fn name_index<'py>(&self, py: Python<'py>, name: Input) -> PyResultCore<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.key.name_index(&name)?))
    }

    /// Blind indexes of several names, in order (one call for a batch of lookups).
    fn name_indexes<'py>(
        &self,
        py: Python<'py>,
        names: Vec<Input>,
    ) -> PyResultCore<Vec<Bound<'py, PyBytes>>> {
        names
            .iter()
            .map(|name| Ok(PyBytes::new(py, &self.key.name_index(name)?)))
            .collect()
    }

    /// HMAC-SHA-256 of `msg` under the whole key (used to seal audit events).
    fn mac<'py>(&self, py: Python<'py>, msg: Input) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.key.mac(&msg))
    }

    /// Key length in bytes.
    #[getter]
    fn size(&self) -> usize {
        self.key.len()
    }

    fn __repr__(&self) -> String {
        format!("<KeyHandle {} bytes>", self.key.len())
    }
}
