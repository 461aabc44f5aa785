// Device-side top-k (SPEC §1.5 "Top-k returns the k largest y, ties broken by lower candidate
// position"), one user per block, many users per launch.
//
// Method: exact radix select on unique 64-bit keys, then an order-preserving compaction.
//   key(i) = ordered_bits(score_i) << 32 | (0xFFFFFFFF − i)
// ordered_bits maps floats to u32 monotonically, and the low word makes keys unique with a
// *lower* position ranking *higher* among equal scores — so "the k largest keys" is exactly the
// SPEC's top-k.  8 passes of 8 bits (MSB first) find the k-th largest key T: each pass builds a
// 256-bucket shared-memory histogram (one per warp, then summed) of the keys that match the
// digits fixed so far, and thread 0 walks it from the top.  Then every i with key(i) ≥ T (exactly min(k, m) of them) is written in
// ascending position order using a block-wide prefix sum (warp shuffle scans + per-warp totals).
// The k winners come back unordered by score; the host sorts those k (k log k, negligible next
// to m) — documented in src/cuda/mod.rs.
// Mapping: grid (B), block 256.  Output slots b·k … b·k + k − 1 (positions relative to the
// user's first candidate, and scores); slots past min(k, m) get position −1.
// Parameters: `TopkParams` (src/abi.rs).
// Assumes: m < 2^31. Ties: -0.0 = +0.0; a NaN ranks last (as on the CPU).
#include "common.cuh"

#define TOPK_THREADS 256
#define TOPK_WARPS (TOPK_THREADS / HCN_WARP)

// The order of the CPU (src/post.rs, `order_bits`): -0.0 ties with +0.0, a NaN ranks below
// every number (the engine rejects non-finite scores anyway; this keeps the kernel's proposals
// the CPU's at a tie on the k-th place).
__device__ __forceinline__ unsigned long long topk_key(float s, int i) {
  unsigned u = __float_as_uint(s);
  if (u == 0x80000000u) u = 0u;  // -0.0 -> +0.0
  const unsigned ordered = (s != s) ? 0u : ((u & 0x80000000u) ? ~u : (u | 0x80000000u));
  return ((unsigned long long)ordered << 32) | (unsigned long long)(0xFFFFFFFFu - (unsigned)i);
}

__device__ __forceinline__ void topk(const TopkParams& p) {
  const float* __restrict__ scores = p.scores;
  const int* __restrict__ offsets = p.offsets;
  int* __restrict__ out_pos = p.out_pos;
  float* __restrict__ out_score = p.out_score;
  // Per-warp histograms: the first passes see scores with equal high bits (same sign and
  // exponent), so one shared histogram would put every thread's atomic on the same word.
  __shared__ unsigned warp_hist[TOPK_WARPS][256];
  __shared__ unsigned hist[256];
  __shared__ unsigned long long prefix;
  __shared__ unsigned long long mask;
  __shared__ unsigned remaining;
  __shared__ int warp_tot[TOPK_WARPS];
  __shared__ int written;

  const int user = blockIdx.x;
  const int first = offsets[user];
  const int m = offsets[user + 1] - first;
  const float* s = scores + first;
  const int tid = threadIdx.x;
  const int lane = tid % HCN_WARP, warp = tid / HCN_WARP;

  if (tid == 0) {
    prefix = 0ull;
    mask = 0ull;
    remaining = (unsigned)p.k;
    written = 0;
  }
  __syncthreads();
  // With m ≤ k every candidate is selected: threshold 0 keeps all of them.
  if (m > p.k && p.k > 0) {
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int b = tid; b < TOPK_WARPS * 256; b += blockDim.x) warp_hist[b / 256][b % 256] = 0u;
      __syncthreads();
      const unsigned long long pf = prefix, mk = mask;
      for (int i = tid; i < m; i += blockDim.x) {
        const unsigned long long key = topk_key(s[i], i);
        if ((key & mk) == pf) atomicAdd(&warp_hist[warp][(key >> shift) & 255ull], 1u);
      }
      __syncthreads();
      for (int b = tid; b < 256; b += blockDim.x) {
        unsigned total = 0u;
        for (int w = 0; w < TOPK_WARPS; ++w) total += warp_hist[w][b];
        hist[b] = total;
      }
      __syncthreads();
      if (tid == 0) {
        unsigned want = remaining;
        int digit = 255;
        for (; digit > 0; --digit) {
          if (hist[digit] >= want) break;
          want -= hist[digit];
        }
        remaining = want;
        prefix = pf | ((unsigned long long)digit << shift);
        mask = mk | (255ull << shift);
      }
      __syncthreads();
    }
  }
  // k == 0: select nothing; m ≤ k: select everything.
  const bool none = p.k <= 0;
  const unsigned long long threshold = (m > p.k) ? prefix : 0ull;

  for (int base = 0; base < m && !none; base += blockDim.x) {
    const int i = base + tid;
    const int flag = (i < m && topk_key(s[i], i) >= threshold) ? 1 : 0;
    int incl = flag;  // inclusive scan within the warp
    for (int o = 1; o < HCN_WARP; o <<= 1) {
      const int up = __shfl_up_sync(HCN_FULL_MASK, incl, o);
      if (lane >= o) incl += up;
    }
    if (lane == HCN_WARP - 1) warp_tot[warp] = incl;
    __syncthreads();
    int before = written;
    for (int w = 0; w < warp; ++w) before += warp_tot[w];
    if (flag) {
      const int slot = before + incl - 1;
      out_pos[(long long)user * p.k + slot] = i;
      out_score[(long long)user * p.k + slot] = s[i];
    }
    __syncthreads();
    if (tid == 0) {
      int tot = 0;
      for (int w = 0; w < TOPK_WARPS; ++w) tot += warp_tot[w];
      written += tot;
    }
    __syncthreads();
  }
  const int filled = m < p.k ? m : p.k;
  for (int slot = filled + tid; slot < p.k; slot += blockDim.x) {
    out_pos[(long long)user * p.k + slot] = -1;
    out_score[(long long)user * p.k + slot] = 0.0f;
  }
}

HCN_KERNEL_topk(topk)
