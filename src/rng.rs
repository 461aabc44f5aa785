//! splitmix64: the crate's one small seeded generator, for synthetic models (`synth`),
//! `hcn bench`'s requests, tests and benches — reproducible without a dependency. Not for
//! anything that needs unpredictability.
//!
//! `reference/bench_peers.py` regenerates `hcn bench`'s requests from this stream (`next_u64` and
//! Lemire's `below`), so those two must not change.

/// splitmix64 (Steele, Lea, Flood 2014): one `u64` of state.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by Lemire's multiply-shift; the bias is below 2^-32 for the
    /// sizes used here.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[-a, a)`; 24 random bits give every f32 step of `[0, 1)`.
    pub fn symmetric(&mut self, a: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * a
    }

    /// `len` draws of [`symmetric`](Self::symmetric).
    pub fn vec(&mut self, len: usize, a: f32) -> Vec<f32> {
        (0..len).map(|_| self.symmetric(a)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_splitmix64_stream_and_stays_in_range() {
        // First outputs for seed 1234567 (the reference implementation's test vector).
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
        let mut r = SplitMix64::new(3);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[r.below(7)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        for _ in 0..1000 {
            let x = r.symmetric(0.5);
            assert!((-0.5..0.5).contains(&x));
        }
    }
}
