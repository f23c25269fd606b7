//! Byte inputs and outputs across the boundary.
//!
//! Inputs: `bytes` are borrowed without a copy; `bytearray` and other buffers (memoryview) are
//! copied first, so a concurrent mutation cannot change what was authenticated.
//! Outputs: `bytes` objects allocated uninitialised and written once, by Rust, possibly with the
//! GIL released and from several threads, before Python ever sees them. The task that writes a
//! buffer first maps its pages ([`prefault`]) and zeroes it ([`zeroed`]).

use std::mem::MaybeUninit;
use std::ops::Deref;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

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

/// An output buffer that nothing has written yet: its bytes may be uninitialised.
pub type Uninit<'a> = &'a mut [MaybeUninit<u8>];

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

    /// Every buffer, not yet written, tied to a unique borrow of `self`.
    ///
    /// Nothing is touched here: each buffer goes to the task that fills it, which maps its
    /// pages ([`prefault`]) and zeroes it ([`zeroed`]) just before writing, so that the fresh
    /// pages are faulted in by every core and the zeroed bytes are still in cache when the
    /// cipher overwrites them (a separate zeroing pass costs a write of every output to memory).
    pub fn uninit(&mut self) -> Vec<Uninit<'_>> {
        self.ptrs
            .iter()
            .map(|&(ptr, len)| {
                // SAFETY: each pointer is the `len`-byte buffer of a distinct bytes object
                // created in `alloc` and held alive by `self.objs`; no Python code has a
                // reference to those objects yet, and `&mut self` makes these slices the only
                // access until they are dropped. `MaybeUninit<u8>` admits uninitialised bytes.
                unsafe { std::slice::from_raw_parts_mut(ptr.cast::<MaybeUninit<u8>>(), len) }
            })
            .collect()
    }

    /// Zeroes every buffer: after a failed open, no plaintext of the batch is left behind.
    pub fn wipe(&mut self) {
        for buf in self.uninit() {
            buf.fill(MaybeUninit::new(0));
        }
    }

    /// The objects, once every buffer was filled.
    pub fn into_vec(self) -> Vec<Bound<'py, PyBytes>> {
        self.objs
    }
}

/// Zeroes a fresh buffer and returns it as initialised bytes, ready to be written.
pub fn zeroed(buf: Uninit<'_>) -> &mut [u8] {
    buf.fill(MaybeUninit::new(0));
    let len = buf.len();
    // SAFETY: every byte of `buf` was initialised just above; `u8` and `MaybeUninit<u8>` have
    // the same layout, and the returned slice takes over `buf`'s unique borrow.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), len) }
}

/// Ranges of fewer pages than this are left to fault in one by one.
const PREFAULT_MIN_PAGES: usize = 4;

/// Maps the absent pages of buffers about to be written, with one `madvise(MADV_POPULATE_WRITE)`
/// per run of absent pages (found with `mincore`), instead of one page fault per 4 KiB page.
///
/// Measured in this VM: 1.8 µs per page populated against 3.2-3.7 µs per page faulted by
/// writing (the trap costs as much as the kernel's work). Freed batches go back to the kernel
/// (glibc trims the heap and unmaps large chunks), so large outputs are usually absent. Only
/// pages that hold bytes of the given buffers are touched, and populating changes no byte
/// (an absent anonymous page reads as zeros), so this is the page faults the zeroing would
/// take anyway, in bulk. Present pages cost one `mincore` walk (a few ns per page). A no-op
/// where the call is missing (not Linux, or Linux before 5.14).
pub fn prefault<'a>(bufs: impl Iterator<Item = &'a [MaybeUninit<u8>]>) {
    #[cfg(target_os = "linux")]
    linux::prefault(bufs);
    #[cfg(not(target_os = "linux"))]
    drop(bufs);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::mem::MaybeUninit;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;

    use super::PREFAULT_MIN_PAGES;

    /// Cleared when the kernel refuses MADV_POPULATE_WRITE (before 5.14): stop asking.
    static SUPPORTED: AtomicBool = AtomicBool::new(true);

    fn page_size() -> usize {
        static PAGE: OnceLock<usize> = OnceLock::new();
        *PAGE.get_or_init(|| {
            // SAFETY: sysconf only reads a system constant.
            let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            usize::try_from(size)
                .ok()
                .filter(|s| s.is_power_of_two())
                .unwrap_or(4096)
        })
    }

    pub(super) fn prefault<'a>(bufs: impl Iterator<Item = &'a [MaybeUninit<u8>]>) {
        if !SUPPORTED.load(Ordering::Relaxed) {
            return;
        }
        let page = page_size();
        // Whole pages holding the buffers' bytes, merged where they touch or overlap.
        let mut ranges: Vec<(usize, usize)> = bufs
            .filter(|b| !b.is_empty())
            .map(|b| {
                let start = b.as_ptr() as usize;
                let end = start + b.len();
                (start & !(page - 1), (end + page - 1) & !(page - 1))
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let mut resident = Vec::new();
        for (start, end) in merged {
            let pages = (end - start) / page;
            if pages < PREFAULT_MIN_PAGES {
                continue;
            }
            resident.clear();
            resident.resize(pages, 0u8);
            // SAFETY: [start, end) is page-aligned and every page in it holds bytes of a live
            // buffer, so it is mapped; mincore writes one byte per page into `resident`, which
            // has exactly `pages` bytes.
            let rc = unsafe {
                libc::mincore(
                    start as *mut libc::c_void,
                    end - start,
                    resident.as_mut_ptr(),
                )
            };
            if rc != 0 {
                continue;
            }
            let mut i = 0;
            while i < pages {
                if resident[i] & 1 != 0 {
                    i += 1;
                    continue;
                }
                let run = resident[i..].iter().take_while(|r| *r & 1 == 0).count();
                let addr = start + i * page;
                // SAFETY: the range is page-aligned and inside [start, end) (mapped, see above);
                // each of its pages holds bytes of a buffer this task is about to overwrite.
                // MADV_POPULATE_WRITE maps them as that write would, and changes no byte (ours
                // or a neighbouring allocation's on a shared page).
                let rc = unsafe {
                    libc::madvise(
                        addr as *mut libc::c_void,
                        run * page,
                        libc::MADV_POPULATE_WRITE,
                    )
                };
                if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                    SUPPORTED.store(false, Ordering::Relaxed);
                    return;
                }
                i += run;
            }
        }
    }
}
