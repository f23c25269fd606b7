//! Batch seal/open of v1 records: one Python call per batch, GIL released, parallel in Rust.

use std::collections::BTreeSet;

use keycustody_core::aead::TAG_LEN;
use keycustody_core::record::{
    self, OpenJob, OpenKeys, SealJob, SealKey, HEADER_LEN, SCOPE_ID_LEN,
};
use keycustody_core::{CoreError, SecretKey};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::buffers::{prefault, zeroed, FreshBytes, Input, Uninit};
use crate::errors::{batch_error, Error, InvalidInputError};
use crate::gil::run_detached;
use crate::keys::KeyHandle;

type Lists<'py> = (
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyBytes>>,
);

pub(crate) fn scope_id(raw: &[u8]) -> PyResult<[u8; SCOPE_ID_LEN]> {
    raw.try_into()
        .map_err(|_| InvalidInputError::new_err(format!("scope_id must be {SCOPE_ID_LEN} bytes")))
}

pub(crate) fn key_version(v: i64) -> PyResult<u32> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| InvalidInputError::new_err("a key version is an integer from 1 to 2^32 - 1"))
}

/// An InvalidInputError `"{what}: got {a} and {b} items"` unless two parallel lists have one
/// length.
pub(crate) fn same_len(a: usize, b: usize, what: &str) -> PyResult<()> {
    if a != b {
        return Err(InvalidInputError::new_err(format!(
            "{what}: got {a} and {b} items"
        )));
    }
    Ok(())
}

fn core_error(e: CoreError) -> PyErr {
    Error(e).into()
}

/// A core opener of one task's records: stops at the first that fails, with its position.
type ChunkOpen = fn(&OpenKeys<'_>, &mut [OpenJob<'_>]) -> Result<(), (usize, CoreError)>;

/// A record to seal whose outputs (header, body, encrypted name; or one blob) are not written yet.
struct PendingSeal<'a> {
    name: &'a [u8],
    data: &'a [u8],
    outs: [Uninit<'a>; 3],
}

/// A record to open whose output is not written yet.
struct PendingOpen<'a> {
    name: Option<&'a [u8]>,
    header: &'a [u8],
    body: &'a [u8],
    out: Uninit<'a>,
}

/// Opens records task by task (see `record::run_tasks`); each task maps and zeroes its own
/// outputs right before writing them. On failure the outputs are partly written: wipe them.
fn open_pending(
    keys: &OpenKeys<'_>,
    pending: &mut [PendingOpen<'_>],
    total: usize,
    open: ChunkOpen,
) -> Result<(), (usize, CoreError)> {
    record::run_tasks(pending, total, |first, chunk| {
        prefault(chunk.iter().map(|p| &*p.out));
        let mut jobs: Vec<OpenJob<'_>> = chunk
            .iter_mut()
            .map(|p| OpenJob {
                name: p.name,
                header: p.header,
                body: p.body,
                out: zeroed(std::mem::take(&mut p.out)),
            })
            .collect();
        open(keys, &mut jobs).map_err(|(i, e)| (first + i, e))
    })
}

/// Keys by version, borrowed from frozen handles that the dict keeps alive.
pub(crate) fn key_table<'py>(
    keys: &Bound<'py, PyDict>,
) -> PyResult<Vec<(u32, Bound<'py, KeyHandle>)>> {
    keys.iter()
        .map(|(v, k)| Ok((v.extract::<u32>()?, k.cast_into::<KeyHandle>()?)))
        .collect()
}

pub(crate) fn borrow_keys<'a>(
    table: &'a [(u32, Bound<'_, KeyHandle>)],
) -> Vec<(u32, &'a SecretKey)> {
    table.iter().map(|(v, k)| (*v, &k.get().key)).collect()
}

