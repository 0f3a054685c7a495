//! Shared inputs of the peer benchmarks and the quality report: the same backends and keys for
//! every scheme.

/// `n` backend addresses `10.a.b.c:11333`, the same for every scheme.
pub fn addrs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "10.{}.{}.{}:11333",
                i / 62_500,
                (i / 250) % 250,
                i % 250 + 1
            )
        })
        .collect()
}

/// The upstreams definition of `addrs(n)`, with optional weights.
pub fn definition(n: usize, weights: Option<&dyn Fn(usize) -> u16>) -> String {
    addrs(n)
        .iter()
        .enumerate()
        .map(|(i, a)| match weights {
            Some(w) => format!("{a}:{}", w(i)),
            None => a.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `count` distinct 32-byte keys, starting at `first`.
pub fn keys(first: u64, count: usize) -> Vec<[u8; 32]> {
    (first..first + count as u64)
        .map(|i| {
            let mut k = [b'k'; 32];
            let text = format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            k[..16].copy_from_slice(text.as_bytes());
            k[16..24].copy_from_slice(&i.to_le_bytes());
            k
        })
        .collect()
}
