// Shared helpers for every HCN kernel (SPEC §1).
//
// Every kernel file includes this header first.  Under nvcc (`__CUDACC__`) it pulls in the CUDA
// half-precision headers; in the CPU emulation build (plain g++, see `kernels/emu/cuda_emu.h`) it
// pulls in the emulation of the CUDA built-ins instead, so the very same kernel source runs in
// both.  Kernels keep to what the emulation models faithfully: full-warp (`0xffffffff`) converged
// shuffles, `__syncthreads()` reached by every thread of the block, blocks whose size is a
// multiple of 32, no dynamic shared memory.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#else
#include "emu/cuda_emu.h"
#endif

// Largest model dimension D any kernel accepts; the Rust launch helpers check it before launching.
// Bounds per-lane register arrays (D / 32 values per lane) in `score.cu`.
#define HCN_MAX_DIM 1024
// Largest head dimension d = D / h (`attention.cu` keeps key/value tiles of d floats per key in
// shared memory: 2 * 32 * (128 + 1) * 4 B = 33 KB, under the 48 KB static limit).
#define HCN_MAX_HEAD_DIM 128
// Largest number of interests n (`co_interest.cu` keeps the n × n matrix E in shared memory).
#define HCN_MAX_INTERESTS 64
#define HCN_WARP 32
#define HCN_FULL_MASK 0xffffffffu

// Score modes of SPEC §1.5, as passed to `score_*` (same numbering as the Rust side).
#define HCN_SCORE_SOFTMAX 0
#define HCN_SCORE_MAX 1
#define HCN_SCORE_MEAN 2

__device__ __forceinline__ float hcn_warp_sum(float v) {
  // Butterfly: every lane ends with the full sum (and in the same order on every lane, so all
  // lanes hold bit-identical values, which the callers rely on for uniform control flow).
  for (int o = HCN_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(HCN_FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ float hcn_warp_max(float v) {
  for (int o = HCN_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(HCN_FULL_MASK, v, o));
  return v;
}

// Stored item vectors (SPEC §3) come in three dtypes; compute is always F32.  The widening is
// exact for F16 and BF16.
__device__ __forceinline__ float hcn_load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float hcn_load(const __half* p, long long i) { return __half2float(p[i]); }
__device__ __forceinline__ float hcn_load(const __nv_bfloat16* p, long long i) {
  return __bfloat162float(p[i]);
}

__device__ __forceinline__ int hcn_min_i(int a, int b) { return a < b ? a : b; }
