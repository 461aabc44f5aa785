// Fused gather–score–reduce over candidate rows (SPEC §1.5, eq. 8), many users per launch:
//   x = widen(store[row, :]);  s_j = x · X^U_j  (j < n);
//   y = Σ_j softmax(s)_j s_j   (mode softmax) | max_j s_j (mode max) | mean_j s_j (mode mean)
// `score_f32`, `score_f16`, `score_bf16`, `score_i8` read stores of that dtype; compute is F32.
// An I8 row is `scale · q` (SPEC §3): the dot products run on the widened integers q and each
// s_j is then multiplied by the row's scale (read once per row), as the CPU kernels do
// (`simd::scale_rows`).
//
// Mapping: grid (ceil(max_m / 256), B), block 256 = 8 warps.  Block (x, b) scores candidates
// [256·x, 256·x + 256) of user b (blocks past the user's count exit at once, uniformly).  The
// user's X^U (n × D) is staged in shared memory once per block.
// * F32/F16/BF16, and I8 rows that are not 16-byte aligned (D not a multiple of 16): each warp
//   takes one candidate at a time: its lanes hold the row's columns c ≡ lane (mod 32) in
//   registers (coalesced read of the store row; their number per lane is a compile-time
//   2/4/8/16/32 picked from D), and for each interest j the warp forms s_j with a butterfly
//   reduction, so every lane holds the same s_j and the softmax aggregate runs online (running
//   max, Σ exp, Σ exp·s) without storing the n scores.
// * I8 with 16-byte aligned rows (`score_rows_i8x16`): a row is D/16 chunks of 16 values, one
//   128-bit load each.  A group of G lanes (G = D/16 rounded up to a power of two, at most 32)
//   scores one candidate, so a warp scores 32/G candidates at once (D = 128: 4 per warp, each
//   row one 128-byte line); lane s of a group holds chunks s and s + 32 (D > 512 only) as 16 or
//   32 floats, s_j is a butterfly over the group's lanes.  X^U is staged with one padding float
//   after every 16 (chunk k of interest j at j·17·D/16 + 17·k) so that the group's lanes, which
//   read 16 consecutive floats each, hit distinct banks.
// Parameters: `ScoreParams` (src/abi.rs).
// Assumes: D ≤ HCN_MAX_DIM, n · D ≤ SCORE_MAX_XU floats; every row index < N (resolved and
// checked on the host); X^U is [B·n × D] contiguous; cand_offsets[B + 1] ascending, user b's
// candidates are entries cand_offsets[b] … cand_offsets[b+1] of `rows` and of `out`; for I8,
// `scales` holds N values.
#include "common.cuh"
#include "score_agg.cuh"

#define SCORE_WARPS 8
#define SCORE_PER_BLOCK 256
#define SCORE_MAX_XU 8192  // floats of X^U in shared memory: 32 KB
// The I8 layout's padded X^U: one float more per 16 (34 KB).
#define SCORE_MAX_XU_PADDED (SCORE_MAX_XU / 16 * 17)

// One warp scores candidates [start + warp, end) step SCORE_WARPS of the user whose first
// candidate is `first`.  CH = the number of columns per lane rounded up to a power of two, a
// compile-time constant so the row lives in registers and the dot-product loops unroll without
// dead iterations (CH = 2 for D ≤ 64, 4 for D ≤ 128).
template <int CH, class T>
__device__ __forceinline__ void score_rows(const ScoreParams& p, const T* __restrict__ store,
                                           const unsigned* __restrict__ rows,
                                           float* __restrict__ out, int first, int start, int end,
                                           const float* xus) {
  const int dim = p.dim, n = p.n, mode = p.mode;
  const int warp = threadIdx.x / HCN_WARP;
  const int lane = threadIdx.x % HCN_WARP;
  for (int cand = start + warp; cand < end; cand += SCORE_WARPS) {
    const unsigned row = rows[first + cand];
    const long long src = (long long)row * dim;
    float x[CH];
#pragma unroll
    for (int t = 0; t < CH; ++t) {
      const int c = lane + t * HCN_WARP;
      x[t] = c < dim ? hcn_load(store, src + c) : 0.0f;
    }
    float scale = 1.0f;
    if constexpr (HcnStore<T>::scaled) {
      const float* __restrict__ scales = p.scales;
      scale = scales[row];
    }
    ScoreAgg agg;
    for (int j = 0; j < n; ++j) {
      float part = 0.0f;
#pragma unroll
      for (int t = 0; t < CH; ++t) {
        const int c = lane + t * HCN_WARP;
        if (c < dim) part += x[t] * xus[j * dim + c];
      }
      float s = hcn_warp_sum(part);
      if constexpr (HcnStore<T>::scaled) s *= scale;
      agg.add(s, mode);
    }
    const float y = agg.result(mode, n);
    if (lane == 0) out[first + cand] = y;
  }
}

