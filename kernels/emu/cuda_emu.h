// CPU emulation of the subset of CUDA the HCN kernels use, so that `kernels/*.cu` compile with a
// plain C++20 compiler (g++) and *run* on the host: CI has no GPU, and this is how every kernel's
// arithmetic, indexing, shared-memory use, barriers and warp shuffles are executed and checked
// against the Rust reference (tests/cuda_emulation.rs).
//
// Model (faithful for kernels that follow the rules in common.cuh):
// * A launch runs its blocks one after another; the threads of a block are real OS threads
//   (std::thread), one per CUDA thread, each looping over all blocks.  `__syncthreads()` is a
//   std::barrier over the block's threads; a second barrier closes each block so that no thread
//   starts block b+1 while another is still in block b.
// * `__shared__` becomes `static`: one instance per kernel, shared by all threads, reused by the
//   next block — exactly shared memory's lifetime when blocks run one at a time.  Launches are
//   therefore serialised by a global mutex (two concurrent launches would share the statics).
// * Warp shuffles go through a per-warp exchange buffer: each lane publishes its value, the warp's
//   32 threads meet at a warp barrier, read their source lane, and meet again before the buffer
//   can be reused.  Only full-mask, converged shuffles are modelled (the mask is checked).
// * `mma.sync` m16n8k16 (F16 × F16 + F32, `hcn_mma_m16n8k16` in common.cuh) is a warp
//   collective the same way: each lane publishes its fragment registers (a0..a7, b0..b3,
//   c0..c3), the warp meets, every lane assembles A (16 × 16), B (16 × 8) and C (16 × 8) from
//   all 32 lanes' fragments with PTX ISA's documented m16n8k16 layouts, computes its own four
//   accumulator elements D = A B + C (F16 values widened exactly, F32 fused multiply-adds in k
//   order), and the warp meets again.  A wrong layout in a kernel would therefore give wrong
//   results here too, not only on a GPU.  `cp.async` (16 bytes) is a synchronous copy and its
//   commit / wait are no-ops; `__syncwarp()` is the warp barrier.
// * threadIdx / blockIdx are thread_local; blockDim / gridDim are per-launch globals.
//
// Not modelled (so not checked here; the GPU tests in tests/cuda_gpu.rs cover them): real
// concurrency between blocks, memory-model races inside a block that the barriers would hide on
// a GPU, register/shared-memory limits, occupancy, timing, `__expf`'s reduced precision (here it
// is expf), fast-math flushing of denormals, and ptxas-level issues (those are caught by the
// nvcc build of the same sources for every listed architecture).
#pragma once

#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) alignas(n)

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace hcn_emu {

struct Block {
  std::unique_ptr<std::barrier<>> block_bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
  std::vector<uint64_t> exchange;  // one slot per thread, for shuffles
  std::vector<uint32_t> mma;       // kMmaWords per thread, for mma.sync
};

// Registers a lane contributes to one m16n8k16: a0..a7 (4 × f16x2), b0..b3 (2 × f16x2), c0..c3.
inline constexpr unsigned kMmaWords = 10;

inline Block* g_block = nullptr;
inline std::mutex g_launch_mutex;

inline unsigned linear_tid() {
  return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
}

template <class T>
inline T shfl_from(unsigned mask, T v, unsigned src_lane_in_warp, bool keep_own) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 64 bits");
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "cuda_emu: only full-mask shuffles are emulated (mask %08x)\n", mask);
    std::abort();
  }
  unsigned tid = linear_tid();
  unsigned warp = tid / 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  g_block->exchange[tid] = bits;
  g_block->warp_bars[warp]->arrive_and_wait();
  unsigned src = warp * 32 + src_lane_in_warp;
  T out = v;
  if (!keep_own && src < g_block->exchange.size()) {
    uint64_t got = g_block->exchange[src];
    std::memcpy(&out, &got, sizeof(T));
  }
  g_block->warp_bars[warp]->arrive_and_wait();
  return out;
}

// Runs `kernel(args...)` over `grid` × `block` as described at the top of this file.
template <class... P, class... A>
void launch(dim3 grid, dim3 block, void (*kernel)(P...), A... args) {
  std::lock_guard<std::mutex> guard(g_launch_mutex);
  unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || grid.x * grid.y * grid.z == 0) return;
  if (nthreads % 32 != 0) {
    std::fprintf(stderr, "cuda_emu: block size %u is not a multiple of 32\n", nthreads);
    std::abort();
  }
  Block b;
  b.block_bar = std::make_unique<std::barrier<>>(nthreads);
  for (unsigned w = 0; w < nthreads / 32; ++w) b.warp_bars.push_back(std::make_unique<std::barrier<>>(32));
  b.exchange.assign(nthreads, 0);
  b.mma.assign(nthreads * kMmaWords, 0);
  g_block = &b;
  blockDim = block;
  gridDim = grid;
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) {
    threads.emplace_back([=, &b]() {
      threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            blockIdx = dim3(x, y, z);
            kernel(args...);
            b.block_bar->arrive_and_wait();
          }
    });
  }
  for (auto& th : threads) th.join();
  g_block = nullptr;
}

}  // namespace hcn_emu

inline void __syncthreads() { hcn_emu::g_block->block_bar->arrive_and_wait(); }

// Full-mask only, as the shuffles (every lane of the warp must reach it).
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "cuda_emu: only full-mask __syncwarp is emulated (mask %08x)\n", mask);
    std::abort();
  }
  hcn_emu::g_block->warp_bars[hcn_emu::linear_tid() / 32]->arrive_and_wait();
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  (void)width;
  unsigned lane = hcn_emu::linear_tid() % 32;
  return hcn_emu::shfl_from(mask, v, (lane ^ (unsigned)lane_mask) % 32, false);
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  (void)width;
  unsigned lane = hcn_emu::linear_tid() % 32;
  unsigned src = lane + delta;
  return hcn_emu::shfl_from(mask, v, src % 32, src >= 32);
}

