//! The one place where core errors become Python exceptions (defined in keycustody.errors).

use keycustody_core::CoreError;
use pyo3::prelude::*;

pyo3::import_exception!(keycustody.errors, IntegrityError);
pyo3::import_exception!(keycustody.errors, InvalidInputError);
pyo3::import_exception!(keycustody.errors, KeyCustodyError);

/// Newtype so that `?` converts core errors at the boundary.
pub struct Error(pub CoreError);

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Self(e)
    }
}

impl From<Error> for PyErr {
    fn from(Error(e): Error) -> PyErr {
        match e {
            CoreError::Integrity => IntegrityError::new_err(
                "authentication failed: the ciphertext, header, key or context was altered or does not belong here",
            ),
            CoreError::MissingKeyVersion(_) => IntegrityError::new_err(e.to_string()),
            CoreError::InvalidInput(why) => InvalidInputError::new_err(why),
            CoreError::Random => KeyCustodyError::new_err(e.to_string()),
        }
    }
}

/// Converts a failure at `index` of a batch, naming the position (never the record's name).
pub fn batch_error(py: Python<'_>, index: usize, e: CoreError) -> PyErr {
    let err: PyErr = Error(e).into();
    let message = format!("record {index} of the batch: {}", err.value(py));
    let new = match err.get_type(py).call1((message,)) {
        Ok(value) => PyErr::from_value(value),
        Err(other) => return other,
    };
    // Callers map the position back to their own record without parsing the message.
    if let Err(other) = new.value(py).setattr("index", index) {
        return other;
    }
    new
}

pub type PyResultCore<T> = Result<T, Error>;
