//! Segmented streams (suite 2): seal one 1 MiB segment per call, open several at once; GIL
//! released.

use std::cell::RefCell;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, TryLockError};

use keycustody_core::aead::TAG_LEN;
use keycustody_core::record::{OpenKeys, SealKey, HEADER_LEN};
use keycustody_core::stream::{StreamOpener, StreamSealer, SEGMENT_LEN};
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
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
    /// `read_segments_into`'s segment read ahead, and a spare buffer for the next one.
    ahead: Mutex<(Option<ReadAhead>, Vec<u8>)>,
}

/// The sealed segment after a `read_segments_into` call, read from its file while that call
/// opened its own, for the next call (ciphertext only).
struct ReadAhead {
    path: PathBuf,
    index: u32,
    sealed: Vec<u8>,
}

#[pymethods]
impl PyStreamOpener {
    /// Opens consecutive segments from `first`, in `sealed`: one buffer holding them back to
    /// back (every one but the final one [`SEGMENT_LEN`] + 16 bytes), or a list of buffers of
    /// one segment each; `last` says whether the final one is the stream's last. Returns
    /// their plaintexts back to back. Segments are opened in parallel across cores (GIL
    /// released), each task mapping and zeroing its own output.
    fn open_segments<'py>(
        &self,
        py: Python<'py>,
        first: u32,
        last: bool,
        sealed: Sealed,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let sealed = sealed.segments();
        let len = plaintext_len(first, &sealed)?;
        let mut outs = FreshBytes::alloc(py, [len])?;
        let result = {
            let shares = segment_shares(outs.uninit());
            run_detached(py, len, || {
                open_window(&self.inner, first, last, &sealed, shares, |out| {
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

    /// As `open_segments`, into `out`: a writable buffer of exactly their plaintext length
    /// (e.g. the caller's `readinto` buffer), or a list of buffers filled in order, each but
    /// the final one whole segments. No output to allocate and no copy after.
    fn open_segments_into(
        &self,
        py: Python<'_>,
        first: u32,
        last: bool,
        sealed: Sealed,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let sealed = sealed.segments();
        let len = plaintext_len(first, &sealed)?;
        let outs = OutBuffers::get(out)?;
        if outs.len() != len {
            return Err(InvalidInputError::new_err(format!(
                "out must hold exactly the segments' {len} plaintext bytes"
            )));
        }
        outs.fill_detached(py, |shares| {
            open_window(&self.inner, first, last, &sealed, shares, |out| out).map_err(Error)
        })
    }

    /// Reads consecutive sealed segments from `first` out of the file at `path`, where the
    /// stream's segments lie back to back from offset 0 (a local blob store's object), and
    /// opens them into `out` (a buffer, or a list of buffers filled in order): whole
    /// segments, but for a final one when `last` (the stream's last). Each segment is read by
    /// the task that opens it, on several cores when there are several, so it is still in
    /// cache when it is decrypted.
    ///
    /// `ahead`: the sealed length of the segment after these (0: none), read meanwhile on
    /// another core and kept for the next call that starts there. A sequential reader of one
    /// segment per call then decrypts on one core while the next segment is read on the
    /// other. A failure to read ahead is left to that next call, which reads again.
    #[pyo3(signature = (path, first, last, out, ahead = 0))]
    fn read_segments_into(
        &self,
        py: Python<'_>,
        path: PathBuf,
        first: u32,
        last: bool,
        out: &Bound<'_, PyAny>,
        ahead: usize,
    ) -> PyResult<()> {
        let outs = OutBuffers::get(out)?;
        let len = outs.len();
        if !last && len % SEGMENT_LEN != 0 {
            return Err(InvalidInputError::new_err(
                "out must hold whole segments unless it ends with the stream's last one",
            ));
        }
        let count = len.div_ceil(SEGMENT_LEN).max(1);
        check_indexes(first, count)?;
        if ahead > SEALED_LEN || (ahead > 0 && last) {
            return Err(InvalidInputError::new_err(
                "ahead must be the sealed length of one segment after these, or 0",
            ));
        }
        // Not waited for: another thread reading through this opener holds it with the GIL
        // released, and would wait for the GIL this thread holds. That read goes without.
        let mut state = match self.ahead.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return outs.fill_detached(py, |shares| {
                    let file = File::open(&path).map_err(ReadError::Io)?;
                    read_window(&self.inner, &file, &path, first, last, shares, None)
                })
            }
        };
        let (read_ahead, spare) = &mut *state;
        let held = read_ahead
            .take()
            .filter(|h| h.index == first && h.path == path);
        let next = u32::try_from(count)
            .ok()
            .and_then(|n| first.checked_add(n))
            .filter(|_| ahead > 0);
        let mut fetched = false;
        outs.fill_detached(py, |shares| {
            let file = File::open(&path).map_err(ReadError::Io)?;
            let held = held.as_ref().map(|h| &h.sealed[..]);
            let Some(next) = next else {
                return read_window(&self.inner, &file, &path, first, last, shares, held);
            };
            let (opened, read) = rayon::join(
                || read_window(&self.inner, &file, &path, first, last, shares, held),
                || {
                    spare.resize(ahead, 0);
                    let offset = u64::from(next) * SEALED_LEN as u64;
                    read_exact_at(&file, &path, spare, offset)
                },
            );
            fetched = read.is_ok();
            opened
        })?;
        if let Some(index) = next.filter(|_| fetched) {
            let sealed = std::mem::replace(spare, held.map(|h| h.sealed).unwrap_or_default());
            *read_ahead = Some(ReadAhead {
                path,
                index,
                sealed,
            });
        }
        Ok(())
    }
}

/// The caller's output buffers: `out` itself, or each buffer of the list `out`, filled in
/// order; writable, C-contiguous, each but the final one holding whole segments.
struct OutBuffers(Vec<PyBuffer<u8>>);

impl OutBuffers {
    fn get(out: &Bound<'_, PyAny>) -> PyResult<Self> {
        let objects = match out.cast::<PyList>() {
            Ok(list) => list.iter().collect(),
            Err(_) => vec![out.clone()],
        };
        let mut buffers = Vec::with_capacity(objects.len());
        for (i, object) in objects.iter().enumerate() {
            let buffer = PyBuffer::<u8>::get(object)?;
            if buffer.readonly() || !buffer.is_c_contiguous() {
                return Err(InvalidInputError::new_err(
                    "out must be writable contiguous buffers",
                ));
            }
            let len = buffer.len_bytes();
            if i + 1 < objects.len() && (len == 0 || len % SEGMENT_LEN != 0) {
                return Err(InvalidInputError::new_err(
                    "every buffer of out but the final one must hold whole segments",
                ));
            }
            buffers.push(buffer);
        }
        match buffers.last() {
            None => {
                return Err(InvalidInputError::new_err(
                    "out must hold at least one buffer",
                ))
            }
            // Only a stream's sole segment can be empty.
            Some(b) if b.len_bytes() == 0 && buffers.len() > 1 => {
                return Err(InvalidInputError::new_err(
                    "the final buffer of out must not be empty",
                ))
            }
            Some(_) => {}
        }
        Ok(Self(buffers))
    }

    fn len(&self) -> usize {
        self.0.iter().map(|b| b.len_bytes()).sum()
    }

    /// The buffers as byte slices, borrowed from `self`, which holds their exports.
    fn slices(&mut self) -> Vec<&mut [u8]> {
        self.0
            .iter_mut()
            // SAFETY: the export (held by `self`, borrowed mutably for as long as the slices
            // live, so they are the only ones) keeps the memory allocated and unresizable:
            // bytearray and memoryview refuse while exported. Each buffer is writable,
            // C-contiguous and `len_bytes()` long (checked in `get`). Like the `readinto` of
            // Python's own files, the slices are written with the GIL released: a thread that
            // touches the same buffers meanwhile races with that call, as with a file read.
            .map(|b| unsafe {
                std::slice::from_raw_parts_mut(b.buf_ptr().cast::<u8>(), b.len_bytes())
            })
            .collect()
    }

    /// Fills the buffers, split into one share per segment, with `fill`, the GIL released;
    /// zeroes them all if `fill` fails, so no unauthenticated plaintext is left behind.
    fn fill_detached<E: Into<PyErr> + Send>(
        mut self,
        py: Python<'_>,
        fill: impl FnOnce(Vec<&mut [u8]>) -> Result<(), E> + Send,
    ) -> PyResult<()> {
        let len = self.len();
        if let Err(e) = run_detached(py, len, || fill(segment_shares(self.slices()))) {
            self.slices().into_iter().for_each(|s| s.fill(0));
            return Err(e.into());
        }
        Ok(())
    }
}

/// Splits consecutive output buffers into one share per segment, in order (an empty final
/// buffer is the empty final segment's share).
fn segment_shares<T>(outs: Vec<&mut [T]>) -> Vec<&mut [T]> {
    let mut shares = Vec::new();
    for out in outs {
        if out.is_empty() {
            shares.push(out);
        } else {
            shares.extend(out.chunks_mut(SEGMENT_LEN));
        }
    }
    shares
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

/// Reads the segments of `shares` (one per segment, in order, from `first`) from `file`
/// (opened from `path`) and opens them, each in its own task; every segment is
/// authenticated, an empty final one included. `held`: segment `first`, already read.
fn read_window(
    inner: &StreamOpener,
    file: &File,
    path: &Path,
    first: u32,
    last: bool,
    shares: Vec<&mut [u8]>,
    held: Option<&[u8]>,
) -> Result<(), ReadError> {
    let count = shares.len();
    // Always on the pool, even for one segment: its threads keep their buffers warm.
    shares
        .into_par_iter()
        .enumerate()
        .try_for_each(|(i, share)| {
            let index = first + i as u32; // in range: checked by the caller
            let last = last && i == count - 1;
            match held {
                Some(sealed) if i == 0 && sealed.len() == share.len() + TAG_LEN => inner
                    .open_segment(index, last, sealed, share)
                    .map_err(ReadError::Core),
                _ => SEALED.with_borrow_mut(|sealed| {
                    let sealed = &mut sealed[..share.len() + TAG_LEN];
                    let offset = u64::from(index) * SEALED_LEN as u64;
                    read_exact_at(file, path, sealed, offset).map_err(ReadError::Io)?;
                    inner
                        .open_segment(index, last, sealed, share)
                        .map_err(ReadError::Core)
                }),
            }
        })
}

/// Reads exactly `buf.len()` bytes at `offset` of `file`: one positioned read, shared by the
/// tasks (Unix).
#[cfg(unix)]
fn read_exact_at(file: &File, _path: &Path, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Elsewhere a file's position is shared by its handles: each task opens `path` for itself.
#[cfg(not(unix))]
fn read_exact_at(_file: &File, path: &Path, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut own = File::open(path)?;
    own.seek(SeekFrom::Start(offset))?;
    own.read_exact(buf)
}

/// Consecutive sealed segments: one buffer holding them back to back, or a list of buffers
/// of one segment each (as a database returns them, so they need no join, a copy of each).
enum Sealed {
    Joined(Input),
    Each(Vec<Input>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Sealed {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.cast::<PyList>() {
            Ok(list) => Ok(Self::Each(
                list.iter().map(|o| o.extract()).collect::<PyResult<_>>()?,
            )),
            Err(_) => Ok(Self::Joined(obj.extract()?)),
        }
    }
}

impl Sealed {
    /// The segments, one slice each (none for an empty buffer or list).
    fn segments(&self) -> Vec<&[u8]> {
        match self {
            Self::Joined(sealed) => sealed.chunks(SEALED_LEN).collect(),
            Self::Each(each) => each.iter().map(|s| &**s).collect(),
        }
    }
}

/// Plaintext bytes of `sealed`, consecutive sealed segments numbered from `first`.
/// A segment shorter than its tag is left to `open_window`, whose failure zeroes the output
/// (sized from this length).
fn plaintext_len(first: u32, sealed: &[&[u8]]) -> PyResult<usize> {
    let count = sealed.len().max(1); // even an empty stream's segment has its tag
    let len = sealed
        .iter()
        .map(|s| s.len())
        .sum::<usize>()
        .checked_sub(count * TAG_LEN)
        .ok_or_else(|| IntegrityError::new_err("a stream segment is shorter than its tag"))?;
    check_indexes(first, count)?;
    Ok(len)
}

/// Checks that `count` segments from `first` are numbered within a stream's 2^32.
fn check_indexes(first: u32, count: usize) -> PyResult<()> {
    match u32::try_from(count - 1)
        .ok()
        .and_then(|n| first.checked_add(n))
    {
        Some(_) => Ok(()),
        None => Err(IntegrityError::new_err(
            "a stream has at most 2^32 segments",
        )),
    }
}

/// Opens the segments in `sealed` (nonempty: see `plaintext_len`) into `shares` (one per
/// segment, in order), on several cores when there are several. `prepare` readies each share
/// inside the task that writes it. Every segment is authenticated, an empty final one
/// included.
fn open_window<'a, T: Send>(
    inner: &StreamOpener,
    first: u32,
    last: bool,
    sealed: &[&[u8]],
    shares: Vec<&'a mut [T]>,
    prepare: impl Fn(&'a mut [T]) -> &'a mut [u8] + Sync,
) -> keycustody_core::Result<()> {
    let count = sealed.len();
    if shares.len() != count {
        return Err(keycustody_core::CoreError::Integrity);
    }
    let jobs: Vec<_> = sealed.iter().copied().zip(shares).enumerate().collect();
    if jobs
        .iter()
        .any(|(_, (sealed, out))| out.len() + TAG_LEN != sealed.len())
    {
        return Err(keycustody_core::CoreError::Integrity); // a short segment mid-window
    }
    let open = |(i, (sealed, out)): (usize, (&[u8], &'a mut [T]))| {
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
    Ok(PyStreamOpener {
        inner,
        ahead: Mutex::new((None, Vec::new())),
    })
}
