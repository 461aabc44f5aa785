// score.cu's scores (SPEC §1.5, eq. 8) on tensor cores, for F16 and I8 candidate stores with D a
// multiple of 16: `score_mma_f16`, `score_mma_i8`.  Same parameters and results as score.cu
// (`ScoreMmaParams` = `ScoreParams`); the plan picks this kernel where `launch::score_mma` fits.
//
// Per warp, 16 candidates at a time: S (16 × n) = R (16 × D) · X^Uᵀ (D × n) as D/16 · ⌈n/8⌉
// pairs of `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` (hcn_mma_m16n8k16, common.cuh):
// * A = 16 candidate rows × 16 columns in F16: F16 rows are exact, and so are I8's integers q
//   (|q| ≤ 127); an I8 row's scale multiplies its n scores once, after the dot products, as
//   score.cu does.
// * B = 16 columns × 8 interests of X^U (n padded to a multiple of 8 with zero columns).  X^U
//   is F32, so each interest j is first scaled by a power of two 2^e_j (max_c |X^U_jc| · 2^e_j in
//   [2^14, 2^15), exact) and split into hi = f16(x) and lo = f16(x − hi); both products are
//   accumulated in F32 (two mma per fragment), which keeps ≈ 22 bits of X^U (relative to the
//   interest's largest value) where F16 alone keeps 11, and the scaling keeps any finite X^U
//   inside F16's range.  s_j = acc_j · 2^−e_j (exact).  An interest with a non-finite value gets
//   NaN scores (its X^U already fails the finiteness rule, src/post.rs).
// * X^U lives in shared memory, already in B-fragment order: for k-step ks (columns
//   16ks … 16ks + 15), n-tile nt and lane L, one uint4 {hi b0b1, hi b2b3, lo b0b1, lo b2b3}, so
//   a lane fetches its four B registers with one conflict-free 16-byte load.  Not registers:
//   the fragments of n·D values need (D/16)·⌈n/8⌉·4 registers per lane (64 for the industrial
//   D = 128, n = 16; 128 for D = 256, n = 16), which would cap n·D far below score.cu's 8192 or
//   spill; from shared memory every model score.cu accepts with ⌈n/8⌉·8·D ≤ 8192 runs here.
//   The shared reads per 16-candidate tile (⌈n/8⌉·8·D·4 bytes) are about the tile's own store
//   bytes, far under shared-memory bandwidth.
// * Rows are fetched with 16-byte `cp.async` into a 3-stage per-warp pipeline of chunks of 16
//   rows × 32 columns (the last chunk of a row may be 16): while the warp multiplies chunk s,
//   chunks s + 1 and s + 2 are in flight.  Staged rows are padded (F16: 80 bytes per 64,
//   I8: 48 per 32) so the A-fragment loads of a warp hit distinct banks.  A tile's rows past the
//   user's last candidate load that candidate's row again (S's rows are independent; the
//   duplicate results are dropped).
// Epilogue per tile: lane (g, t) holds S[g][2t, 2t+1] and S[g+8][2t, 2t+1] of every n-tile; the
// four lanes of a group exchange them with shuffles so each sees its rows' n scores in the order
// j = 0, 1, … and folds them into score.cu's ScoreAgg (score_agg.cuh); lane t = 0 writes row g,
// lane t = 1 row g + 8.
//
// Mapping: grid (⌈max_m / 256⌉, B), block 128 = 4 warps; block (x, b) scores candidates
// [256·x, 256·x + 256) of user b, warp w its tiles w, w + 4, … of 16.
// Assumes: D % 16 == 0, D ≤ HCN_MAX_DIM, n ≤ HCN_MAX_INTERESTS, ⌈n/8⌉·8·D ≤ SCORE_MMA_MAX_XU
// (src/cuda/launch.rs `score_mma`); the store's base 16-byte aligned (device allocations are
// 256-byte aligned, the emulation's 16); every row index < N; X^U [B·n × D] contiguous;
// cand_offsets[B + 1] ascending; for I8, `scales` holds N values.
#include "common.cuh"
#include "score_agg.cuh"

