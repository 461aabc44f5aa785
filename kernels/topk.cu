// Device-side top-k (SPEC §1.5 "Top-k returns the k largest y, ties broken by lower candidate
// position"), many users per launch. Two ways, sharing one key and one order:
//
//   key(i) = ordered_bits(score_i) << 32 | (0xFFFFFFFF − i)
// ordered_bits maps floats to u32 monotonically (-0.0 = +0.0, a NaN below every number, as
// `src/post.rs`), and the low word makes keys unique with a *lower* position ranking *higher*
// among equal scores — so "the k largest keys" is exactly the SPEC's top-k.
//
// 1. What the plan runs (src/cuda/plan.rs `top_k_launches`): three launches over many blocks.
//    * `topk_hist`    grid (⌈max m / TOPK_CHUNK⌉, B), block 256: each block histograms the top
//      12 bits of ordered_bits (sign, exponent, 3 mantissa bits: TOPK_BUCKETS = 4096 buckets)
//      of its TOPK_CHUNK scores in shared memory and adds the non-zero buckets to the user's
//      global histogram (atomics). The histogram and the survivor counts must be zero before
//      (the plan takes them with `zeros_i32`; every other buffer of a batch is scratch).
//    * `topk_compact` same grid: each block finds, from its user's histogram, the bucket t that
//      holds the k-th largest key (a block-wide scan of 16-bucket partial sums, then one thread
//      walks its 16 buckets: no serial 4096-step walk) and the survivor count S = keys in
//      buckets ≥ t (k ≤ S unless m < k, then t = 0 and S = m). If S ≤ capacity (at most
//      TOPK_CAPACITY = 4096) the block appends the positions of its scores in buckets ≥ t to the
//      user's survivor list (a shared counter per block, one global atomic per block; the list is
//      unordered). If S > capacity — many scores share the threshold bucket (equal or very close
//      scores), or k itself is large — it appends nothing.
//    * `topk_select`  grid (B), block 256: if the user's survivor count c satisfies
//      min(k, m) ≤ c ≤ capacity, the c keys are bitonic-sorted in shared memory (descending) and
//      the first min(k, m) written **best first**. Otherwise (the overflow above, c = 0) the block
//      runs the exact single-block select (2. below) over the user's m scores, which writes the
//      winners in **position order**. Either way the result is exact; the overflow only costs
//      the old kernel's time for that user. No pass touches the position bits except the final
//      sort of ≤ capacity keys.
//    The host sorts the ≤ k winners into the one order either way (src/cuda/plan.rs; on the
//    sorted path that is one linear pass of the stable sort).
// 2. `topk` (TopkParams), one block per user — the exact fallback, also a kernel of its own (the
//    tests launch it directly): exact radix select on the unique keys, 8 passes of 8 bits (MSB
//    first), each a 256-bucket shared-memory histogram (one per warp, then summed) of the keys
//    that match the digits fixed so far, walked from the top by thread 0; then every i with
//    key(i) ≥ T (exactly min(k, m) of them) is written in ascending position order with a
//    block-wide prefix sum (warp shuffle scans + per-warp totals).
//
// Output (both): slots b·k … b·k + k − 1 (positions relative to the user's first candidate, and
// scores); slots past min(k, m) get position −1.
// Parameters: `TopkParams`, `TopkHistParams`, `TopkCompactParams`, `TopkSelectParams`
// (src/abi.rs); the #defines below are mirrored in src/cuda/launch.rs (a unit test compares).
// Assumes: m < 2^31, blockDim.x = TOPK_THREADS. Ties: -0.0 = +0.0; a NaN ranks last (as on the
// CPU).
#include "common.cuh"

