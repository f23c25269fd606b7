//! Segmented streams (suite 2): seal one 1 MiB segment per call, open several at once; GIL
//! released.

use keycustody_core::aead::TAG_LEN;
use keycustody_core::record::{OpenKeys, SealKey, HEADER_LEN};
use keycustody_core::stream::{StreamOpener, StreamSealer, SEGMENT_LEN};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rayon::prelude::*;

use crate::buffers::{prefault, zeroed, FreshBytes, Input, Uninit};
use crate::errors::{Error, IntegrityError};
use crate::gil::run_detached;
use crate::keys::KeyHandle;
use crate::records::{borrow_keys, key_table, key_version, scope_id};

/// Bytes of a sealed full segment.
const SEALED_LEN: usize = SEGMENT_LEN + TAG_LEN;

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
    /// Opens consecutive segments from `first`, sealed back to back in `sealed` (every one
    /// but the final one [`SEGMENT_LEN`] + 16 bytes); `last` says whether the final one is
    /// the stream's last. Returns their plaintexts back to back. Segments are opened in
    /// parallel across cores (GIL released), each task mapping and zeroing its own output.
    fn open_segments<'py>(
        &self,
        py: Python<'py>,
        first: u32,
        last: bool,
        sealed: Input,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let count = sealed.len().div_ceil(SEALED_LEN).max(1);
        let len = sealed
            .len()
            .checked_sub(count * TAG_LEN)
            .ok_or_else(|| IntegrityError::new_err("a stream segment is shorter than its tag"))?;
        if first
            .checked_add(u32::try_from(count - 1).unwrap_or(u32::MAX))
            .is_none()
        {
            return Err(IntegrityError::new_err(
                "a stream has at most 2^32 segments",
            ));
        }
        let mut outs = FreshBytes::alloc(py, [len])?;
        let inner = &self.inner;
        let result = {
            let mut bufs = outs.uninit();
            let out = std::mem::take(&mut bufs[0]);
            run_detached(py, len, || {
                let open = |(i, (sealed, out)): (usize, (&[u8], Uninit<'_>))| {
                    prefault(std::iter::once(&*out));
                    let index = first + i as u32; // in range: checked above
                    inner.open_segment(index, last && i == count - 1, sealed, zeroed(out))
                };
                let pairs = sealed.chunks(SEALED_LEN).zip(out.chunks_mut(SEGMENT_LEN));
                if count > 1 {
                    pairs
                        .collect::<Vec<_>>()
                        .into_par_iter()
                        .enumerate()
                        .try_for_each(open)
                } else {
                    pairs.enumerate().try_for_each(open)
                }
            })
        };
        if let Err(e) = result {
            outs.wipe();
            return Err(Error(e).into());
        }
        Ok(outs.into_vec().remove(0))
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