// I8 rows on 16-byte boundaries (see the mapping above).  CK = 16-value chunks per lane: 1 for
// D ≤ 512, 2 for D ≤ 1024.  `group` = lanes per candidate (a power of two ≤ 32).  Control flow
// is uniform over the warp (every lane runs every iteration, a lane without a candidate
// computes on zeros and writes nothing), so the group shuffles are full-warp.
template <int CK>
__device__ __forceinline__ void score_rows_i8x16(const ScoreParams& p,
                                                 const int8_t* __restrict__ store,
                                                 const float* __restrict__ scales,
                                                 const unsigned* __restrict__ rows,
                                                 float* __restrict__ out, int first, int start,
                                                 int end, const float* xus, int group) {
  const int dim = p.dim, n = p.n, mode = p.mode;
  const int chunks = dim / 16, dimp = chunks * 17;
  const int warp = threadIdx.x / HCN_WARP;
  const int lane = threadIdx.x % HCN_WARP;
  const int per_warp = HCN_WARP / group;
  const int s = lane % group;
  for (int base = start + warp * per_warp; base < end; base += SCORE_WARPS * per_warp) {
    const int cand = base + lane / group;
    const bool live = cand < end;
    float x[16 * CK];
    float scale = 0.0f;
    long long src = 0;
    if (live) {
      const unsigned row = rows[first + cand];
      scale = scales[row];
      src = (long long)row * dim;
    }
#pragma unroll
    for (int k = 0; k < CK; ++k) {
      const int chunk = s + k * group;
      if (live && chunk < chunks) {
        hcn_load_i8x16(store + src + 16 * chunk, x + 16 * k);
      } else {
#pragma unroll
        for (int e = 0; e < 16; ++e) x[16 * k + e] = 0.0f;
      }
    }
    ScoreAgg agg;
    for (int j = 0; j < n; ++j) {
      float part = 0.0f;
#pragma unroll
      for (int k = 0; k < CK; ++k) {
        const int chunk = s + k * group;
        if (chunk < chunks) {
          const float* xj = xus + j * dimp + chunk * 17;
#pragma unroll
          for (int e = 0; e < 16; ++e) part += x[16 * k + e] * xj[e];
        }
      }
      for (int o = group / 2; o > 0; o >>= 1) part += __shfl_xor_sync(HCN_FULL_MASK, part, o);
      agg.add(part * scale, mode);
    }
    const float y = agg.result(mode, n);
    if (live && s == 0) out[first + cand] = y;
  }
}

// T: the store's element type (one entry point per store dtype, src/abi.rs STORE_DTYPES).
template <class T>
__device__ __forceinline__ void score(const ScoreParams& p) {
  constexpr bool kScaled = HcnStore<T>::scaled;
  __shared__ float xus[kScaled ? SCORE_MAX_XU_PADDED : SCORE_MAX_XU];
  const T* __restrict__ store = static_cast<const T*>(p.store);
  const unsigned* __restrict__ rows = p.rows;
  const int* __restrict__ cand_offsets = p.cand_offsets;
  const float* __restrict__ xu = p.xu;
  float* __restrict__ out = p.out;
  const int user = blockIdx.y;
  const int first = cand_offsets[user];
  const int m = cand_offsets[user + 1] - first;
  const int start = blockIdx.x * SCORE_PER_BLOCK;
  if (start >= m) return;  // uniform over the block, before any barrier
  const int end = hcn_min_i(start + SCORE_PER_BLOCK, m);

  const float* xu_user = xu + (long long)user * p.n * p.dim;
  if constexpr (kScaled) {
    if (hcn_i8_rows_aligned(store, p.dim)) {  // uniform over the launch
      const float* __restrict__ scales = p.scales;
      // The padded layout: element (j, c) at j·17·D/16 + 17·(c/16) + c%16.
      const int dimp = p.dim / 16 * 17;
      for (int e = threadIdx.x; e < p.n * p.dim; e += blockDim.x) {
        const int j = e / p.dim, c = e % p.dim;
        xus[j * dimp + c / 16 * 17 + c % 16] = xu_user[e];
      }
      __syncthreads();
      const int chunks = p.dim / 16;
      int group = 1;
      while (group < chunks && group < HCN_WARP) group <<= 1;
      if (chunks <= HCN_WARP)
        score_rows_i8x16<1>(p, store, scales, rows, out, first, start, end, xus, group);
      else
        score_rows_i8x16<HCN_MAX_DIM / 16 / HCN_WARP>(p, store, scales, rows, out, first, start,
                                                      end, xus, group);
      return;
    }
  }
  for (int e = threadIdx.x; e < p.n * p.dim; e += blockDim.x) xus[e] = xu_user[e];
  __syncthreads();

  // Uniform over the block (dim is a kernel argument).
  const int ch = (p.dim + HCN_WARP - 1) / HCN_WARP;
  if (ch <= 2) score_rows<2>(p, store, rows, out, first, start, end, xus);
  else if (ch <= 4) score_rows<4>(p, store, rows, out, first, start, end, xus);
  else if (ch <= 8) score_rows<8>(p, store, rows, out, first, start, end, xus);
  else if (ch <= 16) score_rows<16>(p, store, rows, out, first, start, end, xus);
  else score_rows<HCN_MAX_DIM / HCN_WARP>(p, store, rows, out, first, start, end, xus);
}

HCN_KERNEL_score(score)
