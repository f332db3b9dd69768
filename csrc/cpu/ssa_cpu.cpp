// CPU kernels of pairwise_sqdist and sqdist_backward, both algorithms of DESIGN.md §2.
// Matrix products go to BLAS (at::mm); the fused parts (square, subtract, reduce)
// are plain loops. Reductions run in a fixed order, so results do not depend on the
// number of threads. Nothing of size d x d is allocated: the direct algorithm
// holds one kTile x kStrip strip per modality.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "ssa_common.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace mtut {
namespace cpu {
namespace {

constexpr int64_t kTile = 256;    // rows of a strip of K
constexpr int64_t kStrip = 2048;  // columns of a strip: one strip is kTile x kStrip per modality

// sum_ij a_ij^2 of a row-major view (stride(1) == 1), accumulated in double.
template <typename T>
double sum_squares(const at::Tensor& a) {
  const int64_t rows = a.size(0), cols = a.size(1), ld = a.stride(0);
  const T* p = a.const_data_ptr<T>();
  double total = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const T* row = p + i * ld;
    double s = 0;
    for (int64_t j = 0; j < cols; ++j) s += static_cast<double>(row[j]) * static_cast<double>(row[j]);
    total += s;
  }
  return total;
}

// sum_ij (a_ij - b_ij)^2 of two contiguous tiles of one shape; the difference is formed
// element-wise, so no cancellation between large terms.
template <typename T>
double sum_squared_difference(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.numel();
  const T* pa = a.const_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double diff = static_cast<double>(pa[i] - pb[i]);
    s += diff * diff;
  }
  return s;
}

std::vector<int64_t> channel_offsets(const FeatInfo& info) {
  std::vector<int64_t> off(info.M + 1, 0);
  for (int64_t m = 0; m < info.M; ++m) off[m + 1] = off[m] + info.channels[m];
  return off;
}

// ---------------------------------------------------------------- direct (tiled)
//
// The d x d matrices are walked in strips of kTile rows I by up to kStrip columns J >= I
// (the upper triangle: D is symmetric). The products run on the calling thread as wide
// GEMMs that BLAS parallelizes; at::parallel_for only wraps the plain reduction loops
// (never ATen calls: nested thread teams spin against each other on a busy machine).

// Per-row partial sums of sum_c weight(c) (a_rc - b_rc)^2 over a [rows, cols] strip,
// where the first `diag_cols` columns (the diagonal tile) count once and the rest twice.
// Rows are summed in a fixed order afterwards, so the result is thread-count independent.
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
        const double x = static_cast<double>(ra[c] - rb[c]);
        on += x * x;
      }
      for (int64_t c = diag_cols; c < cols; ++c) {
        const double x = static_cast<double>(ra[c] - rb[c]);
        off += x * x;
      }
      row_sum[r] = on + 2.0 * off;  // an off-diagonal entry stands for its mirror too
    }
  });
  double total = 0;
  for (double v : row_sum) total += v;
  return total;
}

