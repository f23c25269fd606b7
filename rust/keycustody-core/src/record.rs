//! Record format v1: a fixed 176-byte header followed by `ciphertext || tag`.
//!
//! ```text
//! off len field
//!   0   2 magic "KC"
//!   2   1 format version (1)
//!   3   1 suite id (1: AES-256-GCM, per-record DEK, HKDF-SHA-256 key commitment)
//!   4  16 scope id
//!  20   4 scope key version (big endian)
//!  24  16 record id (random)
//!  40  32 name index: HMAC-SHA-256 of the name under the scope's index key
//!  72  60 wrapped DEK: nonce (12) || AES-256-GCM_scopekey(DEK) (32) || tag (16)
//! 132  12 data nonce
//! 144  32 key commitment
//! ```
//!
//! invariant(dek-bound): the DEK is wrapped with AAD = header[0..72], so a wrapped DEK opens only
//! for this scope, key version, record id and name.
//! invariant(rewrap-stable): the payload AAD is header[0..20] || header[24..72]: everything but
//! the key version and the wrapped DEK, so a rewrap replaces those 64 bytes and leaves the
//! ciphertext untouched, while the payload stays bound to its scope, record id and name.
//! invariant(committed): opening checks the commitment (constant time) before the tag, so a
//! ciphertext opens under exactly one DEK.
//! The record's name is encrypted under the same data key with the data nonce's first bit
//! flipped (never equal to the data nonce; the key is used for these two messages only).

use aws_lc_rs::aead::LessSafeKey;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::aead::{open_into, seal_into, GCM_NONCE_LEN, KEY_LEN, TAG_LEN};
use crate::error::{invalid, CoreError, Result};
use crate::kdf::derive_record_keys;
use crate::key::SecretKey;
use crate::random::fill_random;

/// Header magic.
pub const MAGIC: &[u8; 2] = b"KC";
/// Record format version written by this library.
pub const FORMAT_VERSION: u8 = 1;
/// Suite 1: AES-256-GCM with a per-record DEK and HKDF-SHA-256 key commitment.
pub const SUITE_AES256GCM_HKDF_SHA256: u8 = 1;
/// Suite 2: suite 1's keys, payload as a segmented stream (see [`crate::stream`]).
pub const SUITE_SEGMENTED: u8 = 2;
/// Suites a whole-payload record may carry.
const WHOLE: &[u8] = &[SUITE_AES256GCM_HKDF_SHA256];
/// Every suite: names and DEK wraps are the same in both.
const ANY_SUITE: &[u8] = &[SUITE_AES256GCM_HKDF_SHA256, SUITE_SEGMENTED];
/// Length of a scope id.
pub const SCOPE_ID_LEN: usize = 16;
/// Length of a record id.
pub const RECORD_ID_LEN: usize = 16;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 176;

pub(crate) const SCOPE_ID: std::ops::Range<usize> = 4..20;
pub(crate) const KEY_VERSION: std::ops::Range<usize> = 20..24;
pub(crate) const RECORD_ID: std::ops::Range<usize> = 24..40;
const NAME_INDEX: std::ops::Range<usize> = 40..72;
const DEK_AAD_END: usize = 72;
const WRAP_NONCE: std::ops::Range<usize> = 72..84;
pub(crate) const WRAPPED_DEK: std::ops::Range<usize> = 84..132;
pub(crate) const DATA_NONCE: std::ops::Range<usize> = 132..144;
const COMMITMENT: std::ops::Range<usize> = 144..176;
pub(crate) const DATA_AAD_LEN: usize = 20 + (DEK_AAD_END - RECORD_ID.start);

