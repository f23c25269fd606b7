//! Byte inputs and outputs across the boundary.
//!
//! Inputs: `bytes` are borrowed without a copy; `bytearray` and other buffers (memoryview) are
//! copied first, so a concurrent mutation cannot change what was authenticated.
//! Outputs: `bytes` objects allocated uninitialised and written once, by Rust, possibly with the
//! GIL released and from several threads, before Python ever sees them.

use std::ops::Deref;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use rayon::prelude::*;

use crate::gil::run_detached;

/// A read-only byte input that can cross into detached (GIL-free) code.
pub enum Input {
    Borrowed(PyBackedBytes),
    Copied(Vec<u8>),
}

impl Deref for Input {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Borrowed(b) => b,
            Self::Copied(v) => v,
        }
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Input {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(b) = obj.extract::<PyBackedBytes>() {
            return Ok(Self::Borrowed(b));
        }
        match PyBuffer::<u8>::get(&obj) {
            Ok(buf) => Ok(Self::Copied(buf.to_vec(obj.py())?)),
            Err(_) => Err(PyTypeError::new_err(format!(
                "expected bytes, bytearray or memoryview, got {}",
                obj.get_type().name()?
            ))),
        }
    }
}

/// A buffer pointer handed to worker threads for zeroing.
struct RawBuf(*mut u8, usize);

// SAFETY: a RawBuf points into a bytes object that stays alive and unshared while workers zero
// it; each buffer goes to exactly one worker.
unsafe impl Send for RawBuf {}
// SAFETY: as above; workers only write through their own RawBuf.
unsafe impl Sync for RawBuf {}

/// Fresh `bytes` objects that only Rust has seen so far.
pub struct FreshBytes<'py> {
    objs: Vec<Bound<'py, PyBytes>>,
    ptrs: Vec<(*mut u8, usize)>,
}

impl<'py> FreshBytes<'py> {
    /// Allocates one uninitialised `bytes` object per length.
    pub fn alloc(py: Python<'py>, lens: impl IntoIterator<Item = usize>) -> PyResult<Self> {
        let lens = lens.into_iter();
        let mut objs = Vec::with_capacity(lens.size_hint().0);
        let mut ptrs = Vec::with_capacity(lens.size_hint().0);
        for len in lens {
            let size = ffi::Py_ssize_t::try_from(len)
                .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("output too large"))?;
            // SAFETY: a null source asks CPython for an uninitialised bytes object of `size`
            // bytes; we own the returned reference (or get NULL with an exception set, which
            // `assume_owned_or_err` turns into an error). PyBytes_AsString returns the object's
            // inline buffer, valid for `len` bytes while the object lives.
            let (obj, ptr) = unsafe {
                let raw = ffi::PyBytes_FromStringAndSize(std::ptr::null(), size);
                let obj = Bound::from_owned_ptr_or_err(py, raw)?.cast_into_unchecked::<PyBytes>();
                (obj, ffi::PyBytes_AsString(raw).cast::<u8>())
            };
            objs.push(obj);
            ptrs.push((ptr, len));
        }
        Ok(Self { objs, ptrs })
    }

    /// Writable views of every buffer, tied to a unique borrow of `self`.
    ///
    /// The buffers are zeroed first (so no slice covers uninitialised memory), in parallel
    /// and with the GIL released for large outputs: first touches of fresh pages (page faults)
    /// are much of the cost of large outputs, so they are spread across cores.
    pub fn buffers(&mut self, py: Python<'_>) -> Vec<&mut [u8]> {
        let total: usize = self.ptrs.iter().map(|&(_, len)| len).sum();
        let ptrs: Vec<RawBuf> = self
            .ptrs
            .iter()
            .map(|&(ptr, len)| RawBuf(ptr, len))
            .collect();
        run_detached(py, total, || {
            ptrs.par_iter().with_min_len(64).for_each(|buf| {
                // SAFETY: each RawBuf is the `len`-byte buffer of a distinct, live bytes object
                // (see `alloc`) that nothing else accesses until `into_vec`.
                unsafe { std::ptr::write_bytes(buf.0, 0, buf.1) }
            });
        });
        self.ptrs
            .iter()
            .map(|&(ptr, len)| {
                // SAFETY: each pointer is the buffer of a distinct bytes object created in
                // `alloc` and held alive by `self.objs`; no Python code has a reference to those
                // objects yet, and `&mut self` makes these slices the only access until they are
                // dropped. The buffer was zeroed above.
                unsafe { std::slice::from_raw_parts_mut(ptr, len) }
            })
            .collect()
    }

    /// The objects, once every buffer was filled.
    pub fn into_vec(self) -> Vec<Bound<'py, PyBytes>> {
        self.objs
    }
}
