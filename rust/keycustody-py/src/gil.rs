//! When to release the GIL: only for work large enough to pay for it (as pyca does).

use pyo3::marker::Ungil;
use pyo3::prelude::*;

/// Inputs smaller than this run attached: detaching costs more than the work.
pub const DETACH_THRESHOLD: usize = 2048;

/// Runs `f` with the GIL released when `bytes` of work justify it. `f` must touch no Python object.
pub fn run_detached<T, F>(py: Python<'_>, bytes: usize, f: F) -> T
where
    F: Ungil + FnOnce() -> T,
    T: Ungil,
{
    if bytes >= DETACH_THRESHOLD {
        py.detach(f)
    } else {
        f()
    }
}
