//! Per-stage costs of the wire crate: encode, decode, sign, verify (single
//! and batch at 1..=1024). Run: `cargo bench -p bench --bench wire`.
//! Figures and the machine are recorded in docs/performance.md.

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use wire::{Message, Signed, SigningKey, ed25519};

const PROVIDERS: usize = 64;
const BATCH_SIZES: [usize; 7] = [1, 4, 16, 64, 256, 512, 1024];

fn codec(c: &mut Criterion) {
    let workload = bench::workload(PROVIDERS, 1024);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let message = Message::Accounting(workload.planned[0].message.clone());
    group.bench_function("encode_accounting_frame", |b| {
        let mut out = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            if out.len() > 60_000 {
                out.clear();
            }
            black_box(&message).encode(&mut out);
        })
    });
    let frame = wire::Message::Accounting(workload.planned[0].message.clone()).to_frame();
    group.bench_function("decode_accounting_frame", |b| {
        b.iter(|| Message::decode(black_box(frame.clone())).unwrap())
    });
    group.finish();
}

fn signing(c: &mut Criterion) {
    let workload = bench::workload(PROVIDERS, 1);
    let key = SigningKey::from_seed(&[7; 32]);
    let value = workload.planned[0].message.value().clone();
    let mut group = c.benchmark_group("sign");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign_accounting", |b| {
        b.iter(|| Signed::sign(black_box(value.clone()), &key).unwrap())
    });
    group.finish();
}

fn verification(c: &mut Criterion) {
    let workload = bench::workload(PROVIDERS, 1024);
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    let message = &workload.planned[0].message;
    let key = &workload.keys[0];
    group.bench_function("single", |b| b.iter(|| message.verify(black_box(key)).unwrap()));
    group.bench_function("parse_public_key", |b| {
        let bytes = *key.as_bytes();
        b.iter(|| wire::PublicKey::from_bytes(black_box(bytes)).unwrap())
    });
    for size in BATCH_SIZES {
        let items = workload.batch_items(0..size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("batch_64_providers", size), &items, |b, items| {
            b.iter(|| {
                assert!(
                    ed25519::verify_batch(black_box(items), &[3; 32])
                        .iter()
                        .all(|valid| *valid)
                )
            })
        });
    }
    // Every signature from a different key: no A terms to merge.
    let distinct = bench::workload(1024, 1024);
    for size in [64usize, 256, 1024] {
        let items = distinct.batch_items(0..size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("batch_distinct_keys", size), &items, |b, items| {
            b.iter(|| {
                assert!(
                    ed25519::verify_batch(black_box(items), &[3; 32])
                        .iter()
                        .all(|valid| *valid)
                )
            })
        });
    }
    // A batch of 256 with one bad signature: the cost of finding it.
    let mut bad = bench::workload(PROVIDERS, 256);
    let mut value = bad.planned[100].message.value().clone();
    value.sequence += 1;
    let resigned = Signed::sign(value, &SigningKey::from_seed(&[1; 32])).unwrap();
    bad.planned[100].message = resigned;
    let items = bad.batch_items(0..256);
    group.throughput(Throughput::Elements(256));
    group.bench_with_input(BenchmarkId::new("batch_one_bad", 256), &items, |b, items| {
        b.iter(|| {
            assert_eq!(
                ed25519::verify_batch(black_box(items), &[3; 32])
                    .iter()
                    .filter(|v| !**v)
                    .count(),
                1
            )
        })
    });
    group.finish();
}

/// The reference point: ed25519-dalek's own batch verification (which this
/// project does not use for acceptance; see docs/protocol.md) on the same
/// messages, domain prefix included.
fn dalek_reference(c: &mut Criterion) {
    use ed25519_dalek::{Signature, VerifyingKey};
    let workload = bench::workload(PROVIDERS, 1024);
    let keys: Vec<VerifyingKey> = workload
        .keys
        .iter()
        .map(|key| VerifyingKey::from_bytes(key.as_bytes()).unwrap())
        .collect();
    let inputs: Vec<Vec<u8>> = workload
        .planned
        .iter()
        .map(|planned| &planned.message)
        .map(|message| {
            let mut input = b"acct/1 accounting\0".to_vec();
            input.extend_from_slice(message.signed_bytes());
            input
        })
        .collect();
    let signatures: Vec<Signature> = workload
        .planned
        .iter()
        .map(|planned| Signature::from_bytes(planned.message.signature()))
        .collect();
    let mut group = c.benchmark_group("dalek_reference");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_single", |b| {
        b.iter(|| {
            keys[workload.planned[0].provider]
                .verify_strict(black_box(&inputs[0]), &signatures[0])
                .unwrap()
        })
    });
    for size in [64usize, 256, 1024] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("verify_batch", size), &size, |b, &size| {
            let messages: Vec<&[u8]> = inputs[..size].iter().map(Vec::as_slice).collect();
            let batch_keys: Vec<VerifyingKey> = workload.planned[..size]
                .iter()
                .map(|planned| keys[planned.provider])
                .collect();
            b.iter(|| ed25519_dalek::verify_batch(&messages, &signatures[..size], &batch_keys).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, codec, signing, verification, dalek_reference);
criterion_main!(benches);
