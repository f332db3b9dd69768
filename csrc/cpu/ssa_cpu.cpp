// CPU kernels of sqdist_forward and sqdist_backward: both algorithms of docs/design.md §2.
//
// Memory: the normalized rows Xh = diag(s) X, s = 1 / max(||x||, eps), are never built.
// Every product needs s only as a per-channel factor: a K strip is (X_I s^2)^T X_J, a
// Gram block is diag(s_m) X_m X_n^T diag(s_n), and every gradient contribution has
// diag(s) on its left, so it is applied once, in the fused normalization backward.
// Nothing of size d x d is allocated: the direct algorithm holds one kTile x kStrip
// strip per modality. For the backward, the Gram algorithm keeps the unscaled blocks
// X_m X_n^T (n >= m) that its forward computed (N sum_{m<=n} C_m C_n values, less than
// the inputs wherever gram is the algorithm of choice, d > C), so its backward does
// only the products that apply them; the direct algorithm keeps nothing.
//
// Threads: the products run on the calling thread as wide GEMMs that BLAS
// parallelizes; at::parallel_for only wraps plain loops (never ATen calls: nested
// thread teams spin against each other on a busy machine). Reductions are summed in a
// fixed order, so results do not depend on the number of threads.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "ssa_common.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace mtut {
namespace cpu {
namespace {

constexpr int64_t kTile = 256;    // rows of a strip of K
constexpr int64_t kStrip = 2048;  // columns of a strip

// One modality's rows and their normalization.
struct Rows {
  at::Tensor x;      // [N, C, d] contiguous, compute dtype (no copy for contiguous float/double input)
  at::Tensor norm;   // [N, C] r = ||x||
  at::Tensor scale;  // [N, C] s = 1 / max(r, eps)
};

std::vector<Rows> rows_of(at::TensorList feats, const FeatInfo& info, double eps) {
  std::vector<Rows> out;
  for (const auto& f : feats) {
    at::Tensor x = f.reshape({f.size(0), f.size(1), info.d}).to(info.compute_dtype).contiguous();
    at::Tensor norm = x.norm(2, {-1});  // as F.normalize computes it
    out.push_back({x, norm, norm.clamp_min(eps).reciprocal()});
  }
  return out;
}

// dL/dx from dL/dXh = diag(s) graw, in place on graw (a [N, C, d] buffer):
//   dx = (g - xh <xh, g>) / r where r > eps, else g / eps, with g = s graw, xh = s x.
template <typename T>
at::Tensor normalize_backward_inplace(at::Tensor graw, const Rows& rows, double eps, const at::Tensor& feat) {
  const int64_t R = graw.size(0) * graw.size(1), d = graw.size(2);
  T* g = graw.mutable_data_ptr<T>();
  const T* x = rows.x.const_data_ptr<T>();
  const T* r = rows.norm.const_data_ptr<T>();
  const T* s = rows.scale.const_data_ptr<T>();
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* gi = g + i * d;
      const T* xi = x + i * d;
      const T si = s[i];
      if (r[i] > eps) {
        double dot = 0;
        for (int64_t k = 0; k < d; ++k) dot += static_cast<double>(xi[k]) * static_cast<double>(gi[k]);
        const T c = static_cast<T>(dot * si * si * si);  // <xh, g> times the s of xh
        const T inv_r = T(1) / r[i];
        for (int64_t k = 0; k < d; ++k) gi[k] = (si * gi[k] - c * xi[k]) * inv_r;
      } else {
        const T f = si / static_cast<T>(eps);
        for (int64_t k = 0; k < d; ++k) gi[k] *= f;
      }
    }
  });
  return graw.reshape(feat.sizes()).to(feat.scalar_type());
}

// ---------------------------------------------------------------- direct (tiled)

// X_I scaled by s^2 per channel: the left factor of the K strip (X_I s^2)^T X_J.
at::Tensor left_factor(const Rows& rows, int64_t b, int64_t i0, int64_t ti) {
  const at::Tensor s = rows.scale.select(0, b);
  return rows.x.select(0, b).narrow(1, i0, ti) * (s * s).unsqueeze(1);
}

