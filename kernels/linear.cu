// Batched linear layer `y = x Wᵀ + b` (PyTorch nn.Linear, SPEC §1 notation), optionally followed
// by ReLU.  Every projection of SPEC §1.2–1.4 is one call: the rows of all users of a batch are
// stacked (`rows` = Σ L for K/V, B·n for Q/O/merge/co_interest/fusion), and the weight is shared.
//
// Mapping: a 32 × 32 output tile per block (x: 32 output features, y: 32 rows); block (32, 8),
// each thread owns one output feature and 4 rows.  The reduction axis is walked in 32-wide
// tiles staged in shared memory (padded to 33 columns so the W-tile reads are bank-conflict
// free; the x-tile reads are warp broadcasts).
// Grid: (ceil(out_dim / 32), ceil(rows / 32)).
// Parameters: `LinearParams` (src/abi.rs).
// Assumes: row-major x [rows × in_dim] with leading dimension ldx ≥ in_dim, W [out_dim × in_dim]
// contiguous, y with leading dimension ldy ≥ out_dim (so y may be a column block of a wider
// concat buffer); `bias` may be null (zero bias).  No alignment requirement.
#include "common.cuh"

#define LIN_TILE 32
#define LIN_ROWS_PER_THREAD 4

__device__ __forceinline__ void linear(const LinearParams& p) {
  const float* __restrict__ x = p.x;
  const float* __restrict__ w = p.w;
  const float* __restrict__ bias = p.bias;
  float* __restrict__ y = p.y;
  __shared__ float xs[LIN_TILE][LIN_TILE + 1];
  __shared__ float ws[LIN_TILE][LIN_TILE + 1];
  const int tx = threadIdx.x;  // output feature within the tile; also the k index when loading
  const int ty = threadIdx.y;  // 0..7
  const int o = blockIdx.x * LIN_TILE + tx;
  const int r0 = blockIdx.y * LIN_TILE;
  float acc[LIN_ROWS_PER_THREAD];
#pragma unroll
  for (int q = 0; q < LIN_ROWS_PER_THREAD; ++q) acc[q] = 0.0f;

  for (int k0 = 0; k0 < p.in_dim; k0 += LIN_TILE) {
    const int k = k0 + tx;
#pragma unroll
    for (int q = 0; q < LIN_ROWS_PER_THREAD; ++q) {
      const int rr = ty + 8 * q;
      const int r = r0 + rr;
      xs[rr][tx] = (r < p.rows && k < p.in_dim) ? x[(long long)r * p.ldx + k] : 0.0f;
      const int oo = blockIdx.x * LIN_TILE + rr;
      ws[rr][tx] = (oo < p.out_dim && k < p.in_dim) ? w[(long long)oo * p.in_dim + k] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < LIN_TILE; ++kk) {
      const float wv = ws[tx][kk];
#pragma unroll
      for (int q = 0; q < LIN_ROWS_PER_THREAD; ++q) acc[q] += xs[ty + 8 * q][kk] * wv;
    }
    __syncthreads();
  }

  if (o < p.out_dim) {
    const float b = bias ? bias[o] : 0.0f;
#pragma unroll
    for (int q = 0; q < LIN_ROWS_PER_THREAD; ++q) {
      const int r = r0 + ty + 8 * q;
      if (r < p.rows) {
        float v = acc[q] + b;
        if (p.relu && v < 0.0f) v = 0.0f;
        y[(long long)r * p.ldy + o] = v;
      }
    }
  }
}

HCN_KERNEL_linear(linear)