fn seal<'py>(
    py: Python<'py>,
    key: &KeyHandle,
    scope: &[u8],
    version: i64,
    names: &[Input],
    datas: &[Input],
    with_names: bool,
) -> PyResult<Lists<'py>> {
    same_len(names.len(), datas.len(), "names and datas differ in length")?;
    let seal_key = SealKey {
        key: &key.key,
        scope_id: scope_id(scope)?,
        version: key_version(version)?,
    };
    let mut headers = FreshBytes::alloc(py, names.iter().map(|_| HEADER_LEN))?;
    let mut bodies = FreshBytes::alloc(py, datas.iter().map(|d| d.len() + TAG_LEN))?;
    let name_lens = names
        .iter()
        .map(|n| if with_names { n.len() + TAG_LEN } else { 0 });
    let mut name_cts = FreshBytes::alloc(py, name_lens)?;
    let total: usize = datas.iter().map(|d| d.len()).sum();
    let mut pending: Vec<PendingSeal<'_>> = names
        .iter()
        .zip(datas)
        .zip(
            headers
                .uninit()
                .into_iter()
                .zip(bodies.uninit())
                .zip(name_cts.uninit()),
        )
        .map(|((name, data), ((header, body), name_ct))| PendingSeal {
            name,
            data,
            outs: [header, body, name_ct],
        })
        .collect();
    run_detached(py, total, || {
        record::run_tasks(&mut pending, total, |_, chunk| {
            prefault(chunk.iter().flat_map(|p| p.outs.iter().map(|o| &**o)));
            let mut jobs: Vec<SealJob<'_>> = chunk
                .iter_mut()
                .map(|p| {
                    let [header, body, name_ct] = p.outs.each_mut().map(std::mem::take);
                    SealJob {
                        name: p.name,
                        data: p.data,
                        header: zeroed(header),
                        body: zeroed(body),
                        name_ct: with_names.then(|| zeroed(name_ct)),
                    }
                })
                .collect();
            record::seal_chunk(&seal_key, &mut jobs)
        })
    })
    .map_err(core_error)?;
    drop(pending);
    Ok((headers.into_vec(), name_cts.into_vec(), bodies.into_vec()))
}

/// Seals records into self-contained blobs (`header || ciphertext || tag`), one per name.
#[pyfunction]
pub fn seal_blobs<'py>(
    py: Python<'py>,
    key: &KeyHandle,
    scope_id: Input,
    version: i64,
    names: Vec<Input>,
    datas: Vec<Input>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let names: Vec<&[u8]> = names.iter().map(|n| &**n).collect();
    seal_blobs_of(py, key, &scope_id, version, &names, &datas)
}

/// `seal_blobs` on names already borrowed as bytes.
pub(crate) fn seal_blobs_of<'py>(
    py: Python<'py>,
    key: &KeyHandle,
    scope_id: &[u8],
    version: i64,
    names: &[&[u8]],
    datas: &[Input],
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let seal_key = SealKey {
        key: &key.key,
        scope_id: self::scope_id(scope_id)?,
        version: key_version(version)?,
    };
    same_len(names.len(), datas.len(), "names and datas differ in length")?;
    let mut blobs = FreshBytes::alloc(py, datas.iter().map(|d| record::sealed_len(d.len())))?;
    let total: usize = datas.iter().map(|d| d.len()).sum();
    let mut pending: Vec<PendingSeal<'_>> = names
        .iter()
        .zip(datas)
        .zip(blobs.uninit())
        .map(|((name, data), blob)| PendingSeal {
            name,
            data,
            outs: [blob, Default::default(), Default::default()],
        })
        .collect();
    run_detached(py, total, || {
        record::run_tasks(&mut pending, total, |_, chunk| {
            prefault(chunk.iter().map(|p| &*p.outs[0]));
            let mut jobs: Vec<SealJob<'_>> = chunk
                .iter_mut()
                .map(|p| {
                    let (header, body) =
                        zeroed(std::mem::take(&mut p.outs[0])).split_at_mut(HEADER_LEN);
                    SealJob {
                        name: p.name,
                        data: p.data,
                        header,
                        body,
                        name_ct: None,
                    }
                })
                .collect();
            record::seal_chunk(&seal_key, &mut jobs)
        })
    })
    .map_err(core_error)?;
    drop(pending);
    Ok(blobs.into_vec())
}