// Per-row partial sums of sum_c weight(c) (a_rc - b_rc)^2 over a [rows, cols] strip,
// where the first `diag_cols` columns (the diagonal tile) count once and the rest twice.
template <typename T>
double strip_sum_squared_difference(const at::Tensor& a, const at::Tensor& b, int64_t diag_cols) {
  const int64_t rows = a.size(0), cols = a.size(1);
  const T* pa = a.const_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  std::vector<double> row_sum(rows);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* ra = pa + r * cols;
      const T* rb = pb + r * cols;
      double on = 0, off = 0;  // the difference is formed element-wise: no cancellation
      for (int64_t c = 0; c < diag_cols; ++c) {
        const double v = static_cast<double>(ra[c] - rb[c]);
        on += v * v;
      }
      for (int64_t c = diag_cols; c < cols; ++c) {
        const double v = static_cast<double>(ra[c] - rb[c]);
        off += v * v;
      }
      row_sum[r] = on + 2.0 * off;  // an off-diagonal entry stands for its mirror too
    }
  });
  double total = 0;
  for (double v : row_sum) total += v;
  return total;
}

// S over the upper triangle of D, in strips of kTile rows I by kStrip columns J >= I.
template <typename T>
at::Tensor sqdist_direct(const std::vector<Rows>& rows, const FeatInfo& info) {
  const int64_t N = info.N, M = info.M, d = info.d;
  at::Tensor S = at::zeros({N, M, M}, at::TensorOptions().dtype(at::kDouble));
  auto s = S.accessor<double, 3>();
  std::vector<at::Tensor> A(M), K(M);
  for (int64_t b = 0; b < N; ++b) {
    for (int64_t i0 = 0; i0 < d; i0 += kTile) {
      const int64_t ti = std::min(kTile, d - i0);
      for (int64_t m = 0; m < M; ++m) A[m] = left_factor(rows[m], b, i0, ti);
      for (int64_t j0 = i0; j0 < d; j0 += kStrip) {
        const int64_t tj = std::min(kStrip, d - j0);
        for (int64_t m = 0; m < M; ++m) K[m] = at::mm(A[m].t(), rows[m].x.select(0, b).narrow(1, j0, tj));
        const int64_t diag_cols = j0 == i0 ? ti : 0;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = m + 1; n < M; ++n) s[b][m][n] += strip_sum_squared_difference<T>(K[m], K[n], diag_cols);
      }
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = m + 1; n < M; ++n) s[b][n][m] = s[b][m][n];
  }
  return S.to(info.compute_dtype);
}

