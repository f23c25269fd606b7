//! Derived records (suite 3): sealed and opened through their source record's header, in
//! parallel across cores as record batches are (`record::run_tasks`).

use keycustody_core::aead::TAG_LEN;
use keycustody_core::derived::Source;
use keycustody_core::record::{self, OpenKeys, HEADER_LEN};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::buffers::Input;
use crate::errors::{batch_error, Error};
use crate::gil::run_detached;
use crate::records::{borrow_keys, key_table, same_len, scope_id};

/// A derived record's header, encrypted name and body.
type Sealed = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Two inputs of one record (name and data, or header and body), then its output once done.
type Job<'a, T> = (&'a [u8], &'a [u8], Option<T>);

type Lists<'py> = (
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyBytes>>,
);

/// Seals records derived from a source record; returns `(headers, encrypted_names, bodies)`.
#[pyfunction]
pub fn seal_derived<'py>(
    py: Python<'py>,
    scope_id: Input,
    keys: &Bound<'py, PyDict>,
    source_name: Input,
    source_header: Input,
    names: Vec<Input>,
    datas: Vec<Input>,
) -> PyResult<Lists<'py>> {
    same_len(names.len(), datas.len(), "names and datas differ in length")?;
    let table = key_table(keys)?;
    let pairs = borrow_keys(&table);
    let keys = OpenKeys {
        scope_id: self::scope_id(&scope_id)?,
        keys: &pairs,
    };
    let (source, index) =
        Source::from_header(&keys, Some(&source_name), &source_header).map_err(Error)?;
    let total: usize = datas.iter().map(|d| d.len()).sum();
    let mut jobs: Vec<Job<'_, Sealed>> = names
        .iter()
        .zip(&datas)
        .map(|(n, d)| (&n[..], &d[..], None))
        .collect();
    run_detached(py, total, || {
        record::run_tasks(&mut jobs, total, |_, chunk| {
            chunk.iter_mut().try_for_each(|(name, data, sealed)| {
                let mut header = vec![0u8; HEADER_LEN];
                let mut body = vec![0u8; data.len() + TAG_LEN];
                let mut name_ct = vec![0u8; name.len() + TAG_LEN];
                source.seal(index, name, data, &mut header, &mut body, &mut name_ct)?;
                *sealed = Some((header, name_ct, body));
                Ok(())
            })
        })
    })
    .map_err(Error)?;
    let mut out: Lists<'py> = (vec![], vec![], vec![]);
    for (_, _, sealed) in jobs {
        let (header, name_ct, body) = sealed.expect("every job is sealed when the batch is");
        out.0.push(PyBytes::new(py, &header));
        out.1.push(PyBytes::new(py, &name_ct));
        out.2.push(PyBytes::new(py, &body));
    }
    Ok(out)
}

/// Opens derived records (payloads, or names when `names` is None and `bodies` are the
/// encrypted names) through their source record's header.
#[pyfunction]
#[pyo3(signature = (scope_id, keys, source_header, names, headers, bodies))]
pub fn open_derived<'py>(
    py: Python<'py>,
    scope_id: Input,
    keys: &Bound<'py, PyDict>,
    source_header: Input,
    names: Option<Vec<Input>>,
    headers: Vec<Input>,
    bodies: Vec<Input>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    same_len(
        headers.len(),
        bodies.len(),
        "headers and bodies differ in length",
    )?;
    if let Some(names) = &names {
        same_len(
            names.len(),
            headers.len(),
            "names and headers differ in length",
        )?;
    }
    let table = key_table(keys)?;
    let pairs = borrow_keys(&table);
    let keys = OpenKeys {
        scope_id: self::scope_id(&scope_id)?,
        keys: &pairs,
    };
    let (source, index) = Source::from_header(&keys, None, &source_header).map_err(Error)?;
    let total: usize = bodies.iter().map(|b| b.len()).sum();
    let mut jobs: Vec<Job<'_, Vec<u8>>> = headers
        .iter()
        .zip(&bodies)
        .map(|(h, b)| (&h[..], &b[..], None))
        .collect();
    run_detached(py, total, || {
        record::run_tasks(&mut jobs, total, |first, chunk| {
            chunk
                .iter_mut()
                .enumerate()
                .try_for_each(|(k, (header, body, opened))| {
                    let i = first + k;
                    let len = body
                        .len()
                        .checked_sub(TAG_LEN)
                        .ok_or((i, keycustody_core::CoreError::Integrity))?;
                    let mut out = vec![0u8; len];
                    match &names {
                        Some(names) => source.open_record(index, &names[i], header, body, &mut out),
                        None => source.open_name(index, header, body, &mut out),
                    }
                    .map_err(|e| (i, e))?;
                    *opened = Some(out);
                    Ok(())
                })
        })
    })
    .map_err(|(i, e)| batch_error(py, i, e))?;
    Ok(jobs
        .iter()
        .map(|(_, _, opened)| {
            PyBytes::new(
                py,
                opened
                    .as_deref()
                    .expect("every job is opened when the batch is"),
            )
        })
        .collect())
}
