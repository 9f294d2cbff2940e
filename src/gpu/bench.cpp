// `kumiko bench kernels`: kumiko's CUDA kernels side by side with what a user would
// otherwise call, on the same card in the same process:
//   GEMM        vs cuBLASLt (same layouts, types and epilogues)        TFLOP/s
//   attention   vs cuDNN fused attention (forward + backward, causal)   TFLOP/s
//   memory-bound kernels vs cudaMemcpy device-to-device bandwidth       GB/s
// Times are CUDA-event means over repeated calls after warm-up calls. Bytes of a
// memory-bound kernel are its minimum traffic: each input read once, each output
// written once (an accumulated output counts twice).
#include "kumiko/gpu/bench.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/adamw.cuh"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/cross_entropy.cuh"
#include "kernels/cuda/cublaslt.cuh"
#include "kernels/cuda/cudnn_attention.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/layernorm.cuh"
#include "kernels/cuda/norm.cuh"
#include "kernels/cuda/rmsnorm.cuh"
#include "kumiko/core/error.h"

namespace kumiko::gpu {

namespace {

using cuda::bf16;

// Device memory for the benchmark (freed at the end), filled with small random
// values so that no kernel sees denormals, infinities or all-zero data.
class Buffers {
 public:
  ~Buffers() {
    for (void* p : owned_) cudaFree(p);
  }
  template <typename T>
  T* random(int64_t n, float scale = 0.5f) {
    T* p = raw<T>(n);
    std::vector<T> host(static_cast<size_t>(std::min<int64_t>(n, 1 << 20)));
    std::mt19937 gen(static_cast<uint32_t>(owned_.size()) + 1);
    std::normal_distribution<float> dist(0.0f, scale);
    for (auto& x : host) x = static_cast<T>(dist(gen));
    // Tile one random megaword over the buffer (content only needs to be sane).
    for (int64_t off = 0; off < n; off += static_cast<int64_t>(host.size())) {
      const int64_t count = std::min<int64_t>(static_cast<int64_t>(host.size()), n - off);
      KUMIKO_CUDA_CHECK(cudaMemcpy(p + off, host.data(), count * sizeof(T), cudaMemcpyHostToDevice));
    }
    return p;
  }
  template <typename T>
  T* raw(int64_t n) {
    void* p = nullptr;
    KUMIKO_CUDA_CHECK(cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(T)));
    owned_.push_back(p);
    return static_cast<T*>(p);
  }
  int32_t* ids(int64_t n, int32_t vocab) {
    std::vector<int32_t> host(n);
    std::mt19937 gen(7);
    std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
    for (auto& x : host) x = dist(gen);
    int32_t* p = raw<int32_t>(n);
    KUMIKO_CUDA_CHECK(cudaMemcpy(p, host.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice));
    return p;
  }

 private:
  std::vector<void*> owned_;
};

// Mean milliseconds per call.
double time_ms(cudaStream_t stream, int warmup, int iters, const std::function<void()>& op) {
  for (int i = 0; i < warmup; ++i) op();
  cudaEvent_t start, stop;
  KUMIKO_CUDA_CHECK(cudaEventCreate(&start));
  KUMIKO_CUDA_CHECK(cudaEventCreate(&stop));
  KUMIKO_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) op();
  KUMIKO_CUDA_CHECK(cudaEventRecord(stop, stream));
  KUMIKO_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  KUMIKO_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / iters;
}

struct Row {
  std::string kernel, shape;
  double ms = 0, rate = 0;            // kumiko
  std::string peer;
  double peer_ms = 0, peer_rate = 0;  // the peer on the same card
  std::string unit;                   // TFLOP/s or GB/s
};

