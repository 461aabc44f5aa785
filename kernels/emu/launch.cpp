// Host entry point of the CPU emulation build: `hcn_emu_launch(name, grid, block, params, size)`
// runs the kernel entry point `name` (any of HCN_KERNELS, generated from src/abi.rs) from the very
// same `kernels/*.cu` source through `hcn_emu::launch` (cuda_emu.h), with `*params` as its one
// argument, the kernel's parameter struct.  Rust calls it through `hcn_prerank::cuda::emu`.
// `grid` and `block` point at 3 unsigned values each (x, y, z).  Returns 0, or
// HCN_EMU_UNKNOWN_KERNEL / HCN_EMU_PARAMS_SIZE (nothing ran).
#include "cuda_emu.h"

#include "../attend.cu"
#include "../attend_combine.cu"
#include "../attend_mma.cu"
#include "../co_fusion.cu"
#include "../mma_test.cu"
#include "../score.cu"
#include "../score_mma.cu"
#include "../topk.cu"

#include <cstring>

#define HCN_EMU_UNKNOWN_KERNEL 1
#define HCN_EMU_PARAMS_SIZE 2

namespace {
dim3 d3(const unsigned* v) { return dim3(v[0], v[1], v[2]); }

// P is deduced from the entry point's signature: the struct the kernel takes by value.
template <class P>
int run(void (*kernel)(P), const unsigned* g, const unsigned* b, const void* params, size_t size) {
  if (size != sizeof(P)) return HCN_EMU_PARAMS_SIZE;
  P p;
  std::memcpy(&p, params, sizeof(P));
  hcn_emu::launch(d3(g), d3(b), kernel, p);
  return 0;
}
}  // namespace

extern "C" int hcn_emu_launch(const char* name, const unsigned* g, const unsigned* b,
                              const void* params, size_t size) {
#define HCN_EMU_DISPATCH(kernel) \
  if (std::strcmp(name, #kernel) == 0) return run(kernel, g, b, params, size);
  HCN_KERNELS(HCN_EMU_DISPATCH)
#undef HCN_EMU_DISPATCH
  return HCN_EMU_UNKNOWN_KERNEL;
}
