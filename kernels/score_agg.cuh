// The per-candidate aggregate of SPEC §1.5 shared by the scoring kernels (`score.cu`,
// `score_mma.cu`): softmax / max / mean of a candidate's n scores s_j, online.
#pragma once

#include "common.cuh"

// The online aggregate of one candidate's n scores s_j (SPEC §1.5), in the order j = 0, 1, ….
struct ScoreAgg {
  float mx = -INFINITY, l = 0.0f, acc = 0.0f;

  __device__ __forceinline__ void add(float s, int mode) {
    if (mode == HCN_SCORE_SOFTMAX) {
      if (s > mx) {  // rescale the running sums to the new max (0 on the first interest)
        const float r = __expf(mx - s);
        l = l * r + 1.0f;
        acc = acc * r + s;
        mx = s;
      } else {
        const float w = __expf(s - mx);
        l += w;
        acc += w * s;
      }
    } else if (mode == HCN_SCORE_MAX) {
      mx = fmaxf(mx, s);
    } else {
      acc += s;
    }
  }

  __device__ __forceinline__ float result(int mode, int n) const {
    if (mode == HCN_SCORE_SOFTMAX) return acc / l;
    if (mode == HCN_SCORE_MAX) return mx;
    return acc / (float)n;
  }
};
