// attend.cu's flash-decoding partials on tensor cores, for F16 and I8 token stores with D a
// multiple of 16: `attend_mma_f16`, `attend_mma_i8`.  Same parameters (`AttendMmaParams` =
// `AttendParams`), grid, chunking and output (`part`) as attend.cu; the plan picks this kernel
// where `launch::attend_mma_fits` holds and the store is F16 or I8 (F32 and BF16 stores, and
// other shapes, stay on attend.cu: their rows are not exact in F16 and would need a hi + lo split
// of X as well, twice the mma for the stores the pre-ranker is not meant to serve from).
//
// Per block (key chunk c, head k, sequence s), 32 keys (one tile) at a time, all n query rows:
// * S (n × 32) = Q̃_k (n × D) · Xᵀ (D × 32) on `mma.sync` m16n8k16 (hcn_mma_m16n8k16,
//   common.cuh): A = Q̃ in F16 hi + lo halves (two mma, F32 accumulation) after a per-row
//   power-of-two scale 2^e_i (max_c |Q̃_ic| · 2^e_i in [2^14, 2^15), as score_mma.cu does for
//   X^U), kept in shared memory in A-fragment order for the whole block; B = the tile's tokens,
//   exact in F16 (F16 rows; I8's integers q, the row's scale applied per key after the product).
//   s_it = acc · 2^−e_i (· scale_t).  Warp w computes keys 8w … 8w + 7 for every row.  A row of
//   Q̃ with a non-finite value gets NaN scores.
// * The online max / Σ exp per query row as attend.cu (a warp per row, lane t = key t).
// * acc (n × D) = acc · exp(m_old − m_new) + P (n × 32) · X (32 × D) on mma: A = P in hi + lo
//   halves (P in [0, 1]; for I8, P · scale_t / 2^f with 2^f ≥ the tile's largest scale, and the
//   product times 2^f), B = X.  Warp w owns feature columns 8j … 8j + 7 for j ≡ w (mod 4), every
//   row, in registers across the chunk's tiles.
// The tile's rows are fetched with 16-byte `cp.async` into shared memory (rows padded by 16 bytes
// so the B-fragment loads of a warp hit distinct banks); keys past the chunk's end are zeros.
// Output: as attend.cu, `part` row ((s·heads + k)·chunks + c)·n + i holds [acc (D), m, l].
//
// Mapping: grid (chunks, heads, 2·users), block 128 = 4 warps; a block past its sequence's end
// exits at once (uniformly), as attend.cu's.
// Assumes: D % 16 == 0, D ≤ ATTEND_MMA_MAX_DIM, 1 ≤ n ≤ HCN_MAX_INTERESTS,
// ⌈n/16⌉·16·D ≤ ATTEND_MMA_MAX_QD (src/cuda/launch.rs `attend_mma_fits`; with these the
// accumulators fit their compile-time extent); the store's base 16-byte aligned; the rest as
// attend.cu.
#include "common.cuh"

#define ATTEND_MMA_KEYS 32  // keys per tile
#define ATTEND_MMA_WARPS 4
#define ATTEND_MMA_MAX_DIM 256
// ⌈n/16⌉·16·D at most: Q̃'s A fragments (hi and lo), 16 KB of shared memory.
#define ATTEND_MMA_MAX_QD 4096

// P's A fragment (hi, lo) of rows [16·mt, 16·mt + 16), keys [16·kk, 16·kk + 16) from `ps`.
__device__ __forceinline__ void attend_mma_p_fragment(const float (*ps)[ATTEND_MMA_KEYS + 1],
                                                      int mt, int kk, int g, int t,
                                                      unsigned hi[4], unsigned lo[4]) {
  const int r0 = mt * 16 + g, c0 = kk * 16 + 2 * t;
  const float v[8] = {ps[r0][c0],     ps[r0][c0 + 1],     ps[r0 + 8][c0],     ps[r0 + 8][c0 + 1],
                      ps[r0][c0 + 8], ps[r0][c0 + 9], ps[r0 + 8][c0 + 8], ps[r0 + 8][c0 + 9]};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float h0 = __half2float(__float2half_rn(v[2 * i]));
    const float h1 = __half2float(__float2half_rn(v[2 * i + 1]));
    hi[i] = hcn_pack_f16x2(h0, h1);
    lo[i] = hcn_pack_f16x2(v[2 * i] - h0, v[2 * i + 1] - h1);
  }
}

