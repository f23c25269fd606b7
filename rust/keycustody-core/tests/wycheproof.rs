//! Wycheproof AES-GCM vectors through `keycustody_core::aead`.
//!
//! Every case of `tests/vectors/wycheproof/aes_gcm_test.json` (at the repository root) is
//! accounted for: AES-256 with a 96-bit IV and a 128-bit tag runs through seal and open; AES-256
//! with any other IV size must be rejected with `CoreError::InvalidInput`, as must AES-128/192
//! keys. Nothing is skipped silently: the per-category counts are asserted.

use std::path::PathBuf;

use keycustody_core::aead::{aes256gcm_open, aes256gcm_seal};
use keycustody_core::CoreError;
use serde_json::Value;

struct Case {
    tc_id: u64,
    key_size: u64,
    iv_size: u64,
    tag_size: u64,
    key: Vec<u8>,
    iv: Vec<u8>,
    aad: Vec<u8>,
    msg: Vec<u8>,
    ct: Vec<u8>,
    tag: Vec<u8>,
    valid: bool,
}

fn vector_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors/wycheproof/aes_gcm_test.json")
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.get(name)
        .unwrap_or_else(|| panic!("missing field {name}"))
}

fn num(v: &Value, name: &str) -> u64 {
    field(v, name)
        .as_u64()
        .unwrap_or_else(|| panic!("{name} is not an integer"))
}

fn hex_field(v: &Value, name: &str) -> Vec<u8> {
    let s = field(v, name)
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string"));
    hex::decode(s).unwrap_or_else(|e| panic!("{name} is not hex: {e}"))
}

fn load() -> (u64, Vec<Case>) {
    let path = vector_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let file: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(field(&file, "algorithm").as_str(), Some("AES-GCM"));
    let mut cases = Vec::new();
    for group in field(&file, "testGroups")
        .as_array()
        .expect("testGroups is an array")
    {
        assert_eq!(field(group, "type").as_str(), Some("AeadTest"));
        for test in field(group, "tests").as_array().expect("tests is an array") {
            let result = field(test, "result").as_str().expect("result is a string");
            assert!(
                result == "valid" || result == "invalid",
                "unexpected result {result}"
            );
            cases.push(Case {
                tc_id: num(test, "tcId"),
                key_size: num(group, "keySize"),
                iv_size: num(group, "ivSize"),
                tag_size: num(group, "tagSize"),
                key: hex_field(test, "key"),
                iv: hex_field(test, "iv"),
                aad: hex_field(test, "aad"),
                msg: hex_field(test, "msg"),
                ct: hex_field(test, "ct"),
                tag: hex_field(test, "tag"),
                valid: result == "valid",
            });
        }
    }
    (num(&file, "numberOfTests"), cases)
}

fn sealed(case: &Case) -> Vec<u8> {
    [case.ct.as_slice(), case.tag.as_slice()].concat()
}

fn is_invalid_input<T>(r: &keycustody_core::Result<T>) -> bool {
    matches!(r, Err(CoreError::InvalidInput(_)))
}

#[test]
fn aes_256_gcm_96_bit_iv_128_bit_tag() {
    let (_, cases) = load();
    let (mut valid, mut invalid) = (0, 0);
    for case in cases
        .iter()
        .filter(|c| c.key_size == 256 && c.iv_size == 96 && c.tag_size == 128)
    {
        let tc = case.tc_id;
        if case.valid {
            let out = aes256gcm_seal(&case.key, &case.iv, &case.aad, &case.msg)
                .unwrap_or_else(|e| panic!("tc{tc}: seal failed: {e}"));
            assert_eq!(out, sealed(case), "tc{tc}: seal output differs");
            let back = aes256gcm_open(&case.key, &case.iv, &case.aad, &sealed(case))
                .unwrap_or_else(|e| panic!("tc{tc}: open failed: {e}"));
            assert_eq!(back, case.msg, "tc{tc}: open output differs");
            valid += 1;
        } else {
            let r = aes256gcm_open(&case.key, &case.iv, &case.aad, &sealed(case));
            assert_eq!(
                r,
                Err(CoreError::Integrity),
                "tc{tc}: invalid case not rejected"
            );
            invalid += 1;
        }
    }
    assert_eq!((valid, invalid), (39, 27));
}

#[test]
fn other_iv_sizes_are_rejected() {
    let (_, cases) = load();
    let mut rejected = 0;
    for case in cases
        .iter()
        .filter(|c| c.key_size == 256 && c.iv_size != 96)
    {
        let tc = case.tc_id;
        assert_eq!(
            case.iv.len() * 8,
            usize::try_from(case.iv_size).unwrap(),
            "tc{tc}"
        );
        let seal = aes256gcm_seal(&case.key, &case.iv, &case.aad, &case.msg);
        assert!(
            is_invalid_input(&seal),
            "tc{tc}: seal with a {}-bit IV was not rejected",
            case.iv_size
        );
        let open = aes256gcm_open(&case.key, &case.iv, &case.aad, &sealed(case));
        assert!(
            is_invalid_input(&open),
            "tc{tc}: open with a {}-bit IV was not rejected",
            case.iv_size
        );
        rejected += 1;
    }
    assert_eq!(rejected, 39);
}

#[test]
fn other_key_sizes_are_rejected() {
    let (_, cases) = load();
    let mut rejected = 0;
    for case in cases.iter().filter(|c| c.key_size != 256) {
        let tc = case.tc_id;
        let seal = aes256gcm_seal(&case.key, &case.iv, &case.aad, &case.msg);
        assert!(
            is_invalid_input(&seal),
            "tc{tc}: seal with a {}-bit key was not rejected",
            case.key_size
        );
        let open = aes256gcm_open(&case.key, &case.iv, &case.aad, &sealed(case));
        assert!(
            is_invalid_input(&open),
            "tc{tc}: open with a {}-bit key was not rejected",
            case.key_size
        );
        rejected += 1;
    }
    assert_eq!(rejected, 211);
}

#[test]
fn every_case_is_accounted_for() {
    let (declared, cases) = load();
    assert_eq!(cases.len() as u64, declared);
    assert_eq!(cases.len(), 316);
    let mut ids: Vec<u64> = cases.iter().map(|c| c.tc_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 316, "duplicate tcIds");
    let real = cases
        .iter()
        .filter(|c| c.key_size == 256 && c.iv_size == 96 && c.tag_size == 128)
        .count();
    let other_iv = cases
        .iter()
        .filter(|c| c.key_size == 256 && c.iv_size != 96)
        .count();
    let other_key = cases.iter().filter(|c| c.key_size != 256).count();
    let other_tag = cases
        .iter()
        .filter(|c| c.key_size == 256 && c.iv_size == 96 && c.tag_size != 128)
        .count();
    assert_eq!((real, other_iv, other_key, other_tag), (66, 39, 211, 0));
    assert_eq!(real + other_iv + other_key + other_tag, cases.len());
}

#[test]
fn truncated_tags_never_authenticate() {
    let (_, cases) = load();
    for case in cases
        .iter()
        .filter(|c| c.key_size == 256 && c.iv_size == 96 && c.tag_size == 128 && c.valid)
    {
        for tag_len in [0, 4, 8, 12, 15] {
            let short = [case.ct.as_slice(), &case.tag[..tag_len]].concat();
            let r = aes256gcm_open(&case.key, &case.iv, &case.aad, &short);
            let rejected = matches!(r, Err(CoreError::Integrity | CoreError::InvalidInput(_)));
            assert!(
                rejected,
                "tc{}: a {tag_len}-byte tag authenticated",
                case.tc_id
            );
        }
    }
}