#define TOPK_THREADS 256
#define TOPK_WARPS (TOPK_THREADS / HCN_WARP)
// Histogram buckets per user: the top 12 bits of ordered_bits (key >> TOPK_BUCKET_SHIFT).
#define TOPK_BUCKETS 4096
#define TOPK_BUCKET_SHIFT 52
#define TOPK_BUCKETS_PER_THREAD (TOPK_BUCKETS / TOPK_THREADS)
// Scores per block of topk_hist and topk_compact (4 per thread).
#define TOPK_CHUNK 1024
#define TOPK_CHUNK_PER_THREAD (TOPK_CHUNK / TOPK_THREADS)
// Most survivors per user topk_select sorts in shared memory (32 KB of keys).
#define TOPK_CAPACITY 4096

// The order of the CPU (src/post.rs, `order_bits`): -0.0 ties with +0.0, a NaN ranks below
// every number (the engine rejects non-finite scores anyway; this keeps the kernel's proposals
// the CPU's at a tie on the k-th place).
__device__ __forceinline__ unsigned topk_ordered(float s) {
  unsigned u = __float_as_uint(s);
  if (u == 0x80000000u) u = 0u;  // -0.0 -> +0.0
  return (s != s) ? 0u : ((u & 0x80000000u) ? ~u : (u | 0x80000000u));
}

__device__ __forceinline__ unsigned long long topk_key(float s, int i) {
  return ((unsigned long long)topk_ordered(s) << 32) |
         (unsigned long long)(0xFFFFFFFFu - (unsigned)i);
}

// The histogram bucket of a score: the top bits of its key.
__device__ __forceinline__ int topk_bucket(float s) {
  return (int)(topk_ordered(s) >> (TOPK_BUCKET_SHIFT - 32));
}

// 2. The exact single-block select for user `user` (see the top of the file).
__device__ __forceinline__ void topk_exact(const float* __restrict__ scores,
                                           const int* __restrict__ offsets,
                                           int* __restrict__ out_pos, float* __restrict__ out_score,
                                           const int k, const int user) {
  // Per-warp histograms: the first passes see scores with equal high bits (same sign and
  // exponent), so one shared histogram would put every thread's atomic on the same word.
  __shared__ unsigned warp_hist[TOPK_WARPS][256];
  __shared__ unsigned hist[256];
  __shared__ unsigned long long prefix;
  __shared__ unsigned long long mask;
  __shared__ unsigned remaining;
  __shared__ int warp_tot[TOPK_WARPS];
  __shared__ int written;

  const int first = offsets[user];
  const int m = offsets[user + 1] - first;
  const float* s = scores + first;
  const int tid = threadIdx.x;
  const int lane = tid % HCN_WARP, warp = tid / HCN_WARP;

  if (tid == 0) {
    prefix = 0ull;
    mask = 0ull;
    remaining = (unsigned)k;
    written = 0;
  }
  __syncthreads();
  // With m ≤ k every candidate is selected: threshold 0 keeps all of them.
  if (m > k && k > 0) {
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
  const bool none = k <= 0;
  const unsigned long long threshold = (m > k) ? prefix : 0ull;

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
      out_pos[(long long)user * k + slot] = i;
      out_score[(long long)user * k + slot] = s[i];
    }
    __syncthreads();
    if (tid == 0) {
      int tot = 0;
      for (int w = 0; w < TOPK_WARPS; ++w) tot += warp_tot[w];
      written += tot;
    }
    __syncthreads();
  }
  const int filled = m < k ? m : k;
  for (int slot = filled + tid; slot < k; slot += blockDim.x) {
    out_pos[(long long)user * k + slot] = -1;
    out_score[(long long)user * k + slot] = 0.0f;
  }
}


__device__ __forceinline__ void topk(const TopkParams& p) {
  topk_exact(p.scores, p.offsets, p.out_pos, p.out_score, p.k, blockIdx.x);
}

HCN_KERNEL_topk(topk)