// Two consecutive elements (columns c, c + 1) of a staged row, as an `.f16x2`.
__device__ __forceinline__ unsigned attend_mma_pair(const unsigned char* row, int c, const __half*) {
  unsigned v;
#ifdef __CUDACC__
  v = *reinterpret_cast<const unsigned*>(row + 2 * c);
#else
  memcpy(&v, row + 2 * c, 4);
#endif
  return v;
}
__device__ __forceinline__ unsigned attend_mma_pair(const unsigned char* row, int c, const int8_t*) {
  const int8_t* q = reinterpret_cast<const int8_t*>(row) + c;
  return hcn_pack_f16x2(static_cast<float>(q[0]), static_cast<float>(q[1]));
}

// One element (column c) of a staged row, as F16 bits.
__device__ __forceinline__ unsigned attend_mma_elem(const unsigned char* row, int c, const __half*) {
  unsigned short v;
#ifdef __CUDACC__
  v = *reinterpret_cast<const unsigned short*>(row + 2 * c);
#else
  memcpy(&v, row + 2 * c, 2);
#endif
  return v;
}
__device__ __forceinline__ unsigned attend_mma_elem(const unsigned char* row, int c, const int8_t*) {
  return hcn_f16_bits(static_cast<float>(reinterpret_cast<const int8_t*>(row)[c]));
}

