// Gathers behavior tokens (SPEC §1.1): `out[i, :] = widen(store[rows[i], :])` for the stacked
// long (or short) sequences of every user of a batch, F32 out whatever the store dtype.
// `gather_f32`, `gather_f16`, `gather_bf16`, `gather_i8` read stores of that dtype.  An I8 row
// is `scale · q` (SPEC §3) as the F32 product of the widened integer and `scales[rows[i]]`,
// read once per row: the same bits as the CPU's `Kernels::gather_rows`.
//
// Mapping: one warp per gathered row, 8 warps per block, lanes stride over the D columns
// (I8 with 16-byte aligned rows: over the row's 16-value chunks, one 128-bit load each).
// Grid: (ceil(count / 8)).  Block: 256.
// Parameters: `GatherParams` (src/abi.rs).
// Assumes: every `rows[i]` < N (the host resolves ids with the store index and drops unknown
// ones before upload); `out` is [count × dim] contiguous; for I8, `scales` holds N values.
#include "common.cuh"

#define GATHER_WARPS 8

// T: the store's element type (one entry point per store dtype, src/abi.rs STORE_DTYPES).
template <class T>
__device__ __forceinline__ void gather(const GatherParams& p) {
  const T* __restrict__ store = static_cast<const T*>(p.store);
  const unsigned* __restrict__ rows = p.rows;
  float* __restrict__ out = p.out;
  const int warp = threadIdx.x / HCN_WARP;
  const int lane = threadIdx.x % HCN_WARP;
  const int i = blockIdx.x * GATHER_WARPS + warp;
  if (i >= p.count) return;
  const long long src = (long long)rows[i] * p.dim;
  float* __restrict__ dst = out + (long long)i * p.dim;
  if constexpr (HcnStore<T>::scaled) {
    const float* __restrict__ scales = p.scales;
    const float scale = scales[rows[i]];
    if (hcn_i8_rows_aligned(store, p.dim)) {
      for (int k = lane; k < p.dim / 16; k += HCN_WARP) {
        float x[16];
        hcn_load_i8x16(store + src + 16 * k, x);
#pragma unroll
        for (int e = 0; e < 16; ++e) dst[16 * k + e] = x[e] * scale;
      }
    } else {
      for (int c = lane; c < p.dim; c += HCN_WARP) dst[c] = hcn_load(store, src + c) * scale;
    }
  } else {
    for (int c = lane; c < p.dim; c += HCN_WARP) dst[c] = hcn_load(store, src + c);
  }
}

HCN_KERNEL_gather(gather)
