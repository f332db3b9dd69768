// Test-only: runs the CUDA kernels of csrc/cuda on the CPU, so that their indexing,
// reductions and the host code around them (the cuBLAS products run as CPU at::bmm) are
// checked on machines without a GPU (python_tests/test_cuda_emulated.py builds
// python_tests/cuda_emulation/ssa_cuda_emulated.cpp).
//
// Every CUDA thread of a block is a host thread (a pool reused across blocks); blocks run one
// after another.
//   __syncthreads      a std::barrier over the block
//   __shfl_down_sync   an exchange through a per-warp buffer between two warp barriers
//   __shared__         a function-local static (shared by the threads of the running block)
// (`launch` also logs instead of running in the launch plan mode: dry_run.)
// It is not a performance model and not a race detector.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;
using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;

inline float __half2float(__half v) { return static_cast<float>(v); }
inline __half __float2half_rn(float v) { return __half(v); }  // round to nearest even
inline float __bfloat162float(__nv_bfloat16 v) { return static_cast<float>(v); }
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16(v); }
inline void __trap() { std::abort(); }
inline float __frcp_rn(float v) { return 1.0f / v; }  // the correctly rounded reciprocal, as on the GPU
inline double __drcp_rn(double v) { return 1.0 / v; }
using std::expm1;
using std::fma;  // fma(float, float, float) stays in float, as on the GPU
using std::sqrt;

namespace mtut {
namespace cuda {
namespace emulation {

inline thread_local dim3 thread_index, block_index;
inline dim3 block_dim, grid_size;

// The synchronization state of the running block.
struct Block {
  explicit Block(unsigned threads) : block(threads), shuffle((threads + 31) / 32) {
    for (unsigned w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
  }
  std::barrier<> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<std::array<double, 32>> shuffle;
};
inline Block* running = nullptr;

// One host thread per CUDA thread of a block, created once per block size and reused for
// every block (creating 256 threads per block would dominate the tests' time).
class Workers {
 public:
  explicit Workers(unsigned n) : state(n), start_(n + 1), done_(n + 1) {
    for (unsigned t = 0; t < n; ++t) threads_.emplace_back([this, t] { serve(t); });
  }
  ~Workers() {
    stop_ = true;
    start_.arrive_and_wait();
    for (auto& th : threads_) th.join();
  }
  // job(t) on every worker t, once; returns when all are done.
  void run(const std::function<void(unsigned)>& job) {
    job_ = &job;
    start_.arrive_and_wait();
    done_.arrive_and_wait();
  }
  Block state;  // reused: the barriers are reusable phase after phase

 private:
  void serve(unsigned t) {
    for (;;) {
      start_.arrive_and_wait();
      if (stop_) return;
      (*job_)(t);
      done_.arrive_and_wait();
    }
  }
  std::vector<std::thread> threads_;
  const std::function<void(unsigned)>* job_ = nullptr;
  std::barrier<> start_, done_;
  std::atomic<bool> stop_{false};
};

inline Workers& workers(unsigned threads) {
  static std::map<unsigned, std::unique_ptr<Workers>> pools;
  auto& w = pools[threads];
  if (!w) w = std::make_unique<Workers>(threads);
  return *w;
}

struct DeviceScope {
  template <typename D>
  explicit DeviceScope(const D&) {}
};

// The launch plan mode (launch_plan): the host code runs with the GPU build's budgets on a
// 132-SM device, and every launch is logged (kernel, grid, block) instead of run, every
// product skipped; the inputs are never read.
struct Launched {
  std::string kernel;
  dim3 grid, block;
};
inline bool dry_run = false;
inline std::vector<Launched>& launch_log() {
  static std::vector<Launched> log;
  return log;
}

template <typename... KArgs, typename... Args>
void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t, Args&&... args) {
  if (dry_run) {
    launch_log().push_back({name, grid, block});
    return;
  }
  const unsigned threads = block.x * block.y * block.z;
  block_dim = block;
  grid_size = grid;
  Workers& pool = workers(threads);
  running = &pool.state;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        const std::function<void(unsigned)> job = [&](unsigned t) {
          thread_index = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
          block_index = dim3(x, y, z);
          kernel(args...);
        };
        pool.run(job);
      }
  running = nullptr;
}

}  // namespace emulation

// What csrc/cuda/common.cuh takes from the CUDA runtime, and its budgets, for the CPU.
using emulation::launch;
using DeviceScope = emulation::DeviceScope;
inline cudaStream_t current_stream() { return nullptr; }
// The ATen paths taken because a pointer-array product's alignment was not proven (common.cuh
// note_fallback), for the tests (take_fallbacks).
inline std::vector<std::string>& fallback_log() {
  static std::vector<std::string> log;
  return log;
}
inline void note_fallback(const char* what) { fallback_log().emplace_back(what); }
// So that the tests' small shapes walk many strips and many chunks: small budgets on an
// imagined 4-SM device (the launch plan sets the GPU build's, on 132 SMs).
inline int64_t kStripBudget = 3072;
inline int64_t kMinStackWidth = 16;
inline int64_t emulated_sms = 4;
inline int64_t multiprocessors() { return emulated_sms; }

// A buffer whose every entry a kernel writes (common.cuh unwritten): filled with NaN here, so
// that the tests see any entry left unwritten (or `fill`: a number, where an entry read but
// never written must show as a wrong number, not as an expected NaN).
inline at::Tensor unwritten(at::IntArrayRef sizes, const at::TensorOptions& options,
                            double fill = std::numeric_limits<double>::quiet_NaN()) {
  return emulation::dry_run ? at::empty(sizes, options) : at::full(sizes, fill, options);
}

}  // namespace cuda
}  // namespace mtut

#define threadIdx (::mtut::cuda::emulation::thread_index)
#define blockIdx (::mtut::cuda::emulation::block_index)
#define blockDim (::mtut::cuda::emulation::block_dim)
#define gridDim (::mtut::cuda::emulation::grid_size)

inline void __syncthreads() { ::mtut::cuda::emulation::running->block.arrive_and_wait(); }

template <typename T>
T __shfl_down_sync(unsigned, T v, int offset) {
  static_assert(sizeof(T) <= sizeof(double), "emulated shuffles carry arithmetic values");
  auto* b = ::mtut::cuda::emulation::running;
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  b->shuffle[warp][lane] = static_cast<double>(v);
  b->warps[warp]->arrive_and_wait();
  const T out = lane + offset < 32 ? static_cast<T>(b->shuffle[warp][lane + offset]) : v;
  b->warps[warp]->arrive_and_wait();
  return out;
}
