// Fused gather–score–reduce over candidate rows (SPEC §1.5, eq. 8), many users per launch:
//   x = widen(store[row, :]);  s_j = x · X^U_j  (j < n);
//   y = Σ_j softmax(s)_j s_j   (mode softmax) | max_j s_j (mode max) | mean_j s_j (mode mean)
// `score_f32`, `score_f16`, `score_bf16` read stores of that dtype; compute is F32.
//
// Mapping: grid (ceil(max_m / 256), B), block 256 = 8 warps.  Block (x, b) scores candidates
// [256·x, 256·x + 256) of user b (blocks past the user's count exit at once, uniformly).  The
// user's X^U (n × D) is staged in shared memory once per block; each warp takes one candidate
// at a time: its lanes hold the row's columns c ≡ lane (mod 32) in registers (coalesced read of
// the store row; their number per lane is a compile-time 2/4/8/16/32 picked from D), and for
// each interest j the warp forms s_j with a butterfly reduction, so every lane holds the same
// s_j and the softmax aggregate runs online (running max, Σ exp, Σ exp·s) without storing the
// n scores.
// Parameters: `ScoreParams` (src/abi.rs).
// Assumes: D ≤ HCN_MAX_DIM, n · D ≤ SCORE_MAX_XU floats; every row index < N (resolved and
// checked on the host); X^U is [B·n × D] contiguous; cand_offsets[B + 1] ascending, user b's
// candidates are entries cand_offsets[b] … cand_offsets[b+1] of `rows` and of `out`.
#include "common.cuh"

#define SCORE_WARPS 8
#define SCORE_PER_BLOCK 256
#define SCORE_MAX_XU 8192  // floats of X^U in shared memory: 32 KB

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
    const long long src = (long long)rows[first + cand] * dim;
    float x[CH];
#pragma unroll
    for (int t = 0; t < CH; ++t) {
      const int c = lane + t * HCN_WARP;
      x[t] = c < dim ? hcn_load(store, src + c) : 0.0f;
    }
    float mx = -INFINITY, l = 0.0f, acc = 0.0f;
    for (int j = 0; j < n; ++j) {
      float part = 0.0f;
#pragma unroll
      for (int t = 0; t < CH; ++t) {
        const int c = lane + t * HCN_WARP;
        if (c < dim) part += x[t] * xus[j * dim + c];
      }
      const float s = hcn_warp_sum(part);
      if (mode == HCN_SCORE_SOFTMAX) {
        if (s > mx) {  // rescale the running sums to the new max (0 on the first interest)
          const float r = __expf(mx - s);
          l = l * r + 1.0f;
          acc = acc * r + s;
          mx = s;
        } else {
          const float w = __expf(s - mx);
          l += w;
          acc += w * s;
        }
      } else if (mode == HCN_SCORE_MAX) {
        mx = fmaxf(mx, s);
      } else {
        acc += s;
      }
    }
    float y;
    if (mode == HCN_SCORE_SOFTMAX) y = acc / l;
    else if (mode == HCN_SCORE_MAX) y = mx;
    else y = acc / (float)n;
    if (lane == 0) out[first + cand] = y;
  }
}

// T: the store's element type (one entry point per store dtype, src/abi.rs STORE_DTYPES).
template <class T>
__device__ __forceinline__ void score(const ScoreParams& p) {
  __shared__ float xus[SCORE_MAX_XU];
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
