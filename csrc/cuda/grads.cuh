// graw of each algorithm: the gram backward per block (gram_grad_raw) and the direct
// backward over strips of K (direct_grad_raw).
#pragma once

#include "direct.cuh"
#include "students.cuh"

namespace mtut {
namespace cuda {
namespace {

// graw_m with dL/dXh_m = diag(ref_m s_m) graw_m in the pair form (folded_blocks_kernel):
// graw_m = A_m X_m + sum_{n != m} (f_mn P_mn diag(s_n^2)) R_mn, R_mn = X_n - X_m (equal
// channel counts; else R_mn = X_n and A_m holds only the P_mm side of that pair), from the
// kept blocks: A_m (pair_difference_kernel, one pass per pair) and its product first (it
// writes graw_m: no zero-filled accumulator), then per pair one weighted block
// (weighted_block_kernel) and its product. A pair with X_m = X_n bit for bit adds exactly 0:
// its part of A_m is 0 and R_mn is 0. (Channel counts that differ, or layouts the student
// products cannot read alike: every sample of a modality.)
template <typename Top>
std::vector<at::Tensor> gram_grad_raw(const Prepared& p, const at::Tensor& kept, const Coefficients& c,
                                      const FeatInfo& info, const Needs& needs, cudaStream_t stream) {
  using T = Cmp<Top>;
  const int64_t M = info.M, N = info.N;
  std::vector<at::Tensor> g(M);
  for (int64_t m = 0; m < M; ++m) {
    if (!needs[m]) continue;
    const int64_t Cm = info.channels[m];
    const at::Tensor mm = kept_block(kept, info.channels, m, m);
    at::Tensor A = at::empty({N, Cm, Cm}, mm.options());
    const int64_t a_rows = fill_rows(Cm, Cm, N, multiprocessors());
    for (int64_t n = 0, first = 1; n < M; ++n) {
      if (n == m) continue;
      const bool same = info.channels[n] == Cm;
      const at::Tensor mn = kept_block(kept, info.channels, std::min(m, n), std::max(m, n));
      const at::Tensor factor = c.factor.select(1, m).select(1, n);  // [N], stride M * M
      for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
        const int64_t nb = std::min(kMaxGrid, N - b0);
        launch("pair_difference_kernel", pair_difference_kernel<T>,
               dim3(grid_dim((Cm + a_rows - 1) / a_rows), grid_dim(nb)), dim3(kThreads), stream,
               mn.const_data_ptr<T>() + b0 * mn.stride(0), mn.stride(0), mm.const_data_ptr<T>() + b0 * mm.stride(0),
               mm.stride(0), Cm, a_rows, n < m, same, p.scales[n].const_data_ptr<T>() + b0 * p.scales[n].stride(0),
               p.scales[m].const_data_ptr<T>() + b0 * p.scales[m].stride(0), p.scales[m].stride(0),
               factor.const_data_ptr<T>() + b0 * factor.stride(0), factor.stride(0), first != 0,
               A.mutable_data_ptr<T>() + b0 * Cm * Cm);
      }
      first = 0;
    }
    gemm_acc(g[m], A.scalar_type() == p.operand ? A : A.to(p.operand), p.operands[m], info.compute_dtype);
    for (int64_t n = 0; n < M; ++n) {
      if (n == m) continue;
      const bool upper = m <= n;
      const at::Tensor block = kept_block(kept, info.channels, std::min(m, n), std::max(m, n));
      const int64_t rows = block.size(1), cols = block.size(2);
      const int64_t rows_per_chunk = fill_rows(rows, cols, N, multiprocessors());
      at::Tensor weighted = at::empty({N, rows, cols}, block.options().dtype(p.operand));
      const at::Tensor factor = c.factor.select(1, m).select(1, n);  // [N], stride M * M
      for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
        const int64_t nb = std::min(kMaxGrid, N - b0);
        launch("weighted_block_kernel", weighted_block_kernel<Top>,
               dim3(grid_dim((rows + rows_per_chunk - 1) / rows_per_chunk), grid_dim(nb)), dim3(kThreads), stream,
               block.const_data_ptr<T>() + b0 * block.stride(0), block.stride(0), rows, cols, rows_per_chunk,
               p.scales[n].const_data_ptr<T>() + b0 * p.scales[n].stride(0), p.scales[n].stride(0), !upper,
               factor.const_data_ptr<T>() + b0 * factor.stride(0), factor.stride(0),
               static_cast<Top*>(weighted.mutable_data_ptr()) + b0 * rows * cols, rows * cols);
      }
      const at::Tensor W = upper ? weighted : weighted.transpose(1, 2);  // [N, C_m, C_n]
      const at::Tensor R = info.channels[n] == Cm ? p.operands[n] - p.operands[m] : p.operands[n];
      gemm_acc(g[m], W, R, info.compute_dtype);
    }
  }
  return g;
}

// E[b] = sum_{n != m} (-coef_mn / ref_m) (K_m[b] - K_n[b]) (= sum_n (coef_mn / ref_m) K_n[b],
// coef_mm = -sum_{n != m} coef_mn) in the operand dtype, one pass over the strips [N, count] in
// chunks of `chunk` entries (fill_chunks), four entries kThreads apart a step (4 M loads in
// flight); E's samples `out_stride` apart. Each difference is formed before it is weighted,
// as in the forward: a pair with K_m = K_n bit for bit adds exactly 0 (f_mm K_m + f_mn K_n
// would leave a rounding residue).
template <typename Top>
__global__ void __launch_bounds__(kThreads, 4)
    combine_strips_kernel(const StripPairs strips, int64_t count, int64_t chunk, int m,
                          const Cmp<Top>* __restrict__ factor, Top* __restrict__ out, int64_t out_stride) {
  using T = Cmp<Top>;
  const int64_t b = blockIdx.y;
  const int M = strips.M;
  const T* f = factor + (b * M + m) * M;
  const int64_t e1 = std::min(count, (static_cast<int64_t>(blockIdx.x) + 1) * chunk);
  const T* km = strip_of<T>(strips, m) + b * count;
  Top* o = out + b * out_stride;
  int64_t e = static_cast<int64_t>(blockIdx.x) * chunk + threadIdx.x;
  for (; e + 3 * kThreads < e1; e += 4 * kThreads) {
    T own[4], acc[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      own[u] = km[e + u * kThreads];
      acc[u] = 0;
    }
    for (int n = 0; n < M; ++n) {
      if (n == m) continue;
      const T* kn = strip_of<T>(strips, n) + b * count;
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[u] += (own[u] - kn[e + u * kThreads]) * -f[n];
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) o[e + u * kThreads] = from_compute<Top>(acc[u]);
  }
  for (; e < e1; e += kThreads) {
    T acc = 0;
    for (int n = 0; n < M; ++n)
      if (n != m) acc += (km[e] - (strip_of<T>(strips, n) + b * count)[e]) * -f[n];
    o[e] = from_compute<Top>(acc);
  }
}

// E's sample stride for `count` entries a sample: padded to 8 entries (16 bytes of any
// operand dtype), so that every sample's E is aligned whatever the strip's rows (the last).
int64_t e_stride(int64_t count) { return (count + 7) / 8 * 8; }

// Whether every pointer of direct_grad_raw's student products is proven aligned
// (AlignmentProof): the inputs' rows (the left operands), every strip's offset i0 into them,
// every strip's E sample stride (the last strip's too) and the gradient's sample stride.
bool direct_students_aligned(const Prepared& p, const FeatInfo& info, int64_t rows) {
  const int64_t N = info.N, d = info.d, e = c10::elementSize(p.operand), eo = c10::elementSize(info.compute_dtype);
  AlignmentProof proof;
  for (const at::Tensor& x : p.operands) proof.rows(x);
  const int64_t step = rows_layout(p.operands[0]).position_stride();
  for (int64_t i0 = 0; i0 < d; i0 += rows)
    proof.bytes(i0 * step * e).bytes(N > 1 ? e_stride(std::min(rows, d - i0) * d) * e : 0);
  proof.bytes(N > 1 ? info.channels[0] * d * eo : 0);
  if (!proof.ok) note_fallback("direct students");
  return proof.ok;
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
  const int64_t rows = strip_rows(N, d, M);
  std::vector<at::Tensor> g(M);
  std::vector<at::Tensor> K(M);
  const bool students = student_products_apply(p, info) && direct_students_aligned(p, info, rows);
  StudentBases bases{};
  const int64_t L = students ? student_graw(info, needs, slots, c.ref.options(), g, bases) : 0;
  const RowsLayout lx = rows_layout(p.operands[0]);
  for (int64_t i0 = 0; i0 < d; i0 += rows) {
    const int64_t ti = std::min(rows, d - i0), count = ti * d;
    K = strip_lefts<Tin>(p, i0, ti, stream);                 // each replaced by its product, as in sqdist_direct
    for (int64_t m = 0; m < M; ++m)                          // K_m enters E_m and every other E_n: all are formed
      K[m] = gemm(K[m], p.operands[m], info.compute_dtype);  // [N, ti, d]
    std::vector<at::Tensor> E(M);
    const Chunks ch = fill_chunks(count, N, multiprocessors());
    for (int64_t m = 0; m < M; ++m) {
      if (!needs[m]) continue;
      const int64_t es = e_stride(count);
      E[m] = at::empty({N, es}, K[m].options().dtype(p.operand)).narrow(1, 0, count).view({N, ti, d});
      for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
        const int64_t nb = std::min(kMaxGrid, N - b0);
        launch("combine_strips_kernel", combine_strips_kernel<Top>, dim3(grid_dim(ch.count), grid_dim(nb)),
               dim3(kThreads), stream, strip_pairs(K, b0, count), count, ch.entries, static_cast<int>(m),
               c.factor.const_data_ptr<T>() + b0 * M * M, static_cast<Top*>(E[m].mutable_data_ptr()) + b0 * es, es);
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
      bases.right_sample[q] = E[m].stride(0) * E[m].element_size();
    }
    const at::Tensor ptrs = student_pointers<T>(bases, info, L, 1, c, c.ref.element_size(), stream);
    require_aligned(bases, info, c.ref.element_size());
    pointer_product(ptrs, 0, N * L, info.channels[0], d, ti, rows_matrix(lx), {true, d}, /*accumulate=*/i0 > 0,
                    p.operand, info.compute_dtype);
  }
  return g;
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
