// Fused attention, launch 2 of 2 per layer (SPEC §1.2 by its allowed rewrite): per sequence
// (tower, user), everything after the softmax, and the next layer's queries:
//   Z_k  = A_k X = Σ_c e^{m_c − M} acc_c / Σ_c e^{m_c − M} l_c    (flash-decoding combine of
//          `attend.cu`'s chunk partials, M = max_c m_c; n × D per head)
//   head_k = Z_k Wv_kᵀ + bv_k   (A_k V_k, since the softmax rows sum to 1), zero for an empty
//          sequence (SPEC §1.2's rule: the heads' output is zero, so H_l = bo_l)
//   H_l  = concat(head_0 … head_{h-1}) Wo_lᵀ + bo_l  → column block l of concat(H_0 … H_{r-1})
//   l < r − 1:  Q = H_l Wq_{l+1}ᵀ + bq_{l+1},  Q̃_k = Q_k Wk_{l+1,k} / sqrt(d)  → `qt_next`
//   l = r − 1:  F = concat(H_0 … H_{r-1}) Wmᵀ + bm  → `out`
// Mapping: grid (2·users), block 256: block s is sequence s (s < users: user s's long sequence,
// else user s − users's short one).  Each step is one `hcn_block_linear` (threads over the
// output elements, o fastest, coalesced transposed weights) or the combine (thread per (k, i, c)
// element), separated by `__syncthreads()`; the intermediates Z, the concat and Q live in the
// sequence's slice of `scratch` (L2-resident: a few KB to tens of KB per sequence).
// Parameters: `AttendCombineParams` (src/abi.rs).  Weights of both towers are stacked, long
// first: a tower's slice starts at tower · (its size), e.g. wvt + tower·D·D.
// Assumes: `part` and `chunks`, `chunk_keys` as `attend.cu` wrote them for this layer; h | D;
// scratch holds 2·users · (h·n·D + 2·n·D) floats, hcat 2·users · n·r·D, qt_next (l < r − 1)
// 2·users · h·n·D, out (l = r − 1) 2·users · n·D.
#include "common.cuh"

__device__ __forceinline__ void attend_combine(const AttendCombineParams& p) {
  const float* __restrict__ part = p.part;
  float* __restrict__ scratch = p.scratch;
  float* __restrict__ hcat = p.hcat;
  const int seq = blockIdx.x;
  const int tower = seq >= p.users ? 1 : 0;
  const int user = seq - tower * p.users;
  const int* __restrict__ offs = tower ? p.short_offsets : p.long_offsets;
  const int len = offs[user + 1] - offs[user];
  const int n = p.n, D = p.dim, h = p.heads, d = D / h, r = p.layers, l = p.layer;
  const long long dd = (long long)D * D;
  const long long nd = (long long)n * D;
  float* z = scratch + (long long)seq * (h * nd + 2 * nd);
  float* cat = z + h * nd;
  float* qv = cat + nd;
  float* hc = hcat + (long long)seq * n * r * D;

  // 1. Z_k = A_k X from the chunk partials (none for an empty sequence).
  const int chunks = (len + p.chunk_keys - 1) / p.chunk_keys;
  const long long ldp = D + 2;
  const long long chunk_stride = nd + 2 * n;  // n rows of D + 2
  for (long long e = threadIdx.x; e < h * nd; e += blockDim.x) {
    const int k = (int)(e / nd), i = (int)(e / D % n), c = (int)(e % D);
    const float* pr = part + ((long long)seq * h + k) * p.chunks * chunk_stride + i * ldp;
    float mx = -INFINITY;
    for (int ch = 0; ch < chunks; ++ch) mx = fmaxf(mx, pr[ch * chunk_stride + D]);
    float sum = 0.0f, acc = 0.0f;
    for (int ch = 0; ch < chunks; ++ch) {
      const float w = __expf(pr[ch * chunk_stride + D] - mx);
      sum += w * pr[ch * chunk_stride + D + 1];
      acc += w * pr[ch * chunk_stride + c];
    }
    z[e] = chunks > 0 ? acc / sum : 0.0f;
  }
  __syncthreads();
  // 2. head_k = Z_k Wv_kᵀ + bv_k into columns [k·d, (k+1)·d) of the concat; zero when empty.
  if (len > 0) {
    for (int k = 0; k < h; ++k)
      hcn_block_linear(z + k * nd, D, n, D, p.wvt + tower * dd + k * d, D,
                       p.bv + (long long)tower * D + k * d, cat + k * d, D, d, 1.0f);
  } else {
    for (long long e = threadIdx.x; e < nd; e += blockDim.x) cat[e] = 0.0f;
  }
  __syncthreads();
  // 3. H_l = concat Woᵀ + bo into column block l of concat(H_0 … H_{r-1}).
  hcn_block_linear(cat, D, n, D, p.wot + tower * dd, D, p.bo + (long long)tower * D, hc + l * D,
                   (long long)r * D, D, 1.0f);
  __syncthreads();
  if (l + 1 < r) {
    // 4. The next layer's Q = H_l Wqᵀ + bq, then Q̃_k = Q_k Wk_k / sqrt(d) (Wk as stored: its
    //    rows [k·d, (k+1)·d) are the product's input dimension).
    hcn_block_linear(hc + l * D, (long long)r * D, n, D, p.wqt + tower * dd, D,
                     p.bq + (long long)tower * D, qv, D, D, 1.0f);
    __syncthreads();
    const float scale = 1.0f / sqrtf((float)d);
    float* qn = p.qt_next + (long long)seq * h * nd;
    for (int k = 0; k < h; ++k)
      hcn_block_linear(qv + k * d, D, n, d, p.wk + tower * dd + (long long)k * d * D, D, nullptr,
                       qn + k * nd, D, D, scale);
  } else {
    // 4'. F = concat(H_0 … H_{r-1}) Wmᵀ + bm.
    hcn_block_linear(hc, (long long)r * D, n, r * D, p.wmt + tower * (long long)r * dd, D,
                     p.bm + (long long)tower * D, p.out + (long long)seq * nd, D, D, 1.0f);
  }
}

HCN_KERNEL_attend_combine(attend_combine)
