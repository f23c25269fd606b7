//! Segmented streams (suite 2): seal one 1 MiB segment per call, open several at once; GIL
//! released.

use std::cell::RefCell;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use keycustody_core::aead::TAG_LEN;
use keycustody_core::record::{OpenKeys, SealKey, HEADER_LEN};
use keycustody_core::stream::{StreamOpener, StreamSealer, SEGMENT_LEN};
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rayon::prelude::*;

use crate::buffers::{prefault, zeroed, FreshBytes, Input};
use crate::errors::{Error, IntegrityError, InvalidInputError};
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
        let len = plaintext_len(first, &sealed)?;
        let mut outs = FreshBytes::alloc(py, [len])?;
        let result = {
            let mut bufs = outs.uninit();
            let out = std::mem::take(&mut bufs[0]);
            run_detached(py, len, || {
                open_window(&self.inner, first, last, &sealed, out, |out| {
                    prefault(std::iter::once(&*out));
                    zeroed(out)
                })
            })
        };
        if let Err(e) = result {
            outs.wipe();
            return Err(Error(e).into());
        }
        Ok(outs.into_vec().remove(0))
    }

    /// As `open_segments`, into `out`, a writable buffer of exactly their plaintext length
    /// (e.g. the caller's `readinto` buffer): no output to allocate and no copy after.
    fn open_segments_into(
        &self,
        py: Python<'_>,
        first: u32,
        last: bool,
        sealed: Input,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let len = plaintext_len(first, &sealed)?;
        write_detached(py, out, len, |dest| {
            open_window(&self.inner, first, last, &sealed, dest, |out| out).map_err(Error)
        })
    }

    /// Reads consecutive sealed segments from `first` out of the file at `path`, where the
    /// stream's segments lie back to back from offset 0 (a local blob store's object), and
    /// opens them into `out`: their plaintext length, every segment full but a final one
    /// (`last`: the stream's last). Each segment is read by the task that opens it, on
    /// several cores when there are several, so it is still in cache when it is decrypted.
    fn read_segments_into(
        &self,
        py: Python<'_>,
        path: PathBuf,
        first: u32,
        last: bool,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let buffer_len = PyBuffer::<u8>::get(out)?.len_bytes();
        let count = buffer_len.div_ceil(SEGMENT_LEN).max(1);
        if !last && buffer_len % SEGMENT_LEN != 0 {
            return Err(InvalidInputError::new_err(
                "out must hold whole segments unless it ends with the stream's last one",
            ));
        }
        if u32::try_from(count - 1)
            .ok()
            .and_then(|n| first.checked_add(n))
            .is_none()
        {
            return Err(IntegrityError::new_err(
                "a stream has at most 2^32 segments",
            ));
        }
        write_detached(py, out, buffer_len, |dest| {
            let file = File::open(&path).map_err(ReadError::Io)?;
            read_window(&self.inner, &file, first, last, dest)
        })
    }
}

/// Writes `len` bytes into the caller's buffer `out` with `fill`, the GIL released; zeroes
/// `out` if `fill` fails, so no unauthenticated plaintext is left behind.
fn write_detached<E: Into<PyErr> + Send>(
    py: Python<'_>,
    out: &Bound<'_, PyAny>,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), E> + Send,
) -> PyResult<()> {
    let buffer = PyBuffer::<u8>::get(out)?;
    if buffer.readonly() || !buffer.is_c_contiguous() || buffer.len_bytes() != len {
        return Err(InvalidInputError::new_err(format!(
            "out must be a writable contiguous buffer of {len} bytes"
        )));
    }
    // SAFETY: `buffer` holds the export of `out` until it is dropped below, so the memory
    // stays allocated and cannot be resized (bytearray and memoryview refuse while
    // exported); it is writable, C-contiguous and `len` bytes long (checked above). Like
    // the `readinto` of Python's own files, it is written with the GIL released: a thread
    // that touches the same buffer meanwhile races with this call, as with a file read.
    let dest = unsafe { std::slice::from_raw_parts_mut(buffer.buf_ptr().cast::<u8>(), len) };
    if let Err(e) = run_detached(py, len, || fill(dest)) {
        // SAFETY: as above; the detached call has ended, so this is the only access.
        unsafe { std::slice::from_raw_parts_mut(buffer.buf_ptr().cast::<u8>(), len) }.fill(0);
        return Err(e.into());
    }
    drop(buffer);
    Ok(())
}

