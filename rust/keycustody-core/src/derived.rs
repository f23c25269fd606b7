//! Derived records (suite 3): artifacts of a source record (embeddings, chunks, summaries)
//! whose DEKs are wrapped under a key derived from the source record's DEK.
//!
//! ```text
//! derivation key = HKDF-Expand-SHA-256(PRK = source DEK, LABEL || source record id, 32)
//! derived header = v1 header, suite 3, key version 0,
//!                  wrapped DEK = AES-256-GCM_derivation_key(DEK), AAD = header[0..72] || source id
//! ```
//!
//! invariant(derived-dies-with-source): the derivation key exists only while the source's
//! wrapped DEK does; deleting or shredding the source makes every derivative unreadable in the
//! same step, without touching them. Rotation and rewrap of the scope leave derivatives alone
//! (the source's DEK does not change when it is rewrapped).

use aws_lc_rs::aead::LessSafeKey;
use aws_lc_rs::hkdf::{KeyType, Prk, HKDF_SHA256};
use zeroize::Zeroizing;

use crate::aead::{gcm_key, open_into, seal_into, KEY_LEN};
use crate::error::{invalid, CoreError, Result};
use crate::key::SecretKey;
use crate::random::fill_random;
use crate::record::{
    check_header, check_name, data_aad, unwrap_dek, write_header_with, DekWrap, OpenKeys,
    DATA_NONCE, RANDOM_PER_RECORD, RECORD_ID, SCOPE_ID_LEN, SUITE_AES256GCM_HKDF_SHA256,
    SUITE_SEGMENTED,
};

/// Suite 3: suite 1's payload encryption, DEK wrapped under the source record's derivation key.
pub const SUITE_DERIVED: u8 = 3;
const LABEL: &[u8] = b"keycustody v1 derivation key";

struct Len32;

impl KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// The key that wraps the DEKs of a source record's derivatives.
pub struct Source {
    key: LessSafeKey,
    record_id: [u8; 16],
    scope_id: [u8; SCOPE_ID_LEN],
}

impl Source {
    /// Opens the source record's header (its name checked when given) and derives its
    /// derivation key. The source must be a whole or streamed record, not a derivative.
    pub fn from_header<'k>(
        keys: &'k OpenKeys<'k>,
        name: Option<&[u8]>,
        header: &[u8],
    ) -> Result<(Self, &'k SecretKey)> {
        let scope_key = keys.for_header(header, &[SUITE_AES256GCM_HKDF_SHA256, SUITE_SEGMENTED])?;
        if let Some(name) = name {
            check_name(scope_key, header, name)?;
        }
        let (dek, _) = unwrap_dek(scope_key.aead(), &[], header)?;
        let record_id: [u8; 16] = header[RECORD_ID].try_into().expect("16 bytes");
        let mut okm = Zeroizing::new([0u8; KEY_LEN]);
        Prk::new_less_safe(HKDF_SHA256, &dek[..])
            .expand(&[LABEL, &record_id], Len32)
            .and_then(|o| o.fill(&mut okm[..]))
            .map_err(|_| invalid("key derivation failed"))?;
        Ok((
            Self {
                key: gcm_key(&okm[..])?,
                record_id,
                scope_id: keys.scope_id,
            },
            scope_key,
        ))
    }

    /// Seals one derived record: writes its header and body (and encrypted name).
    pub fn seal(
        &self,
        index: &SecretKey,
        name: &[u8],
        data: &[u8],
        header: &mut [u8],
        body: &mut [u8],
        name_ct: &mut [u8],
    ) -> Result<()> {
        let mut random = Zeroizing::new([0u8; RANDOM_PER_RECORD]);
        fill_random(&mut random[..])?;
        let wrap = DekWrap {
            index,
            key: &self.key,
            aad_extra: &self.record_id,
        };
        let data_key = write_header_with(
            &wrap,
            self.scope_id,
            0,
            name,
            SUITE_DERIVED,
            &random[..],
            header,
        )?;
        seal_into(
            &data_key,
            &header[DATA_NONCE],
            &data_aad(header),
            data,
            body,
        )?;
        crate::record::seal_name(&data_key, header, name, name_ct)
    }

    /// The data key of one of this source's derivatives (checks scope, suite and name).
    fn data_key(
        &self,
        index: &SecretKey,
        name: Option<&[u8]>,
        header: &[u8],
    ) -> Result<LessSafeKey> {
        check_header(header, &self.scope_id, &[SUITE_DERIVED])?;
        if header[20..24] != [0, 0, 0, 0] {
            return Err(CoreError::Integrity);
        }
        if let Some(name) = name {
            check_name(index, header, name)?;
        }
        Ok(unwrap_dek(&self.key, &self.record_id, header)?.1)
    }

    /// Opens a derived record's payload into `out`.
    pub fn open_record(
        &self,
        index: &SecretKey,
        name: &[u8],
        header: &[u8],
        body: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let data_key = self.data_key(index, Some(name), header)?;
        open_into(&data_key, &header[DATA_NONCE], &data_aad(header), body, out)
    }

    /// Opens a derived record's encrypted name into `out`, checking it against the index.
    pub fn open_name(
        &self,
        index: &SecretKey,
        header: &[u8],
        name_ct: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let data_key = self.data_key(index, None, header)?;
        crate::record::open_name_with(&data_key, header, name_ct, out)?;
        check_name(index, header, out).inspect_err(|_| out.fill(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aead::TAG_LEN;
    use crate::record::{seal_blob, SealKey, HEADER_LEN};

    #[test]
    fn derived_records_open_only_through_their_source() {
        let key = SecretKey::generate(64).unwrap();
        let sid = [5u8; 16];
        let blob = seal_blob(
            &SealKey {
                key: &key,
                scope_id: sid,
                version: 1,
            },
            b"src.py",
            b"code",
        )
        .unwrap();
        let other = seal_blob(
            &SealKey {
                key: &key,
                scope_id: sid,
                version: 1,
            },
            b"b.py",
            b"x",
        )
        .unwrap();
        let pairs = [(1u32, &key)];
        let keys = OpenKeys {
            scope_id: sid,
            keys: &pairs,
        };
        let (source, index) =
            Source::from_header(&keys, Some(b"src.py"), &blob[..HEADER_LEN]).unwrap();
        let (mut h, mut b, mut n) = (
            vec![0u8; HEADER_LEN],
            vec![0u8; 3 + TAG_LEN],
            vec![0u8; 5 + TAG_LEN],
        );
        source
            .seal(index, b"emb.1", b"vec", &mut h, &mut b, &mut n)
            .unwrap();
        let mut out = vec![0u8; 3];
        source
            .open_record(index, b"emb.1", &h, &b, &mut out)
            .unwrap();
        assert_eq!(out, b"vec");
        let mut name = vec![0u8; 5];
        source.open_name(index, &h, &n, &mut name).unwrap();
        assert_eq!(name, b"emb.1");
        // Another source record cannot open it, nor can another name.
        let (wrong, _) = Source::from_header(&keys, None, &other[..HEADER_LEN]).unwrap();
        assert!(wrong
            .open_record(index, b"emb.1", &h, &b, &mut out)
            .is_err());
        assert!(source
            .open_record(index, b"emb.2", &h, &b, &mut out)
            .is_err());
        // A derivative is not a source.
        assert!(Source::from_header(&keys, None, &h).is_err());
    }
}
