//! Launch geometry and limits for every kernel, shared by the GPU executor and the CPU emulation
//! so both run the kernels with the same grids and blocks. Each constant here mirrors a `#define`
//! in `kernels/` (named in the comment); the kernels assume these limits, so they are checked
//! here before any launch and a violation is an [`Error::Device`], never an out-of-bounds access.
//! A launch with nothing to do gets an empty geometry ([`Geometry::is_empty`]), which the
//! backends do not launch.

use crate::{Error, Result};

/// `HCN_MAX_DIM` (common.cuh): `score.cu` holds D / 32 values per lane in registers.
pub const MAX_DIM: usize = 1024;
/// `HCN_MAX_HEAD_DIM` (common.cuh): the largest head dimension d = D / h a model may have.
pub const MAX_HEAD_DIM: usize = 128;
/// `HCN_MAX_INTERESTS` (common.cuh): `co_fusion.cu` keeps E (n × n) in shared memory,
/// `attend.cu` the n query rows of a slab.
pub const MAX_INTERESTS: usize = 64;
/// `SCORE_MAX_XU` (score.cu): X^U of one user (n × D floats) in shared memory.
pub const MAX_SCORE_XU: usize = 8192;
/// 2 bits per block in `co_fusion.cu`'s `block_codes`.
pub const MAX_CONCAT_BLOCKS: usize = 16;
/// CUDA's limit on `gridDim.y` and `gridDim.z` (and our use of `gridDim.x` for users in 1-D
/// launches is far below `2^31 − 1`); users (and sequences) per launch are bounded by it.
pub const MAX_GRID_Y: usize = 65_535;

/// `(grid, block)` as `(x, y, z)` triples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

impl Geometry {
    /// No block: nothing to launch.
    const NONE: Geometry = Geometry {
        grid: (0, 1, 1),
        block: (32, 1, 1),
    };

    /// True when the grid has no block at all (nothing to do; CUDA rejects such launches).
    pub fn is_empty(&self) -> bool {
        self.grid.0 == 0 || self.grid.1 == 0 || self.grid.2 == 0
    }

    pub fn grid_array(&self) -> [u32; 3] {
        [self.grid.0, self.grid.1, self.grid.2]
    }

    pub fn block_array(&self) -> [u32; 3] {
        [self.block.0, self.block.1, self.block.2]
    }
}

fn dim(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Device(format!("{what} = {v} does not fit a launch")))
}

fn grid_y(v: usize, what: &str) -> Result<u32> {
    if v > MAX_GRID_Y {
        return Err(Error::Device(format!(
            "{what} = {v} exceeds the CUDA grid limit {MAX_GRID_Y}; split the batch"
        )));
    }
    dim(v, what)
}

/// `ATTEND_KEYS` (attend.cu): keys per tile, one per lane; a chunk is a whole number of tiles.
pub const ATTEND_KEYS: usize = 32;
/// Blocks of an `attend` launch above which its chunks grow (more tiles per block) instead of
/// multiplying: enough to fill a large GPU several times over, while the partials (`part`,
/// `n · (D + 2)` floats per block) stay small.
pub const ATTEND_TARGET_BLOCKS: usize = 1024;

/// The key chunking of one `attend` launch for `seqs` sequences (both towers) of at most
/// `max_len` keys and `heads` heads: `(chunks, chunk_keys)`, `chunk_keys` a multiple of
/// [`ATTEND_KEYS`] and `chunks · chunk_keys ≥ max_len`. One tile per chunk while the grid stays
/// under [`ATTEND_TARGET_BLOCKS`], so that batch 1 still spreads over many blocks.
pub fn attend_chunks(max_len: usize, seqs: usize, heads: usize) -> (usize, usize) {
    let tiles = max_len.div_ceil(ATTEND_KEYS);
    if tiles == 0 {
        return (0, ATTEND_KEYS);
    }
    let per_chunk = (tiles * seqs * heads)
        .div_ceil(ATTEND_TARGET_BLOCKS)
        .clamp(1, tiles);
    (tiles.div_ceil(per_chunk), per_chunk * ATTEND_KEYS)
}