// MT: ⌈n/16⌉ rounded up to a power of two (the accumulators' compile-time extent).
template <int MT, class T>
__device__ __forceinline__ void attend_mma_body(const AttendMmaParams& p, const uint4* qfrag,
                                                const float* qinv, unsigned char* xs,
                                                float (*ps)[ATTEND_MMA_KEYS + 1], float* corr_s,
                                                float* m_s, float* l_s, long long* row_s,
                                                float* scale_s, float* tile_f) {
  // The largest D with ⌈n/16⌉ m-tiles for this MT (⌈n/16⌉ ≥ 1, 2, 3 for MT = 1, 2, 4), and its
  // feature n-tiles per warp.
  constexpr int kMinMts = MT == 1 ? 1 : MT / 2 + 1;
  constexpr int kMaxD0 = ATTEND_MMA_MAX_QD / (16 * kMinMts) / 16 * 16;
  constexpr int kMaxD = kMaxD0 < ATTEND_MMA_MAX_DIM ? kMaxD0 : ATTEND_MMA_MAX_DIM;
  constexpr int NP = (kMaxD / 8 + ATTEND_MMA_WARPS - 1) / ATTEND_MMA_WARPS;
  constexpr int kStride = ATTEND_MMA_MAX_DIM * (int)sizeof(T) + 16;
  const T* __restrict__ store = static_cast<const T*>(p.store);
  const unsigned char* base = reinterpret_cast<const unsigned char*>(store);
  const int chunk = blockIdx.x, head = blockIdx.y, seq = blockIdx.z;
  const int tower = seq >= p.users ? 1 : 0;
  const int user = seq - tower * p.users;
  const unsigned* __restrict__ rows = tower ? p.short_rows : p.long_rows;
  const int* __restrict__ offs = tower ? p.short_offsets : p.long_offsets;
  const int first = offs[user];
  const int len = offs[user + 1] - first;
  const int k0 = chunk * p.chunk_keys;
  const int k_end = hcn_min_i(len, k0 + p.chunk_keys);
  const int n = p.n, D = p.dim;
  const int mts = (n + 15) / 16, ks_n = D / 16, dnt = D / 8;
  const int warp = threadIdx.x / HCN_WARP, lane = threadIdx.x % HCN_WARP;
  const int g = lane >> 2, t = lane & 3;
  const int row_bytes = D * (int)sizeof(T), pieces = row_bytes / 16;
  const long long ldp = D + 2;
  float* __restrict__ out = p.part + (((long long)seq * p.heads + head) * p.chunks + chunk) * n * ldp;

  float acc[MT][NP][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < NP; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][j][i] = 0.0f;
    }
  }
  for (int t0 = k0; t0 < k_end; t0 += ATTEND_MMA_KEYS) {
    const int keys = hcn_min_i(ATTEND_MMA_KEYS, k_end - t0);
    __syncthreads();  // the previous tile is consumed (row_s, xs, ps, corr_s)
    if (threadIdx.x < ATTEND_MMA_KEYS) {
      const int k = threadIdx.x;
      long long r = -1;
      float sc = 0.0f;
      if (k < keys) {
        const unsigned row = rows[first + t0 + k];
        r = row;
        sc = 1.0f;
        if constexpr (HcnStore<T>::scaled) sc = p.scales[row];
      }
      row_s[k] = r;
      scale_s[k] = sc;
      if constexpr (HcnStore<T>::scaled) {
        // 2^f ≥ the tile's largest |scale| (2^f a normal float): P · scale / 2^f stays ≤ 1.
        const float mx = hcn_warp_max(fabsf(sc));
        if (k == 0) {
          int f = 0;
          if (mx > 0.0f && mx <= 3.40282347e38f) {
            const int biased = (int)((__float_as_uint(mx) >> 23) & 0xffu);
            f = biased - 126;  // mx < 2^(biased − 126)
            f = f < -126 ? -126 : (f > 127 ? 127 : f);
          }
          *tile_f = __uint_as_float((unsigned)(127 + f) << 23);
        }
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < ATTEND_MMA_KEYS * pieces; e += blockDim.x) {
      const int k = e / pieces, piece = e % pieces;
      unsigned char* dst = xs + k * kStride + piece * 16;
      const long long r = row_s[k];
      if (r >= 0) {
        hcn_cp_async16(dst, base + r * row_bytes + piece * 16);
      } else {
        const uint4 z = {0u, 0u, 0u, 0u};
        *reinterpret_cast<uint4*>(dst) = z;
      }
    }
    hcn_cp_async_commit();
    hcn_cp_async_wait<0>();
    __syncthreads();

    // S for keys 8·warp … 8·warp + 7 (B: key = 8·warp + g, features 16·ks + 2t …).
    {
      float s[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) s[mt][i] = 0.0f;
      }
      const unsigned char* xrow = xs + (warp * 8 + g) * kStride;
      for (int ks = 0; ks < ks_n; ++ks) {
        const unsigned b[2] = {attend_mma_pair(xrow, ks * 16 + 2 * t, store),
                               attend_mma_pair(xrow, ks * 16 + 2 * t + 8, store)};
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if (mt < mts) {  // uniform
            const uint4* f = qfrag + ((mt * ks_n + ks) * HCN_WARP + lane) * 2;
            const uint4 h = f[0], l = f[1];
            const unsigned ahi[4] = {h.x, h.y, h.z, h.w}, alo[4] = {l.x, l.y, l.z, l.w};
            hcn_mma_m16n8k16(s[mt], ahi, b, s[mt]);
            hcn_mma_m16n8k16(s[mt], alo, b, s[mt]);
          }
        }
      }
      const int key = warp * 8 + 2 * t;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (mt < mts) {
          const int r0 = mt * 16 + g, r1 = r0 + 8;
          if (r0 < n) {
            ps[r0][key] = s[mt][0] * qinv[r0] * scale_s[key];
            ps[r0][key + 1] = s[mt][1] * qinv[r0] * scale_s[key + 1];
          }
          if (r1 < n) {
            ps[r1][key] = s[mt][2] * qinv[r1] * scale_s[key];
            ps[r1][key + 1] = s[mt][3] * qinv[r1] * scale_s[key + 1];
          }
        }
      }
    }
    __syncthreads();

    // Online softmax per row (a warp per row, lane = key); P (· scale / 2^f for I8) to ps.
    const float pf = HcnStore<T>::scaled ? 1.0f / *tile_f : 1.0f;  // exact: a power of two
    for (int i = warp; i < mts * 16; i += ATTEND_MMA_WARPS) {
      if (i >= n) {  // padding rows: P = 0 (warp-uniform)
        ps[i][lane] = 0.0f;
        if (lane == 0) corr_s[i] = 0.0f;
        continue;
      }
      const float m_old = t0 == k0 ? -INFINITY : m_s[i];
      const float v = lane < keys ? ps[i][lane] : -INFINITY;
      const float m_new = fmaxf(m_old, hcn_warp_max(v));
      const float e = lane < keys ? __expf(v - m_new) : 0.0f;
      const float corr = __expf(m_old - m_new);  // 0 on the first tile
      const float l_old = t0 == k0 ? 0.0f : l_s[i];
      const float l_new = l_old * corr + hcn_warp_sum(e);
      float w = e;
      if constexpr (HcnStore<T>::scaled) w = e * (scale_s[lane] * pf);
      ps[i][lane] = w;
      if (lane == 0) {
        corr_s[i] = corr;
        m_s[i] = m_new;
        l_s[i] = l_new;
      }
    }
    __syncthreads();

    // acc = acc · corr + (P · X) (· 2^f), warp w's feature n-tiles w, w + 4, …
    const float tf = HcnStore<T>::scaled ? *tile_f : 1.0f;
    const int kks = keys > 16 ? 2 : 1;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if (mt < mts) {  // uniform
        float tmp[NP][4];
#pragma unroll
        for (int j = 0; j < NP; ++j) {
#pragma unroll
          for (int i = 0; i < 4; ++i) tmp[j][i] = 0.0f;
        }
        for (int kk = 0; kk < kks; ++kk) {
          unsigned ahi[4], alo[4];
          attend_mma_p_fragment(ps, mt, kk, g, t, ahi, alo);
          const unsigned char* x0 = xs + (kk * 16 + 2 * t) * kStride;
#pragma unroll
          for (int j = 0; j < NP; ++j) {
            const int nt = warp + j * ATTEND_MMA_WARPS;
            if (nt < dnt) {  // uniform
              const int c = nt * 8 + g;
              const unsigned b[2] = {
                  attend_mma_elem(x0, c, store) | (attend_mma_elem(x0 + kStride, c, store) << 16),
                  attend_mma_elem(x0 + 8 * kStride, c, store) |
                      (attend_mma_elem(x0 + 9 * kStride, c, store) << 16)};
              hcn_mma_m16n8k16(tmp[j], ahi, b, tmp[j]);
              hcn_mma_m16n8k16(tmp[j], alo, b, tmp[j]);
            }
          }
        }
        const int r0 = mt * 16 + g;
        const float c0 = corr_s[r0], c1 = corr_s[r0 + 8];
#pragma unroll
        for (int j = 0; j < NP; ++j) {
          acc[mt][j][0] = acc[mt][j][0] * c0 + tmp[j][0] * tf;
          acc[mt][j][1] = acc[mt][j][1] * c0 + tmp[j][1] * tf;
          acc[mt][j][2] = acc[mt][j][2] * c1 + tmp[j][2] * tf;
          acc[mt][j][3] = acc[mt][j][3] * c1 + tmp[j][3] * tf;
        }
      }
    }
  }
  // [acc, m, l] per row.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      const int nt = warp + j * ATTEND_MMA_WARPS;
      if (mt < mts && nt < dnt) {
        const int r0 = mt * 16 + g, r1 = r0 + 8, c = nt * 8 + 2 * t;
        if (r0 < n) {
          out[r0 * ldp + c] = acc[mt][j][0];
          out[r0 * ldp + c + 1] = acc[mt][j][1];
        }
        if (r1 < n) {
          out[r1 * ldp + c] = acc[mt][j][2];
          out[r1 * ldp + c + 1] = acc[mt][j][3];
        }
      }
    }
  }
  __syncthreads();  // m_s, l_s of the last tile
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    out[i * ldp + D] = m_s[i];
    out[i * ldp + D + 1] = l_s[i];
  }
}