/// Fresh random bytes one record consumes: record id, DEK, wrap nonce, data nonce.
pub(crate) const RANDOM_PER_RECORD: usize = RECORD_ID_LEN + KEY_LEN + 2 * GCM_NONCE_LEN;
/// Work per parallel task, so that small records are batched and large ones spread.
const TASK_BYTES: usize = 256 * 1024;
const MAX_TASK_RECORDS: usize = 256;
/// Below this many payload bytes a batch runs on the calling thread.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// Total stored length of a record with a `plaintext_len`-byte payload.
pub fn sealed_len(plaintext_len: usize) -> usize {
    HEADER_LEN + plaintext_len + TAG_LEN
}

/// The scope key version named by a header (not authenticated by itself).
pub fn header_key_version(header: &[u8]) -> Result<u32> {
    if header.len() < HEADER_LEN || &header[..2] != MAGIC {
        return Err(CoreError::Integrity);
    }
    Ok(u32::from_be_bytes(
        header[KEY_VERSION].try_into().expect("4 bytes"),
    ))
}

/// The record id stored in a header.
pub fn header_record_id(header: &[u8]) -> Result<[u8; RECORD_ID_LEN]> {
    if header.len() < HEADER_LEN || &header[..2] != MAGIC {
        return Err(CoreError::Integrity);
    }
    Ok(header[RECORD_ID].try_into().expect("16 bytes"))
}

/// The suite of a stored header whose row columns match it: the record id, name index and scope
/// key version (0 for none) a database row keeps beside its header are unauthenticated copies
/// that queries select by, so they must equal the header's own.
pub fn check_columns(
    header: &[u8],
    record_id: &[u8],
    name_index: &[u8],
    key_version: u32,
) -> Result<u8> {
    if header.len() != HEADER_LEN
        || header[RECORD_ID] != *record_id
        || header[NAME_INDEX] != *name_index
        || header_key_version(header)? != key_version
    {
        return Err(CoreError::Integrity);
    }
    Ok(header[3])
}

/// The scope key a record is sealed under.
pub struct SealKey<'a> {
    /// Active scope key.
    pub key: &'a SecretKey,
    /// Scope id written into the header.
    pub scope_id: [u8; SCOPE_ID_LEN],
    /// Version of `key`.
    pub version: u32,
}

/// The scope keys a batch may be opened with, by version.
pub struct OpenKeys<'a> {
    /// Scope id every header must carry.
    pub scope_id: [u8; SCOPE_ID_LEN],
    /// `(version, key)` pairs; a scope has few versions, so a linear search is fastest.
    pub keys: &'a [(u32, &'a SecretKey)],
}

impl OpenKeys<'_> {
    pub(crate) fn for_header(&self, header: &[u8], suites: &[u8]) -> Result<&SecretKey> {
        check_header(header, &self.scope_id, suites)?;
        let version = header_key_version(header)?;
        self.keys
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, k)| *k)
            .ok_or(CoreError::MissingKeyVersion(version))
    }
}

/// One record to seal: its name and payload in, its header, body and (optionally) encrypted
/// name out. `body` is `data.len() + 16` bytes, `name_ct` is `name.len() + 16` bytes.
pub struct SealJob<'a> {
    /// Record name (UTF-8 bytes).
    pub name: &'a [u8],
    /// Payload.
    pub data: &'a [u8],
    /// Output: the 176-byte header.
    pub header: &'a mut [u8],
    /// Output: `ciphertext || tag`.
    pub body: &'a mut [u8],
    /// Output: the encrypted name, when the caller stores names.
    pub name_ct: Option<&'a mut [u8]>,
}

/// One record to open. With `name`, the header's name index must match it.
pub struct OpenJob<'a> {
    /// The name the caller asked for, checked against the blind index.
    pub name: Option<&'a [u8]>,
    /// The 176-byte header.
    pub header: &'a [u8],
    /// `ciphertext || tag` (the payload, or the encrypted name for [`open_name`]).
    pub body: &'a [u8],
    /// Output: the plaintext, `body.len() - 16` bytes.
    pub out: &'a mut [u8],
}

