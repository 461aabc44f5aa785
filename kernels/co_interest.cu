// Co-Interest Network (SPEC §1.3, eq. 4–6) for a batch of users, up to the concat:
//   E  = L̂ Ŝᵀ (n × n, no scaling)
//   L̃_i = Σ_j softmax_j(E_ij) Ŝ_j          S̃_j = Σ_i softmax_i(E_ij) L̂_i
//   out = concat(blocks)   with blocks from {long = L̂, short = Ŝ, long_aligned = L̃,
//                                            short_aligned = S̃} in the model's order.
// The projection `X̃ = out Wcᵀ + bc` is a linear.cu call on `out`.
//
// Mapping: one block per user (grid (B)), block 256.  E lives in shared memory (n ≤ 64), with
// each row's max and Σexp and each column's max and Σexp; the softmax weights are recomputed on
// the fly when the n × D outputs are formed (thread per (i, c) element, strided).
// Block codes: 2 bits each, block t in bits [2t, 2t+2): 0 long, 1 short, 2 long_aligned,
// 3 short_aligned; up to 16 blocks.  Block t of row i goes to columns [t·D, (t+1)·D) of `out`.
// Parameters: `CoInterestParams` (src/abi.rs).
// Assumes: n ≤ HCN_MAX_INTERESTS; L̂ and Ŝ rows of user b are rows b·n … b·n+n-1 (ld = ld_in).
#include "common.cuh"

#define CO_THREADS 256

__device__ __forceinline__ void co_interest(const CoInterestParams& p) {
  const float* __restrict__ lhat = p.lhat;
  const float* __restrict__ shat = p.shat;
  float* __restrict__ out = p.out;
  __shared__ float e[HCN_MAX_INTERESTS][HCN_MAX_INTERESTS + 1];
  __shared__ float row_max[HCN_MAX_INTERESTS], row_sum[HCN_MAX_INTERESTS];
  __shared__ float col_max[HCN_MAX_INTERESTS], col_sum[HCN_MAX_INTERESTS];

  const long long row0 = (long long)blockIdx.x * p.n;
  const float* L = lhat + row0 * p.ld_in;
  const float* S = shat + row0 * p.ld_in;

  for (int t = threadIdx.x; t < p.n * p.n; t += blockDim.x) {
    const int i = t / p.n, j = t % p.n;
    float s = 0.0f;
    for (int c = 0; c < p.dim; ++c)
      s += L[(long long)i * p.ld_in + c] * S[(long long)j * p.ld_in + c];
    e[i][j] = s;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < 2 * p.n; t += blockDim.x) {
    const bool is_row = t < p.n;
    const int a = is_row ? t : t - p.n;
    float mx = -INFINITY;
    for (int b = 0; b < p.n; ++b) mx = fmaxf(mx, is_row ? e[a][b] : e[b][a]);
    float sum = 0.0f;
    for (int b = 0; b < p.n; ++b) sum += __expf((is_row ? e[a][b] : e[b][a]) - mx);
    if (is_row) {
      row_max[a] = mx;
      row_sum[a] = sum;
    } else {
      col_max[a] = mx;
      col_sum[a] = sum;
    }
  }
  __syncthreads();

  bool need_l = false, need_s = false;
  for (int t = 0; t < p.num_blocks; ++t) {
    const unsigned code = (p.block_codes >> (2 * t)) & 3u;
    need_l |= code == 2u;
    need_s |= code == 3u;
  }
  for (int t = threadIdx.x; t < p.n * p.dim; t += blockDim.x) {
    const int i = t / p.dim, c = t % p.dim;
    float lt = 0.0f, st = 0.0f;
    if (need_l) {  // L̃_i[c] = Σ_j softmax_j(E_ij) Ŝ_j[c]
      for (int j = 0; j < p.n; ++j)
        lt += __expf(e[i][j] - row_max[i]) * S[(long long)j * p.ld_in + c];
      lt /= row_sum[i];
    }
    if (need_s) {  // S̃_i[c] = Σ_r softmax_r(E_ri) L̂_r[c]   (i plays the column index j)
      for (int r = 0; r < p.n; ++r)
        st += __expf(e[r][i] - col_max[i]) * L[(long long)r * p.ld_in + c];
      st /= col_sum[i];
    }
    float* orow = out + (row0 + i) * p.ldo;
    for (int b = 0; b < p.num_blocks; ++b) {
      const unsigned code = (p.block_codes >> (2 * b)) & 3u;
      const float val = code == HCN_BLOCK_LONG    ? L[(long long)i * p.ld_in + c]
                        : code == HCN_BLOCK_SHORT ? S[(long long)i * p.ld_in + c]
                        : code == HCN_BLOCK_LONG_ALIGNED ? lt
                                                         : st;
      orow[b * p.dim + c] = val;
    }
  }
}

HCN_KERNEL_co_interest(co_interest)