// graw[m] with dL/dXh_m = diag(s_m) graw[m], for the weighted sum over n of dS_mn/dXh_m:
// sum_n w_mn 4 Xh_m (K_m - K_n) = Xh_m E_m, E_m = sum_n 4 w_mn (K_m - K_n). Each difference
// is formed element-wise before it is weighted (as in the forward), so a pair with
// K_m = K_n bit for bit adds exactly 0 (not a_m K_m less w_mn K_n, which leaves a rounding
// residue). E_m is symmetric, so each upper strip E[I, J] serves twice:
// columns J get X_I E[I, J] and columns I get X_J E[I, J]^T (the diagonal tile once).
// Only modalities with needs[m] get a buffer and any work.
template <typename T>
std::vector<at::Tensor> sqdist_grad_direct(const std::vector<Rows>& rows, const FeatInfo& info,
                                           const at::Tensor& weight, const Needs& needs) {
  const int64_t N = info.N, M = info.M, d = info.d;
  auto w = weight.accessor<double, 3>();
  std::vector<at::Tensor> graw(M);
  for (int64_t m = 0; m < M; ++m)
    if (needs[m]) graw[m] = at::zeros_like(rows[m].x);
  std::vector<at::Tensor> A(M), K(M);
  std::vector<char> row_active(M), need_k(M);
  for (int64_t b = 0; b < N; ++b) {
    bool any = false;
    for (int64_t m = 0; m < M; ++m) row_active[m] = need_k[m] = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < M; ++n)
        if (needs[m] && n != m && w[b][m][n] != 0) row_active[m] = need_k[m] = need_k[n] = 1, any = true;
    if (!any) continue;  // e.g. the better network of a pair gets no SSA gradient
    for (int64_t i0 = 0; i0 < d; i0 += kTile) {
      const int64_t ti = std::min(kTile, d - i0);
      for (int64_t m = 0; m < M; ++m)
        if (need_k[m]) A[m] = left_factor(rows[m], b, i0, ti);
      for (int64_t j0 = i0; j0 < d; j0 += kStrip) {
        const int64_t tj = std::min(kStrip, d - j0);
        for (int64_t m = 0; m < M; ++m)
          if (need_k[m]) K[m] = at::mm(A[m].t(), rows[m].x.select(0, b).narrow(1, j0, tj));  // [ti, tj]
        for (int64_t m = 0; m < M; ++m) {
          if (!row_active[m]) continue;
          at::Tensor E = at::zeros_like(K[m]);
          for (int64_t n = 0; n < M; ++n)
            if (n != m && w[b][m][n] != 0) E.add_(K[m] - K[n], 4.0 * w[b][m][n]);
          const at::Tensor x = rows[m].x.select(0, b);
          at::Tensor g = graw[m].select(0, b);
          g.narrow(1, j0, tj).addmm_(x.narrow(1, i0, ti), E);  // rows I of E into columns J
          const int64_t skip = j0 == i0 ? ti : 0;              // the diagonal tile is already complete
          if (tj > skip)
            g.narrow(1, i0, ti).addmm_(x.narrow(1, j0 + skip, tj - skip), E.narrow(1, skip, tj - skip).t());
        }
      }
    }
  }
  return graw;
}

// ---------------------------------------------------------------- gram

// The unscaled Gram blocks P_mn = X_m X_n^T, [C_m, C_n], of one sample: views of a row of
// what the forward keeps (ssa_common.h:kept_block), or new tensors where none is kept;
// block (m, n) with n < m is P_nm^T.
struct GramBlocks {
  std::vector<at::Tensor> upper;  // [m * M + n] for n >= m; undefined where not computed
  int64_t M;
  at::Tensor block(int64_t m, int64_t n) const { return m <= n ? upper[m * M + n] : upper[n * M + m].t(); }
};

// Views of the kept blocks of sample b.
GramBlocks kept_blocks(const at::Tensor& kept, const FeatInfo& info, int64_t b) {
  GramBlocks G{std::vector<at::Tensor>(info.M * info.M), info.M};
  for (int64_t m = 0; m < info.M; ++m)
    for (int64_t n = m; n < info.M; ++n) G.upper[m * info.M + n] = kept_block(kept, info.channels, m, n).select(0, b);
  return G;
}

// Computes the blocks (m, n >= m) that `wanted` asks for, into `G` (views of a kept row,
// or new tensors where G holds none). Every block is one GEMM of its own shape, so for
// X_m = X_n the blocks P_mm, P_mn and P_nn are the same bit for bit (S exactly 0).
void compute_blocks(const std::vector<Rows>& rows, int64_t b, GramBlocks& G,
                    const std::vector<std::vector<char>>& wanted) {
  for (int64_t m = 0; m < G.M; ++m) {
    const at::Tensor xm = rows[m].x.select(0, b);
    for (int64_t n = m; n < G.M; ++n) {
      if (!wanted[m][n]) continue;
      at::Tensor& out = G.upper[m * G.M + n];
      const at::Tensor xn_t = rows[n].x.select(0, b).t();
      if (out.defined())
        at::mm_out(out, xm, xn_t);
      else
        out = at::mm(xm, xn_t);
    }
  }
}

// ||diag(s_m) P diag(s_n)||_F^2 in double, rows summed in a fixed order.
template <typename T>
double scaled_sum_squares(const at::Tensor& P, const at::Tensor& sm, const at::Tensor& sn) {
  const int64_t R = P.size(0), C = P.size(1);
  const T* g = P.const_data_ptr<T>();
  const T* a = sm.const_data_ptr<T>();
  const T* c = sn.const_data_ptr<T>();
  std::vector<double> row_sum(R);
  at::parallel_for(0, R, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double acc = 0;
      for (int64_t j = 0; j < C; ++j) {
        const double v = static_cast<double>(g[i * C + j]) * static_cast<double>(c[j]);
        acc += v * v;
      }
      row_sum[i] = acc * static_cast<double>(a[i]) * static_cast<double>(a[i]);
    }
  });
  double total = 0;
  for (double v : row_sum) total += v;
  return total;
}