class Table {
 public:
  void add(Row r) {
    std::printf("  %-22s %-28s %9.3f ms %8.1f %-7s | %-14s %9.3f ms %8.1f | %.2fx\n", r.kernel.c_str(),
                r.shape.c_str(), r.ms, r.rate, r.unit.c_str(), r.peer.c_str(), r.peer_ms, r.peer_rate,
                r.rate / r.peer_rate);
    std::fflush(stdout);
    rows_.push_back(std::move(r));
  }
  std::string markdown(const std::string& device) const {
    std::string s = "Device: " + device + "\n\n";
    s += "| kernel | shape | kumiko ms | kumiko rate | peer | peer ms | peer rate | kumiko / peer |\n";
    s += "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |\n";
    char buf[512];
    for (const auto& r : rows_) {
      std::snprintf(buf, sizeof buf, "| %s | %s | %.3f | %.1f %s | %s | %.3f | %.1f %s | **%.2f** |\n",
                    r.kernel.c_str(), r.shape.c_str(), r.ms, r.rate, r.unit.c_str(), r.peer.c_str(), r.peer_ms,
                    r.peer_rate, r.unit.c_str(), r.rate / r.peer_rate);
      s += buf;
    }
    return s;
  }

 private:
  std::vector<Row> rows_;
};

const char* layout_name(cuda::Layout l) {
  switch (l) {
    case cuda::Layout::NN: return "NN";
    case cuda::Layout::NT: return "NT";
    case cuda::Layout::TN: return "TN";
  }
  return "?";
}

}  // namespace

