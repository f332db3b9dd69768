// The gram forward: the Gram blocks of every pair, kept for the backward, and S from
// their scaled square sums.
#pragma once

#include "products.cuh"
#include "rows.cuh"

namespace mtut {
namespace cuda {
namespace {

// ------------------------------------------------------------------ gram: scaled square sums

// partial[b * row_stride + chunk] = sum over the entries e of `chunk` of (s_m[i] P[e] s_n[j])^2
// in fp64, e = i C_n + j, for one block P [C_m, C_n] (contiguous) of every sample (batch stride
// `stride`). Four entries kThreads apart per step, into four sums (four loads in flight),
// added in a fixed order. The scales sm, sn live in the same buffer as the blocks
// (new_saved), so a sample's are `stride` apart too.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    block_sqnorm_kernel(const T* __restrict__ P, int64_t stride, int64_t entries, int64_t Cn, int64_t chunk,
                        const T* __restrict__ sm, const T* __restrict__ sn, int64_t row_stride,
                        double* __restrict__ partial) {
  __shared__ double scratch[kThreads / 32];
  const int64_t b = blockIdx.y;
  const int64_t e1 = std::min(entries, (static_cast<int64_t>(blockIdx.x) + 1) * chunk);
  const T* p = P + b * stride;
  const T* a = sm + b * stride;
  const T* c = sn + b * stride;
  int64_t e = static_cast<int64_t>(blockIdx.x) * chunk + threadIdx.x;
  int64_t i = e / Cn, j = e - i * Cn;  // (i, j) of e, stepped without a division
  const int64_t di = kThreads / Cn, dj = kThreads - di * Cn;
  const auto step = [&] {
    i += di, j += dj;
    if (j >= Cn) j -= Cn, ++i;
  };
  double acc[4] = {0, 0, 0, 0};
  for (; e + 3 * kThreads < e1; e += 4 * kThreads) {
    double v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      v[u] = static_cast<double>(a[i]) * static_cast<double>(p[e + u * kThreads]) * static_cast<double>(c[j]);
      step();
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) acc[u] += v[u] * v[u];
  }
  for (; e < e1; e += kThreads) {
    const double v = static_cast<double>(a[i]) * static_cast<double>(p[e]) * static_cast<double>(c[j]);
    acc[0] += v * v;
    step();
  }
  const double total = block_sum((acc[0] + acc[1]) + (acc[2] + acc[3]), scratch);
  if (threadIdx.x == 0) partial[b * row_stride + blockIdx.x] = total;
}

// out[b, k] = sum_t in[b, k, t] (count values each), one block per (b, k).
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const double* __restrict__ in, int64_t count, int64_t K, double* __restrict__ out) {
  __shared__ double scratch[kThreads / 32];
  const int64_t b = blockIdx.x, k = blockIdx.y;
  const double total = block_sum_strided(in + (b * K + k) * count, count, 1, scratch);
  if (threadIdx.x == 0) out[b * K + k] = total;
}
__host__ __device__ inline int block_index(int m, int n, int M) { return m * M - m * (m - 1) / 2 + (n - m); }

// S_mn = t_mm - 2 t_mn + t_nn, clamped at 0 (a NaN passes): one thread per (b, m, n).
template <typename Out>
__global__ void combine_gram_kernel(const double* __restrict__ t, int64_t N, int M, Out* __restrict__ S) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * M * M) return;
  const int64_t b = i / (M * M);
  const int m = static_cast<int>((i / M) % M), n = static_cast<int>(i % M);
  const int blocks = M * (M + 1) / 2;
  double v = 0;
  if (m != n) {
    const int lo = m < n ? m : n, hi = m < n ? n : m;
    const double* tb = t + b * blocks;
    v = tb[block_index(lo, lo, M)] - 2.0 * tb[block_index(lo, hi, M)] + tb[block_index(hi, hi, M)];
    v = v < 0 ? 0.0 : v;
  }
  S[i] = static_cast<Out>(v);
}

// ------------------------------------------------------------------ gram

