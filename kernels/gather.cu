// Gathers behavior tokens (SPEC §1.1): `out[i, :] = widen(store[rows[i], :])` for the stacked
// long (or short) sequences of every user of a batch, F32 out whatever the store dtype.
//
// Mapping: one warp per gathered row, 8 warps per block, lanes stride over the D columns.
// Grid: (ceil(count / 8)).  Block: 256.
// Assumes: every `rows[i]` < N (the host resolves ids with the store index and drops unknown
// ones before upload); `out` is [count × dim] contiguous.
#include "common.cuh"

#define GATHER_WARPS 8

template <class T>
__device__ __forceinline__ void gather_impl(const T* __restrict__ store,
                                            const unsigned* __restrict__ rows, int count, int dim,
                                            float* __restrict__ out) {
  const int warp = threadIdx.x / HCN_WARP;
  const int lane = threadIdx.x % HCN_WARP;
  const int i = blockIdx.x * GATHER_WARPS + warp;
  if (i >= count) return;
  const long long src = (long long)rows[i] * dim;
  for (int c = lane; c < dim; c += HCN_WARP) out[(long long)i * dim + c] = hcn_load(store, src + c);
}

extern "C" __global__ void gather_f32(const float* store, const unsigned* rows, int count,
                                      int dim, float* out) {
  gather_impl(store, rows, count, dim, out);
}
extern "C" __global__ void gather_f16(const __half* store, const unsigned* rows, int count,
                                      int dim, float* out) {
  gather_impl(store, rows, count, dim, out);
}
extern "C" __global__ void gather_bf16(const __nv_bfloat16* store, const unsigned* rows,
                                       int count, int dim, float* out) {
  gather_impl(store, rows, count, dim, out);
}
