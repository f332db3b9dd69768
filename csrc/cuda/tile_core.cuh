// The block-level GEMM tile shared by the fused CUDA kernels: a 64 x 64 tile of
// A^T B, accumulated in fp32 (fp64 for double) by 256 threads, from operands that the
// kernels stage in shared memory as [kBK][kLD] "k-major" arrays:
//   sA[k * kLD + i] = A(k, i),  sB[k * kLD + j] = B(k, j),  tile(i, j) = sum_k A(k, i) B(k, j).
// The kernels only ever reduce the finished tile element-wise (square, difference of two
// tiles of the same core), so the position of an accumulator element never matters and
// the tensor-core fragments are used as they are, without a trip through shared memory.
//
// Cores (the host picks one by dtype, device and torch's matmul precision):
//   SimtCore<float|double>   exact fp32 / fp64 FMAs, any architecture
//   WmmaCore<__half>         fp16 tensor cores, fp32 accumulation        (sm_80+)
//   WmmaCore<__nv_bfloat16>  bf16 tensor cores, fp32 accumulation        (sm_80+)
//   Tf32Core                 fp32 operands rounded to TF32, tensor cores (sm_80+)
#pragma once

#ifdef MTUT_CUDA_EMULATE
#include "emulation/cuda_emulation.h"  // the kernels run on the CPU in tests (see that file)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include <cstdint>
#include <type_traits>

namespace mtut {
namespace cuda {

constexpr int kTile = 64;      // rows and columns of a tile
constexpr int kThreads = 256;  // threads per block (8 warps)

// The tensor-core cores are used from sm_80 (bf16 and TF32 need it; fp16 on older GPUs
// takes the exact SIMT core): device code for older architectures gets trapping stubs.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define MTUT_SM80_MMA 1
#else
#define MTUT_SM80_MMA 0
#endif

// Conversions that do not rely on the implicit ones torch's build flags switch off.
template <typename T> __device__ __forceinline__ double to_double(T v);
template <> __device__ __forceinline__ double to_double<__half>(__half v) { return static_cast<double>(__half2float(v)); }
template <> __device__ __forceinline__ double to_double<__nv_bfloat16>(__nv_bfloat16 v) {
  return static_cast<double>(__bfloat162float(v));
}
template <> __device__ __forceinline__ double to_double<float>(float v) { return static_cast<double>(v); }
template <> __device__ __forceinline__ double to_double<double>(double v) { return v; }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }

template <typename T> __device__ __forceinline__ float to_float(T v) { return static_cast<float>(to_double<T>(v)); }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

// ------------------------------------------------------------------ exact SIMT core

// Thread (ty, tx) = (tid / 16, tid % 16) owns tile elements (ty + 16 r, tx + 16 c), r, c < 4.
template <typename T>
struct SimtCore {
  using Stage = T;  // operands staged exactly
  using Acc = T;
  static constexpr int kBK = sizeof(T) == 8 ? 16 : 32;
  static constexpr int kLD = kTile + 4;
  static constexpr int kElems = 16;

  T acc[4][4];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] = T(0);
  }
  template <typename V>
  __device__ __forceinline__ static Stage stage(V v) { return static_cast<T>(v); }
  __device__ __forceinline__ void mma(const Stage* sA, const Stage* sB) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll 4
    for (int k = 0; k < kBK; ++k) {
      T a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = sA[k * kLD + ty + 16 * r];
#pragma unroll
      for (int c = 0; c < 4; ++c) b[c] = sB[k * kLD + tx + 16 * c];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = fma(a[r], b[c], acc[r][c]);
    }
  }
  __device__ __forceinline__ T elem(int e) const { return acc[e / 4][e % 4]; }
};

// ------------------------------------------------------------------ tensor-core cores