template <typename T>
at::Tensor sqdist_direct(const std::vector<Normalized>& nx, const FeatInfo& info) {
  const int64_t N = info.N, M = info.M, d = info.d;
  at::Tensor S = at::zeros({N, M, M}, at::TensorOptions().dtype(at::kDouble));
  auto s = S.accessor<double, 3>();
  std::vector<at::Tensor> K(M);
  for (int64_t b = 0; b < N; ++b) {
    for (int64_t i0 = 0; i0 < d; i0 += kTile) {
      const int64_t ti = std::min(kTile, d - i0);
      for (int64_t j0 = i0; j0 < d; j0 += kStrip) {
        const int64_t tj = std::min(kStrip, d - j0);
        for (int64_t m = 0; m < M; ++m) {
          const at::Tensor x = nx[m].xh.select(0, b);  // [C_m, d]
          K[m] = at::mm(x.narrow(1, i0, ti).t(), x.narrow(1, j0, tj));  // [ti, tj] of K_m
        }
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

// grad_xh[m] = sum_n w[b,m,n] * 4 Xh_m (K_m - K_n) = Xh_m E_m, E_m = 4 (a_m K_m - sum_n w_mn K_n),
// a_m = sum_{n != m} w_mn. E_m is symmetric, so each upper strip E[I, J] serves twice:
// grad[:, J] += Xh[:, I] E[I, J] and grad[:, I] += Xh[:, J] E[I, J]^T (the diagonal tile once).
template <typename T>
std::vector<at::Tensor> sqdist_grad_direct(
    const std::vector<Normalized>& nx, const FeatInfo& info, const at::Tensor& weight) {
  const int64_t N = info.N, M = info.M, d = info.d;
  auto w = weight.accessor<double, 3>();
  std::vector<at::Tensor> grads;
  for (int64_t m = 0; m < M; ++m) grads.push_back(at::zeros_like(nx[m].xh));
  std::vector<at::Tensor> K(M);
  std::vector<char> row_active(M), need_k(M);
  for (int64_t b = 0; b < N; ++b) {
    bool any = false;
    for (int64_t m = 0; m < M; ++m) row_active[m] = need_k[m] = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < M; ++n)
        if (n != m && w[b][m][n] != 0) row_active[m] = need_k[m] = need_k[n] = 1, any = true;
    if (!any) continue;  // e.g. the better network of a pair gets no SSA gradient
    for (int64_t i0 = 0; i0 < d; i0 += kTile) {
      const int64_t ti = std::min(kTile, d - i0);
      for (int64_t j0 = i0; j0 < d; j0 += kStrip) {
        const int64_t tj = std::min(kStrip, d - j0);
        for (int64_t m = 0; m < M; ++m) {
          if (!need_k[m]) continue;
          const at::Tensor x = nx[m].xh.select(0, b);
          K[m] = at::mm(x.narrow(1, i0, ti).t(), x.narrow(1, j0, tj));  // [ti, tj]
        }
        for (int64_t m = 0; m < M; ++m) {
          if (!row_active[m]) continue;
          double a = 0;
          for (int64_t n = 0; n < M; ++n)
            if (n != m) a += w[b][m][n];
          at::Tensor E = K[m] * (4.0 * a);
          for (int64_t n = 0; n < M; ++n)
            if (n != m && w[b][m][n] != 0) E.sub_(K[n], 4.0 * w[b][m][n]);
          const at::Tensor x = nx[m].xh.select(0, b);
          at::Tensor g = grads[m].select(0, b);
          g.narrow(1, j0, tj).addmm_(x.narrow(1, i0, ti), E);  // rows I of E into columns J
          const int64_t skip = j0 == i0 ? ti : 0;  // the diagonal tile is already complete
          if (tj > skip)
            g.narrow(1, i0, ti).addmm_(x.narrow(1, j0 + skip, tj - skip), E.narrow(1, skip, tj - skip).t());
        }
      }
    }
  }
  return grads;
}

// ---------------------------------------------------------------- gram

// S_mn = ||G_mm||^2 - 2 ||G_mn||^2 + ||G_nn||^2 with G_mn = Xh_m Xh_n^T, from one product
// per modality against the stacked Z = [Xh_m; ...; Xh_M] (all pairs share it). The norms
// are accumulated in double and the difference is clamped at 0 (it is a difference of
// large terms); NaN passes through the clamp.
template <typename T>
at::Tensor sqdist_gram(const std::vector<Normalized>& nx, const FeatInfo& info) {
  const int64_t N = info.N, M = info.M;
  const std::vector<int64_t> off = channel_offsets(info);
  std::vector<at::Tensor> parts;
  for (const auto& n : nx) parts.push_back(n.xh);
  const at::Tensor Z = at::cat(parts, 1);  // [N, sum C, d]

  at::Tensor S = at::zeros({N, M, M}, at::TensorOptions().dtype(at::kDouble));
  auto s = S.accessor<double, 3>();
  std::vector<double> t(M * M);
  for (int64_t b = 0; b < N; ++b) {
    for (int64_t m = 0; m < M; ++m) {
      // [C_m, sum_{n >= m} C_n]: the blocks G_mn for n >= m.
      const at::Tensor G = at::mm(nx[m].xh.select(0, b), Z.select(0, b).narrow(0, off[m], off[M] - off[m]).t());
      for (int64_t n = m; n < M; ++n)
        t[m * M + n] = sum_squares<T>(G.narrow(1, off[n] - off[m], info.channels[n]));
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = m + 1; n < M; ++n) {
        const double v = t[m * M + m] - 2.0 * t[m * M + n] + t[n * M + n];
        s[b][m][n] = s[b][n][m] = v < 0 ? 0.0 : v;
      }
  }
  return S.to(info.compute_dtype);
}

// grad_xh[m] = 4 (a_m G_mm Xh_m - sum_n w_mn G_mn Xh_n) = 4 (G_m,: scaled per column block) Z.
template <typename T>
std::vector<at::Tensor> sqdist_grad_gram(
    const std::vector<Normalized>& nx, const FeatInfo& info, const at::Tensor& weight) {
  const int64_t N = info.N, M = info.M;
  const std::vector<int64_t> off = channel_offsets(info);
  std::vector<at::Tensor> parts;
  for (const auto& n : nx) parts.push_back(n.xh);
  const at::Tensor Z = at::cat(parts, 1);
  auto w = weight.accessor<double, 3>();
  std::vector<at::Tensor> grads;
  for (int64_t m = 0; m < M; ++m) grads.push_back(at::zeros_like(nx[m].xh));

  for (int64_t b = 0; b < N; ++b) {
    const at::Tensor z = Z.select(0, b);
    for (int64_t m = 0; m < M; ++m) {
      double a = 0;
      bool any = false;
      for (int64_t n = 0; n < M; ++n)
        if (n != m) a += w[b][m][n], any = any || w[b][m][n] != 0;
      if (!any) continue;
      at::Tensor G = at::mm(nx[m].xh.select(0, b), z.t());  // [C_m, sum C]
      for (int64_t n = 0; n < M; ++n)
        G.narrow(1, off[n], info.channels[n]).mul_(n == m ? 4.0 * a : -4.0 * w[b][m][n]);
      at::Tensor out = grads[m].select(0, b);
      at::mm_out(out, G, z);
    }
  }
  return grads;
}

// ---------------------------------------------------------------- ops

std::vector<Normalized> normalize_all(at::TensorList feats, const FeatInfo& info, double eps) {
  std::vector<Normalized> nx;
  for (const auto& f : feats) nx.push_back(normalize_rows(f, info, eps));
  return nx;
}

at::Tensor pairwise_sqdist(at::TensorList feats, double eps, c10::string_view algo) {
  const FeatInfo info = check_feats(feats);
  check_eps(eps);
  const Algo a = resolve_algo(algo, info.d, info.channels);
  const std::vector<Normalized> nx = normalize_all(feats, info, eps);
  at::Tensor S;
  AT_DISPATCH_FLOATING_TYPES(info.compute_dtype, "mtut_pairwise_sqdist_cpu", [&] {
    S = a == Algo::Direct ? sqdist_direct<scalar_t>(nx, info) : sqdist_gram<scalar_t>(nx, info);
  });
  return S;
}

std::vector<at::Tensor> sqdist_backward(
    at::TensorList feats, const at::Tensor& weight, double eps, c10::string_view algo) {
  const FeatInfo info = check_feats(feats);
  check_weight(weight, info, feats[0]);
  check_eps(eps);
  const Algo a = resolve_algo(algo, info.d, info.channels);
  const std::vector<Normalized> nx = normalize_all(feats, info, eps);
  const at::Tensor w = weight.to(at::kDouble).contiguous();
  std::vector<at::Tensor> grads_xh;
  AT_DISPATCH_FLOATING_TYPES(info.compute_dtype, "mtut_sqdist_backward_cpu", [&] {
    grads_xh = a == Algo::Direct ? sqdist_grad_direct<scalar_t>(nx, info, w) : sqdist_grad_gram<scalar_t>(nx, info, w);
  });
  std::vector<at::Tensor> grads;
  for (int64_t m = 0; m < info.M; ++m) grads.push_back(normalize_rows_backward(grads_xh[m], nx[m], eps, feats[m]));
  return grads;
}

}  // namespace
}  // namespace cpu
}  // namespace mtut

TORCH_LIBRARY_IMPL(mtut, CPU, m) {
  m.impl("correlation", &mtut::correlation);
  m.impl("correlation_backward", &mtut::correlation_backward);
  m.impl("pairwise_sqdist", &mtut::cpu::pairwise_sqdist);
  m.impl("sqdist_backward", &mtut::cpu::sqdist_backward);
  m.impl("focal_weight", &mtut::focal_weight);
  m.impl("ssa_loss", &mtut::ssa_loss);
  m.impl("ssa_loss_backward", &mtut::ssa_loss_backward);
}
