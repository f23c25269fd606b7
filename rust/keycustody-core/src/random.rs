//! Randomness straight from the operating system's CSPRNG (getrandom(2)).

use crate::error::{CoreError, Result};

/// Fills `buf` from the OS CSPRNG. Batches ask once for all their records' bytes.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| CoreError::Random)
}
