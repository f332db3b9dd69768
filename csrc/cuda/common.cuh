// What every part of the CUDA backend shares: the CUDA element types, the block sum,
// the launch helper and the budgets (csrc/cuda/ssa_cuda.cu includes the parts in order).
#pragma once

#include "ssa_common.h"

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#ifndef MTUT_CUDA_EMULATE
#include <ATen/cuda/CUDAContext.h>  // cuBLAS handle (cublas_v2.h: setup.py finds it) and device properties
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
// test-only: python_tests/cuda_emulation runs the kernels on the CPU; it supplies launch,
// DeviceScope, current_stream, the budgets, multiprocessors and unwritten
#include "cuda_emulation.h"
#endif

#include <algorithm>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mtut {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // threads per block (8 warps) of every kernel here

// CUDA spelling of the ATen element types.
template <typename T>
struct Raw {
  using type = T;
};
template <>
struct Raw<at::Half> {
  using type = __half;
};
template <>
struct Raw<at::BFloat16> {
  using type = __nv_bfloat16;
};

// What a kernel computes in: fp64 for fp64 inputs, fp32 otherwise.
template <typename Tin>
using Cmp = std::conditional_t<std::is_same_v<Tin, double>, double, float>;

// Conversions that do not rely on the implicit ones torch's build flags switch off.
template <typename T>
__device__ __forceinline__ double to_double(T v) {
  return static_cast<double>(v);
}
template <>
__device__ __forceinline__ double to_double<__half>(__half v) {
  return static_cast<double>(__half2float(v));
}
template <>
__device__ __forceinline__ double to_double<__nv_bfloat16>(__nv_bfloat16 v) {
  return static_cast<double>(__bfloat162float(v));
}

template <typename Tin>
__device__ __forceinline__ Tin from_compute(Cmp<Tin> v) {
  return static_cast<Tin>(v);
}
template <>
__device__ __forceinline__ __half from_compute<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The block's sum in a fixed order (warp shuffles, then warp 0); valid in thread 0.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double total = 0;
  if (warp == 0) {
    total = lane < kThreads / 32 ? scratch[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_down_sync(0xffffffffu, total, offset);
  }
  __syncthreads();
  return total;
}

#ifndef MTUT_CUDA_EMULATE  // (the emulation's stand-ins: python_tests/cuda_emulation/cuda_emulation.h)
// kernel<<<grid, block, 0, stream>>>(args...), then the launch error check. (`name`: for the
// emulation's launch log, which tools/cuda_static.py checks against two waves.)
template <typename... KArgs, typename... Args>
void launch(const char* /*name*/, void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream,
            Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
using DeviceScope = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
// A pointer-array product that could not be proven aligned took its ATen path (the emulation
// counts them for the tests).
void note_fallback(const char* /*what*/) {}
#endif

constexpr int64_t kMaxGrid = 65535;  // grid.y and grid.z limit
// entries of one set of K strips (all modalities), or of one stacked strip (student products)
constexpr int64_t kGpuStripBudget = int64_t(1) << 24;
constexpr int64_t kGpuMinStackWidth = 256;  // positions of a stacked strip at least (a 16-bit output tile's width)
#ifndef MTUT_CUDA_EMULATE
constexpr int64_t kStripBudget = kGpuStripBudget;
constexpr int64_t kMinStackWidth = kGpuMinStackWidth;
int64_t multiprocessors() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// A buffer whose every entry a kernel writes (no zero-fill launch): at::empty (the emulation
// fills it with NaN, or `fill`, so that the tests see any entry left unwritten).
at::Tensor unwritten(at::IntArrayRef sizes, const at::TensorOptions& options,
                     double fill = std::numeric_limits<double>::quiet_NaN()) {
  (void)fill;
  return at::empty(sizes, options);
}
#endif

unsigned grid_dim(int64_t n) {
  TORCH_CHECK(n <= kMaxGrid, "mtut: internal: grid dimension ", n, " exceeds ", kMaxGrid);
  return static_cast<unsigned>(n);
}

// sum_t partial[t * step] over the block in a fixed order; valid in thread 0.
__device__ __forceinline__ double block_sum_strided(const double* p, int64_t count, int64_t step, double* scratch) {
  double acc = 0;
  for (int64_t t = threadIdx.x; t < count; t += kThreads) acc += p[t * step];
  return block_sum(acc, scratch);
}

// Blocks of kThreads that fill `sms` SMs twice at full occupancy (2048 threads an SM): what a
// launch of ours must have at least, unless it is small by design (the launch table,
// tools/cuda_static.py, checks every launch at the named shapes).
constexpr int64_t kBlocksPerSm = 2048 / kThreads;
constexpr int64_t fill_blocks(int64_t sms) { return 2 * sms * kBlocksPerSm; }

// The chunks of a pass over `per_sample` entries of each of N samples (grid (count, N)): two
// waves of blocks where there are at least kThreads entries a block for that (fill_blocks),
// the same chunks for every block of one shape (so that X_m = X_n gives the same sums).
struct Chunks {
  int64_t entries, count;
};
Chunks fill_chunks(int64_t per_sample, int64_t N, int64_t sms) {
  const int64_t entries = std::max<int64_t>(kThreads, per_sample * N / fill_blocks(sms));
  return {entries, std::max<int64_t>(1, (per_sample + entries - 1) / entries)};
}

// Rows per chunk of a pass over `rows` rows of `row_len` entries for each of N samples: whole
// rows, about fill_chunks's entries a block.
int64_t fill_rows(int64_t rows, int64_t row_len, int64_t N, int64_t sms) {
  const int64_t len = std::max<int64_t>(row_len, 1);
  return std::max<int64_t>(1, fill_chunks(rows * len, N, sms).entries / len);
}

// Segments of each row for a kernel with a block per (row, segment) of rows `len` long: two
// waves of blocks where the rows allow it, at least 4 kThreads entries (four a thread) a segment.
int64_t row_split(int64_t rows, int64_t len, int64_t sms) {
  const int64_t wanted = (fill_blocks(sms) + rows - 1) / std::max<int64_t>(rows, 1);
  return std::clamp<int64_t>(wanted, 1, std::max<int64_t>(1, len / (4 * kThreads)));
}

__device__ __forceinline__ float reciprocal(float v) { return __frcp_rn(v); }  // not a division: no called routine
__device__ __forceinline__ double reciprocal(double v) { return __drcp_rn(v); }

// The power of two in (v, 2 v] for a finite v > 0 (else v itself): dividing by it and
// multiplying back are exact, so the scaled operands of a row carry the same bits up to
// that power whatever weights set it (an identical pair's exact 0 stays isolated).
template <typename T>
__device__ __forceinline__ T power_of_two_above(T v) {
  if (!(v < std::numeric_limits<T>::infinity())) return v;
  int e;
  frexp(v, &e);  // v = f 2^e, 0.5 <= f < 1
  return ldexp(T(1), e);
}

// The operand dtype of the scaled products: the input's, fp32 for fp16 (see the header).
template <typename Tin>
using Operand = std::conditional_t<std::is_same_v<Tin, __half>, float, Tin>;

}  // namespace
}  // namespace cuda
}  // namespace mtut
