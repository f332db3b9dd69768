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
// The GPU build's split rule and tile costs, for the test against bench/gpu_model.py.
std::vector<double> split_constants(at::ScalarType operand) {
  const TileCost t = tile_cost(operand);
  const SplitRule& r = kGpuSplitRule;
  return {double(r.min_k), double(r.align), double(r.tile_overhead), double(t.rows), double(t.cols), t.step_bytes,
          double(kMaxSlices)};
}
int64_t gram_splits_of(int64_t N, int64_t Cm, int64_t Cn, int64_t d, int64_t sms, at::ScalarType operand,
                       int64_t min_k, int64_t align, int64_t tile_overhead) {
  return gram_splits(N, Cm, Cn, d, sms, tile_cost(operand), {min_k, align, tile_overhead});
}
std::vector<int64_t> stack_strip_widths(int64_t N, int64_t M, int64_t C, int64_t d) {
  return {stack_strip_width(N, M, C, d, kGpuStripBudget, kGpuMinStackWidth), kGpuStripBudget, kGpuMinStackWidth};
}
}  // namespace mtut::cuda

TORCH_LIBRARY(mtut_emulated, m) {
  m.def(mtut::schema::kSqdistForward);
  // The products run since the last call, as "operand x operand -> output" dtypes.
  m.def("take_gemm_log() -> str[]", &mtut::cuda::take_gemm_log);
  // The split-K rule of the Gram blocks, for the test against bench/gpu_model.py's copy.
  m.def("split_constants(ScalarType operand) -> float[]", &mtut::cuda::split_constants);
  m.def("gram_splits(int N, int Cm, int Cn, int d, int sms, ScalarType operand, int min_k, int align, "
        "int tile_overhead) -> int",
        &mtut::cuda::gram_splits_of);
  // The GPU build's stacked-strip width (student products), its budget and least width, likewise.
  m.def("stack_strip_width(int N, int M, int C, int d) -> int[]", &mtut::cuda::stack_strip_widths);
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
