//! The gRPC server's `ScoreRequest` decoder (`hcn_prerank::serve::codec`) against prost's, on
//! the industrial request shape (50,000 candidate ids, a 1M-row store without ids: row numbers,
//! varints of 1–3 bytes) and on random 64-bit ids (varints of up to 10 bytes).
//! `Throughput` in ids, so reports read as ids/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hcn_prerank::rng::SplitMix64 as Rng;
use hcn_prerank::serve::codec::Decode;
use hcn_prerank::serve::pb::ScoreRequest;
use prost::Message;

fn request(rng: &mut Rng, id: &mut dyn FnMut(&mut Rng) -> u64) -> Vec<u8> {
    ScoreRequest {
        long: (0..1000).map(|_| id(rng)).collect(),
        short: (0..50).map(|_| id(rng)).collect(),
        candidates: (0..50_000).map(|_| id(rng)).collect(),
        top_k: 1000,
        ..Default::default()
    }
    .encode_to_vec()
}

fn decode(c: &mut Criterion) {
    let mut rng = Rng::new(7);
    let cases = [
        (
            "rows_1m",
            request(&mut rng, &mut |r| r.below(1_000_000) as u64),
        ),
        ("random_u64", request(&mut rng, &mut |r| r.next_u64())),
    ];
    let mut group = c.benchmark_group("serve/decode");
    group.throughput(Throughput::Elements(51_050));
    for (name, bytes) in &cases {
        group.bench_function(format!("{name}/ours"), |b| {
            b.iter(|| ScoreRequest::decode_request(bytes).unwrap())
        });
        group.bench_function(format!("{name}/prost"), |b| {
            b.iter(|| <ScoreRequest as Message>::decode(bytes.as_slice()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