// S_mn = ||G_mm||^2 - 2 ||G_mn||^2 + ||G_nn||^2 of one sample: a difference of large terms,
// so the norms are accumulated in double and the result is clamped at 0 (NaN passes).
template <typename T>
void gram_sqdist_sample(const GramBlocks& G, const std::vector<Rows>& rows, int64_t b,
                        at::TensorAccessor<double, 2> s) {
  const int64_t M = G.M;
  std::vector<double> t(M * M);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = m; n < M; ++n)
      t[m * M + n] = scaled_sum_squares<T>(G.upper[m * M + n], rows[m].scale.select(0, b), rows[n].scale.select(0, b));
  for (int64_t m = 0; m < M; ++m) {
    s[m][m] = 0;
    for (int64_t n = m + 1; n < M; ++n) {
      const double v = t[m * M + m] - 2.0 * t[m * M + n] + t[n * M + n];
      s[m][n] = s[n][m] = v < 0 ? 0.0 : v;
    }
  }
}

// S of every sample; with `kept` defined ([N, sum_{m<=n} C_m C_n]) the blocks stay there.
template <typename T>
at::Tensor sqdist_gram(const std::vector<Rows>& rows, const FeatInfo& info, const at::Tensor& kept) {
  at::Tensor S = at::zeros({info.N, info.M, info.M}, at::TensorOptions().dtype(at::kDouble));
  auto s = S.accessor<double, 3>();
  const std::vector<std::vector<char>> all(info.M, std::vector<char>(info.M, 1));
  for (int64_t b = 0; b < info.N; ++b) {
    GramBlocks G =
        kept.defined() ? kept_blocks(kept, info, b) : GramBlocks{std::vector<at::Tensor>(info.M * info.M), info.M};
    compute_blocks(rows, b, G, all);
    gram_sqdist_sample<T>(G, rows, b, s[b]);
  }
  return S.to(info.compute_dtype);
}

// dL/dXh_m = diag(s_m) graw[m] = sum_n 4 w_mn (G_mm Xh_m - G_mn Xh_n) for every modality m
// with needs[m], i.e. graw[m] = sum_n 4 w_mn (Y_m - P_mn diag(s_n^2) X_n), Y_m = P_mm diag(s_m^2) X_m.
// The two sides of each difference are the same operations on operands of the same layout:
// P_mn with n < m is a transposed view (P_nm^T), so Y_m is then formed from P_mm^T (one
// product per orientation used). For X_m = X_n the two sides are equal bit for bit and the
// pair adds exactly 0. The blocks come from `kept` when the forward kept them, else only
// the ones needed are computed.
template <typename T>
std::vector<at::Tensor> sqdist_grad_gram(const std::vector<Rows>& rows, const FeatInfo& info, const at::Tensor& weight,
                                         const at::Tensor& kept, const Needs& needs) {
  const int64_t M = info.M;
  auto w = weight.accessor<double, 3>();
  std::vector<at::Tensor> graw(M);
  for (int64_t m = 0; m < M; ++m)
    if (needs[m]) graw[m] = at::zeros_like(rows[m].x);
  std::vector<std::vector<char>> wanted(M, std::vector<char>(M));
  for (int64_t b = 0; b < info.N; ++b) {
    bool any = false;
    for (auto& row : wanted) std::fill(row.begin(), row.end(), 0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < M; ++n)
        if (needs[m] && n != m && w[b][m][n] != 0) {  // a NaN weight must propagate, so only an exact 0 skips
          wanted[m][m] = wanted[std::min(m, n)][std::max(m, n)] = 1;
          any = true;
        }
    if (!any) continue;  // e.g. the better network of a pair gets no SSA gradient
    GramBlocks G{std::vector<at::Tensor>(M * M), M};
    if (kept.numel() > 0)
      G = kept_blocks(kept, info, b);
    else
      compute_blocks(rows, b, G, wanted);
    for (int64_t m = 0; m < M; ++m) {
      if (!needs[m]) continue;
      const at::Tensor sm = rows[m].scale.select(0, b);
      const at::Tensor xm = rows[m].x.select(0, b);
      at::Tensor y[2];  // Y_m from P_mm (for n > m) and from P_mm^T (for n < m)
      at::Tensor out = graw[m].select(0, b);
      for (int64_t n = 0; n < M; ++n) {
        if (n == m || w[b][m][n] == 0) continue;
        const int lower = n < m;
        if (!y[lower].defined()) {
          const at::Tensor pmm = lower ? G.block(m, m).t() : G.block(m, m);
          y[lower] = at::mm(pmm * (sm * sm).unsqueeze(0), xm);
        }
        const at::Tensor sn = rows[n].scale.select(0, b);
        const at::Tensor yn = at::mm(G.block(m, n) * (sn * sn).unsqueeze(0), rows[n].x.select(0, b));
        out.add_(y[lower] - yn, 4.0 * w[b][m][n]);
      }
    }
  }
  return graw;
}

