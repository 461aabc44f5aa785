// Gathers behavior tokens (SPEC §1.1): `out[i, :] = widen(store[rows[i], :])` for the stacked
// long (or short) sequences of every user of a batch, F32 out whatever the store dtype.
//
// Mapping: one warp per gathered row, 8 warps per block, lanes stride over the D columns.
// Grid: (ceil(count / 8)).  Block: 256.
// Parameters: `GatherParams` (src/abi.rs).
// Assumes: every `rows[i]` < N (the host resolves ids with the store index and drops unknown
// ones before upload); `out` is [count × dim] contiguous.
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
  for (int c = lane; c < p.dim; c += HCN_WARP)
    out[(long long)i * p.dim + c] = hcn_load(store, src + c);
}

HCN_KERNEL_gather(gather)
