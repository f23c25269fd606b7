//! Segmented streams (suite 2) for payloads too large to hold in memory at once.
//!
//! The record header is the v1 header with suite id 2; its data nonce field holds a 7-byte
//! random nonce prefix followed by 5 zero bytes. The payload is cut into segments of
//! [`SEGMENT_LEN`] plaintext bytes (the last one shorter, possibly empty), each sealed with
//! AES-256-GCM under the record's data key (derived and committed as in suite 1):
//!
//! ```text
//! nonce_i = prefix (7) || i (u32, big endian) || last (1 byte: 1 for the final segment, else 0)
//! aad     = the record's payload AAD (magic .. name index, without key version and wrapped DEK)
//! ```
//!
//! This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): reordering
//! changes the counter, truncation drops the segment flagged last, extension adds a segment after
//! it; all three fail authentication. Each segment opens on its own, so reads are random access.

use aws_lc_rs::aead::LessSafeKey;
use zeroize::Zeroizing;

use crate::aead::{open_into, seal_into, GCM_NONCE_LEN, TAG_LEN};
use crate::error::{invalid, CoreError, Result};
use crate::key::SecretKey;
use crate::random::fill_random;
use crate::record::{
    check_name, data_aad, open_data_key, seal_name, write_header, OpenKeys, SealKey, DATA_AAD_LEN,
    DATA_NONCE, RANDOM_PER_RECORD, SUITE_SEGMENTED,
};

/// Plaintext bytes per segment (1 MiB); every segment but the last is exactly this long.
pub const SEGMENT_LEN: usize = 1 << 20;
const PREFIX_LEN: usize = 7;

fn segment_nonce(prefix: &[u8; PREFIX_LEN], index: u32, last: bool) -> [u8; GCM_NONCE_LEN] {
    let mut nonce = [0u8; GCM_NONCE_LEN];
    nonce[..PREFIX_LEN].copy_from_slice(prefix);
    nonce[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&index.to_be_bytes());
    nonce[GCM_NONCE_LEN - 1] = u8::from(last);
    nonce
}

fn prefix_of(header: &[u8]) -> [u8; PREFIX_LEN] {
    header[DATA_NONCE][..PREFIX_LEN]
        .try_into()
        .expect("7 bytes")
}

/// Seals the segments of one stream, in order.
pub struct StreamSealer {
    data_key: LessSafeKey,
    prefix: [u8; PREFIX_LEN],
    aad: [u8; DATA_AAD_LEN],
    next: u32,
    finished: bool,
}

impl StreamSealer {
    /// Starts a stream: writes its 176-byte `header` and the encrypted `name` into `name_ct`
    /// (`name.len() + 16` bytes).
    pub fn begin(
        key: &SealKey<'_>,
        name: &[u8],
        header: &mut [u8],
        name_ct: &mut [u8],
    ) -> Result<Self> {
        let mut random = Zeroizing::new([0u8; RANDOM_PER_RECORD]);
        fill_random(&mut random[..])?;
        // The last 5 bytes of the data nonce field carry the counter and flag, not randomness.
        random[RANDOM_PER_RECORD - (GCM_NONCE_LEN - PREFIX_LEN)..].fill(0);
        let data_key = write_header(key, name, SUITE_SEGMENTED, &random[..], header)?;
        seal_name(&data_key, header, name, name_ct)?;
        Ok(Self {
            data_key,
            prefix: prefix_of(header),
            aad: data_aad(header),
            next: 0,
            finished: false,
        })
    }

    /// Seals the next segment into `out` (`data.len() + 16` bytes). Every segment but the
    /// last must be exactly [`SEGMENT_LEN`] bytes.
    pub fn seal_segment(&mut self, data: &[u8], last: bool, out: &mut [u8]) -> Result<()> {
        if self.finished {
            return Err(invalid("the stream is already finished"));
        }
        if data.len() > SEGMENT_LEN || (!last && data.len() != SEGMENT_LEN) {
            return Err(invalid(format!(
                "a segment holds exactly {SEGMENT_LEN} bytes (the last one at most that many)"
            )));
        }
        if !last && self.next == u32::MAX {
            return Err(invalid("a stream has at most 2^32 segments"));
        }
        let nonce = segment_nonce(&self.prefix, self.next, last);
        seal_into(&self.data_key, &nonce, &self.aad, data, out)?;
        self.next += 1;
        self.finished = last;
        Ok(())
    }

    /// Segments sealed so far.
    pub fn segments(&self) -> u32 {
        self.next
    }
}

