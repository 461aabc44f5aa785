// A test of the tensor-core and cp.async wrappers of common.cuh, and of their emulation
// (tests/cuda_emulation.rs against a plain matrix product, tests/cuda_gpu.rs on a GPU against
// the emulation): d = A B + C with one `mma.sync` m16n8k16, A (16 × 16) and B (16 × 8) rounded
// to F16, C and d F32, all row-major.  Not launched by the plan.
//
// Mapping: one block of one warp.  The warp copies A, B and C into shared memory with 16-byte
// cp.async in three commit groups (A, B, C) and waits for them in turn, then builds every lane's
// fragments with the layouts documented at `hcn_mma_m16n8k16` and writes its four elements of d.
// Parameters: `MmaTestParams` (src/abi.rs).  Assumes: a, b, c 16-byte aligned.
#include "common.cuh"

__device__ __forceinline__ void mma_test(const MmaTestParams& p) {
  __shared__ uint4 sa[16 * 16 / 4], sb[16 * 8 / 4], sc[16 * 8 / 4];
  const int lane = threadIdx.x % HCN_WARP;
  const int g = lane >> 2, t = lane & 3;
  for (int q = lane; q < 64; q += HCN_WARP) hcn_cp_async16(&sa[q], p.a + 4 * q);
  hcn_cp_async_commit();
  hcn_cp_async16(&sb[lane], p.b + 4 * lane);
  hcn_cp_async_commit();
  hcn_cp_async16(&sc[lane], p.c + 4 * lane);
  hcn_cp_async_commit();
  hcn_cp_async_wait<2>();  // A has landed
  __syncwarp();
  const float* A = reinterpret_cast<const float*>(sa);
  const unsigned a[4] = {
      hcn_pack_f16x2(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]),
      hcn_pack_f16x2(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
      hcn_pack_f16x2(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
      hcn_pack_f16x2(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]),
  };
  hcn_cp_async_wait<1>();  // B
  __syncwarp();
  const float* B = reinterpret_cast<const float*>(sb);
  const unsigned b[2] = {
      hcn_pack_f16x2(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]),
      hcn_pack_f16x2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]),
  };
  hcn_cp_async_wait<0>();  // C
  __syncwarp();
  const float* C = reinterpret_cast<const float*>(sc);
  const float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                      C[(g + 8) * 8 + 2 * t + 1]};
  float d[4];
  hcn_mma_m16n8k16(d, a, b, c);
  float* __restrict__ out = p.d;
  out[g * 8 + 2 * t] = d[0];
  out[g * 8 + 2 * t + 1] = d[1];
  out[(g + 8) * 8 + 2 * t] = d[2];
  out[(g + 8) * 8 + 2 * t + 1] = d[3];
}

HCN_KERNEL_mma_test(mma_test)