/// `attend.cu`: block 256 per (chunk, head, sequence); nothing without a chunk or an interest.
pub fn attend(chunks: usize, heads: usize, seqs: usize, n: usize) -> Result<Geometry> {
    if n > MAX_INTERESTS {
        return Err(Error::Device(format!(
            "attend with n = {n}: the kernel supports n ≤ {MAX_INTERESTS}"
        )));
    }
    if chunks == 0 || n == 0 || seqs == 0 {
        return Ok(Geometry::NONE);
    }
    Ok(Geometry {
        grid: (
            dim(chunks, "key chunks")?,
            grid_y(heads, "heads")?,
            grid_y(seqs, "sequences per batch (2 · users)")?,
        ),
        block: (256, 1, 1),
    })
}

/// `ATTEND_MMA_MAX_DIM` (attend_mma.cu): `D` at most (a tile of 32 staged token rows).
pub const MAX_ATTEND_MMA_DIM: usize = 256;
/// `ATTEND_MMA_MAX_QD` (attend_mma.cu): `⌈n/16⌉·16 · D` at most, Q̃'s A fragments (hi and lo F16
/// halves) in shared memory; it also bounds the per-warp accumulators.
pub const MAX_ATTEND_MMA_QD: usize = 4096;

/// Whether `attend_mma.cu` takes a model of `n` interests and dimension `d`: `D` a multiple of
/// 16 (k-steps of 16, 16-byte `cp.async`), `16 ≤ D ≤ MAX_ATTEND_MMA_DIM`, `1 ≤ n ≤
/// MAX_INTERESTS`, `⌈n/16⌉·16 · D ≤ MAX_ATTEND_MMA_QD`. The token store's dtype (F16 or I8,
/// `abi::MMA_STORE_DTYPES`) is the caller's to check.
pub fn attend_mma_fits(n: usize, d: usize) -> bool {
    d.is_multiple_of(16)
        && (16..=MAX_ATTEND_MMA_DIM).contains(&d)
        && (1..=MAX_INTERESTS).contains(&n)
        && n.next_multiple_of(16) * d <= MAX_ATTEND_MMA_QD
}

/// `attend_mma.cu`: block 128 (4 warps) per (chunk, head, sequence), the chunking of
/// [`attend_chunks`]; the model must fit ([`attend_mma_fits`]); nothing without a chunk or an
/// interest.
pub fn attend_mma(
    chunks: usize,
    heads: usize,
    seqs: usize,
    n: usize,
    d: usize,
) -> Result<Geometry> {
    if n != 0 && !attend_mma_fits(n, d) {
        return Err(Error::Device(format!(
            "attend_mma with n = {n}, D = {d}: the kernel needs D a multiple of 16, \
             D ≤ {MAX_ATTEND_MMA_DIM}, n ≤ {MAX_INTERESTS} and ⌈n/16⌉·16 · D ≤ {MAX_ATTEND_MMA_QD}"
        )));
    }
    let geo = attend(chunks, heads, seqs, n)?;
    Ok(if geo.is_empty() {
        geo
    } else {
        Geometry {
            block: (128, 1, 1),
            ..geo
        }
    })
}

/// `attend_combine.cu`: one block of 256 per sequence (both towers); nothing for `n = 0`.
pub fn attend_combine(seqs: usize, n: usize) -> Result<Geometry> {
    if n == 0 {
        return Ok(Geometry::NONE);
    }
    Ok(Geometry {
        grid: (grid_y(seqs, "sequences per batch (2 · users)")?, 1, 1),
        block: (256, 1, 1),
    })
}

/// `co_fusion.cu`: one block per user; `n ≤ MAX_INTERESTS` interests (nothing for 0),
/// `blocks ≤ MAX_CONCAT_BLOCKS`.
pub fn co_fusion(users: usize, n: usize, blocks: usize) -> Result<Geometry> {
    if n > MAX_INTERESTS || blocks > MAX_CONCAT_BLOCKS {
        return Err(Error::Device(format!(
            "co_fusion with n = {n} and {blocks} blocks: the kernel supports n ≤ \
             {MAX_INTERESTS} and ≤ {MAX_CONCAT_BLOCKS} blocks"
        )));
    }
    if n == 0 {
        return Ok(Geometry::NONE);
    }
    Ok(Geometry {
        grid: (grid_y(users, "users per batch")?, 1, 1),
        block: (256, 1, 1),
    })
}