/// Opens the segments of one stream, in any order.
pub struct StreamOpener {
    data_key: LessSafeKey,
    prefix: [u8; PREFIX_LEN],
    aad: [u8; DATA_AAD_LEN],
}

impl StreamOpener {
    /// Checks the header (scope, name, commitment) and unwraps the stream's data key.
    pub fn new(keys: &OpenKeys<'_>, name: Option<&[u8]>, header: &[u8]) -> Result<Self> {
        let key: &SecretKey = keys.for_header(header, &[SUITE_SEGMENTED])?;
        if header[DATA_NONCE][PREFIX_LEN..].iter().any(|b| *b != 0) {
            return Err(CoreError::Integrity);
        }
        if let Some(name) = name {
            check_name(key, header, name)?;
        }
        let data_key = open_data_key(key, header)?;
        Ok(Self {
            data_key,
            prefix: prefix_of(header),
            aad: data_aad(header),
        })
    }

    /// Opens segment `index` into `out` (`sealed.len() - 16` bytes); `last` must say whether
    /// it is the final segment, or authentication fails.
    pub fn open_segment(
        &self,
        index: u32,
        last: bool,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let len = sealed
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(CoreError::Integrity)?;
        if len > SEGMENT_LEN || (!last && len != SEGMENT_LEN) {
            return Err(CoreError::Integrity);
        }
        open_into(
            &self.data_key,
            &segment_nonce(&self.prefix, index, last),
            &self.aad,
            sealed,
            out,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::HEADER_LEN;

    fn sealed_stream(key: &SecretKey, sizes: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut header = vec![0u8; HEADER_LEN];
        let mut name_ct = vec![0u8; 1 + TAG_LEN];
        let seal = SealKey {
            key,
            scope_id: [3; 16],
            version: 1,
        };
        let mut sealer = StreamSealer::begin(&seal, b"n", &mut header, &mut name_ct).unwrap();
        let (mut plain, mut sealed) = (vec![], vec![]);
        for (i, size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|j| (i + j) as u8).collect();
            let mut out = vec![0u8; size + TAG_LEN];
            sealer
                .seal_segment(&data, i + 1 == sizes.len(), &mut out)
                .unwrap();
            plain.push(data);
            sealed.push(out);
        }
        (header, plain, sealed)
    }

    #[test]
    fn segments_open_in_place_only() {
        let key = SecretKey::generate(64).unwrap();
        let (header, plain, sealed) = sealed_stream(&key, &[SEGMENT_LEN, SEGMENT_LEN, 10]);
        let pairs = [(1u32, &key)];
        let opener = StreamOpener::new(
            &OpenKeys {
                scope_id: [3; 16],
                keys: &pairs,
            },
            Some(b"n"),
            &header,
        )
        .unwrap();
        for (i, (p, s)) in plain.iter().zip(&sealed).enumerate() {
            let mut out = vec![0u8; p.len()];
            let last = i == 2;
            opener.open_segment(i as u32, last, s, &mut out).unwrap();
            assert_eq!(&out, p);
            // Wrong position or wrong last flag: rejected (reordering, truncation).
            assert!(opener
                .open_segment(i as u32 + 1, last, s, &mut out)
                .is_err());
            assert!(opener.open_segment(i as u32, !last, s, &mut out).is_err());
        }
    }

    #[test]
    fn empty_stream_and_misuse() {
        let key = SecretKey::generate(64).unwrap();
        let (header, _, sealed) = sealed_stream(&key, &[0]);
        let pairs = [(1u32, &key)];
        let keys = OpenKeys {
            scope_id: [3; 16],
            keys: &pairs,
        };
        assert!(StreamOpener::new(&keys, Some(b"other"), &header).is_err());
        let opener = StreamOpener::new(&keys, Some(b"n"), &header).unwrap();
        opener.open_segment(0, true, &sealed[0], &mut []).unwrap();
        let mut h = vec![0u8; HEADER_LEN];
        let mut n = vec![0u8; 17];
        let mut sealer = StreamSealer::begin(
            &SealKey {
                key: &key,
                scope_id: [3; 16],
                version: 1,
            },
            b"n",
            &mut h,
            &mut n,
        )
        .unwrap();
        let mut out = vec![0u8; 10 + TAG_LEN];
        assert!(sealer.seal_segment(&[0; 10], false, &mut out).is_err());
        sealer.seal_segment(&[0; 10], true, &mut out).unwrap();
        assert!(sealer.seal_segment(&[0; 10], true, &mut out).is_err());
    }
}