// T: the token store's element type (`__half` or `int8_t`, src/abi.rs MMA_STORE_DTYPES).
template <class T>
__device__ __forceinline__ void attend_mma(const AttendMmaParams& p) {
  __shared__ uint4 qfrag[ATTEND_MMA_MAX_QD / 4];  // per (mt, ks, lane): {hi a0..a3}, {lo a0..a3}
  __shared__ float qscale[HCN_MAX_INTERESTS], qinv[HCN_MAX_INTERESTS];
  __shared__ uint4 xs[ATTEND_MMA_KEYS * (ATTEND_MMA_MAX_DIM * sizeof(T) + 16) / 16];
  __shared__ float ps[HCN_MAX_INTERESTS][ATTEND_MMA_KEYS + 1];
  __shared__ float corr_s[HCN_MAX_INTERESTS], m_s[HCN_MAX_INTERESTS], l_s[HCN_MAX_INTERESTS];
  __shared__ long long row_s[ATTEND_MMA_KEYS];
  __shared__ float scale_s[ATTEND_MMA_KEYS];
  __shared__ float tile_f;

  const int chunk = blockIdx.x, head = blockIdx.y, seq = blockIdx.z;
  const int tower = seq >= p.users ? 1 : 0;
  const int user = seq - tower * p.users;
  const int* __restrict__ offs = tower ? p.short_offsets : p.long_offsets;
  const int len = offs[user + 1] - offs[user];
  if (chunk * p.chunk_keys >= len) return;  // uniform over the block: fewer chunks
  const int n = p.n, D = p.dim;
  const int warp = threadIdx.x / HCN_WARP;
  const float* __restrict__ q = p.qt + tower * p.qt_tower_stride + user * p.qt_user_stride +
                                (long long)head * n * D;

  // Per row of Q̃: 2^e with max|q| · 2^e in [2^14, 2^15) (e clamped to ±126) and its inverse,
  // NaN for a row holding a non-finite value.
  for (int i = warp; i < n; i += ATTEND_MMA_WARPS)
    hcn_warp_f16_row_scale(q + (long long)i * D, D, &qscale[i], &qinv[i]);
  __syncthreads();
  // Q̃ in A-fragment order, hi and lo halves; rows past n are zeros.
  const int mts = (n + 15) / 16, ks_n = D / 16;
  for (int e = threadIdx.x; e < mts * ks_n * HCN_WARP; e += blockDim.x) {
    const int l = e % HCN_WARP, ks = (e / HCN_WARP) % ks_n, mt = e / (HCN_WARP * ks_n);
    const int r0 = mt * 16 + (l >> 2), r1 = r0 + 8, c = ks * 16 + 2 * (l & 3);
    float v[8];
    const int rr[4] = {r0, r1, r0, r1}, cc[4] = {c, c, c + 8, c + 8};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = rr[i];
      const float sc = r < n ? qscale[r] : 0.0f;
      v[2 * i] = r < n ? q[(long long)r * D + cc[i]] * sc : 0.0f;
      v[2 * i + 1] = r < n ? q[(long long)r * D + cc[i] + 1] * sc : 0.0f;
    }
    unsigned hi[4], lo[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float h0 = __half2float(__float2half_rn(v[2 * i]));
      const float h1 = __half2float(__float2half_rn(v[2 * i + 1]));
      hi[i] = hcn_pack_f16x2(h0, h1);
      lo[i] = hcn_pack_f16x2(v[2 * i] - h0, v[2 * i + 1] - h1);  // exact in F32
    }
    const uint4 h = {hi[0], hi[1], hi[2], hi[3]}, l4 = {lo[0], lo[1], lo[2], lo[3]};
    qfrag[2 * e] = h;
    qfrag[2 * e + 1] = l4;
  }
  // (attend_mma_body's first barrier orders these writes before their reads.)
  unsigned char* x = reinterpret_cast<unsigned char*>(xs);
  if (mts <= 1) {
    attend_mma_body<1, T>(p, qfrag, qinv, x, ps, corr_s, m_s, l_s, row_s, scale_s, &tile_f);
  } else if (mts <= 2) {
    attend_mma_body<2, T>(p, qfrag, qinv, x, ps, corr_s, m_s, l_s, row_s, scale_s, &tile_f);
  } else {
    attend_mma_body<4, T>(p, qfrag, qinv, x, ps, corr_s, m_s, l_s, row_s, scale_s, &tile_f);
  }
}

HCN_KERNEL_attend_mma(attend_mma)