pub(crate) fn check_header(
    header: &[u8],
    scope_id: &[u8; SCOPE_ID_LEN],
    suites: &[u8],
) -> Result<()> {
    if header.len() != HEADER_LEN
        || &header[..2] != MAGIC
        || header[2] != FORMAT_VERSION
        || !suites.contains(&header[3])
        || verify_slices_are_equal(&header[SCOPE_ID], scope_id).is_err()
    {
        return Err(CoreError::Integrity);
    }
    Ok(())
}

pub(crate) fn data_aad(header: &[u8]) -> [u8; DATA_AAD_LEN] {
    let mut aad = [0u8; DATA_AAD_LEN];
    aad[..20].copy_from_slice(&header[..20]);
    aad[20..].copy_from_slice(&header[RECORD_ID.start..DEK_AAD_END]);
    aad
}

pub(crate) fn name_nonce(header: &[u8]) -> [u8; GCM_NONCE_LEN] {
    let mut nonce: [u8; GCM_NONCE_LEN] = header[DATA_NONCE].try_into().expect("12 bytes");
    nonce[0] ^= 0x80;
    nonce
}

/// Writes a complete header for a new record (fresh record id, DEK wrapped under the scope
/// key, data nonce, commitment) and returns the record's data key. `random` holds
/// [`RANDOM_PER_RECORD`] fresh bytes.
pub(crate) fn write_header(
    key: &SealKey<'_>,
    name: &[u8],
    suite: u8,
    random: &[u8],
    h: &mut [u8],
) -> Result<LessSafeKey> {
    let wrap = DekWrap {
        index: key.key,
        key: key.key.aead(),
        aad_extra: &[],
    };
    write_header_with(&wrap, key.scope_id, key.version, name, suite, random, h)
}

/// What wraps a record's DEK: the scope key (suites 1, 2) or a source record's derivation key
/// (suite 3), with extra associated data appended to header[0..72] for the latter.
pub(crate) struct DekWrap<'a> {
    /// Scope key whose name-index half indexes the record's name.
    pub index: &'a SecretKey,
    /// The AES-256-GCM key that wraps the DEK.
    pub key: &'a LessSafeKey,
    /// Appended to header[0..72] as the wrap's associated data (the source record id).
    pub aad_extra: &'a [u8],
}

/// Associated data of a DEK wrap: header[0..72], then the wrap's extra binding (at most a
/// record id), on the stack: it is built for every record.
pub(crate) struct DekAad {
    buf: [u8; DEK_AAD_END + RECORD_ID_LEN],
    len: usize,
}