#define SCORE_MMA_WARPS 4
#define SCORE_MMA_PER_BLOCK 256
#define SCORE_MMA_STAGES 3
// ⌈n/8⌉·8·D at most: the B fragments, (D/16)·⌈n/8⌉·32 uint4 = 32 KB of shared memory.
#define SCORE_MMA_MAX_XU 8192

// Bytes of one staged row (a chunk of 32 columns plus padding) for element type T.
template <class T>
struct MmaStage {
  static constexpr int kStride = sizeof(T) == 2 ? 80 : 48;
  static constexpr int kBytes = 16 * kStride;  // one stage of one warp
};

__device__ __forceinline__ unsigned hcn_smem_u32(const unsigned char* p) {
#ifdef __CUDACC__
  return *reinterpret_cast<const unsigned*>(p);
#else
  unsigned v;
  memcpy(&v, p, 4);
  return v;
#endif
}

// The A fragment of k-step kk (0 or 1) of a staged chunk (layout in common.cuh).
__device__ __forceinline__ void mma_a_fragment(const unsigned char* buf, int kk, int g, int t,
                                               const __half*, unsigned a[4]) {
  constexpr int s = MmaStage<__half>::kStride;
  const unsigned char* r0 = buf + g * s + kk * 32 + 4 * t;
  const unsigned char* r1 = r0 + 8 * s;
  a[0] = hcn_smem_u32(r0);
  a[1] = hcn_smem_u32(r1);
  a[2] = hcn_smem_u32(r0 + 16);
  a[3] = hcn_smem_u32(r1 + 16);
}

__device__ __forceinline__ void mma_a_fragment(const unsigned char* buf, int kk, int g, int t,
                                               const int8_t*, unsigned a[4]) {
  constexpr int s = MmaStage<int8_t>::kStride;
  const int8_t* r0 = reinterpret_cast<const int8_t*>(buf + g * s + kk * 16 + 2 * t);
  const int8_t* r1 = r0 + 8 * s;
  a[0] = hcn_pack_f16x2(static_cast<float>(r0[0]), static_cast<float>(r0[1]));
  a[1] = hcn_pack_f16x2(static_cast<float>(r1[0]), static_cast<float>(r1[1]));
  a[2] = hcn_pack_f16x2(static_cast<float>(r0[8]), static_cast<float>(r0[9]));
  a[3] = hcn_pack_f16x2(static_cast<float>(r1[8]), static_cast<float>(r1[9]));
}

