//! keycustody._core: the PyO3 extension. It only converts; the work is in keycustody-core.
#![deny(clippy::undocumented_unsafe_blocks)]

mod aead;
mod buffers;
mod derived;
mod errors;
mod gil;
mod items;
mod keys;
mod records;
mod stream;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    use super::aead::{aes256gcm_open, aes256gcm_seal};
    #[pymodule_export]
    use super::derived::{open_derived, seal_derived};
    #[pymodule_export]
    use super::items::{open_items, seal_items};
    #[pymodule_export]
    use super::keys::KeyHandle;
    #[pymodule_export]
    use super::records::{
        check_rows, header_key_versions, open_blobs, open_names, open_records, rewrap_headers,
        seal_blobs, seal_records,
    };
    #[pymodule_export]
    use super::stream::{begin_stream, open_stream, PyStreamOpener, PyStreamSealer};

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("HEADER_LEN", keycustody_core::record::HEADER_LEN)?;
        m.add("TAG_LEN", keycustody_core::aead::TAG_LEN)?;
        m.add("SCOPE_ID_LEN", keycustody_core::record::SCOPE_ID_LEN)?;
        m.add("SEGMENT_LEN", keycustody_core::stream::SEGMENT_LEN)?;
        Ok(())
    }
}
