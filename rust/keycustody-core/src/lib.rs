//! keycustody-core: envelope encryption with a fresh data key per record.
//!
//! Pure Rust, no Python: AES-256-GCM and HKDF/HMAC from aws-lc-rs, keys that are zeroized on
//! drop, the v1 record format, and batch seal/open that spread across cores with rayon.
#![forbid(unsafe_code)]

pub mod aead;
pub mod derived;
pub mod error;
pub mod kdf;
pub mod key;
pub mod random;
pub mod record;
pub mod stream;

pub use error::{CoreError, Result};
pub use key::SecretKey;
