//! Core costs: one local Voronoi recomputation (the hot path of every
//! neighbour change) and the wire codec for a typical `Hello`.

use criterion::{Criterion, criterion_group, criterion_main};
use metatopia_overlay::wire::{self, Message};
use metatopia_overlay::{Contact, Exact2d, Geometry, NodeId, Point};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn sites(n: usize) -> Vec<(NodeId, Point)> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    (0..n)
        .map(|i| {
            let p = Point::new(
                rng.random_range(-100_000..100_000),
                rng.random_range(-100_000..100_000),
            );
            (NodeId(i as u64 + 1), p)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    for n in [20usize, 60] {
        let s = sites(n);
        c.bench_function(&format!("exact2d_neighbours_{n}_sites"), |b| {
            b.iter(|| Exact2d.neighbourhood(Point::new(0, 0), std::hint::black_box(&s)))
        });
    }
    let contact = |i: u64| Contact {
        id: NodeId(i),
        pos: Point::new(i as i64 * 1_000, 5_000),
        seq: 7,
        addr: vec![0; 44],
    };
    let hello = Message::Hello {
        from: contact(0),
        vn: (1..7).map(contact).collect(),
        known: (1..30).map(NodeId).collect(),
    };
    let bytes = wire::encode(&hello).expect("encode");
    c.bench_function("wire_encode_hello", |b| {
        b.iter(|| wire::encode(std::hint::black_box(&hello)))
    });
    c.bench_function("wire_decode_hello", |b| {
        b.iter(|| wire::decode(std::hint::black_box(&bytes)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
