//! Per-record costs of the v1 record format on this CPU, part by part (wall time, one thread).
//!
//! `cargo run --release -p keycustody-core --example fixed_cost [records]`
//!
//! Each line is the best of 15 runs over a batch of `records` (default 4096), in ns per record:
//! the minimum is the run least disturbed by other processes on a shared machine.

use std::hint::black_box;
use std::time::Instant;

use keycustody_core::aead::{gcm_key, open_into, seal_into, TAG_LEN};
use keycustody_core::kdf::derive_record_keys;
use keycustody_core::random::fill_random;
use keycustody_core::record::{
    open_batch, seal_batch, sealed_len, OpenJob, OpenKeys, SealJob, SealKey, HEADER_LEN,
};
use keycustody_core::SecretKey;

fn best(records: usize, f: &mut dyn FnMut()) -> f64 {
    f();
    (0..15)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64 / records as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(4096, |s| s.parse().expect("a record count"));
    let key = SecretKey::generate(64).unwrap();
    let seal_key = SealKey {
        key: &key,
        scope_id: [7; 16],
        version: 1,
    };
    let pairs = [(1u32, &key)];
    let open_keys = OpenKeys {
        scope_id: [7; 16],
        keys: &pairs,
    };
    let names: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("src/pkg/module_{i:06}.py").into_bytes())
        .collect();
    let dek = [3u8; 32];
    let rid = [5u8; 16];
    let nonce = [1u8; 12];
    let aad = [2u8; 72];
    let data_key = gcm_key(&dek).unwrap();
    let mut out = [0u8; 48];
    let mut random = vec![0u8; 72 * 64];

    // KC_ONLY=<substring> runs only the matching rows (to profile one of them).
    let only = std::env::var("KC_ONLY").unwrap_or_default();
    let run = |what: &str, f: &mut dyn FnMut()| {
        if what.contains(only.as_str()) {
            println!("{what:<44} {:>9.1} ns/record", best(n, f));
        }
    };
    run("getrandom (72 B per record, 64 per call)", &mut || {
        for _ in 0..n / 64 {
            fill_random(&mut random).unwrap();
        }
    });
    run("name index (HMAC-SHA-256, precomputed key)", &mut || {
        for name in &names {
            black_box(key.name_index(name).unwrap());
        }
    });
    run("HKDF-Expand 64 B + AES-GCM key setup", &mut || {
        for _ in 0..n {
            black_box(derive_record_keys(black_box(&dek), &rid).unwrap());
        }
    });
    run("AES-GCM key setup alone", &mut || {
        for _ in 0..n {
            black_box(gcm_key(black_box(&dek)).unwrap());
        }
    });
    run("AES-GCM seal of 32 B, 72 B AAD (DEK wrap)", &mut || {
        for _ in 0..n {
            seal_into(&data_key, &nonce, &aad, &dek, &mut out).unwrap();
        }
    });
    let sealed = out;
    let mut plain = [0u8; 32];
    run("AES-GCM open of 32 B, 72 B AAD (DEK unwrap)", &mut || {
        for _ in 0..n {
            open_into(&data_key, &nonce, &aad, &sealed, &mut plain).unwrap();
        }
    });
    for size in [16usize, 4096] {
        let data = vec![9u8; size];
        let mut body = vec![0u8; size + TAG_LEN];
        run(&format!("AES-GCM seal of {size} B, 64 B AAD"), &mut || {
            for _ in 0..n {
                seal_into(&data_key, &nonce, &aad[..64], &data, &mut body).unwrap();
            }
        });
        let mut blobs = vec![0u8; n * sealed_len(size)];
        run(
            &format!("seal_batch {size} B records, 1 thread"),
            &mut || {
                let mut jobs: Vec<SealJob<'_>> = blobs
                    .chunks_exact_mut(sealed_len(size))
                    .zip(&names)
                    .map(|(blob, name)| {
                        let (header, body) = blob.split_at_mut(HEADER_LEN);
                        SealJob {
                            name,
                            data: &data,
                            header,
                            body,
                            name_ct: None,
                        }
                    })
                    .collect();
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap()
                    .install(|| seal_batch(&seal_key, &mut jobs).unwrap());
            },
        );
        let mut outs = vec![0u8; n * size];
        run(
            &format!("open_batch {size} B records, 1 thread"),
            &mut || {
                let mut jobs: Vec<OpenJob<'_>> = blobs
                    .chunks_exact(sealed_len(size))
                    .zip(&names)
                    .zip(outs.chunks_exact_mut(size))
                    .map(|((blob, name), out)| {
                        let (header, body) = blob.split_at(HEADER_LEN);
                        OpenJob {
                            name: Some(name),
                            header,
                            body,
                            out,
                        }
                    })
                    .collect();
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap()
                    .install(|| open_batch(&open_keys, &mut jobs).unwrap());
            },
        );
    }
}