// WmmaCoreImpl<Stage> is one type in the host pass and in every device pass: nvcc requires
// a __global__ template to be instantiated with the same types on both sides, or the
// kernel the host launches has no image for that architecture (a "7.5;9.0" or "+PTX"
// build). Only the members differ: real tensor-core code from sm_80, trapping stubs below
// (the host never picks a tensor-core core there: it checks the device's capability).
// Stage = fp16/bf16: operands of that type (k = 16); Stage = float: TF32 (k = 8).
template <typename Stage_>
struct WmmaCoreImpl {
  using Stage = Stage_;
  using Acc = float;
  static constexpr int kBK = 32;
  // rows of 144 (fp16) / 272 (fp32) bytes: a multiple of 16 bytes as wmma wants, and every
  // fragment pointer (k a multiple of kK, columns a multiple of 16) stays 32-byte aligned
  static constexpr int kLD = kTile + (sizeof(Stage) == 2 ? 8 : 4);
  static constexpr bool kTf32 = sizeof(Stage) == 4;
  static constexpr int kK = kTf32 ? 8 : 16;
#if MTUT_SM80_MMA
  // Warp w owns rows 16 (w / 2) .. +16 and columns 32 (w % 2) .. +32 as two 16 x 16 fragments.
  // A is read column-major (A(i, k) at sA[k * kLD + i]), B row-major (B(k, j) at sB[k * kLD + j]).
  // TF32 fragments are rounded to TF32 after loading.
  using Precision = typename std::conditional<kTf32, nvcuda::wmma::precision::tf32, Stage>::type;
  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, kK, Precision, nvcuda::wmma::col_major>;
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, kK, Precision, nvcuda::wmma::row_major>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, kK, float>;
  static constexpr int kElems = 2 * FragC::num_elements;

  FragC acc[2];

  __device__ __forceinline__ void zero() {
    nvcuda::wmma::fill_fragment(acc[0], 0.0f);
    nvcuda::wmma::fill_fragment(acc[1], 0.0f);
  }
  template <typename V>
  __device__ __forceinline__ static Stage stage(V v) { return from_float<Stage>(static_cast<float>(v)); }
  __device__ __forceinline__ void mma(const Stage* sA, const Stage* sB) {
    const int w = threadIdx.x / 32, row = 16 * (w / 2), col = 32 * (w % 2);
#pragma unroll
    for (int k = 0; k < kBK; k += kK) {
      FragA a;
      nvcuda::wmma::load_matrix_sync(a, sA + k * kLD + row, kLD);
      if constexpr (kTf32) {
#pragma unroll
        for (int t = 0; t < a.num_elements; ++t) a.x[t] = nvcuda::wmma::__float_to_tf32(a.x[t]);
      }
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        FragB b;
        nvcuda::wmma::load_matrix_sync(b, sB + k * kLD + col + 16 * f, kLD);
        if constexpr (kTf32) {
#pragma unroll
          for (int t = 0; t < b.num_elements; ++t) b.x[t] = nvcuda::wmma::__float_to_tf32(b.x[t]);
        }
        nvcuda::wmma::mma_sync(acc[f], a, b, acc[f]);
      }
    }
  }
  __device__ __forceinline__ float elem(int e) const {
    return e < FragC::num_elements ? acc[0].x[e] : acc[1].x[e - FragC::num_elements];
  }
#else
  static constexpr int kElems = 1;
  __device__ __forceinline__ void zero() { __trap(); }
  template <typename V>
  __device__ __forceinline__ static Stage stage(V v) { return from_float<Stage>(static_cast<float>(v)); }
  __device__ __forceinline__ void mma(const Stage*, const Stage*) { __trap(); }
  __device__ __forceinline__ float elem(int) const { return 0.0f; }
#endif
};
template <typename T>
using WmmaCore = WmmaCoreImpl<T>;
using Tf32Core = WmmaCoreImpl<float>;

// ------------------------------------------------------------------ block reduction

// Sum over the block in a fixed order (warp shuffles, then warp 0 over the warp sums):
// the same inputs give the same bits on every run. The result is valid in thread 0.
// scratch holds kThreads / 32 doubles; the call ends with the block synchronized.
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

}  // namespace cuda
}  // namespace mtut
