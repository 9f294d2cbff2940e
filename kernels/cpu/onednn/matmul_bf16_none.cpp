// A build without oneDNN: backend.bf16_gemm = onednn is refused before it gets here.
#include "kernels/cpu/onednn/matmul_bf16_onednn.h"

#include "kumiko/core/error.h"

namespace kumiko::cpu::onednn {

bool available() { return false; }
bool built() { return false; }
std::string kernel_name() { return ""; }
Chunking chunking(bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool) { return {}; }
size_t scratchpad_in_use() { return 0; }
void set_scratchpad_budget(size_t) {}

PackedB packed_b(int64_t, int64_t, int64_t, bool) { return {}; }
bool matmul_packed(int64_t, const bf16*, int64_t, const PackedB&, const bf16*, const bf16*, bool, float*, int64_t) {
  return false;
}
bool matmul_packed(int64_t, const bf16*, int64_t, const PackedB&, const bf16*, const bf16*, bool, bf16*, int64_t) {
  return false;
}

bool matmul(bool, bool, int64_t, int64_t, int64_t, const bf16*, int64_t, const bf16*, int64_t, const bf16*, bool,
            float*, int64_t) {
  KUMIKO_CHECK(false, "matmul_bf16: this build has no oneDNN");
  return false;
}

bool matmul(bool, bool, int64_t, int64_t, int64_t, const bf16*, int64_t, const bf16*, int64_t, const bf16*, bool,
            bf16*, int64_t) {
  KUMIKO_CHECK(false, "matmul_bf16: this build has no oneDNN");
  return false;
}

}  // namespace kumiko::cpu::onednn
