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
};

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
