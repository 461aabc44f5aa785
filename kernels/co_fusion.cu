// Co-Interest Network and fusion (SPEC §1.3–1.4, eq. 4–7) for a batch of users, one launch:
//   E  = L̂ Ŝᵀ (n × n, no scaling)
//   L̃_i = Σ_j softmax_j(E_ij) Ŝ_j          S̃_j = Σ_i softmax_i(E_ij) L̂_i
//   cat = concat(blocks)   with blocks from {long = L̂, short = Ŝ, long_aligned = L̃,
//                                            short_aligned = S̃} in the model's order
//   X̃  = cat Wcᵀ + bc                       → left half of `fuse` (n × 2D per user)
//   X^U = concat(X̃, tile_n(X̂)) Wuᵀ + bu      (`fuse`'s right half holds X̂, from the host)
// Mapping: one block per user (grid (B)), block 256.  E lives in shared memory (n ≤ 64), with
// each row's max and Σexp and each column's max and Σexp; the softmax weights are recomputed on
// the fly when the n × D outputs of the concat are formed (thread per (i, c) element, strided)
// into the user's rows of `cat`; the two products are `hcn_block_linear` over the transposed
// weights, each after a `__syncthreads()`.
// Block codes: 2 bits each, block t in bits [2t, 2t+2): 0 long, 1 short, 2 long_aligned,
// 3 short_aligned; up to 16 blocks.  Block t of row i goes to columns [t·D, (t+1)·D) of `cat`.
// Parameters: `CoFusionParams` (src/abi.rs).
// Assumes: n ≤ HCN_MAX_INTERESTS; `towers` holds F of both towers as `attend_combine.cu` writes
// it: B·n rows of L̂ (user b's at rows b·n …), then B·n rows of Ŝ, D floats each; `cat` holds
// B·n rows of num_blocks·D, `fuse` and `xu` B·n rows of 2D and D; Wcᵀ is [num_blocks·D × D],
// Wuᵀ [2D × D].
#include "common.cuh"

__device__ __forceinline__ void co_fusion(const CoFusionParams& p) {
  const float* __restrict__ towers = p.towers;
  float* __restrict__ cat = p.cat;
  float* __restrict__ fuse = p.fuse;
  float* __restrict__ xu = p.xu;
  __shared__ float e[HCN_MAX_INTERESTS][HCN_MAX_INTERESTS + 1];
  __shared__ float row_max[HCN_MAX_INTERESTS], row_sum[HCN_MAX_INTERESTS];
  __shared__ float col_max[HCN_MAX_INTERESTS], col_sum[HCN_MAX_INTERESTS];

  const int n = p.n, D = p.dim, nb = p.num_blocks;
  const long long row0 = (long long)blockIdx.x * n;
  const float* L = towers + row0 * D;
  const float* S = towers + ((long long)p.users * n + row0) * D;
  float* out = cat + row0 * nb * D;

  for (int t = threadIdx.x; t < n * n; t += blockDim.x) {
    const int i = t / n, j = t % n;
    float s = 0.0f;
    for (int c = 0; c < D; ++c) s += L[(long long)i * D + c] * S[(long long)j * D + c];
    e[i][j] = s;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < 2 * n; t += blockDim.x) {
    const bool is_row = t < n;
    const int a = is_row ? t : t - n;
    float mx = -INFINITY;
    for (int b = 0; b < n; ++b) mx = fmaxf(mx, is_row ? e[a][b] : e[b][a]);
    float sum = 0.0f;
    for (int b = 0; b < n; ++b) sum += __expf((is_row ? e[a][b] : e[b][a]) - mx);
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
  for (int t = 0; t < nb; ++t) {
    const unsigned code = (p.block_codes >> (2 * t)) & 3u;
    need_l |= code == HCN_BLOCK_LONG_ALIGNED;
    need_s |= code == HCN_BLOCK_SHORT_ALIGNED;
  }
  for (int t = threadIdx.x; t < n * D; t += blockDim.x) {
    const int i = t / D, c = t % D;
    float lt = 0.0f, st = 0.0f;
    if (need_l) {  // L̃_i[c] = Σ_j softmax_j(E_ij) Ŝ_j[c]
      for (int j = 0; j < n; ++j) lt += __expf(e[i][j] - row_max[i]) * S[(long long)j * D + c];
      lt /= row_sum[i];
    }
    if (need_s) {  // S̃_i[c] = Σ_r softmax_r(E_ri) L̂_r[c]   (i plays the column index j)
      for (int r = 0; r < n; ++r) st += __expf(e[r][i] - col_max[i]) * L[(long long)r * D + c];
      st /= col_sum[i];
    }
    float* orow = out + (long long)i * nb * D;
    for (int b = 0; b < nb; ++b) {
      const unsigned code = (p.block_codes >> (2 * b)) & 3u;
      const float val = code == HCN_BLOCK_LONG    ? L[(long long)i * D + c]
                        : code == HCN_BLOCK_SHORT ? S[(long long)i * D + c]
                        : code == HCN_BLOCK_LONG_ALIGNED ? lt
                                                         : st;
      orow[b * D + c] = val;
    }
  }
  __syncthreads();
  // X̃ = cat Wcᵀ + bc into the left half of the fusion input.
  float* f = fuse + row0 * 2 * D;
  hcn_block_linear(out, (long long)nb * D, n, nb * D, p.co_wt, D, p.co_b, f, 2 * D, D, 1.0f);
  __syncthreads();
  // X^U = concat(X̃, X̂) Wuᵀ + bu.
  hcn_block_linear(f, 2 * D, n, 2 * D, p.fusion_wt, D, p.fusion_b, xu + row0 * D, D, D, 1.0f);
}

HCN_KERNEL_co_fusion(co_fusion)
