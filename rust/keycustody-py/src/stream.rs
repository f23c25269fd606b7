//! Segmented streams (suite 2): seal and open one 1 MiB segment per call, GIL released.

use keycustody_core::aead::TAG_LEN;
use keycustody_core::record::{OpenKeys, SealKey, HEADER_LEN};
use keycustody_core::stream::{StreamOpener, StreamSealer};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::buffers::Input;
use crate::errors::{Error, IntegrityError};
use crate::gil::run_detached;
use crate::keys::KeyHandle;
use crate::records::{borrow_keys, key_table, key_version, scope_id};

/// Seals the segments of one stream, in order.
#[pyclass(module = "keycustody._core", name = "StreamSealer")]
pub struct PyStreamSealer {
    inner: StreamSealer,
}

#[pymethods]
impl PyStreamSealer {
    /// Seals the next segment; all but the last must be exactly `SEGMENT_LEN` bytes.
    fn seal_segment<'py>(
        &mut self,
        py: Python<'py>,
        data: Input,
        last: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.inner;
        PyBytes::new_with(py, data.len() + TAG_LEN, |out| {
            run_detached(py, data.len(), || inner.seal_segment(&data, last, out))
                .map_err(|e| Error(e).into())
        })
    }

    /// Segments sealed so far.
    #[getter]
    fn segments(&self) -> u32 {
        self.inner.segments()
    }
}

/// Starts a stream record: returns `(header, encrypted_name, sealer)`.
#[pyfunction]
pub fn begin_stream<'py>(
    py: Python<'py>,
    key: &KeyHandle,
    scope_id: Input,
    version: i64,
    name: Input,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, PyStreamSealer)> {
    let seal = SealKey {
        key: &key.key,
        scope_id: self::scope_id(&scope_id)?,
        version: key_version(version)?,
    };
    let mut header = vec![0u8; HEADER_LEN];
    let mut name_ct = vec![0u8; name.len() + TAG_LEN];
    let inner = StreamSealer::begin(&seal, &name, &mut header, &mut name_ct).map_err(Error)?;
    Ok((
        PyBytes::new(py, &header),
        PyBytes::new(py, &name_ct),
        PyStreamSealer { inner },
    ))
}

/// Opens the segments of one stream, in any order.
#[pyclass(frozen, module = "keycustody._core", name = "StreamOpener")]
pub struct PyStreamOpener {
    inner: StreamOpener,
}

#[pymethods]
impl PyStreamOpener {
    /// Opens segment `index`; `last` must say whether it is the final one.
    fn open_segment<'py>(
        &self,
        py: Python<'py>,
        index: u32,
        last: bool,
        sealed: Input,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let len = sealed
            .len()
            .checked_sub(TAG_LEN)
            .ok_or_else(|| IntegrityError::new_err("a stream segment is shorter than its tag"))?;
        let inner = &self.inner;
        PyBytes::new_with(py, len, |out| {
            run_detached(py, len, || inner.open_segment(index, last, &sealed, out))
                .map_err(|e| Error(e).into())
        })
    }
}

/// Checks a stream record's header (scope, name, commitment) and returns its opener.
#[pyfunction]
#[pyo3(signature = (scope_id, keys, name, header))]
pub fn open_stream(
    scope_id: Input,
    keys: &Bound<'_, PyDict>,
    name: Option<Input>,
    header: Input,
) -> PyResult<PyStreamOpener> {
    let table = key_table(keys)?;
    let pairs = borrow_keys(&table);
    let keys = OpenKeys {
        scope_id: self::scope_id(&scope_id)?,
        keys: &pairs,
    };
    let inner = StreamOpener::new(&keys, name.as_deref(), &header).map_err(Error)?;
    Ok(PyStreamOpener { inner })
}
