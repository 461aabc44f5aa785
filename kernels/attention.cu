// Poly-attention core of one layer (SPEC §1.2, Algorithm 1 / eq. 2–3), for a batch of users:
//   for head k:  head_k = softmax_over_L( Q_k K_kᵀ / sqrt(d) ) V_k          (n × d)
// written as concat(head_0 … head_{h-1}) into `out` (n × D per user).  Q, K, V are already
// projected (linear.cu).  An empty sequence (L = 0) gives a zero head output (SPEC §1.2 rule).
//
// Mapping: one block per (head, user): grid (heads, B), block 128 = 4 warps.  Each warp owns one
// interest row i (the block walks the n rows 4 at a time) and runs an online (streaming) softmax
// over the user's L keys, 32 keys per step: lane j scores key j of the tile, the warp reduces
// max / sum with shuffles, and each lane accumulates the output channels c ≡ lane (mod 32),
// receiving each key's weight by a shuffle broadcast.  Key/value tiles (32 keys × d) are staged
// in shared memory once per step and shared by the 4 warps; rows are padded to d + 1 floats so
// lane j reading key j's channel c is bank-conflict free.
// Parameters: `AttentionParams` (src/abi.rs).
// Assumes: d = head_dim ≤ HCN_MAX_HEAD_DIM (128); heads · d columns starting at column 0 of each
// Q/K/V row; kv_offsets[B + 1] ascending (user b's keys are rows kv_offsets[b] ..
// kv_offsets[b+1] of K and V); q_user_stride = 0 lets all users share one Q (layer 0, where
// Q = seeds Wqᵀ + bq does not depend on the user).  Loop bounds are uniform per block, so every
// __syncthreads is reached by all threads.
#include "common.cuh"

#define ATT_WARPS 4
#define ATT_TILE 32

__device__ __forceinline__ void attention(const AttentionParams& p) {
  const float* __restrict__ q = p.q;
  const float* __restrict__ k = p.k;
  const float* __restrict__ v = p.v;
  const int* __restrict__ kv_offsets = p.kv_offsets;
  float* __restrict__ out = p.out;
  __shared__ float ks[ATT_TILE][HCN_MAX_HEAD_DIM + 1];
  __shared__ float vs[ATT_TILE][HCN_MAX_HEAD_DIM + 1];
  __shared__ float qs[ATT_WARPS][HCN_MAX_HEAD_DIM];

  const int head = blockIdx.x;
  const int user = blockIdx.y;
  const int warp = threadIdx.x / HCN_WARP;
  const int lane = threadIdx.x % HCN_WARP;
  const int d = p.head_dim;
  const int col0 = head * d;
  const int base = kv_offsets[user];
  const int len = kv_offsets[user + 1] - base;
  const float scale = 1.0f / sqrtf((float)d);
  constexpr int CH = HCN_MAX_HEAD_DIM / HCN_WARP;  // output channels per lane (max)

  for (int i0 = 0; i0 < p.n; i0 += ATT_WARPS) {
    const int i = i0 + warp;
    const bool active = i < p.n;  // warp-uniform
    __syncthreads();  // the previous group's warps are done reading qs
    if (active) {
      const float* qrow = q + (long long)user * p.q_user_stride + (long long)i * p.ldq + col0;
      for (int c = lane; c < d; c += HCN_WARP) qs[warp][c] = qrow[c] * scale;
    }
    float m = -INFINITY;  // running max of the scores seen so far
    float l = 0.0f;       // running Σ exp(s - m)
    float acc[CH];
#pragma unroll
    for (int t = 0; t < CH; ++t) acc[t] = 0.0f;

    for (int t0 = 0; t0 < len; t0 += ATT_TILE) {
      const int tile = hcn_min_i(ATT_TILE, len - t0);
      __syncthreads();  // previous tile fully consumed (and qs written, on the first tile)
      for (int e = threadIdx.x; e < ATT_TILE * d; e += blockDim.x) {
        const int jj = e / d;
        const int c = e % d;
        float kv = 0.0f, vv = 0.0f;
        if (jj < tile) {
          const long long r = (long long)(base + t0 + jj) * p.ldkv + col0 + c;
          kv = k[r];
          vv = v[r];
        }
        ks[jj][c] = kv;
        vs[jj][c] = vv;
      }
      __syncthreads();
      if (active) {
        float s = -INFINITY;
        if (lane < tile) {
          s = 0.0f;
          for (int c = 0; c < d; ++c) s += qs[warp][c] * ks[lane][c];
        }
        const float m_new = fmaxf(m, hcn_warp_max(s));  // finite: the tile has ≥ 1 key
        const float p = lane < tile ? __expf(s - m_new) : 0.0f;
        const float corr = __expf(m - m_new);  // 0 on the first tile (m = -inf)
        l = l * corr + hcn_warp_sum(p);
#pragma unroll
        for (int t = 0; t < CH; ++t) acc[t] *= corr;
        for (int jj = 0; jj < tile; ++jj) {
          const float pj = __shfl_sync(HCN_FULL_MASK, p, jj);
#pragma unroll
          for (int t = 0; t < CH; ++t) {
            const int c = lane + t * HCN_WARP;
            if (c < d) acc[t] += pj * vs[jj][c];
          }
        }
        m = m_new;
      }
    }

    if (active) {
      // l == 0 exactly when the sequence is empty: the head output is zero (SPEC §1.2).
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      float* orow = out + ((long long)user * p.n + i) * p.ldo + col0;
#pragma unroll
      for (int t = 0; t < CH; ++t) {
        const int c = lane + t * HCN_WARP;
        if (c < d) orow[c] = acc[t] * inv;
      }
    }
  }
}

HCN_KERNEL_attention(attention)
