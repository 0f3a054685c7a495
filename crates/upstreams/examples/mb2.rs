#![allow(missing_docs, clippy::unwrap_used)]
use std::hint::black_box;
use upstreams::{HashMode, Limits, Rotation, UpstreamList};
fn main() {
    let rot: Rotation = std::env::args().nth(1).unwrap().parse().unwrap();
    let iters: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let keys: Vec<[u8; 32]> = (0..4096u64).map(|i| { let mut k = [b'k'; 32]; k[..8].copy_from_slice(&i.to_le_bytes()); k }).collect();
    let def = (0..100).map(|i| format!("10.0.0.{i}:11333")).collect::<Vec<_>>().join(",");
    let list = UpstreamList::parse(&def, 11333, Limits::default().with_hash_mode(HashMode::Balanced)).unwrap();
    let snap = list.snapshot();
    for i in 0..iters { black_box(snap.select(rot, black_box(&keys[i & 4095]))); }
}
