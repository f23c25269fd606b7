//! The one error type of the core. Messages never carry key bytes, plaintext or AAD.

use std::fmt;

/// Everything that can go wrong in the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// Authentication failed: tampered, truncated or misplaced ciphertext, header or key.
    Integrity,
    /// The caller passed something the core does not accept (wrong length, unsupported nonce size…).
    InvalidInput(String),
    /// The record names a scope key version the caller did not supply.
    MissingKeyVersion(u32),
    /// The operating system's CSPRNG failed.
    Random,
}

/// Result alias used across the core.
pub type Result<T> = std::result::Result<T, CoreError>;

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Integrity => f.write_str("authentication failed"),
            Self::InvalidInput(why) => f.write_str(why),
            Self::MissingKeyVersion(v) => write!(f, "no key supplied for scope key version {v}"),
            Self::Random => f.write_str("the operating system's random number generator failed"),
        }
    }
}

impl std::error::Error for CoreError {}

pub(crate) fn invalid(why: impl Into<String>) -> CoreError {
    CoreError::InvalidInput(why.into())
}