// ---------------------------------------------------------------- ops

std::tuple<at::Tensor, at::Tensor> sqdist_forward(at::TensorList feats, double eps, c10::string_view algo,
                                                  bool /*directed: the autograd formula's*/, bool for_backward) {
  const FeatInfo info = check_feats(feats);
  check_eps(eps);
  const Algo a = resolve_algo(algo, info.d, info.channels, Backend::Cpu, info.dtype);
  const std::vector<Rows> rows = rows_of(feats, info, eps);
  const auto options = at::TensorOptions().dtype(info.compute_dtype);
  at::Tensor S;
  at::Tensor kept =
      a == Algo::Gram && for_backward ? at::zeros({info.N, kept_gram_size(info.channels)}, options) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(info.compute_dtype, "mtut_sqdist_forward_cpu", [&] {
    S = a == Algo::Direct ? sqdist_direct<scalar_t>(rows, info) : sqdist_gram<scalar_t>(rows, info, kept);
  });
  return {S, kept.defined() ? kept : at::empty({0}, options)};
}

std::vector<at::Tensor> sqdist_backward(at::TensorList feats, const at::Tensor& saved, const at::Tensor& weight,
                                        double eps, c10::string_view algo, const c10::List<bool>& needs_grad,
                                        int64_t students) {
  const FeatInfo info = check_feats(feats);
  check_weight(weight, info, feats[0]);
  check_students(students, info);  // (a CUDA hint: the cpu backward runs every row, weighted or not)
  check_eps(eps);
  const Needs needs = check_needs_grad(needs_grad, info);
  const Algo a = resolve_algo(algo, info.d, info.channels, Backend::Cpu, info.dtype);
  check_saved(saved, info, a, Backend::Cpu, feats[0]);
  const std::vector<Rows> rows = rows_of(feats, info, eps);
  const at::Tensor w = weight.to(at::kDouble).contiguous();
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES(info.compute_dtype, "mtut_sqdist_backward_cpu", [&] {
    std::vector<at::Tensor> graw = a == Algo::Direct
                                       ? sqdist_grad_direct<scalar_t>(rows, info, w, needs)
                                       : sqdist_grad_gram<scalar_t>(rows, info, w, saved.contiguous(), needs);
    for (int64_t m = 0; m < info.M; ++m)
      grads.push_back(needs[m] ? normalize_backward_inplace<scalar_t>(graw[m], rows[m], eps, feats[m])
                               : at::empty({0}, feats[m].options()));
  });
  return grads;
}

}  // namespace
}  // namespace cpu
}  // namespace mtut

TORCH_LIBRARY_IMPL(mtut, CPU, m) {
  m.impl("sqdist_forward", &mtut::cpu::sqdist_forward);
  m.impl("sqdist_backward", &mtut::cpu::sqdist_backward);
}
