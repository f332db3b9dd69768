// Test-only: runs the CUDA kernels of csrc/cuda on the CPU, so that their indexing,
// staging, tiling and reductions are checked on machines without a GPU
// (python_tests/test_cuda_emulated.py builds python_tests/cuda_emulation/ssa_cuda_emulated.cpp).
//
// Every CUDA thread of a block is a std::thread; blocks run one after another.
//   __syncthreads      a std::barrier over the block
//   __shfl_down_sync   an exchange through a per-warp buffer between two warp barriers
//   __shared__         a function-local static (shared by the threads of the running block)
//   nvcuda::wmma       fragments with a layout of their own: an operand fragment holds the
//                      whole 16 x k tile in every lane, and lane l of an accumulator holds
//                      elements l * E .. l * E + E - 1 of the row-major 16 x 16 tile. The
//                      kernels never depend on the hardware layout, so any layout is a test.
// It is not a performance model and not a race detector.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
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
using std::fma;  // fma(float, float, float) stays in float, as on the GPU
using std::sqrt;

namespace mtut {
namespace cuda {
namespace emulation {

inline thread_local dim3 thread_index, block_index;
inline dim3 block_dim;

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

// The compute capability the emulated device reports (MTUT_EMULATED_SM, default 90): below
// 80 the host code picks the exact SIMT cores, from 80 the tensor-core ones.
inline int compute_capability_major() {
  const char* sm = std::getenv("MTUT_EMULATED_SM");
  return (sm != nullptr ? std::atoi(sm) : 90) / 10;
}

struct DeviceScope {
  template <typename D>
  explicit DeviceScope(const D&) {}
};

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t, Args&&... args) {
  const unsigned threads = block.x * block.y * block.z;
  block_dim = block;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Block state(threads);
        running = &state;
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            thread_index = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
            block_index = dim3(x, y, z);
            kernel(args...);
          });
        for (auto& th : pool) th.join();
        running = nullptr;
      }
}

}  // namespace emulation
}  // namespace cuda
}  // namespace mtut

#define threadIdx (::mtut::cuda::emulation::thread_index)
#define blockIdx (::mtut::cuda::emulation::block_index)
#define blockDim (::mtut::cuda::emulation::block_dim)

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

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision

template <typename T> struct element { using type = T; };
template <> struct element<precision::tf32> { using type = float; };

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
struct fragment;
template <int m, int n, int k, typename T, typename Layout>
struct fragment<matrix_a, m, n, k, T, Layout> {  // x[i * k + kk] = A(i, kk), in every lane
  static constexpr int num_elements = m * k;
  typename element<T>::type x[m * k];
};
template <int m, int n, int k, typename T, typename Layout>
struct fragment<matrix_b, m, n, k, T, Layout> {  // x[kk * n + j] = B(kk, j), in every lane
  static constexpr int num_elements = k * n;
  typename element<T>::type x[k * n];
};
template <int m, int n, int k, typename T>
struct fragment<accumulator, m, n, k, T, void> {  // lane l: row-major elements l * E .. + E
  static constexpr int num_elements = m * n / 32;
  T x[m * n / 32];
};

template <int m, int n, int k, typename T, typename L, typename S>
void load_matrix_sync(fragment<matrix_a, m, n, k, T, L>& a, const S* p, unsigned ldm) {
  for (int i = 0; i < m; ++i)
    for (int kk = 0; kk < k; ++kk)
      a.x[i * k + kk] = std::is_same_v<L, col_major> ? p[i + kk * ldm] : p[i * ldm + kk];
}
template <int m, int n, int k, typename T, typename L, typename S>
void load_matrix_sync(fragment<matrix_b, m, n, k, T, L>& b, const S* p, unsigned ldm) {
  for (int kk = 0; kk < k; ++kk)
    for (int j = 0; j < n; ++j) b.x[kk * n + j] = std::is_same_v<L, row_major> ? p[kk * ldm + j] : p[kk + j * ldm];
}
template <int m, int n, int k, typename T>
void fill_fragment(fragment<accumulator, m, n, k, T>& c, T v) {
  for (auto& e : c.x) e = v;
}
template <int m, int n, int k, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, m, n, k, float>& d, const fragment<matrix_a, m, n, k, T, LA>& a,
              const fragment<matrix_b, m, n, k, T, LB>& b, const fragment<accumulator, m, n, k, float>& c) {
  const int lane = threadIdx.x % 32, E = fragment<accumulator, m, n, k, float>::num_elements;
  for (int e = 0; e < E; ++e) {
    const int i = (lane * E + e) / n, j = (lane * E + e) % n;
    float acc = c.x[e];
    for (int kk = 0; kk < k; ++kk)
      acc = std::fma(static_cast<float>(a.x[i * k + kk]), static_cast<float>(b.x[kk * n + j]), acc);
    d.x[e] = acc;
  }
}
// cvt.rna.tf32.f32: keep 10 mantissa bits, rounding to nearest, ties away from zero.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0x1000u) & ~0x1fffu;
  std::memcpy(&v, &u, 4);
  return v;
}

}  // namespace wmma
}  // namespace nvcuda