/// Opens blobs made by `seal_blobs`; `keys` maps scope key version to handle.
#[pyfunction]
pub fn open_blobs<'py>(
    py: Python<'py>,
    scope_id: Input,
    keys: &Bound<'py, PyDict>,
    names: Vec<Input>,
    blobs: Vec<Input>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let names: Vec<&[u8]> = names.iter().map(|n| &**n).collect();
    open_blobs_of(py, &scope_id, keys, &names, &blobs)
}

/// `open_blobs` on names already borrowed as bytes.
pub(crate) fn open_blobs_of<'py>(
    py: Python<'py>,
    scope_id: &[u8],
    keys: &Bound<'py, PyDict>,
    names: &[&[u8]],
    blobs: &[Input],
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    same_len(names.len(), blobs.len(), "names and blobs differ in length")?;
    let table = key_table(keys)?;
    let pairs = borrow_keys(&table);
    let open_keys = OpenKeys {
        scope_id: self::scope_id(scope_id)?,
        keys: &pairs,
    };
    let mut lens = Vec::with_capacity(blobs.len());
    for (i, blob) in blobs.iter().enumerate() {
        match blob.len().checked_sub(HEADER_LEN + TAG_LEN) {
            Some(n) => lens.push(n),
            None => return Err(batch_error(py, i, CoreError::Integrity)),
        }
    }
    let mut outs = FreshBytes::alloc(py, lens)?;
    let total: usize = blobs.iter().map(|b| b.len()).sum();
    let mut pending: Vec<PendingOpen<'_>> = names
        .iter()
        .zip(blobs)
        .zip(outs.uninit())
        .map(|((name, blob), out)| {
            let (header, body) = blob.split_at(HEADER_LEN);
            PendingOpen {
                name: Some(name),
                header,
                body,
                out,
            }
        })
        .collect();
    let result = run_detached(py, total, || {
        open_pending(&open_keys, &mut pending, total, record::open_chunk)
    });
    drop(pending);
    if let Err((i, e)) = result {
        outs.wipe();
        return Err(batch_error(py, i, e));
    }
    Ok(outs.into_vec())
}

/// Seals records for storage: returns `(headers, encrypted_names, bodies)`.
#[pyfunction]
pub fn seal_records<'py>(
    py: Python<'py>,
    key: &KeyHandle,
    scope_id: Input,
    version: i64,
    names: Vec<Input>,
    datas: Vec<Input>,
) -> PyResult<Lists<'py>> {
    seal(py, key, &scope_id, version, &names, &datas, true)
}

fn open_detached<'py>(
    py: Python<'py>,
    scope_id: &[u8],
    keys: &Bound<'py, PyDict>,
    names: Option<&[Input]>,
    headers: &[Input],
    bodies: &[Input],
    run: ChunkOpen,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    same_len(
        headers.len(),
        bodies.len(),
        "headers and bodies differ in length",
    )?;
    if let Some(names) = names {
        same_len(
            names.len(),
            headers.len(),
            "names and headers differ in length",
        )?;
    }
    let table = key_table(keys)?;
    let pairs = borrow_keys(&table);
    let open_keys = OpenKeys {
        scope_id: self::scope_id(scope_id)?,
        keys: &pairs,
    };
    let mut lens = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.iter().enumerate() {
        let len = body.len().checked_sub(TAG_LEN);
        lens.push(len.ok_or_else(|| batch_error(py, i, CoreError::Integrity))?);
    }
    let mut outs = FreshBytes::alloc(py, lens)?;
    let total: usize = bodies.iter().map(|b| b.len()).sum();
    let mut pending: Vec<PendingOpen<'_>> = headers
        .iter()
        .zip(bodies)
        .zip(outs.uninit())
        .enumerate()
        .map(|(i, ((header, body), out))| PendingOpen {
            name: names.map(|n| &*n[i]),
            header,
            body,
            out,
        })
        .collect();
    let result = run_detached(py, total, || {
        open_pending(&open_keys, &mut pending, total, run)
    });
    drop(pending);
    if let Err((i, e)) = result {
        outs.wipe();
        return Err(batch_error(py, i, e));
    }
    Ok(outs.into_vec())
}