template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  (void)width;
  unsigned lane = hcn_emu::linear_tid() % 32;
  return hcn_emu::shfl_from(mask, v, lane >= delta ? lane - delta : lane, lane < delta);
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  (void)width;
  return hcn_emu::shfl_from(mask, v, (unsigned)src_lane % 32, false);
}

inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <class T>
inline T atomicAdd(T* p, T v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

// Storage types only: the kernels read half values and widen them (exactly) to float.
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half h) {
  uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  uint32_t out;
  if (exp == 0x1f) {
    out = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    out = sign | ((exp + 112) << 23) | (man << 13);  // normal: rebias 15 -> 127
  } else if (man == 0) {
    out = sign;  // signed zero
  } else {
    // Subnormal half: value = man * 2^-24, exactly representable as a normal float.
    float f = std::ldexp((float)man, -24);
    uint32_t fb;
    std::memcpy(&fb, &f, 4);
    out = sign | fb;
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

inline float __bfloat162float(__nv_bfloat16 h) {
  uint32_t u = (uint32_t)h.bits << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline unsigned short __half_as_ushort(__half h) { return h.bits; }

// Round to nearest even, as the GPU's cvt.rn.f16.f32: overflow to ±inf, subnormal halves kept,
// NaN stays NaN.
inline __half __float2half_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  uint32_t h;
  if (ax > 0x7f800000u) {
    h = 0x7e00u;  // NaN
  } else if (ax >= 0x477ff000u) {
    h = 0x7c00u;  // ≥ 65520 (and inf): rounds to inf
  } else if (ax < 0x38800000u) {
    // Below 2^-14, F16's smallest normal: a multiple of 2^-24.  v · 2^24 is exact in F32 and
    // below 1024, so rounding it to an integer (ties to even: nearbyint in the default mode) is
    // the F16 rounding; 1024 lands on the smallest normal's bits, as it should.
    float v;
    std::memcpy(&v, &ax, 4);
    h = static_cast<uint32_t>(std::nearbyint(v * 16777216.0f));
  } else {
    const uint32_t m = ax & 0x7fffffu;
    h = ((((ax >> 23) - 112u) << 10) | (m >> 13));
    const uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry may bump the exponent
  }
  return __half{static_cast<uint16_t>(sign | h)};
}

namespace hcn_emu {

inline float f16_lo(uint32_t r) { return __half2float(__half{static_cast<uint16_t>(r & 0xffffu)}); }
inline float f16_hi(uint32_t r) { return __half2float(__half{static_cast<uint16_t>(r >> 16)}); }

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 as a warp collective (see the top of this
// file).  The fragment layouts are PTX ISA's ("Matrix Fragments for mma.m16n8k16 with floating
// point type"), with groupID = lane >> 2 and threadID_in_group = lane % 4:
//   A, a_i (i = 0..7, a_{2r} low / a_{2r+1} high half of register r):
//     row = groupID for 0 ≤ i < 2 or 4 ≤ i < 6, else groupID + 8;
//     col = threadID_in_group · 2 + (i & 1), + 8 for i ≥ 4;
//   B, b_i (i = 0..3, b_{2r} low / b_{2r+1} high half of register r):
//     row = threadID_in_group · 2 + (i & 1), + 8 for i ≥ 2;  col = groupID;
//   C and D, c_i (i = 0..3):
//     row = groupID for i < 2, else groupID + 8;  col = threadID_in_group · 2 + (i & 1).
inline void mma_m16n8k16_f16_f32(float d[4], const unsigned a[4], const unsigned b[2],
                                 const float c[4]) {
  const unsigned tid = linear_tid();
  const unsigned warp = tid / 32, lane = tid % 32;
  uint32_t* mine = &g_block->mma[tid * kMmaWords];
  for (int r = 0; r < 4; ++r) mine[r] = a[r];
  for (int r = 0; r < 2; ++r) mine[4 + r] = b[r];
  for (int r = 0; r < 4; ++r) std::memcpy(&mine[6 + r], &c[r], 4);
  g_block->warp_bars[warp]->arrive_and_wait();
  float A[16][16], B[16][8], C[16][8];
  for (unsigned l = 0; l < 32; ++l) {
    const uint32_t* w = &g_block->mma[(warp * 32 + l) * kMmaWords];
    const unsigned group = l >> 2, tig = l % 4;
    for (unsigned i = 0; i < 8; ++i) {
      const unsigned row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
      const unsigned col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = (i & 1) ? f16_hi(w[i / 2]) : f16_lo(w[i / 2]);
    }
    for (unsigned i = 0; i < 4; ++i) {
      const unsigned row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      B[row][group] = (i & 1) ? f16_hi(w[4 + i / 2]) : f16_lo(w[4 + i / 2]);
    }
    for (unsigned i = 0; i < 4; ++i) {
      const unsigned row = i < 2 ? group : group + 8;
      const unsigned col = tig * 2 + (i & 1);
      std::memcpy(&C[row][col], &w[6 + i], 4);
    }
  }
  const unsigned group = lane >> 2, tig = lane % 4;
  float out[4];
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = i < 2 ? group : group + 8;
    const unsigned col = tig * 2 + (i & 1);
    float acc = C[row][col];
    for (unsigned k = 0; k < 16; ++k) acc = std::fma(A[row][k], B[k][col], acc);
    out[i] = acc;
  }
  // Every lane has read every fragment before any lane may publish its next one.
  g_block->warp_bars[warp]->arrive_and_wait();
  for (unsigned i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace hcn_emu