// Exclusive prefix sum of `v` over the block's threads in thread order; `*total` gets the sum.
// Every thread of the block calls it (two barriers).
__device__ __forceinline__ int topk_block_scan(int v, int* total) {
  __shared__ int warp_sums[TOPK_WARPS];
  const int lane = threadIdx.x % HCN_WARP, warp = threadIdx.x / HCN_WARP;
  int incl = v;
  for (int o = 1; o < HCN_WARP; o <<= 1) {
    const int up = __shfl_up_sync(HCN_FULL_MASK, incl, o);
    if (lane >= o) incl += up;
  }
  if (lane == HCN_WARP - 1) warp_sums[warp] = incl;
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < TOPK_WARPS; ++w) {
    if (w < warp) before += warp_sums[w];
    all += warp_sums[w];
  }
  __syncthreads();  // warp_sums is free again
  *total = all;
  return before + incl - v;
}

// The bucket t of a user's histogram that holds the k-th largest key: fewer than k keys lie
// above it, at least k in it and above. `*survivors` gets the keys in buckets ≥ t. With fewer
// than k keys in all (m < k): t = 0 and every key survives. Every thread of the block calls it
// and gets the same answer.
__device__ __forceinline__ int topk_threshold(const int* __restrict__ hist, int k, int* survivors) {
  __shared__ int found_t, found_s;
  const int tid = threadIdx.x;
  // Thread tid sums buckets [hi − 16, hi): thread 0 the top 16, so the scan's prefix of a
  // thread is the count of keys above its buckets.
  const int hi = TOPK_BUCKETS - TOPK_BUCKETS_PER_THREAD * tid;
  int local = 0;
  for (int j = 1; j <= TOPK_BUCKETS_PER_THREAD; ++j) local += hist[hi - j];
  if (tid == 0) {
    found_t = 0;
    found_s = -1;
  }
  int total = 0;
  const int above = topk_block_scan(local, &total);  // its barriers publish found_*'s reset
  if (above < k && above + local >= k) {  // exactly one thread when total ≥ k
    int acc = above;
    for (int j = 1; j <= TOPK_BUCKETS_PER_THREAD; ++j) {
      const int h = hist[hi - j];
      if (acc + h >= k) {
        found_t = hi - j;
        found_s = acc + h;
        break;
      }
      acc += h;
    }
  }
  __syncthreads();
  const int t = found_t;
  *survivors = found_s < 0 ? total : found_s;
  return t;
}

// 1a. Histogram of a chunk of one user's scores, added to the user's global histogram.
__device__ __forceinline__ void topk_hist(const TopkHistParams& p) {
  const float* __restrict__ scores = p.scores;
  const int* __restrict__ offsets = p.offsets;
  int* __restrict__ hist = p.hist;
  __shared__ int h[TOPK_BUCKETS];
  const int user = blockIdx.y;
  const int first = offsets[user];
  const int m = offsets[user + 1] - first;
  const int begin = (int)blockIdx.x * TOPK_CHUNK;
  if (begin >= m) return;  // the whole block: this user has fewer chunks than the longest
  const int end = hcn_min_i(begin + TOPK_CHUNK, m);
  for (int b = threadIdx.x; b < TOPK_BUCKETS; b += blockDim.x) h[b] = 0;
  __syncthreads();
  for (int i = begin + (int)threadIdx.x; i < end; i += blockDim.x)
    atomicAdd(&h[topk_bucket(scores[first + i])], 1);
  __syncthreads();
  int* uh = hist + (long long)user * TOPK_BUCKETS;
  for (int b = threadIdx.x; b < TOPK_BUCKETS; b += blockDim.x) {
    const int c = h[b];
    if (c != 0) atomicAdd(&uh[b], c);
  }
}

HCN_KERNEL_topk_hist(topk_hist)