// One warp's tiles of candidates [start, end) of the user whose first candidate is `first`.
// NT: ⌈n/8⌉ rounded up to a power of two (the accumulators' compile-time extent); `nts` =
// ⌈n/8⌉ n-tiles are used.  `stage`: this warp's SCORE_MMA_STAGES staging buffers.
template <int NT, class T>
__device__ __forceinline__ void score_mma_rows(const ScoreMmaParams& p, const T* __restrict__ store,
                                               const unsigned* __restrict__ rows,
                                               float* __restrict__ out, int first, int start,
                                               int end, const uint4* xfrag, const float* xinv,
                                               unsigned char* stage) {
  constexpr int kStride = MmaStage<T>::kStride, kStageBytes = MmaStage<T>::kBytes;
  const int dim = p.dim, n = p.n, mode = p.mode;
  const int nts = (n + 7) / 8;
  const int warp = threadIdx.x / HCN_WARP, lane = threadIdx.x % HCN_WARP;
  const int g = lane >> 2, t = lane & 3;
  const int chunks = (dim + 31) / 32;
  const int ntiles = (end - start + 15) / 16;
  const int my_tiles = ntiles > warp ? (ntiles - warp + SCORE_MMA_WARPS - 1) / SCORE_MMA_WARPS : 0;
  const int steps = my_tiles * chunks;
  const unsigned char* base = reinterpret_cast<const unsigned char*>(store);

  // Step s = (tile, chunk): its 16 rows × ≤ 32 columns into buffer s % STAGES, one commit group
  // (empty past the last step, so every lane always has the same number of groups).
  auto issue = [&](int s) {
    if (s < steps) {
      const int tile = warp + (s / chunks) * SCORE_MMA_WARPS;
      const int c0 = (s % chunks) * 32;
      const int per_row = hcn_min_i(32, dim - c0) * (int)sizeof(T) / 16;
      unsigned char* buf = stage + (s % SCORE_MMA_STAGES) * kStageBytes;
      for (int q = lane; q < 16 * per_row; q += HCN_WARP) {
        const int r = q / per_row, piece = q % per_row;
        const int cand = hcn_min_i(start + tile * 16 + r, end - 1);
        const unsigned row = rows[first + cand];
        hcn_cp_async16(buf + r * kStride + piece * 16,
                       base + ((long long)row * dim + c0) * (long long)sizeof(T) + piece * 16);
      }
    }
    hcn_cp_async_commit();
  };

  for (int s = 0; s < SCORE_MMA_STAGES - 1; ++s) issue(s);
  float acc[NT][4];
  for (int s = 0; s < steps; ++s) {
    issue(s + SCORE_MMA_STAGES - 1);
    hcn_cp_async_wait<SCORE_MMA_STAGES - 1>();  // step s's group has landed (this lane's copies)
    __syncwarp();                                // … and every lane's
    const int chunk = s % chunks;
    if (chunk == 0) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;
      }
    }
    const unsigned char* buf = stage + (s % SCORE_MMA_STAGES) * kStageBytes;
    const int ksteps = hcn_min_i(2, (dim - chunk * 32) / 16);
    for (int kk = 0; kk < ksteps; ++kk) {
      unsigned a[4];
      mma_a_fragment(buf, kk, g, t, store, a);
      const uint4* xf = xfrag + (chunk * 2 + kk) * nts * HCN_WARP + lane;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        if (nt < nts) {  // uniform
          const uint4 f = xf[nt * HCN_WARP];
          const unsigned hi[2] = {f.x, f.y}, lo[2] = {f.z, f.w};
          hcn_mma_m16n8k16(acc[nt], a, hi, acc[nt]);
          hcn_mma_m16n8k16(acc[nt], a, lo, acc[nt]);
        }
      }
    }
    __syncwarp();  // every lane has read the buffer before step s + STAGES refills it
    if (chunk != chunks - 1) continue;

    // The tile is done: rows g and g + 8 of S (candidates c0, c1).
    const int tile = warp + (s / chunks) * SCORE_MMA_WARPS;
    const int c0 = start + tile * 16 + g, c1 = c0 + 8;
    float sc0 = 1.0f, sc1 = 1.0f;
    if constexpr (HcnStore<T>::scaled) {
      const float* __restrict__ scales = p.scales;
      sc0 = c0 < end ? scales[rows[first + c0]] : 0.0f;
      sc1 = c1 < end ? scales[rows[first + c1]] : 0.0f;
    }
    ScoreAgg agg0, agg1;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (nt < nts) {  // uniform
        for (int src = 0; src < 4; ++src) {
          const int from = (lane & ~3) | src;
          const float v00 = __shfl_sync(HCN_FULL_MASK, acc[nt][0], from);
          const float v01 = __shfl_sync(HCN_FULL_MASK, acc[nt][1], from);
          const float v10 = __shfl_sync(HCN_FULL_MASK, acc[nt][2], from);
          const float v11 = __shfl_sync(HCN_FULL_MASK, acc[nt][3], from);
          const int j = nt * 8 + 2 * src;
          if (j < n) {
            agg0.add(v00 * xinv[j] * sc0, mode);
            agg1.add(v10 * xinv[j] * sc1, mode);
          }
          if (j + 1 < n) {
            agg0.add(v01 * xinv[j + 1] * sc0, mode);
            agg1.add(v11 * xinv[j + 1] * sc1, mode);
          }
        }
      }
    }
    if (t == 0 && c0 < end) out[first + c0] = agg0.result(mode, n);
    if (t == 1 && c1 < end) out[first + c1] = agg1.result(mode, n);
  }
  hcn_cp_async_wait<0>();  // only empty groups can be pending here
}