impl std::ops::Deref for DekAad {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub(crate) fn dek_aad(header: &[u8], extra: &[u8]) -> Result<DekAad> {
    let len = DEK_AAD_END + extra.len();
    let mut buf = [0u8; DEK_AAD_END + RECORD_ID_LEN];
    buf.get_mut(DEK_AAD_END..len)
        .ok_or_else(|| invalid("associated data too long"))?
        .copy_from_slice(extra);
    buf[..DEK_AAD_END].copy_from_slice(&header[..DEK_AAD_END]);
    Ok(DekAad { buf, len })
}

pub(crate) fn write_header_with(
    wrap: &DekWrap<'_>,
    scope_id: [u8; SCOPE_ID_LEN],
    version: u32,
    name: &[u8],
    suite: u8,
    random: &[u8],
    h: &mut [u8],
) -> Result<LessSafeKey> {
    let (record_id, rest) = random.split_at(RECORD_ID_LEN);
    let (dek, nonces) = rest.split_at(KEY_LEN);
    let (wrap_nonce, data_nonce) = nonces.split_at(GCM_NONCE_LEN);
    if h.len() != HEADER_LEN {
        return Err(invalid("header buffer has the wrong length"));
    }
    h[..2].copy_from_slice(MAGIC);
    h[2] = FORMAT_VERSION;
    h[3] = suite;
    h[SCOPE_ID].copy_from_slice(&scope_id);
    h[KEY_VERSION].copy_from_slice(&version.to_be_bytes());
    h[RECORD_ID].copy_from_slice(record_id);
    h[NAME_INDEX].copy_from_slice(&wrap.index.name_index(name)?);
    h[WRAP_NONCE].copy_from_slice(wrap_nonce);
    let aad = dek_aad(h, wrap.aad_extra)?;
    seal_into(wrap.key, wrap_nonce, &aad, dek, &mut h[WRAPPED_DEK])?;
    h[DATA_NONCE].copy_from_slice(data_nonce);
    let (data_key, commitment) = derive_record_keys(dek, record_id)?;
    h[COMMITMENT].copy_from_slice(&commitment);
    Ok(data_key)
}

/// Decrypts a record's name under its data key.
pub(crate) fn open_name_with(
    data_key: &LessSafeKey,
    header: &[u8],
    name_ct: &[u8],
    out: &mut [u8],
) -> Result<()> {
    open_into(
        data_key,
        &name_nonce(header),
        &header[RECORD_ID],
        name_ct,
        out,
    )
}

/// Encrypts a record's name under its data key (see the module docs for the nonce).
pub(crate) fn seal_name(
    data_key: &LessSafeKey,
    header: &[u8],
    name: &[u8],
    out: &mut [u8],
) -> Result<()> {
    seal_into(data_key, &name_nonce(header), &header[RECORD_ID], name, out)
}

fn seal_one(key: &SealKey<'_>, job: &mut SealJob<'_>, random: &[u8]) -> Result<()> {
    let data_key = write_header(
        key,
        job.name,
        SUITE_AES256GCM_HKDF_SHA256,
        random,
        job.header,
    )?;
    let h = &*job.header;
    seal_into(&data_key, &h[DATA_NONCE], &data_aad(h), job.data, job.body)?;
    if let Some(name_ct) = job.name_ct.as_deref_mut() {
        seal_name(&data_key, h, job.name, name_ct)?;
    }
    Ok(())
}

/// Unwraps the DEK and checks the key commitment; returns the data key.
pub(crate) fn open_data_key(key: &SecretKey, header: &[u8]) -> Result<LessSafeKey> {
    Ok(unwrap_dek(key.aead(), &[], header)?.1)
}

/// Unwraps a record's DEK and checks its key commitment; returns the DEK and the data key.
pub(crate) fn unwrap_dek(
    wrap: &LessSafeKey,
    aad_extra: &[u8],
    header: &[u8],
) -> Result<(Zeroizing<[u8; KEY_LEN]>, LessSafeKey)> {
    let mut dek = Zeroizing::new([0u8; KEY_LEN]);
    let aad = dek_aad(header, aad_extra)?;
    open_into(
        wrap,
        &header[WRAP_NONCE],
        &aad,
        &header[WRAPPED_DEK],
        &mut dek[..],
    )?;
    let (data_key, commitment) = derive_record_keys(&dek[..], &header[RECORD_ID])?;
    verify_slices_are_equal(&commitment, &header[COMMITMENT]).map_err(|_| CoreError::Integrity)?;
    Ok((dek, data_key))
}

pub(crate) fn check_name(key: &SecretKey, header: &[u8], name: &[u8]) -> Result<()> {
    verify_slices_are_equal(&key.name_index(name)?, &header[NAME_INDEX])
        .map_err(|_| CoreError::Integrity)
}

fn open_one(keys: &OpenKeys<'_>, job: &mut OpenJob<'_>) -> Result<()> {
    let key = keys.for_header(job.header, WHOLE)?;
    if let Some(name) = job.name {
        check_name(key, job.header, name)?;
    }
    let data_key = open_data_key(key, job.header)?;
    open_into(
        &data_key,
        &job.header[DATA_NONCE],
        &data_aad(job.header),
        job.body,
        job.out,
    )
}

/// Opens an encrypted name (as written by a [`SealJob`] with `name_ct`) and checks that it
/// matches the header's blind index.
pub fn open_name(keys: &OpenKeys<'_>, job: &mut OpenJob<'_>) -> Result<()> {
    let key = keys.for_header(job.header, ANY_SUITE)?;
    let data_key = open_data_key(key, job.header)?;
    open_into(
        &data_key,
        &name_nonce(job.header),
        &job.header[RECORD_ID],
        job.body,
        job.out,
    )?;
    check_name(key, job.header, job.out).inspect_err(|_| job.out.fill(0))
}

/// Moves a record's DEK from one scope key version to another without touching its payload:
/// unwraps under `from`, checks the commitment, rewraps under `to` into `out` (176 bytes).
pub fn rewrap_header(
    from: &OpenKeys<'_>,
    to: &SealKey<'_>,
    header: &[u8],
    out: &mut [u8],
) -> Result<()> {
    let key = from.for_header(header, ANY_SUITE)?;
    if out.len() != HEADER_LEN || to.scope_id != from.scope_id {
        return Err(invalid(
            "rewrap stays within one scope and writes a 176-byte header",
        ));
    }
    // A key with another name-index half is not a version of this scope: records rewrapped
    // to it could never be found or opened again.
    if !key.same_index(to.key) {
        return Err(invalid("the new key is not a version of this scope's key"));
    }
    let (dek, _) = unwrap_dek(key.aead(), &[], header)?;
    out.copy_from_slice(header);
    out[KEY_VERSION].copy_from_slice(&to.version.to_be_bytes());
    fill_random(&mut out[WRAP_NONCE])?;
    let aad = dek_aad(out, &[])?;
    let nonce: [u8; GCM_NONCE_LEN] = out[WRAP_NONCE].try_into().expect("12 bytes");
    seal_into(to.key.aead(), &nonce, &aad, &dek[..], &mut out[WRAPPED_DEK])
}

fn task_len(total_bytes: usize, records: usize) -> usize {
    let avg = total_bytes / records.max(1) + 1;
    (TASK_BYTES / avg).clamp(1, MAX_TASK_RECORDS)
}

/// Runs `f` on consecutive chunks of `items`, each with the position of its first item: on the
/// calling thread when the batch carries less than 256 KiB of payload (`total_bytes`), else as
/// parallel tasks of about 256 KiB (at most 256 records) each, so that small records share a
/// task and large ones spread over the cores. Stops at the first error.
pub fn run_tasks<T, E, F>(items: &mut [T], total_bytes: usize, f: F) -> std::result::Result<(), E>
where
    T: Send,
    E: Send,
    F: Fn(usize, &mut [T]) -> std::result::Result<(), E> + Sync,
{
    if total_bytes < PARALLEL_MIN_BYTES || items.len() < 2 {
        return items
            .chunks_mut(MAX_TASK_RECORDS)
            .enumerate()
            .try_for_each(|(i, chunk)| f(i * MAX_TASK_RECORDS, chunk));
    }
    let per_task = task_len(total_bytes, items.len());
    items
        .par_chunks_mut(per_task)
        .enumerate()
        .try_for_each(|(i, chunk)| f(i * per_task, chunk))
}

/// Seals records on the calling thread (one task of [`seal_batch`]): one CSPRNG call for all of
/// their record ids, DEKs and nonces. On error the outputs are partly written.
pub fn seal_chunk(key: &SealKey<'_>, jobs: &mut [SealJob<'_>]) -> Result<()> {
    // invariant(fresh-dek): one getrandom call yields every record's id, DEK and nonces.
    let mut random = Zeroizing::new(vec![0u8; RANDOM_PER_RECORD * jobs.len()]);
    fill_random(&mut random)?;
    for (job, rnd) in jobs.iter_mut().zip(random.chunks_exact(RANDOM_PER_RECORD)) {
        seal_one(key, job, rnd)?;
    }
    Ok(())
}