// The blocks P_mn = X_m X_n^T (n >= m) of every sample into views of kept [N, kept_gram_size]
// (the layout of ssa_common.cpp:kept_block_offset): one at::bmm over the samples per block,
// written into its kept view. The blocks' operands are separate tensors, so blocks of one
// shape cannot share a strided batch without a copy; every block of one shape is the same
// cuBLAS call (sizes, transposes, leading dimensions), so for X_m = X_n the blocks P_mm,
// P_mn, P_nn are the same bits and S is exactly 0. (cuBLAS splits a long contraction on its
// own where that pays.)
void gram_blocks(const Prepared& p, const FeatInfo& info, at::Tensor& kept) {
  for (int64_t m = 0; m < info.M; ++m)
    for (int64_t n = m; n < info.M; ++n)
      gemm_into(kept_block(kept, info.channels, m, n), p.views[m], p.views[n].transpose(1, 2));
}

// S from the kept blocks.
template <typename Out>
at::Tensor sqdist_from_blocks(const Prepared& p, const FeatInfo& info, at::Tensor& kept, cudaStream_t stream) {
  using T = Out;
  const int M = static_cast<int>(info.M);
  const int blocks = M * (M + 1) / 2;
  const auto f64 = kept.options().dtype(at::kDouble);
  const int64_t sms = multiprocessors();
  int64_t chunks = 1;  // the most chunks of any block
  for (int m = 0; m < M; ++m)
    for (int n = m; n < M; ++n)
      chunks = std::max(chunks, fill_chunks(info.channels[m] * info.channels[n], info.N, sms).count);
  at::Tensor partial = at::zeros({info.N, blocks, chunks}, f64);  // (blocks with fewer chunks: zeros after theirs)
  for (int m = 0; m < M; ++m)
    for (int n = m; n < M; ++n) {
      const int q = block_index(m, n, M);
      const at::Tensor block = kept_block(kept, info.channels, m, n);
      const int64_t entries = info.channels[m] * info.channels[n];
      const Chunks ch = fill_chunks(entries, info.N, sms);
      at::Tensor out = partial.select(1, q);  // [N, chunks], row stride blocks * chunks
      const int64_t ld = block.stride(0);     // (N = 1: a size-1 dimension's stride is arbitrary)
      TORCH_CHECK(info.N == 1 || (p.scales[m].stride(0) == ld && p.scales[n].stride(0) == ld),
                  "mtut: internal: the scales and the kept blocks are not in one buffer");
      for (int64_t b0 = 0; b0 < info.N; b0 += kMaxGrid) {
        const int64_t nb = std::min(kMaxGrid, info.N - b0);
        launch("block_sqnorm_kernel", block_sqnorm_kernel<T>, dim3(grid_dim(ch.count), grid_dim(nb)), dim3(kThreads),
               stream, block.const_data_ptr<T>() + b0 * ld, ld, entries, info.channels[n], ch.entries,
               p.scales[m].const_data_ptr<T>() + b0 * p.scales[m].stride(0),
               p.scales[n].const_data_ptr<T>() + b0 * p.scales[n].stride(0), blocks * chunks,
               out.mutable_data_ptr<double>() + b0 * blocks * chunks);
      }
    }
  at::Tensor t = at::empty({info.N, blocks}, f64);
  for (int64_t b0 = 0; b0 < info.N; b0 += kMaxGrid) {
    const int64_t nb = std::min(kMaxGrid, info.N - b0);
    launch("sum_partials_kernel", sum_partials_kernel, dim3(grid_dim(nb), static_cast<unsigned>(blocks)),
           dim3(kThreads), stream, partial.const_data_ptr<double>() + b0 * blocks * chunks, chunks,
           static_cast<int64_t>(blocks), t.mutable_data_ptr<double>() + b0 * blocks);
  }
  at::Tensor S = at::empty({info.N, info.M, info.M}, kept.options());
  const int64_t count = info.N * M * M;
  launch("combine_gram_kernel", combine_gram_kernel<Out>,
         dim3(static_cast<unsigned>((count + kThreads - 1) / kThreads)), dim3(kThreads), stream,
         t.const_data_ptr<double>(), info.N, M, S.mutable_data_ptr<Out>());
  return S;
}

// The gram forward: the blocks into the kept part of a new_saved buffer, and S.
template <typename Out>
at::Tensor gram_forward(const Prepared& p, const FeatInfo& info, at::Tensor& kept, cudaStream_t stream) {
  gram_blocks(p, info, kept);
  return sqdist_from_blocks<Out>(p, info, kept, stream);
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
