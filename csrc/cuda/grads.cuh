// graw of each algorithm: the gram backward per block (gram_grad_raw) and the direct
// backward over strips of K (direct_grad_raw).
#pragma once

#include "direct.cuh"
#include "students.cuh"

namespace mtut {
namespace cuda {
namespace {

// graw_m with dL/dXh_m = diag(ref_m s_m) graw_m = sum_n coef_mn G_mn Xh_n:
// graw_m = sum_n (coef_mn / ref_m) P_mn diag(s_n^2) X_n, from the kept blocks: per block one
// pass that weights it (weighted_block_kernel) and one product; the first product writes
// graw_m (no zero-filled accumulator). (Channel counts that differ, or layouts the student
// products cannot read alike: every sample of a modality.)
template <typename Top>
std::vector<at::Tensor> gram_grad_raw(const Prepared& p, const at::Tensor& kept, const Coefficients& c,
                                      const FeatInfo& info, const Needs& needs, cudaStream_t stream) {
  const int64_t M = info.M, N = info.N;
  std::vector<at::Tensor> g(M);
  for (int64_t m = 0; m < M; ++m) {
    if (!needs[m]) continue;
    for (int64_t n = 0; n < M; ++n) {
      const bool upper = m <= n;
      const at::Tensor block = kept_block(kept, info.channels, std::min(m, n), std::max(m, n));
      const int64_t rows = block.size(1), cols = block.size(2);
      const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkEntries / cols);
      at::Tensor weighted = at::empty({N, rows, cols}, block.options().dtype(p.operand));
      const at::Tensor factor = c.factor.select(1, m).select(1, n);  // [N], stride M * M
      for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
        const int64_t nb = std::min(kMaxGrid, N - b0);
        launch(weighted_block_kernel<Top>, dim3(grid_dim((rows + rows_per_chunk - 1) / rows_per_chunk), grid_dim(nb)),
               dim3(kThreads), stream, block.const_data_ptr<Cmp<Top>>() + b0 * block.stride(0), block.stride(0), rows,
               cols, rows_per_chunk, p.scales[n].const_data_ptr<Cmp<Top>>() + b0 * p.scales[n].stride(0),
               p.scales[n].stride(0), !upper,
               factor.const_data_ptr<Cmp<Top>>() + b0 * factor.stride(0), factor.stride(0),
               static_cast<Top*>(weighted.mutable_data_ptr()) + b0 * rows * cols, rows * cols);
      }
      const at::Tensor A = upper ? weighted : weighted.transpose(1, 2);  // [N, C_m, C_n]
      gemm_acc(g[m], A, p.operands[n], info.compute_dtype);
    }
  }
  return g;
}

// E[b] = sum_{n != m} (-coef_mn / ref_m) (K_m[b] - K_n[b]) (= sum_n (coef_mn / ref_m) K_n[b],
// coef_mm = -sum_{n != m} coef_mn) in the operand dtype, one pass over the strips [N, count].
// Each difference is formed before it is weighted, as in the forward: a pair with
// K_m = K_n bit for bit adds exactly 0 (f_mm K_m + f_mn K_n would leave a rounding residue).
// (4 blocks per SM, as normalize_backward_kernel: otherwise ptxas kept it to 32 registers
// for sm_80 and spilled one.)
template <typename Top>
__global__ void __launch_bounds__(kThreads, 4) combine_strips_kernel(
    const StripPairs strips, int64_t count, int m, const Cmp<Top>* __restrict__ factor, Top* __restrict__ out) {
  using T = Cmp<Top>;
  const int64_t chunk = blockIdx.x, b = blockIdx.y;
  const int M = strips.M;
  const T* f = factor + (b * M + m) * M;
  const int64_t e1 = std::min(count, (chunk + 1) * kChunkEntries);
  for (int64_t e = chunk * kChunkEntries + threadIdx.x; e < e1; e += kThreads) {
    const T km = strip_of<T>(strips, m)[b * count + e];
    T acc = 0;
    for (int n = 0; n < M; ++n)
      if (n != m) acc += (km - strip_of<T>(strips, n)[b * count + e]) * -f[n];
    out[b * count + e] = from_compute<Top>(acc);
  }
}

// graw_m with dL/dXh_m = diag(ref_m s_m) graw_m for dL/dXh_m = Xh_m E_m, E_m = sum_n coef_mn K_n,
// over strips of rows I: K_n[I, :] = X_n[:, I]^T diag(s_n^2) X_n, graw_m += X_m[:, I] E_m[I, :] / ref_m;
// for equal channel counts one pointer-array product a strip over the students' rows.
template <typename Tin>
std::vector<at::Tensor> direct_grad_raw(const Prepared& p, const Coefficients& c, const FeatInfo& info,
                                        const Needs& needs, int64_t slots, cudaStream_t stream) {
  using Top = Operand<Tin>;
  using T = Cmp<Tin>;
  const int64_t M = info.M, N = info.N, d = info.d;
  check_direct_modalities(M);
  const int64_t rows = std::clamp<int64_t>(kStripBudget / std::max<int64_t>(N * d * M, 1), 1, d);
  std::vector<at::Tensor> g(M);
  std::vector<at::Tensor> K(M);
  const bool students = student_products_apply(p, info);
  StudentBases bases{};
  const int64_t L = students ? student_graw(info, needs, slots, c.ref.options(), g, bases) : 0;
  const RowsLayout lx = rows_layout(p.operands[0]);
  for (int64_t i0 = 0; i0 < d; i0 += rows) {
    const int64_t ti = std::min(rows, d - i0), count = ti * d;
    K = strip_lefts<Tin>(p, i0, ti, stream);  // each replaced by its product, as in sqdist_direct
    for (int64_t m = 0; m < M; ++m)  // K_m enters E_m and every other E_n: all are formed
      K[m] = gemm(K[m], p.operands[m], info.compute_dtype);  // [N, ti, d]
    std::vector<at::Tensor> E(M);
    for (int64_t m = 0; m < M; ++m) {
      if (!needs[m]) continue;
      E[m] = at::empty({N, ti, d}, K[m].options().dtype(p.operand));
      for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
        const int64_t nb = std::min(kMaxGrid, N - b0);
        launch(combine_strips_kernel<Top>, dim3(grid_dim((count + kChunkEntries - 1) / kChunkEntries), grid_dim(nb)),
               dim3(kThreads), stream, strip_pairs(K, b0, count), count, static_cast<int>(m),
               c.factor.const_data_ptr<T>() + b0 * M * M, static_cast<Top*>(E[m].mutable_data_ptr()) + b0 * count);
      }
      if (!students) gemm_acc(g[m], p.operands[m].narrow(2, i0, ti), E[m], info.compute_dtype);
    }
    if (L == 0) continue;
    const int64_t elem = p.operands[0].element_size();
    for (int64_t m = 0; m < M; ++m) {
      if (!needs[m]) continue;
      const int64_t q = m * M + m;  // one term: (m, m)
      bases.left[q] = static_cast<const char*>(p.operands[m].const_data_ptr()) + i0 * lx.position_stride() * elem;
      bases.left_sample[q] = p.operands[m].stride(0) * elem;
      bases.right[q] = static_cast<const char*>(E[m].const_data_ptr());
      bases.right_sample[q] = count * E[m].element_size();
    }
    const at::Tensor ptrs = student_pointers<T>(bases, info, L, 1, c, c.ref.element_size(), stream);
    pointer_product(ptrs, 0, N * L, info.channels[0], d, ti, rows_matrix(lx), {true, d}, /*accumulate=*/i0 > 0,
                    p.operand, info.compute_dtype);
  }
  return g;
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