/// `score.cu`: `SCORE_PER_BLOCK` = 256 candidates per block, users along y; `D ≤ MAX_DIM`,
/// `n · D ≤ MAX_SCORE_XU` (nothing for `n = 0`).
pub fn score(max_candidates: usize, users: usize, n: usize, d: usize) -> Result<Geometry> {
    if d > MAX_DIM || n.saturating_mul(d) > MAX_SCORE_XU {
        return Err(Error::Device(format!(
            "score with n = {n}, D = {d}: the kernel supports D ≤ {MAX_DIM} and \
             n · D ≤ {MAX_SCORE_XU}"
        )));
    }
    if n == 0 {
        return Ok(Geometry::NONE);
    }
    Ok(Geometry {
        grid: (
            dim(max_candidates.div_ceil(256), "candidate blocks")?,
            grid_y(users, "users per batch")?,
            1,
        ),
        block: (256, 1, 1),
    })
}

/// `SCORE_MMA_MAX_XU` (score_mma.cu): `⌈n/8⌉·8 · D` at most, X^U's B fragments (hi and lo F16
/// halves) in shared memory.
pub const MAX_SCORE_MMA_XU: usize = 8192;

/// Whether `score_mma.cu` takes a model of `n` interests and dimension `d`: `D` a multiple of 16
/// (rows in k-steps of 16 and 16-byte `cp.async`), `D ≤ MAX_DIM`, `1 ≤ n ≤ MAX_INTERESTS`,
/// `⌈n/8⌉·8 · D ≤ MAX_SCORE_MMA_XU`. The store dtype (F16 or I8, `abi::MMA_STORE_DTYPES`) is
/// the caller's to check.
pub fn score_mma_fits(n: usize, d: usize) -> bool {
    d.is_multiple_of(16)
        && (16..=MAX_DIM).contains(&d)
        && (1..=MAX_INTERESTS).contains(&n)
        && n.next_multiple_of(8) * d <= MAX_SCORE_MMA_XU
}

/// `score_mma.cu`: `SCORE_MMA_PER_BLOCK` = 256 candidates per block of 4 warps (16 per warp at
/// a time), users along y; the model must fit ([`score_mma_fits`]); nothing for `n = 0`.
pub fn score_mma(max_candidates: usize, users: usize, n: usize, d: usize) -> Result<Geometry> {
    if n == 0 {
        return Ok(Geometry::NONE);
    }
    if !score_mma_fits(n, d) {
        return Err(Error::Device(format!(
            "score_mma with n = {n}, D = {d}: the kernel needs D a multiple of 16, D ≤ {MAX_DIM}, \
             n ≤ {MAX_INTERESTS} and ⌈n/8⌉·8 · D ≤ {MAX_SCORE_MMA_XU}"
        )));
    }
    Ok(Geometry {
        grid: (
            dim(max_candidates.div_ceil(256), "candidate blocks")?,
            grid_y(users, "users per batch")?,
            1,
        ),
        block: (128, 1, 1),
    })
}

/// `topk.cu`'s `topk` and `topk_select`: one block of `TOPK_THREADS` = 256 per user; nothing
/// for `k = 0`.
pub fn topk(users: usize, k: usize) -> Result<Geometry> {
    if k == 0 {
        return Ok(Geometry::NONE);
    }
    Ok(Geometry {
        grid: (grid_y(users, "users per batch")?, 1, 1),
        block: (256, 1, 1),
    })
}

/// `TOPK_BUCKETS` (topk.cu): histogram buckets per user of `topk_hist` / `topk_compact`.
pub const TOPK_BUCKETS: usize = 4096;
/// `TOPK_CHUNK` (topk.cu): scores per block of `topk_hist` / `topk_compact`.
pub const TOPK_CHUNK: usize = 1024;
/// `TOPK_CAPACITY` (topk.cu): the most survivors per user `topk_select` sorts in shared memory.
pub const TOPK_CAPACITY: usize = 4096;

/// Survivor slots per user for a batch whose longest user has `max_m` scores: `TOPK_CAPACITY`,
/// or fewer when no user could fill them (at least 1).
pub fn topk_capacity(max_m: usize) -> usize {
    max_m.clamp(1, TOPK_CAPACITY)
}