/// Opens stored records; each header's name index must match the name asked for.
#[pyfunction]
pub fn open_records<'py>(
    py: Python<'py>,
    scope_id: Input,
    keys: &Bound<'py, PyDict>,
    names: Vec<Input>,
    headers: Vec<Input>,
    bodies: Vec<Input>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    open_detached(
        py,
        &scope_id,
        keys,
        Some(&names),
        &headers,
        &bodies,
        record::open_chunk,
    )
}

/// Decrypts stored names and checks each against its header's blind index.
#[pyfunction]
pub fn open_names<'py>(
    py: Python<'py>,
    scope_id: Input,
    keys: &Bound<'py, PyDict>,
    headers: Vec<Input>,
    name_cts: Vec<Input>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    open_detached(
        py,
        &scope_id,
        keys,
        None,
        &headers,
        &name_cts,
        record::open_name_chunk,
    )
}

/// Moves records' DEKs to scope key `new_version` without touching payloads; returns new headers.
#[pyfunction]
pub fn rewrap_headers<'py>(
    py: Python<'py>,
    scope_id: Input,
    keys: &Bound<'py, PyDict>,
    new_key: &KeyHandle,
    new_version: i64,
    headers: Vec<Input>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let table = key_table(keys)?;
    let pairs = borrow_keys(&table);
    let sid = self::scope_id(&scope_id)?;
    let from = OpenKeys {
        scope_id: sid,
        keys: &pairs,
    };
    let to = SealKey {
        key: &new_key.key,
        scope_id: sid,
        version: key_version(new_version)?,
    };
    let mut outs = FreshBytes::alloc(py, headers.iter().map(|_| HEADER_LEN))?;
    let mut bufs: Vec<&mut [u8]> = outs.uninit().into_iter().map(zeroed).collect();
    let result = run_detached(py, headers.len() * HEADER_LEN, || {
        headers
            .iter()
            .zip(bufs.iter_mut())
            .enumerate()
            .try_for_each(|(i, (h, out))| {
                record::rewrap_header(&from, &to, h, out).map_err(|e| (i, e))
            })
    });
    result.map_err(|(i, e)| batch_error(py, i, e))?;
    drop(bufs);
    Ok(outs.into_vec())
}

/// The suite of each stored row's header, checking that the row's lookup columns (attributes
/// `record_id`, `name_index`, `key_version`; None counts as 0) are the header's own. A column
/// of the wrong type (a NULL header, a version out of range) fails the check like a mismatch.
#[pyfunction]
pub fn check_rows<'py>(
    py: Python<'py>,
    rows: Vec<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut suites = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let header = row.getattr(intern!(py, "header"))?;
        let record_id = row.getattr(intern!(py, "record_id"))?;
        let name_index = row.getattr(intern!(py, "name_index"))?;
        let version = row.getattr(intern!(py, "key_version"))?;
        let checked = (|| {
            let version: Option<u32> = version.extract().ok()?;
            record::check_columns(
                &header.extract::<Input>().ok()?,
                &record_id.extract::<Input>().ok()?,
                &name_index.extract::<Input>().ok()?,
                version.unwrap_or(0),
            )
            .ok()
        })();
        suites.push(checked.ok_or_else(|| batch_error(py, i, CoreError::Integrity))?);
    }
    Ok(PyBytes::new(py, &suites))
}

/// The scope key versions headers name (unauthenticated; used to pick keys before opening).
/// A blob that starts with a header counts as its header.
#[pyfunction]
pub fn header_key_versions(py: Python<'_>, headers: Vec<Input>) -> PyResult<BTreeSet<u32>> {
    headers
        .iter()
        .enumerate()
        .map(|(i, h)| record::header_key_version(h).map_err(|e| batch_error(py, i, e)))
        .collect()
}