// T: the store's element type (`__half` or `int8_t`, src/abi.rs MMA_STORE_DTYPES).
template <class T>
__device__ __forceinline__ void score_mma(const ScoreMmaParams& p) {
  __shared__ uint4 xfrag[SCORE_MMA_MAX_XU / 4];
  __shared__ float xscale[HCN_MAX_INTERESTS], xinv[HCN_MAX_INTERESTS];
  __shared__ uint4 stages[SCORE_MMA_WARPS * SCORE_MMA_STAGES * MmaStage<T>::kBytes / 16];
  const T* __restrict__ store = static_cast<const T*>(p.store);
  const unsigned* __restrict__ rows = p.rows;
  const int* __restrict__ cand_offsets = p.cand_offsets;
  const float* __restrict__ xu = p.xu;
  float* __restrict__ out = p.out;
  const int dim = p.dim, n = p.n;
  const int user = blockIdx.y;
  const int first = cand_offsets[user];
  const int m = cand_offsets[user + 1] - first;
  const int start = blockIdx.x * SCORE_MMA_PER_BLOCK;
  if (start >= m) return;  // uniform over the block, before any barrier
  const int end = hcn_min_i(start + SCORE_MMA_PER_BLOCK, m);
  const int warp = threadIdx.x / HCN_WARP;
  const float* xu_user = xu + (long long)user * n * dim;

  // Per interest: 2^e with max|x| · 2^e in [2^14, 2^15) (e clamped to ±126, so 2^e and 2^−e
  // are normal floats), and its inverse, NaN for an interest holding a non-finite value.
  for (int j = warp; j < n; j += SCORE_MMA_WARPS)
    hcn_warp_f16_row_scale(xu_user + (long long)j * dim, dim, &xscale[j], &xinv[j]);
  __syncthreads();

  // X^U in B-fragment order (see the top of the file), hi and lo halves.
  const int nts = (n + 7) / 8;
  const int frags = dim / 16 * nts * HCN_WARP;
  for (int e = threadIdx.x; e < frags; e += blockDim.x) {
    const int l = e % HCN_WARP, nt = (e / HCN_WARP) % nts, ks = e / (HCN_WARP * nts);
    const int j = nt * 8 + (l >> 2);
    uint4 f = {0u, 0u, 0u, 0u};
    if (j < n) {
      const float* x = xu_user + j * dim + ks * 16 + 2 * (l & 3);
      const float sc = xscale[j];
      const float v[4] = {x[0] * sc, x[1] * sc, x[8] * sc, x[9] * sc};
      float hi[4], lo[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        hi[i] = __half2float(__float2half_rn(v[i]));
        lo[i] = v[i] - hi[i];  // exact in F32
      }
      f.x = hcn_pack_f16x2(hi[0], hi[1]);
      f.y = hcn_pack_f16x2(hi[2], hi[3]);
      f.z = hcn_pack_f16x2(lo[0], lo[1]);
      f.w = hcn_pack_f16x2(lo[2], lo[3]);
    }
    xfrag[e] = f;
  }
  __syncthreads();

  unsigned char* stage =
      reinterpret_cast<unsigned char*>(stages) + warp * SCORE_MMA_STAGES * MmaStage<T>::kBytes;
  // Uniform over the block (n is a kernel argument).
  if (nts <= 1) score_mma_rows<1>(p, store, rows, out, first, start, end, xfrag, xinv, stage);
  else if (nts <= 2) score_mma_rows<2>(p, store, rows, out, first, start, end, xfrag, xinv, stage);
  else if (nts <= 4) score_mma_rows<4>(p, store, rows, out, first, start, end, xfrag, xinv, stage);
  else score_mma_rows<HCN_MAX_INTERESTS / 8>(p, store, rows, out, first, start, end, xfrag, xinv, stage);
}

HCN_KERNEL_score_mma(score_mma)