/// `topk_hist` and `topk_compact`: a block of 256 per `TOPK_CHUNK` scores of the longest user,
/// users along y; nothing for `k = 0` or no score.
pub fn topk_chunks(max_m: usize, users: usize, k: usize) -> Result<Geometry> {
    if k == 0 || max_m == 0 {
        return Ok(Geometry::NONE);
    }
    Ok(Geometry {
        grid: (
            dim(max_m.div_ceil(TOPK_CHUNK), "top-k chunks")?,
            grid_y(users, "users per batch")?,
            1,
        ),
        block: (256, 1, 1),
    })
}

/// Checks a model's shape against the kernels' compile-time limits (once, at executor creation).
pub fn check_model_shape(dim: usize, heads: usize, interests: usize, blocks: usize) -> Result<()> {
    let fail = |what: String| {
        Err(Error::Device(format!(
            "model not supported by the CUDA kernels: {what}"
        )))
    };
    if dim == 0 || dim > MAX_DIM {
        return fail(format!("D = {dim}, the kernels support 1..={MAX_DIM}"));
    }
    if heads == 0 || !dim.is_multiple_of(heads) || dim / heads > MAX_HEAD_DIM {
        return fail(format!(
            "D / h = {dim} / {heads}, the kernels need h | D and d ≤ {MAX_HEAD_DIM}"
        ));
    }
    if interests == 0 || interests > MAX_INTERESTS {
        return fail(format!(
            "n = {interests}, the kernels support 1..={MAX_INTERESTS}"
        ));
    }
    if interests * dim > MAX_SCORE_XU {
        return fail(format!(
            "n · D = {}, the scoring kernel keeps X^U in shared memory (≤ {MAX_SCORE_XU} floats)",
            interests * dim
        ));
    }
    if blocks == 0 || blocks > MAX_CONCAT_BLOCKS {
        return fail(format!(
            "{blocks} co_interest_concat blocks, the kernels support 1..={MAX_CONCAT_BLOCKS}"
        ));
    }
    Ok(())
}

/// Converts a count or offset to the `int` the kernels take.
pub fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Device(format!("{what} = {v} exceeds 2^31 − 1")))
}

