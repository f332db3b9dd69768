// The direct forward: strips of every K_m = Xh_m^T Xh_m and the square differences of
// every pair.
#pragma once

#include "products.cuh"
#include "rows.cuh"

namespace mtut {
namespace cuda {
namespace {

// ------------------------------------------------------------------ direct: strip square differences

// For one strip of rows [i0, i0 + ti) and columns [i0, d) of every K_m (strips[m]: [N, ti,
// d - i0], contiguous): partial[b, p, chunk] += sum of w (K_m - K_n)^2 for pair p = (m < n),
// w = 0 below the diagonal, 1 on it, 2 above (the mirror). One block per (chunk, b); the
// chunks past a short strip's rows write 0 (so that every slot of partial is written).
struct StripPairs {
  const float* k[8];  // up to 8 modalities (check_direct_modalities)
  const double* k64[8];
  int M;
};

void check_direct_modalities(int64_t M) {
  TORCH_CHECK_VALUE(M <= 8, "mtut: the cuda direct algorithm takes at most 8 modalities, got ", M, "; use algo='gram'");
}

// The strips K[m] (contiguous, fp32 or fp64) of every modality, from sample b0 on (each
// sample `per_sample` entries).
StripPairs strip_pairs(const std::vector<at::Tensor>& K, int64_t b0, int64_t per_sample) {
  StripPairs s{};
  s.M = static_cast<int>(K.size());
  for (size_t m = 0; m < K.size(); ++m) {
    if (K[m].scalar_type() == at::kDouble)
      s.k64[m] = K[m].const_data_ptr<double>() + b0 * per_sample;
    else
      s.k[m] = K[m].const_data_ptr<float>() + b0 * per_sample;
  }
  return s;
}

template <typename T>
__device__ __forceinline__ const T* strip_of(const StripPairs& s, int m);
template <>
__device__ __forceinline__ const float* strip_of<float>(const StripPairs& s, int m) {
  return s.k[m];
}
template <>
__device__ __forceinline__ const double* strip_of<double>(const StripPairs& s, int m) {
  return s.k64[m];
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    strip_sqdiff_kernel(const StripPairs strips, int64_t ti, int64_t width, int64_t rows_per_chunk, int64_t chunks,
                        int64_t slot, int64_t slots, double* __restrict__ partial) {
  __shared__ double scratch[kThreads / 32];
  const int64_t chunk = blockIdx.x, b = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk, r1 = std::min(ti, r0 + rows_per_chunk);
  const int M = strips.M;
  const int pairs = M * (M - 1) / 2;
  int p = 0;
  for (int m = 0; m < M; ++m)
    for (int n = m + 1; n < M; ++n, ++p) {
      const T* km = strip_of<T>(strips, m) + b * ti * width;
      const T* kn = strip_of<T>(strips, n) + b * ti * width;
      double acc = 0;
      for (int64_t r = r0; r < r1; ++r)  // column j of the strip is row r's column i0 + j:
        for (int64_t j = r + threadIdx.x; j < width; j += kThreads) {                   // j < r lies below the diagonal
          const double v = static_cast<double>(km[r * width + j] - kn[r * width + j]);  // no cancellation
          acc += (j == r ? 1.0 : 2.0) * v * v;  // an entry above the diagonal stands for its mirror too
        }
      const double total = block_sum(acc, scratch);
      if (threadIdx.x == 0) partial[((b * pairs + p) * slots) + slot * chunks + chunk] = total;
    }
}

// S[b, m, n] = S[b, n, m] = sum over slots of partial[b, p, :] for pair p = (m < n), and
// S[b, m, m] = 0 (pair 0's block writes the diagonal: S needs no zero-fill launch).
template <typename Out>
__global__ void __launch_bounds__(kThreads)
    sum_pair_partials_kernel(const double* __restrict__ partial, int64_t slots, int M, Out* __restrict__ S) {
  __shared__ double scratch[kThreads / 32];
  const int64_t b = blockIdx.x;
  const int p = blockIdx.y;
  const int pairs = M * (M - 1) / 2;
  if (p == 0 && threadIdx.x < M) S[(b * M + threadIdx.x) * M + threadIdx.x] = static_cast<Out>(0);
  const double total = block_sum_strided(partial + (b * pairs + p) * slots, slots, 1, scratch);
  if (threadIdx.x == 0) {
    int m = 0, rest = p;  // p enumerates (m, n > m) with m major
    while (rest >= M - 1 - m) rest -= M - 1 - m, ++m;
    const int n = m + 1 + rest;
    S[(b * M + m) * M + n] = S[(b * M + n) * M + m] = static_cast<Out>(total);
  }
}

// ------------------------------------------------------------------ direct

// The rows of every modality (at most 8: check_direct_modalities) for one scaled_strip_kernel
// launch: modality m's rows are [first[m], first[m + 1]) of the channels of all modalities.
template <typename Tin>
struct StripSources {
  const Tin* x[8];
  const Cmp<Tin>* s[8];
  int64_t sn[8], sc[8], sd[8];
  int64_t first[9];
  int M;
};

// The left operands of one set of K strips, every modality in one launch: for modality m,
// out_m[b, c, i] = x_m[b, c, i0 + i] s_m[b, c]^2 in the operand dtype, [N, C_m, ti] contiguous
// at out + N first[m] ti (x s^2 as ATen forms it: the product in the compute dtype, then
// rounded). One block per chunk of rows (over all modalities' channels) and sample b0 + y.
template <typename Tin>
__global__ void __launch_bounds__(kThreads)
    scaled_strip_kernel(const StripSources<Tin> src, int64_t N, int64_t b0, int64_t i0, int64_t ti,
                        int64_t rows_per_chunk, int64_t s_ld, Operand<Tin>* __restrict__ out) {
  using T = Cmp<Tin>;
  const int64_t b = b0 + blockIdx.y;
  const int64_t r0 = blockIdx.x * rows_per_chunk, r1 = std::min(src.first[src.M], r0 + rows_per_chunk);
  int m = 0;
  for (int64_t row = r0; row < r1; ++row) {
    while (row >= src.first[m + 1]) ++m;
    const int64_t c = row - src.first[m], C = src.first[m + 1] - src.first[m];
    const T sc2 = src.s[m][b * s_ld + c] * src.s[m][b * s_ld + c];
    const int64_t sd = src.sd[m];
    const Tin* xr = src.x[m] + b * src.sn[m] + c * src.sc[m] + i0 * sd;
    Operand<Tin>* o = out + (N * src.first[m] + b * C + c) * ti;
    for (int64_t i = threadIdx.x; i < ti; i += kThreads)
      o[i] = from_compute<Operand<Tin>>(static_cast<T>(to_double<Tin>(xr[i * sd])) * sc2);
  }
}

// The left operands of the K strips of every modality: X_m[:, I] s_m^2, [N, ti, C_m]
// (transposed views of one buffer) in the operand dtype, one launch.
template <typename Tin>
std::vector<at::Tensor> strip_lefts(const Prepared& p, int64_t i0, int64_t ti, cudaStream_t stream) {
  const int M = static_cast<int>(p.views.size());
  const int64_t N = p.views[0].size(0), s_ld = p.scales[0].stride(0);  // (the scales share one buffer)
  StripSources<Tin> src{};
  src.M = M;
  for (int m = 0; m < M; ++m) {
    const at::Tensor& v = p.views[m];
    src.x[m] = reinterpret_cast<const Tin*>(v.const_data_ptr());
    src.s[m] = p.scales[m].const_data_ptr<Cmp<Tin>>();
    src.sn[m] = v.stride(0), src.sc[m] = v.stride(1), src.sd[m] = v.stride(2);
    src.first[m + 1] = src.first[m] + v.size(1);
  }
  const int64_t rows = src.first[M];
  at::Tensor out = unwritten({N * rows * ti}, p.scales[0].options().dtype(p.operand));
  const int64_t rows_per_chunk = fill_rows(rows, ti, N, multiprocessors());
  for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
    const int64_t nb = std::min(kMaxGrid, N - b0);
    launch("scaled_strip_kernel", scaled_strip_kernel<Tin>,
           dim3(grid_dim((rows + rows_per_chunk - 1) / rows_per_chunk), grid_dim(nb)), dim3(kThreads), stream, src, N,
           b0, i0, ti, rows_per_chunk, s_ld, static_cast<Operand<Tin>*>(out.mutable_data_ptr()));
  }
  std::vector<at::Tensor> lefts;
  for (int m = 0; m < M; ++m) {
    const int64_t C = src.first[m + 1] - src.first[m];
    lefts.push_back(out.narrow(0, N * src.first[m] * ti, N * C * ti).view({N, C, ti}).transpose(1, 2));
  }
  return lefts;
}

// Rows of one set of K strips (all modalities): the most within kStripBudget entries, and
// where that is fewer than d a multiple of 8 (at least 8), so that every strip's first
// position i0 is 16 bytes into a row of any operand dtype (the pointer products' alignment).
int64_t strip_rows(int64_t N, int64_t d, int64_t M) {
  const int64_t rows = std::clamp<int64_t>(kStripBudget / std::max<int64_t>(N * d * M, 1), 1, d);
  return rows >= d ? d : std::min(d, std::max<int64_t>(8, rows / 8 * 8));
}

template <typename Tin>
at::Tensor sqdist_direct(const Prepared& p, const FeatInfo& info, cudaStream_t stream) {
  using Out = Cmp<Tin>;
  const int64_t M = info.M, N = info.N, d = info.d;
  check_direct_modalities(M);
  const int pairs = static_cast<int>(M * (M - 1) / 2);
  const int64_t rows = strip_rows(N, d, M);
  const int64_t strips = (d + rows - 1) / rows;
  const int64_t rows_per_chunk = fill_rows(rows, d, N, multiprocessors());
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  const int64_t slots = strips * chunks;
  // every slot is written (a strip's chunks past its rows write 0): no zero-fill launch
  at::Tensor partial = unwritten({N, pairs, slots}, at::TensorOptions().dtype(at::kDouble).device(p.views[0].device()));
  const at::ScalarType cdt = info.compute_dtype;
  for (int64_t s = 0; s < strips; ++s) {
    const int64_t i0 = s * rows, ti = std::min(rows, d - i0), width = d - i0;
    std::vector<at::Tensor> K = strip_lefts<Tin>(p, i0, ti, stream);  // each replaced by its product (frees
    for (int64_t m = 0; m < M; ++m)                                   // the operands with the last)
      K[m] = gemm(K[m], p.operands[m].narrow(2, i0, width), cdt);     // [N, ti, d - i0]
    for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
      const int64_t nb = std::min(kMaxGrid, N - b0);
      const StripPairs shifted = strip_pairs(K, b0, ti * width);  // the same strips, from sample b0 on
      const dim3 grid(grid_dim(chunks), grid_dim(nb));
      double* out = partial.mutable_data_ptr<double>() + b0 * pairs * slots;
      if (cdt == at::kDouble)
        launch("strip_sqdiff_kernel", strip_sqdiff_kernel<double>, grid, dim3(kThreads), stream, shifted, ti, width,
               rows_per_chunk, chunks, s, slots, out);
      else
        launch("strip_sqdiff_kernel", strip_sqdiff_kernel<float>, grid, dim3(kThreads), stream, shifted, ti, width,
               rows_per_chunk, chunks, s, slots, out);
    }
  }
  at::Tensor S = unwritten({N, M, M}, p.norms[0].options());  // every entry written here (M >= 2)
  for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
    const int64_t nb = std::min(kMaxGrid, N - b0);
    launch("sum_pair_partials_kernel", sum_pair_partials_kernel<Out>, dim3(grid_dim(nb), static_cast<unsigned>(pairs)),
           dim3(kThreads), stream, partial.const_data_ptr<double>() + b0 * pairs * slots, slots, static_cast<int>(M),
           S.mutable_data_ptr<Out>() + b0 * M * M);
  }
  return S;
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
