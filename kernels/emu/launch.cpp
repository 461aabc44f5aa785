// Host entry points of the CPU emulation build: one `extern "C"` function per kernel,
// `hcn_emu_<kernel>(grid, block, <kernel arguments>)`, which runs the kernel from the very same
// `kernels/*.cu` source through `hcn_emu::launch` (cuda_emu.h).  Rust calls these through
// `hcn_prerank::cuda::emu` (FFI declarations there must match the signatures here).
// `grid` and `block` point at 3 unsigned values each (x, y, z).
#include "cuda_emu.h"

#include "../attention.cu"
#include "../co_interest.cu"
#include "../gather.cu"
#include "../linear.cu"
#include "../score.cu"
#include "../topk.cu"

namespace {
dim3 d3(const unsigned* v) { return dim3(v[0], v[1], v[2]); }
}  // namespace

extern "C" {

void hcn_emu_linear_f32(const unsigned* g, const unsigned* b, const float* x, int ldx,
                        const float* w, const float* bias, float* y, int ldy, int rows,
                        int in_dim, int out_dim, int relu) {
  hcn_emu::launch(d3(g), d3(b), linear_f32, x, ldx, w, bias, y, ldy, rows, in_dim, out_dim, relu);
}

void hcn_emu_gather_f32(const unsigned* g, const unsigned* b, const void* store,
                        const unsigned* rows, int count, int dim, float* out) {
  hcn_emu::launch(d3(g), d3(b), gather_f32, (const float*)store, rows, count, dim, out);
}
void hcn_emu_gather_f16(const unsigned* g, const unsigned* b, const void* store,
                        const unsigned* rows, int count, int dim, float* out) {
  hcn_emu::launch(d3(g), d3(b), gather_f16, (const __half*)store, rows, count, dim, out);
}
void hcn_emu_gather_bf16(const unsigned* g, const unsigned* b, const void* store,
                         const unsigned* rows, int count, int dim, float* out) {
  hcn_emu::launch(d3(g), d3(b), gather_bf16, (const __nv_bfloat16*)store, rows, count, dim, out);
}

void hcn_emu_attention_f32(const unsigned* g, const unsigned* b, const float* q, int ldq,
                           long long q_user_stride, const float* k, const float* v, int ldkv,
                           const int* kv_offsets, float* out, int ldo, int n, int head_dim) {
  hcn_emu::launch(d3(g), d3(b), attention_f32, q, ldq, q_user_stride, k, v, ldkv, kv_offsets, out,
                  ldo, n, head_dim);
}

void hcn_emu_co_interest_f32(const unsigned* g, const unsigned* b, const float* lhat,
                             const float* shat, int ld_in, float* out, int ldo, int n, int dim,
                             int num_blocks, unsigned block_codes) {
  hcn_emu::launch(d3(g), d3(b), co_interest_f32, lhat, shat, ld_in, out, ldo, n, dim, num_blocks,
                  block_codes);
}

void hcn_emu_score_f32(const unsigned* g, const unsigned* b, const void* store, int dim,
                       const unsigned* rows, const int* offs, const float* xu, int n, int mode,
                       float* out) {
  hcn_emu::launch(d3(g), d3(b), score_f32, (const float*)store, dim, rows, offs, xu, n, mode, out);
}
void hcn_emu_score_f16(const unsigned* g, const unsigned* b, const void* store, int dim,
                       const unsigned* rows, const int* offs, const float* xu, int n, int mode,
                       float* out) {
  hcn_emu::launch(d3(g), d3(b), score_f16, (const __half*)store, dim, rows, offs, xu, n, mode,
                  out);
}
void hcn_emu_score_bf16(const unsigned* g, const unsigned* b, const void* store, int dim,
                        const unsigned* rows, const int* offs, const float* xu, int n, int mode,
                        float* out) {
  hcn_emu::launch(d3(g), d3(b), score_bf16, (const __nv_bfloat16*)store, dim, rows, offs, xu, n,
                  mode, out);
}

void hcn_emu_topk_f32(const unsigned* g, const unsigned* b, const float* scores, const int* offs,
                      int k, int* out_pos, float* out_score) {
  hcn_emu::launch(d3(g), d3(b), topk_f32, scores, offs, k, out_pos, out_score);
}

}  // extern "C"
