// Fused attention, launch 1 of 2 per layer (SPEC §1.2 by its allowed rewrite), both towers and
// every user of a batch in one launch, straight over the token store (no gather, no K/V
// projection of the L tokens):
//   Q_k K_kᵀ / sqrt(d) = Q̃_k Xᵀ + const   with  Q̃_k = Q_k Wk_k / sqrt(d)   (n × D per head)
// so the scores of head k are Q̃_k x_t over the raw tokens x_t = widen(store[row_t]) (I8:
// `q · scale`, the F32 product, as the CPU's gather), and what the softmax weights multiply is
// X itself: this kernel forms, per key chunk, the flash-decoding partials of A_k X
//   m_i = max_t s_it,  l_i = Σ_t exp(s_it − m_i),  acc_i = Σ_t exp(s_it − m_i) x_t   (D values)
// which `attend_combine.cu` merges over the chunks before applying Wv, Wo (and the next layer's
// Q̃, or the merge).  `attend_f32`, `attend_f16`, `attend_bf16`, `attend_i8` read token stores
// of that dtype.
//
// Mapping: grid (chunks, heads, 2·users), block 256 = 8 warps.  Block (c, k, s) takes keys
// [c·chunk_keys, (c+1)·chunk_keys) of sequence s (s < users: user s's long sequence, else user
// s − users's short one) for head k; a block past the sequence's end exits at once (uniformly).
// It walks its chunk 32 keys (one tile) at a time: the tile's tokens are staged in shared memory
// 64 columns (a slab) at a time together with the same columns of Q̃_k (n × 64); lane t scores
// key t for the query rows i ≡ warp (mod 8) (registers).  Then per row (warp-wide) the tile's
// max and Σ exp update the running (m_i, l_i) online, and the weights exp(s − m) go to shared
// memory; the tokens are staged again slab by slab and thread (i, c) accumulates
// acc_i[c] = acc_i[c] · exp(m_old − m_new) + Σ_t p_it x_t[c] straight in its slot of `part`
// (the same thread owns the same slot on every tile).  Rows padded to 65 / 33 floats: lane t
// reading key t's column c, and thread (i, c) reading p_it, are bank-conflict free.
// Output: `part` row ((s·heads + k)·chunks + c)·n + i holds [acc (D), m, l] (D + 2 floats).
// Parameters: `AttendParams` (src/abi.rs).
// Assumes: n ≤ HCN_MAX_INTERESTS; chunk_keys a positive multiple of ATTEND_KEYS; Q̃ of
// (tower, user, head) at qt + tower·qt_tower_stride + user·qt_user_stride + head·n·D (n × D,
// 1/sqrt(d) folded in; strides 0 share one Q̃ — layer 0's, a constant of the model); offsets
// ascending (users + 1 each), every row < N; for I8, `scales` holds N values.
#include "common.cuh"

#define ATTEND_KEYS 32  // keys per tile: one per lane
#define ATTEND_SLAB 64  // feature columns staged at a time
#define ATTEND_WARPS 8
#define ATTEND_ROWS (HCN_MAX_INTERESTS / ATTEND_WARPS)  // query rows per warp, at most