/// Elements a `rows × cols` view with leading dimension `ld` spans (what a kernel touches of a
/// row-major matrix, e.g. a column block of a wider buffer).
pub fn extent(rows: usize, ld: usize, cols: usize) -> usize {
    if rows == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// Packs concat block codes 2 bits each, block t in bits `[2t, 2t + 2)` (co_fusion.cu).
pub fn pack_blocks(blocks: &[u8]) -> u32 {
    blocks
        .iter()
        .enumerate()
        .fold(0u32, |acc, (t, &b)| acc | (u32::from(b & 3) << (2 * t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants above are the kernels' `#define`s: a mismatch would size the top-k
    /// workspace wrongly.
    #[test]
    fn topk_constants_match_the_kernel() {
        let src = include_str!("../../kernels/topk.cu");
        for (name, v) in [
            ("TOPK_BUCKETS", TOPK_BUCKETS),
            ("TOPK_CHUNK", TOPK_CHUNK),
            ("TOPK_CAPACITY", TOPK_CAPACITY),
            ("TOPK_THREADS", 256),
        ] {
            assert!(
                src.contains(&format!("\n#define {name} {v}\n")),
                "kernels/topk.cu: #define {name} {v}"
            );
        }
        // 64 − log2(TOPK_BUCKETS): the histogram reads the key's top bits.
        assert!(src.contains(&format!(
            "\n#define TOPK_BUCKET_SHIFT {}\n",
            64 - TOPK_BUCKETS.trailing_zeros()
        )));
    }

    /// The tensor-core scoring kernel's limits are its `#define`s.
    #[test]
    fn score_mma_limits_match_the_kernel() {
        let src = include_str!("../../kernels/score_mma.cu");
        for (name, v) in [
            ("SCORE_MMA_MAX_XU", MAX_SCORE_MMA_XU),
            ("SCORE_MMA_PER_BLOCK", 256),
            ("SCORE_MMA_WARPS", 4),
        ] {
            assert!(
                src.contains(&format!("\n#define {name} {v}\n")),
                "kernels/score_mma.cu: #define {name} {v}"
            );
        }
        assert!(score_mma_fits(16, 128) && score_mma_fits(1, 1024) && score_mma_fits(64, 128));
        assert!(!score_mma_fits(8, 40) && !score_mma_fits(9, 528) && !score_mma_fits(65, 16));
        assert!(!score_mma_fits(0, 64) && !score_mma_fits(1, 1040));
        let g = score_mma(300, 3, 5, 64).unwrap();
        assert_eq!((g.grid, g.block), ((2, 3, 1), (128, 1, 1)));
        assert!(score_mma(300, 3, 0, 64).unwrap().is_empty());
        assert!(score_mma(300, 3, 5, 40).is_err());
    }

    #[test]
    fn attend_constants_match_the_kernel() {
        let src = include_str!("../../kernels/attend.cu");
        assert!(src.contains(&format!("\n#define ATTEND_KEYS {ATTEND_KEYS} ")));
    }

    /// The tensor-core attention's limits are its `#define`s.
    #[test]
    fn attend_mma_limits_match_the_kernel() {
        let src = include_str!("../../kernels/attend_mma.cu");
        for (name, v) in [
            ("ATTEND_MMA_KEYS", ATTEND_KEYS),
            ("ATTEND_MMA_WARPS", 4),
            ("ATTEND_MMA_MAX_DIM", MAX_ATTEND_MMA_DIM),
            ("ATTEND_MMA_MAX_QD", MAX_ATTEND_MMA_QD),
        ] {
            assert!(
                src.contains(&format!("\n#define {name} {v}")),
                "kernels/attend_mma.cu: #define {name} {v}"
            );
        }
        assert!(attend_mma_fits(16, 128) && attend_mma_fits(8, 48) && attend_mma_fits(1, 256));
        assert!(attend_mma_fits(64, 64) && attend_mma_fits(48, 80) && attend_mma_fits(32, 128));
        assert!(!attend_mma_fits(8, 40) && !attend_mma_fits(1, 272) && !attend_mma_fits(17, 256));
        assert!(!attend_mma_fits(0, 64) && !attend_mma_fits(65, 16) && !attend_mma_fits(64, 80));
        let g = attend_mma(3, 4, 2, 16, 128).unwrap();
        assert_eq!((g.grid, g.block), ((3, 4, 2), (128, 1, 1)));
        assert!(attend_mma(3, 4, 2, 0, 40).unwrap().is_empty());
        assert!(attend_mma(0, 4, 2, 16, 128).unwrap().is_empty());
        assert!(attend_mma(3, 4, 2, 16, 40).is_err());
    }

    #[test]
    fn attend_chunks_cover_the_keys_and_spread_small_batches() {
        assert_eq!(attend_chunks(0, 2, 4), (0, ATTEND_KEYS));
        // Batch 1, industrial (500 keys, h = 4): a tile per chunk, 16 · 4 · 2 = 128 blocks.
        assert_eq!(attend_chunks(500, 2, 4), (16, 32));
        for (len, seqs, heads) in [
            (1, 1, 1),
            (33, 4, 2),
            (500, 128, 4),
            (5000, 2, 64),
            (64, 9999, 3),
        ] {
            let (chunks, keys) = attend_chunks(len, seqs, heads);
            assert!(
                keys % ATTEND_KEYS == 0 && chunks * keys >= len,
                "{len} {seqs} {heads}"
            );
            assert!(
                (chunks - 1) * keys < len,
                "no empty chunk: {len} {seqs} {heads}"
            );
            assert!(
                chunks * seqs * heads <= ATTEND_TARGET_BLOCKS.max(seqs * heads) * 2,
                "{len} {seqs} {heads}"
            );
        }
    }

    #[test]
    fn topk_geometry() {
        assert!(topk_chunks(0, 3, 5).unwrap().is_empty());
        assert!(topk_chunks(10, 3, 0).unwrap().is_empty());
        let g = topk_chunks(50_000, 3, 10).unwrap();
        assert_eq!((g.grid, g.block), ((49, 3, 1), (256, 1, 1)));
        assert!(topk_chunks(1, MAX_GRID_Y + 1, 1).is_err());
        assert_eq!(
            (topk_capacity(0), topk_capacity(7), topk_capacity(1 << 20)),
            (1, 7, TOPK_CAPACITY)
        );
    }
}