/// Why reading segments from a file failed.
enum ReadError {
    Core(keycustody_core::CoreError),
    Io(std::io::Error),
}

impl From<ReadError> for PyErr {
    fn from(e: ReadError) -> PyErr {
        match e {
            ReadError::Core(e) => Error(e).into(),
            ReadError::Io(e) if e.kind() == ErrorKind::UnexpectedEof => {
                IntegrityError::new_err("a stream record's blob is shorter than its size says")
            }
            // An OSError of the matching subclass (FileNotFoundError, ...) with errno set.
            ReadError::Io(e) => e.into(),
        }
    }
}

thread_local! {
    /// One sealed segment, read from a file just before it is opened: reused, so it stays
    /// mapped and in cache (it holds ciphertext only).
    static SEALED: RefCell<Vec<u8>> = RefCell::new(vec![0; SEALED_LEN]);
}

/// Reads the segments of `out`'s plaintext from `file` and opens them into `out`, each in
/// its own task; every segment is authenticated, an empty final one included.
fn read_window(
    inner: &StreamOpener,
    file: &File,
    first: u32,
    last: bool,
    out: &mut [u8],
) -> Result<(), ReadError> {
    let count = out.len().div_ceil(SEGMENT_LEN).max(1);
    let shares: Vec<&mut [u8]> = if out.is_empty() {
        vec![out]
    } else {
        out.chunks_mut(SEGMENT_LEN).collect()
    };
    // Always on the pool, even for one segment: its threads keep their buffers warm.
    shares
        .into_par_iter()
        .enumerate()
        .try_for_each(|(i, share)| {
            let index = first + i as u32; // in range: checked by the caller
            SEALED.with_borrow_mut(|sealed| {
                let sealed = &mut sealed[..share.len() + TAG_LEN];
                let offset = u64::from(index) * SEALED_LEN as u64;
                file.read_exact_at(sealed, offset).map_err(ReadError::Io)?;
                inner
                    .open_segment(index, last && i == count - 1, sealed, share)
                    .map_err(ReadError::Core)
            })
        })
}

/// Plaintext bytes of `sealed`, consecutive sealed segments numbered from `first`.
fn plaintext_len(first: u32, sealed: &[u8]) -> PyResult<usize> {
    let count = segment_count(sealed);
    let len = sealed
        .len()
        .checked_sub(count * TAG_LEN)
        .ok_or_else(|| IntegrityError::new_err("a stream segment is shorter than its tag"))?;
    let final_index = u32::try_from(count - 1)
        .ok()
        .and_then(|n| first.checked_add(n));
    if final_index.is_none() {
        return Err(IntegrityError::new_err(
            "a stream has at most 2^32 segments",
        ));
    }
    Ok(len)
}

/// Sealed segments in `sealed`: every one but the final one is full; at least one (the
/// final segment of an empty stream is its 16-byte tag).
fn segment_count(sealed: &[u8]) -> usize {
    sealed.len().div_ceil(SEALED_LEN).max(1)
}

/// Opens the segments in `sealed` into `out` (their plaintexts back to back), on several
/// cores when there are several. `prepare` readies each segment's share of `out` inside the
/// task that writes it. Every segment is authenticated, an empty final one included.
fn open_window<'a, T: Send>(
    inner: &StreamOpener,
    first: u32,
    last: bool,
    sealed: &[u8],
    out: &'a mut [T],
    prepare: impl Fn(&'a mut [T]) -> &'a mut [u8] + Sync,
) -> keycustody_core::Result<()> {
    let count = segment_count(sealed);
    let mut rest = out;
    let mut jobs = Vec::with_capacity(count);
    for (i, sealed) in sealed.chunks(SEALED_LEN).enumerate() {
        let n = SEGMENT_LEN.min(rest.len());
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        if head.len() + TAG_LEN != sealed.len() {
            return Err(keycustody_core::CoreError::Integrity); // a short segment mid-window
        }
        jobs.push((i, sealed, head));
        rest = tail;
    }
    if jobs.len() != count || !rest.is_empty() {
        return Err(keycustody_core::CoreError::Integrity);
    }
    let open = |(i, sealed, out): (usize, &[u8], &'a mut [T])| {
        let index = first + i as u32; // in range: plaintext_len checked it
        inner.open_segment(index, last && i == count - 1, sealed, prepare(out))
    };
    if count > 1 {
        jobs.into_par_iter().try_for_each(open)
    } else {
        jobs.into_iter().try_for_each(open)
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
