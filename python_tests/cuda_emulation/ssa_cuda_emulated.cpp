// Test-only: the CUDA kernels of csrc/cuda compiled for the CPU with the emulation of
// cuda_emulation.h (and the products of emulated_products.h), registered as
// torch.ops.mtut_emulated.* for CPU tensors, with what the tests read besides the ops.
// Built on demand by python_tests/test_cuda_emulated.py; never part of the package.
#define MTUT_CUDA_EMULATE 1
#include "cuda/ssa_cuda.cu"

// The emulated kernels take CPU tensors; they get their own namespace so that they
// never stand in for the real CPU kernels. Autocast is kept out of them as out of the
// real ops (csrc/mtut_ops.cpp), here for the CPU key the emulation runs on.
namespace mtut::cuda {
std::vector<std::string> take_gemm_log() { return std::exchange(gemm_log(), {}); }
std::vector<std::string> take_fallbacks() { return std::exchange(fallback_log(), {}); }

// Every launch of one forward, backward and loss (forward and backward) at the shape of
// `feats`, as the GPU build plans it: the host code runs with the GPU build's budgets on a
// 132-SM device and nothing runs (emulation::dry_run), so `feats` can be large and unwritten.
// One line per launch: "pass kernel grid.x grid.y grid.z threads".
std::vector<std::string> launch_plan(at::TensorList feats, c10::string_view algo, int64_t students) {
  struct Restore {  // the emulation's own budgets again, also when the host code throws
    int64_t strip = kStripBudget, width = kMinStackWidth, sms = emulated_sms;
    ~Restore() {
      kStripBudget = strip, kMinStackWidth = width, emulated_sms = sms;
      emulation::dry_run = false;
    }
  } restore;
  kStripBudget = kGpuStripBudget, kMinStackWidth = kGpuMinStackWidth, emulated_sms = 132;
  emulation::dry_run = true;
  std::vector<std::string> lines;
  const auto take = [&](const char* pass) {
    for (const auto& l : std::exchange(emulation::launch_log(), {}))
      lines.push_back(std::string(pass) + " " + l.kernel + " " + std::to_string(l.grid.x) + " " +
                      std::to_string(l.grid.y) + " " + std::to_string(l.grid.z) + " " +
                      std::to_string(l.block.x * l.block.y * l.block.z));
  };
  const int64_t N = feats[0].size(0), M = static_cast<int64_t>(feats.size());
  auto [S, saved] = sqdist_forward(feats, 1e-8, algo, false, true);
  take("forward");
  const at::Tensor weight = at::zeros({N, M, M}, S.options());
  c10::List<bool> needs;
  for (int64_t m = 0; m < M; ++m) needs.push_back(true);
  sqdist_backward(feats, saved, weight, 1e-8, algo, needs, students);
  take("backward");
  const at::Tensor ce = at::zeros({M, N}, S.options());
  const at::Tensor loss =
      ssa_loss_from_sqdist(S, ce, 2.0, 0.5, "rms", feats[0].numel() / (N * feats[0].size(1)), std::nullopt);
  ssa_loss_from_sqdist_backward(at::ones_like(loss), S, ce, 2.0, 0.5, "rms", feats[0].numel() / (N * feats[0].size(1)),
                                std::nullopt);
  take("loss");
  return lines;
}
}  // namespace mtut::cuda

TORCH_LIBRARY(mtut_emulated, m) {
  m.def(mtut::schema::kSqdistForward);
  // The products run since the last call, as "operand x operand -> output" dtypes.
  m.def("take_gemm_log() -> str[]", &mtut::cuda::take_gemm_log);
  // The ATen paths taken since the last call because a pointer product's alignment was not
  // proven (products.cuh AlignmentProof), by name.
  m.def("take_fallbacks() -> str[]", &mtut::cuda::take_fallbacks);
  // Every launch of a forward, backward and loss at the inputs' shape, with the GPU build's
  // budgets on 132 SMs, none run (tools/cuda_static.py --launches prints and checks them).
  m.def("launch_plan(Tensor[] feats, str algo, int students) -> str[]", &mtut::cuda::launch_plan);
  m.def(mtut::schema::kSqdistBackward);
  m.def(mtut::schema::kLossFromSqdist);
  m.def(mtut::schema::kLossFromSqdistBackward);
}
TORCH_LIBRARY_IMPL(mtut_emulated, CPU, m) {
  m.impl("sqdist_forward", &mtut::cuda::sqdist_forward);
  m.impl("sqdist_backward", &mtut::cuda::sqdist_backward);
  m.impl("ssa_loss_from_sqdist", &mtut::cuda::ssa_loss_from_sqdist);
  m.impl("ssa_loss_from_sqdist_backward", &mtut::cuda::ssa_loss_from_sqdist_backward);
}
TORCH_LIBRARY_IMPL(mtut_emulated, AutocastCPU, m) {
  for (const char* name :
       {"sqdist_forward", "sqdist_backward", "ssa_loss_from_sqdist", "ssa_loss_from_sqdist_backward"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&mtut::without_autocast>());
}