// T: the token store's element type.
template <class T>
__device__ __forceinline__ void attend(const AttendParams& p) {
  const T* __restrict__ store = static_cast<const T*>(p.store);
  const float* __restrict__ scales = p.scales;
  const float* __restrict__ qt = p.qt;
  float* __restrict__ part = p.part;
  __shared__ float xs[ATTEND_KEYS][ATTEND_SLAB + 1];
  __shared__ float qs[HCN_MAX_INTERESTS][ATTEND_SLAB + 1];
  __shared__ float ps[HCN_MAX_INTERESTS][ATTEND_KEYS + 1];
  __shared__ float corr_s[HCN_MAX_INTERESTS];
  __shared__ long long row_s[ATTEND_KEYS];
  __shared__ float scale_s[ATTEND_KEYS];

  const int chunk = blockIdx.x, head = blockIdx.y, seq = blockIdx.z;
  const int tower = seq >= p.users ? 1 : 0;
  const int user = seq - tower * p.users;
  const unsigned* __restrict__ rows = tower ? p.short_rows : p.long_rows;
  const int* __restrict__ offs = tower ? p.short_offsets : p.long_offsets;
  const int base = offs[user];
  const int len = offs[user + 1] - base;
  const int k0 = chunk * p.chunk_keys;
  if (k0 >= len) return;  // uniform over the block: this sequence has fewer chunks
  const int k_end = hcn_min_i(len, k0 + p.chunk_keys);
  const int n = p.n, D = p.dim;
  const int warp = threadIdx.x / HCN_WARP, lane = threadIdx.x % HCN_WARP;
  const float* __restrict__ q =
      qt + tower * p.qt_tower_stride + user * p.qt_user_stride + (long long)head * n * D;
  const long long ldp = D + 2;
  float* __restrict__ out = part + (((long long)seq * p.heads + head) * p.chunks + chunk) * n * ldp;

  // Stages columns [c0, c0 + w) of the tile's `keys` tokens into xs (zeros past them).
  auto stage_tokens = [&](int c0, int w, int keys) {
    for (int e = threadIdx.x; e < ATTEND_KEYS * ATTEND_SLAB; e += blockDim.x) {
      const int t = e / ATTEND_SLAB, c = e % ATTEND_SLAB;
      float v = 0.0f;
      if (t < keys && c < w) {
        v = hcn_load(store, row_s[t] + c0 + c);
        if constexpr (HcnStore<T>::scaled) v *= scale_s[t];
      }
      xs[t][c] = v;
    }
  };

  float m_run[ATTEND_ROWS], l_run[ATTEND_ROWS];
#pragma unroll
  for (int r = 0; r < ATTEND_ROWS; ++r) {
    m_run[r] = -INFINITY;
    l_run[r] = 0.0f;
  }
  for (int t0 = k0; t0 < k_end; t0 += ATTEND_KEYS) {
    const int keys = hcn_min_i(ATTEND_KEYS, k_end - t0);
    const bool first = t0 == k0;
    __syncthreads();  // the previous tile is consumed (row_s, xs, ps)
    if (threadIdx.x < ATTEND_KEYS) {
      const int t = threadIdx.x;
      long long r = 0;
      float sc = 1.0f;
      if (t < keys) {
        const unsigned row = rows[base + t0 + t];
        r = (long long)row * D;
        if constexpr (HcnStore<T>::scaled) sc = scales[row];
      }
      row_s[t] = r;
      scale_s[t] = sc;
    }
    // Scores of key `lane` for rows warp + 8·r, over the D columns slab by slab.
    float s[ATTEND_ROWS];
#pragma unroll
    for (int r = 0; r < ATTEND_ROWS; ++r) s[r] = 0.0f;
    for (int c0 = 0; c0 < D; c0 += ATTEND_SLAB) {
      const int w = hcn_min_i(ATTEND_SLAB, D - c0);
      __syncthreads();  // row_s written; the previous slab consumed
      stage_tokens(c0, w, keys);
      for (int e = threadIdx.x; e < n * ATTEND_SLAB; e += blockDim.x) {
        const int i = e / ATTEND_SLAB, c = e % ATTEND_SLAB;
        qs[i][c] = c < w ? q[(long long)i * D + c0 + c] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int r = 0; r < ATTEND_ROWS; ++r) {
        const int i = warp + ATTEND_WARPS * r;
        if (i < n) {
          float a = 0.0f;
          for (int c = 0; c < w; ++c) a += qs[i][c] * xs[lane][c];
          s[r] += a;
        }
      }
    }
    // Online softmax update per row (warp-wide; every lane ends with the same m and l).
#pragma unroll
    for (int r = 0; r < ATTEND_ROWS; ++r) {
      const int i = warp + ATTEND_WARPS * r;
      if (i < n) {  // warp-uniform
        const float v = lane < keys ? s[r] : -INFINITY;
        const float m_new = fmaxf(m_run[r], hcn_warp_max(v));  // finite: the tile has a key
        const float e = lane < keys ? __expf(v - m_new) : 0.0f;
        const float corr = __expf(m_run[r] - m_new);  // 0 on the first tile
        l_run[r] = l_run[r] * corr + hcn_warp_sum(e);
        m_run[r] = m_new;
        ps[i][lane] = e;
        if (lane == 0) corr_s[i] = corr;
      }
    }
    // acc_i[c] = acc_i[c] · corr_i + Σ_t p_it x_t[c], slab by slab.
    for (int c0 = 0; c0 < D; c0 += ATTEND_SLAB) {
      const int w = hcn_min_i(ATTEND_SLAB, D - c0);
      __syncthreads();  // ps / corr_s written; the previous slab consumed
      stage_tokens(c0, w, keys);
      __syncthreads();
      for (int e = threadIdx.x; e < n * ATTEND_SLAB; e += blockDim.x) {
        const int i = e / ATTEND_SLAB, c = e % ATTEND_SLAB;
        if (c < w) {
          float a = 0.0f;
          for (int t = 0; t < keys; ++t) a += ps[i][t] * xs[t][c];
          float* slot = out + i * ldp + c0 + c;
          *slot = first ? a : *slot * corr_s[i] + a;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < ATTEND_ROWS; ++r) {
    const int i = warp + ATTEND_WARPS * r;
    if (i < n && lane == 0) {
      out[i * ldp + D] = m_run[r];
      out[i * ldp + D + 1] = l_run[r];
    }
  }
}

HCN_KERNEL_attend(attend)