int run_kernel_benchmarks(const KernelBenchOptions& o) {
  // Opened first: a bad path fails now, not after minutes of timing.
  std::ofstream markdown_file;
  if (!o.markdown.empty()) {
    markdown_file.open(o.markdown);
    KUMIKO_USER_CHECK(markdown_file.good(), "kumiko bench kernels: --markdown ", o.markdown,
                      ": cannot open for writing");
  }
  cuda::require_devices("kumiko bench kernels", "; check nvidia-smi");
  int dev = 0;
  KUMIKO_CUDA_CHECK(cudaGetDevice(&dev));
  const std::string device = cuda::device_description(dev);
  std::printf("kumiko bench kernels on %s%s\n", device.c_str(), o.quick ? " (quick)" : "");
  std::printf("  %-22s %-28s %12s %16s | %-14s %12s %8s | %s\n", "kernel", "shape", "kumiko", "rate", "peer",
              "peer", "rate", "ratio");
  cudaStream_t stream;
  KUMIKO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const int warmup = o.quick ? 2 : 5, iters = o.quick ? 5 : 20;
  Table table;
  Buffers buf;
  cuda::CublasLt cublas;

  // --- GEMM: the three layouts of a linear layer, bf16 in / fp32 accumulate.
  {
    const int64_t n = o.quick ? 1024 : 4096;
    bf16* A = buf.random<bf16>(n * n);
    bf16* B = buf.random<bf16>(n * n);
    bf16* C = buf.raw<bf16>(n * n);
    float* Cf = buf.random<float>(n * n);
    const double flops = 2.0 * n * n * n;
    for (auto layout : {cuda::Layout::NT, cuda::Layout::NN, cuda::Layout::TN}) {
      cuda::GemmArgs g;
      g.layout = layout;
      g.M = g.N = g.K = n;
      const bool wgrad = layout == cuda::Layout::TN;  // weight gradient: fp32 out, accumulated
      g.accumulate = wgrad;
      Row r;
      r.kernel = std::string("gemm bf16 ") + layout_name(layout) + (wgrad ? " ->fp32 +=" : "");
      r.shape = std::to_string(n) + "^3";
      r.unit = "TFLOP/s";
      r.peer = "cuBLASLt";
      if (wgrad) {
        r.ms = time_ms(stream, warmup, iters, [&] { cuda::gemm<bf16, float>(g, A, B, Cf, nullptr, nullptr, stream); });
        r.peer_ms = time_ms(stream, warmup, iters,
                            [&] { cublas.gemm<bf16, float>(g, A, B, Cf, nullptr, nullptr, stream); });
      } else {
        r.ms = time_ms(stream, warmup, iters, [&] { cuda::gemm<bf16, bf16>(g, A, B, C, nullptr, nullptr, stream); });
        r.peer_ms =
            time_ms(stream, warmup, iters, [&] { cublas.gemm<bf16, bf16>(g, A, B, C, nullptr, nullptr, stream); });
      }
      r.rate = flops / (r.ms * 1e-3) / 1e12;
      r.peer_rate = flops / (r.peer_ms * 1e-3) / 1e12;
      table.add(r);
    }
    // A GPT-2 124M MLP up-projection with the fused bias + GELU epilogue.
    {
      const int64_t M = o.quick ? 4096 : 16384, N = 3072, K = 768;
      bf16* x = buf.random<bf16>(M * K);
      bf16* w = buf.random<bf16>(N * K);
      bf16* bias = buf.random<bf16>(N);
      bf16* out = buf.raw<bf16>(M * N);
      bf16* pre = buf.raw<bf16>(M * N);
      cuda::GemmArgs g;
      g.layout = cuda::Layout::NT;
      g.M = M;
      g.N = N;
      g.K = K;
      g.epilogue = cuda::Epilogue::bias_gelu;
      Row r;
      r.kernel = "gemm bf16 NT bias+gelu";
      r.shape = std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
      r.unit = "TFLOP/s";
      r.peer = "cuBLASLt";
      r.ms = time_ms(stream, warmup, iters, [&] { cuda::gemm<bf16, bf16>(g, x, w, out, bias, pre, stream); });
      r.peer_ms = time_ms(stream, warmup, iters, [&] { cublas.gemm<bf16, bf16>(g, x, w, out, bias, pre, stream); });
      r.rate = 2.0 * M * N * K / (r.ms * 1e-3) / 1e12;
      r.peer_rate = 2.0 * M * N * K / (r.peer_ms * 1e-3) / 1e12;
      table.add(r);
    }
    // fp32 (CUDA cores; the dtype = fp32 path).
    {
      const int64_t m = o.quick ? 1024 : 2048;
      float* Af = buf.random<float>(m * m);
      float* Bf = buf.random<float>(m * m);
      float* Cf32 = buf.raw<float>(m * m);
      cuda::GemmArgs g;
      g.layout = cuda::Layout::NT;
      g.M = g.N = g.K = m;
      Row r;
      r.kernel = "gemm fp32 NT";
      r.shape = std::to_string(m) + "^3";
      r.unit = "TFLOP/s";
      r.peer = "cuBLASLt fp32";
      r.ms = time_ms(stream, warmup, iters, [&] { cuda::gemm<float, float>(g, Af, Bf, Cf32, nullptr, nullptr, stream); });
      r.peer_ms =
          time_ms(stream, warmup, iters, [&] { cublas.gemm<float, float>(g, Af, Bf, Cf32, nullptr, nullptr, stream); });
      r.rate = 2.0 * m * m * m / (r.ms * 1e-3) / 1e12;
      r.peer_rate = 2.0 * m * m * m / (r.peer_ms * 1e-3) / 1e12;
      table.add(r);
    }
  }

  // --- Attention forward + backward, causal, bf16: 16384 tokens per call.
  {
    cuda::CudnnAttention cudnn;
    struct Shape {
      int64_t T, H, D;
    };
    std::vector<Shape> shapes;
    if (o.quick)
      shapes = {{1024, 12, 64}};
    else
      shapes = {{1024, 12, 64}, {2048, 12, 64}, {4096, 12, 64}, {1024, 16, 128}, {2048, 16, 128}, {4096, 16, 128}};
    for (const auto& s : shapes) {
      const int64_t B = std::max<int64_t>(1, 16384 / s.T), W = 3 * s.H * s.D, N = B * s.T;
      bf16* qkv = buf.random<bf16>(N * W, 1.0f);
      bf16* out = buf.raw<bf16>(N * s.H * s.D);
      bf16* dout = buf.random<bf16>(N * s.H * s.D);
      bf16* dqkv = buf.raw<bf16>(N * W);
      float* lse = buf.raw<float>(B * s.H * s.T);
      const size_t ws_k = cuda::attention_backward_workspace_bytes(B, s.T, s.H, s.H, s.D);
      const size_t ws_c = cudnn.workspace_bytes(B, s.T, s.H, s.H, s.D);
      void* ws = buf.raw<char>(static_cast<int64_t>(std::max(ws_k, ws_c)));
      // Causal: half of the T x T scores; backward does 2.5x the forward's matmuls.
      const double fwd = 4.0 * B * s.H * s.T * s.T * s.D / 2.0, flops = fwd * 3.5;
      Row r;
      r.kernel = "attention fwd+bwd";
      char shape[64];  // (snprintf: GCC 12 warns falsely on "literal" + std::string chains here)
      std::snprintf(shape, sizeof shape, "B%ld T%ld H%ld d%ld", static_cast<long>(B), static_cast<long>(s.T),
                    static_cast<long>(s.H), static_cast<long>(s.D));
      r.shape = shape;
      r.unit = "TFLOP/s";
      r.peer = "cuDNN";
      r.ms = time_ms(stream, warmup, iters, [&] {
        cuda::attention_forward(out, lse, qkv, B, s.T, s.H, s.H, s.D, stream);
        cuda::attention_backward(dqkv, dout, qkv, out, lse, B, s.T, s.H, s.H, s.D, ws, stream);
      });
      r.peer_ms = time_ms(stream, warmup, iters, [&] {
        cudnn.forward(out, lse, qkv, B, s.T, s.H, s.H, s.D, ws, stream);
        cudnn.backward(dqkv, dout, qkv, out, lse, B, s.T, s.H, s.H, s.D, ws, stream);
      });
      r.rate = flops / (r.ms * 1e-3) / 1e12;
      r.peer_rate = flops / (r.peer_ms * 1e-3) / 1e12;
      table.add(r);
    }
  }

  // --- Memory-bound kernels against the copy bandwidth.
  {
    const int64_t n = o.quick ? (int64_t{1} << 24) : (int64_t{1} << 28);  // elements
    float* src = buf.random<float>(n);
    float* dst = buf.raw<float>(n);
    const double copy_ms = time_ms(stream, warmup, iters, [&] {
      KUMIKO_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    });
    const double copy_gbs = 2.0 * n * sizeof(float) / (copy_ms * 1e-3) / 1e9;
    auto add = [&](const std::string& kernel, const std::string& shape, double bytes, const std::function<void()>& op) {
      Row r;
      r.kernel = kernel;
      r.shape = shape;
      r.unit = "GB/s";
      r.peer = "memcpy D2D";
      r.ms = time_ms(stream, warmup, iters, op);
      r.rate = bytes / (r.ms * 1e-3) / 1e9;
      r.peer_ms = copy_ms * bytes / (2.0 * n * sizeof(float));  // the copy's time for these bytes
      r.peer_rate = copy_gbs;
      table.add(r);
    };
    const std::string ns = std::to_string(n >> 20) + "M";
    bf16* xb = buf.random<bf16>(n);
    bf16* yb = buf.raw<bf16>(n);
    bf16* zb = buf.random<bf16>(n);
    add("cast fp32->bf16", ns, 6.0 * n, [&] { cuda::cast(yb, src, n, stream); });
    add("gelu fwd bf16", ns, 4.0 * n, [&] { cuda::gelu_forward(yb, xb, n, stream); });
    add("gelu bwd bf16", ns, 6.0 * n, [&] { cuda::gelu_backward(yb, zb, xb, n, true, stream); });
    add("residual add bf16", ns, 6.0 * n, [&] { cuda::add_inplace(yb, xb, n, stream); });
    {
      const int64_t C = 4096, N = n / C;
      bf16* w = buf.random<bf16>(C);
      bf16* b = buf.random<bf16>(C);
      float* mean = buf.raw<float>(N);
      float* rstd = buf.raw<float>(N);
      float* dw = buf.random<float>(C);
      float* db = buf.random<float>(C);
      void* ws = buf.raw<char>(static_cast<int64_t>(
          std::max(cuda::layernorm_backward_workspace_bytes(N, C), cuda::rmsnorm_backward_workspace_bytes(N, C))));
      const std::string shape = std::to_string(N) + "x" + std::to_string(C);
      add("layernorm fwd bf16", shape, 4.0 * n,
          [&] { cuda::layernorm_forward(yb, mean, rstd, xb, w, b, N, C, 1e-5f, stream); });
      add("layernorm bwd bf16", shape, 8.0 * n,
          [&] { cuda::layernorm_backward(yb, dw, db, zb, xb, w, mean, rstd, N, C, ws, stream); });
      add("rmsnorm fwd bf16", shape, 4.0 * n, [&] { cuda::rmsnorm_forward(yb, rstd, xb, w, N, C, 1e-5f, stream); });
      add("rmsnorm bwd bf16", shape, 8.0 * n,
          [&] { cuda::rmsnorm_backward(yb, dw, zb, xb, w, rstd, N, C, ws, stream); });
    }
    {
      const int64_t V = 50257, N = std::max<int64_t>(1, n / 4 / V);
      bf16* logits = buf.random<bf16>(N * V, 2.0f);
      float* losses = buf.raw<float>(N);
      int32_t* targets = buf.ids(N, static_cast<int32_t>(V));
      // Forward + backward in place: the logits are read and the gradient written.
      add("cross-entropy fwd+bwd", std::to_string(N) + "x" + std::to_string(V), 4.0 * N * V,
          [&] { cuda::cross_entropy(losses, logits, targets, N, V, true, 1.0f, stream); });
    }
    {
      const int64_t P = n / 8;  // parameters
      float* p = buf.random<float>(P);
      bf16* pb = buf.raw<bf16>(P);
      float* g = buf.random<float>(P, 1e-3f);
      float* m = buf.random<float>(P, 1e-3f);
      float* v = buf.raw<float>(P);
      KUMIKO_CUDA_CHECK(cudaMemset(v, 0, P * sizeof(float)));
      cuda::AdamWTensor t{p, pb, g, m, v, P, 0.1f};
      auto* list = buf.raw<cuda::AdamWTensor>(1);
      KUMIKO_CUDA_CHECK(cudaMemcpy(list, &t, sizeof t, cudaMemcpyHostToDevice));
      cuda::AdamWStep step;
      step.lr = 1e-4f;
      step.bias_correction1 = 0.1f;
      step.bias_correction2 = 0.05f;
      // Reads p, g, m, v; writes p, m, v and the bf16 copy: 30 bytes per parameter.
      add("adamw multi-tensor", std::to_string(P >> 20) + "M params", 30.0 * P,
          [&] { cuda::adamw_multi_tensor(list, 1, P, step, stream); });
      double* out = buf.raw<double>(1);
      void* ws = buf.raw<char>(static_cast<int64_t>(cuda::sum_squares_workspace_bytes(P)));
      add("grad-norm sum squares", std::to_string(P >> 20) + "M", 4.0 * P,
          [&] { cuda::sum_squares(out, g, P, ws, stream); });
    }
    {
      const int64_t C = 768, N = n / 4 / C;
      bf16* table_w = buf.random<bf16>(50257 * C);
      bf16* pos = buf.random<bf16>(1024 * C);
      int32_t* ids = buf.ids(N, 50257);
      bf16* out = buf.raw<bf16>(N * C);
      add("embedding fwd bf16", std::to_string(N) + "x" + std::to_string(C), 6.0 * N * C,
          [&] { cuda::embedding_forward(out, ids, table_w, pos, N, 1024, C, stream); });
    }
  }
  KUMIKO_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaStreamDestroy(stream);
  if (markdown_file.is_open()) {
    markdown_file << table.markdown(device);
    KUMIKO_USER_CHECK(markdown_file.good(), "kumiko bench kernels: --markdown ", o.markdown, ": write failed");
  }
  return 0;
}

}  // namespace kumiko::gpu