/// Seals a batch of records, in parallel across cores when it is large enough.
/// On error the outputs are partly written and must be discarded.
pub fn seal_batch(key: &SealKey<'_>, jobs: &mut [SealJob<'_>]) -> Result<()> {
    let total: usize = jobs.iter().map(|j| j.data.len()).sum();
    run_tasks(jobs, total, |_, chunk| seal_chunk(key, chunk))
}

/// Opens records on the calling thread (one task of [`open_batch`]); stops at the first
/// failure, with its position in `jobs`. Outputs are left as written: the caller wipes them.
pub fn open_chunk(
    keys: &OpenKeys<'_>,
    jobs: &mut [OpenJob<'_>],
) -> std::result::Result<(), (usize, CoreError)> {
    jobs.iter_mut()
        .enumerate()
        .try_for_each(|(i, job)| open_one(keys, job).map_err(|e| (i, e)))
}

/// Opens encrypted names on the calling thread (see [`open_name`], [`open_chunk`]).
pub fn open_name_chunk(
    keys: &OpenKeys<'_>,
    jobs: &mut [OpenJob<'_>],
) -> std::result::Result<(), (usize, CoreError)> {
    jobs.iter_mut()
        .enumerate()
        .try_for_each(|(i, job)| open_name(keys, job).map_err(|e| (i, e)))
}

/// Opens a batch of records; fails on the first record that does not authenticate.
/// Returns the index of the failing record with the error.
pub fn open_batch(
    keys: &OpenKeys<'_>,
    jobs: &mut [OpenJob<'_>],
) -> std::result::Result<(), (usize, CoreError)> {
    run_indexed(jobs, |chunk| open_chunk(keys, chunk))
}

/// Opens a batch of encrypted names (see [`open_name`]).
pub fn open_name_batch(
    keys: &OpenKeys<'_>,
    jobs: &mut [OpenJob<'_>],
) -> std::result::Result<(), (usize, CoreError)> {
    run_indexed(jobs, |chunk| open_name_chunk(keys, chunk))
}

fn run_indexed<F>(jobs: &mut [OpenJob<'_>], f: F) -> std::result::Result<(), (usize, CoreError)>
where
    F: Fn(&mut [OpenJob<'_>]) -> std::result::Result<(), (usize, CoreError)> + Sync,
{
    let total: usize = jobs.iter().map(|j| j.body.len()).sum();
    let result = run_tasks(jobs, total, |first, chunk| {
        f(chunk).map_err(|(i, e)| (first + i, e))
    });
    if result.is_err() {
        // The batch is discarded: leave no plaintext of the records that did open behind.
        jobs.iter_mut().for_each(|j| j.out.fill(0));
    }
    result
}

/// Seals one record into a self-contained blob: `header || ciphertext || tag`.
pub fn seal_blob(key: &SealKey<'_>, name: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let mut blob = vec![0u8; sealed_len(data.len())];
    let (header, body) = blob.split_at_mut(HEADER_LEN);
    seal_batch(
        key,
        &mut [SealJob {
            name,
            data,
            header,
            body,
            name_ct: None,
        }],
    )?;
    Ok(blob)
}

/// Opens a blob made by [`seal_blob`] under the given name.
pub fn open_blob(keys: &OpenKeys<'_>, name: &[u8], blob: &[u8]) -> Result<Vec<u8>> {
    if blob.len() < HEADER_LEN + TAG_LEN {
        return Err(CoreError::Integrity);
    }
    let (header, body) = blob.split_at(HEADER_LEN);
    let mut out = vec![0u8; body.len() - TAG_LEN];
    open_batch(
        keys,
        &mut [OpenJob {
            name: Some(name),
            header,
            body,
            out: &mut out,
        }],
    )
    .map_err(|(_, e)| e)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (SecretKey, [u8; 16]) {
        (SecretKey::generate(64).unwrap(), [9u8; 16])
    }

    #[test]
    fn round_trip_and_every_bit_flip_fails() {
        let (key, scope_id) = setup();
        let seal = SealKey {
            key: &key,
            scope_id,
            version: 1,
        };
        let blob = seal_blob(&seal, b"a.py", b"hello world, this is a record").unwrap();
        let pairs = [(1u32, &key)];
        let keys = OpenKeys {
            scope_id,
            keys: &pairs,
        };
        assert_eq!(
            open_blob(&keys, b"a.py", &blob).unwrap(),
            b"hello world, this is a record"
        );
        assert!(open_blob(&keys, b"b.py", &blob).is_err());
        for i in 0..blob.len() * 8 {
            let mut bad = blob.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                open_blob(&keys, b"a.py", &bad).is_err(),
                "flip of bit {i} accepted"
            );
        }
        for n in 0..blob.len() {
            assert!(open_blob(&keys, b"a.py", &blob[..n]).is_err());
        }
    }

    #[test]
    fn check_columns_accepts_only_the_headers_own_columns() {
        let (key, scope_id) = setup();
        let seal = SealKey {
            key: &key,
            scope_id,
            version: 7,
        };
        let blob = seal_blob(&seal, b"a.py", b"x").unwrap();
        let header = &blob[..HEADER_LEN];
        let (id, index) = (&header[RECORD_ID], &header[NAME_INDEX]);
        assert_eq!(
            check_columns(header, id, index, 7),
            Ok(SUITE_AES256GCM_HKDF_SHA256)
        );
        let mut other_id = id.to_vec();
        other_id[0] ^= 1;
        let mut other_index = index.to_vec();
        other_index[31] ^= 1;
        for (h, i, n, v) in [
            (header, &other_id[..], index, 7),
            (header, id, &other_index[..], 7),
            (header, id, index, 6),
            (header, id, index, 0),
            (header, &id[..15], index, 7),
            (&blob[..HEADER_LEN - 1], id, index, 7),
            (&blob[..HEADER_LEN + 1], id, index, 7),
        ] {
            assert_eq!(check_columns(h, i, n, v), Err(CoreError::Integrity));
        }
    }

    #[test]
    fn run_tasks_covers_every_item_once_with_its_position() {
        for (count, total) in [(5usize, 100usize), (1000, 1 << 20), (300, 64 << 20)] {
            let mut items: Vec<(usize, u32)> = (0..count).map(|i| (i, 0)).collect();
            run_tasks(&mut items, total, |first, chunk| {
                for (k, item) in chunk.iter_mut().enumerate() {
                    assert_eq!(item.0, first + k);
                    item.1 += 1;
                }
                Ok::<(), ()>(())
            })
            .unwrap();
            assert!(items.iter().all(|i| i.1 == 1));
            let failed = run_tasks(&mut items, total, |first, chunk| {
                match chunk.iter().position(|i| i.0 == count - 2) {
                    Some(k) => Err(first + k),
                    None => Ok(()),
                }
            });
            assert_eq!(failed, Err(count - 2));
        }
    }

    #[test]
    fn rewrap_keeps_the_payload() {
        let (k1, scope_id) = setup();
        let k2 = k1.rotated().unwrap();
        let blob = seal_blob(
            &SealKey {
                key: &k1,
                scope_id,
                version: 1,
            },
            b"n",
            b"payload",
        )
        .unwrap();
        let old = [(1u32, &k1)];
        let mut header = vec![0u8; HEADER_LEN];
        rewrap_header(
            &OpenKeys {
                scope_id,
                keys: &old,
            },
            &SealKey {
                key: &k2,
                scope_id,
                version: 2,
            },
            &blob[..HEADER_LEN],
            &mut header,
        )
        .unwrap();
        let mut moved = header.clone();
        moved.extend_from_slice(&blob[HEADER_LEN..]);
        let new = [(2u32, &k2)];
        assert_eq!(
            open_blob(
                &OpenKeys {
                    scope_id,
                    keys: &new
                },
                b"n",
                &moved
            )
            .unwrap(),
            b"payload"
        );
        assert!(open_blob(
            &OpenKeys {
                scope_id,
                keys: &old
            },
            b"n",
            &moved
        )
        .is_err());
    }
}