// 1b. The threshold bucket, then the chunk's survivors appended to the user's list.
__device__ __forceinline__ void topk_compact(const TopkCompactParams& p) {
  const float* __restrict__ scores = p.scores;
  const int* __restrict__ offsets = p.offsets;
  const int* __restrict__ hist = p.hist;
  int* __restrict__ survivors = p.survivors;
  int* __restrict__ counts = p.counts;
  __shared__ int block_count, block_base;
  const int user = blockIdx.y;
  const int first = offsets[user];
  const int m = offsets[user + 1] - first;
  const int begin = (int)blockIdx.x * TOPK_CHUNK;
  if (begin >= m) return;  // the whole block
  const int end = hcn_min_i(begin + TOPK_CHUNK, m);
  int total = 0;
  const int t = topk_threshold(hist + (long long)user * TOPK_BUCKETS, p.k, &total);
  // Overflow: more survivors than topk_select sorts. Append nothing; the user's count stays 0,
  // below min(k, m), and topk_select runs the exact select for it. (Uniform: every block of
  // the user computes the same total.)
  if (total > p.capacity) return;
  if (threadIdx.x == 0) block_count = 0;
  __syncthreads();
  int slot[TOPK_CHUNK_PER_THREAD];
  for (int j = 0; j < TOPK_CHUNK_PER_THREAD; ++j) {
    const int i = begin + j * TOPK_THREADS + (int)threadIdx.x;
    const bool keep = i < end && topk_bucket(scores[first + i]) >= t;
    slot[j] = keep ? atomicAdd(&block_count, 1) : -1;
  }
  __syncthreads();
  if (threadIdx.x == 0) block_base = atomicAdd(&counts[user], block_count);
  __syncthreads();
  int* us = survivors + (long long)user * p.capacity;
  for (int j = 0; j < TOPK_CHUNK_PER_THREAD; ++j) {
    const int at = block_base + slot[j];
    // The blocks of a user append exactly `total` ≤ capacity positions; the bound is a guard.
    if (slot[j] >= 0 && at < p.capacity) us[at] = begin + j * TOPK_THREADS + (int)threadIdx.x;
  }
}

HCN_KERNEL_topk_compact(topk_compact)

// 1c. Orders a user's survivors and writes the best min(k, m), or runs the exact select.
__device__ __forceinline__ void topk_select(const TopkSelectParams& p) {
  const float* __restrict__ scores = p.scores;
  const int* __restrict__ offsets = p.offsets;
  const int* __restrict__ survivors = p.survivors;
  const int* __restrict__ counts = p.counts;
  int* __restrict__ out_pos = p.out_pos;
  float* __restrict__ out_score = p.out_score;
  __shared__ unsigned long long keys[TOPK_CAPACITY];
  const int user = blockIdx.x;
  const int first = offsets[user];
  const int m = offsets[user + 1] - first;
  const int k = p.k;
  const int want = m < k ? m : k;
  const int count = counts[user];
  if (count < want || count > p.capacity || p.capacity > TOPK_CAPACITY) {
    topk_exact(scores, offsets, out_pos, out_score, k, user);  // uniform over the block
    return;
  }
  const float* s = scores + first;
  const int* us = survivors + (long long)user * p.capacity;
  int n2 = 1;
  while (n2 < count) n2 <<= 1;
  // Padding key 0 ranks below every real key (their low word is ≥ 2^31).
  for (int j = threadIdx.x; j < n2; j += blockDim.x)
    keys[j] = j < count ? topk_key(s[us[j]], us[j]) : 0ull;
  __syncthreads();
  // Bitonic sort, descending: pairs (i, i + stride) compare towards descending where bit
  // `size` of i is clear, ascending where it is set; the last merge (size = n2) is descending.
  for (int size = 2; size <= n2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int q = threadIdx.x; q < n2 / 2; q += blockDim.x) {
        const int i = (q / stride) * 2 * stride + q % stride;
        const int j = i + stride;
        const unsigned long long a = keys[i], b = keys[j];
        const bool desc = (i & size) == 0;
        if (desc ? a < b : a > b) {
          keys[i] = b;
          keys[j] = a;
        }
      }
      __syncthreads();
    }
  }
  for (int slot = threadIdx.x; slot < k; slot += blockDim.x) {
    const long long o = (long long)user * k + slot;
    if (slot < want) {
      const int pos = (int)(0xFFFFFFFFu - (unsigned)(keys[slot] & 0xFFFFFFFFull));
      out_pos[o] = pos;
      out_score[o] = s[pos];
    } else {
      out_pos[o] = -1;
      out_score[o] = 0.0f;
    }
  }
}

HCN_KERNEL_topk_select(topk_select)
