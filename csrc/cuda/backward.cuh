// Around the backward's products: the pair coefficients, the weighted blocks, and the
// normalization backward that turns graw into dL/dX (finish).
#pragma once

#include "rows.cuh"

namespace mtut {
namespace cuda {
namespace {

// ------------------------------------------------------------------ normalization backward

// The normalization backward, fused, one block per row (b, c). graw holds the gradient
// with the row's scale s and the sample's factor f factored out, dL/dxh = f s graw. With
// xh = s x and s = 1 / r where r > eps:
//   r > eps:  dx = (dL/dxh - xh <xh, dL/dxh>) / r = f s^2 (graw - s^2 x <x, graw>)
//   r <= eps: dx = dL/dxh / eps = f s inv_eps graw
//   f = 0 (a row without weight): dx = 0, written without reading graw or x (where those
//            hold NaN or Inf the formulas would give NaN: the loss is NaN then anyway)
// (no division in the kernel: a division is a called routine, with a stack frame).
// out may be graw itself (same dtype and layout): a row is read before it is written.
// (At least 4 blocks per SM: lets ptxas use up to 64 registers; for sm_80 it otherwise
// chose 32 and spilled to the stack.)
template <typename Tin>
__global__ void __launch_bounds__(kThreads, 4)
    normalize_backward_kernel(const Cmp<Tin>* graw, const Tin* __restrict__ x, int64_t sn, int64_t sc, int64_t sd,
                              int64_t C, int64_t d, const Cmp<Tin>* __restrict__ norm,
                              const Cmp<Tin>* __restrict__ scale, int64_t s_ld, const Cmp<Tin>* __restrict__ factor,
                              double eps, double inv_eps, Tin* out) {
  using T = Cmp<Tin>;
  __shared__ double scratch[kThreads / 32];
  __shared__ double dot;
  const int64_t row = blockIdx.x;
  // grid.x < 2^31, so 32-bit division (64-bit division is a called routine: a stack frame)
  const int64_t b = static_cast<unsigned>(blockIdx.x) / static_cast<unsigned>(C), ch = row - b * C;
  const T s = scale[b * s_ld + ch], r = norm[b * s_ld + ch], f = factor[b];
  const T* g = graw + row * d;
  const Tin* xr = x + b * sn + ch * sc;
  Tin* o = out + row * d;
  if (f == T(0)) {  // a row without SSA weight (pair_coefficients_kernel): gradient 0, nothing to read
    for (int64_t k = threadIdx.x; k < d; k += kThreads) o[k] = from_compute<Tin>(T(0));
  } else if (r > eps) {
    double acc = 0;
#pragma unroll 2
    for (int64_t k = threadIdx.x; k < d; k += kThreads) acc += to_double<Tin>(xr[k * sd]) * static_cast<double>(g[k]);
    const double total = block_sum(acc, scratch);
    if (threadIdx.x == 0) dot = total;
    __syncthreads();
    const T a = f * s * s, c = static_cast<T>(static_cast<double>(s) * s * dot);
#pragma unroll 2
    for (int64_t k = threadIdx.x; k < d; k += kThreads)
      o[k] = from_compute<Tin>(a * (g[k] - c * static_cast<T>(to_double<Tin>(xr[k * sd]))));
  } else {
    const T a = static_cast<T>(f * s * inv_eps);
    for (int64_t k = threadIdx.x; k < d; k += kThreads) o[k] = from_compute<Tin>(a * g[k]);
  }
}

// ------------------------------------------------------------------ backward

// The weight of pair (m, n) in dL/dXh_m, for both algorithms: coef_mm = 4 a_m with
// a_m = sum_{n != m} w_mn, and coef_mn = -4 w_mn (n != m); per modality the power of two
// just above the sample's largest |coef|, ref_m, which the scaled operands are divided by
// (exactly) so that they stay within 1
// in 16 bits (it is multiplied back in the normalization backward). A row without weight
// (all coef 0: the network is the better one on that sample, or M - 1 pairs have rho = 0)
// divides by 1 and stores ref_m = 0: its gradient is 0, which the normalization backward
// writes without reading the row (for M = 2, half the (sample, modality) rows).
// One kernel, a thread per (sample, modality) (it was 11 ATen ops on [N, M, M]).
struct Coefficients {
  at::Tensor factor;  // [N, M, M] compute dtype: coef_mn / ref_m
  at::Tensor ref;     // [M, N]: ref_m of every sample, modality-major (contiguous per modality)
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pair_coefficients_kernel(const T* __restrict__ w, int64_t sb, int64_t sm, int64_t sn, int64_t N, int M,
                             T* __restrict__ factor, T* __restrict__ ref) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;  // (b, m)
  if (row >= N * M) return;
  const int64_t b = row / M;
  const int m = static_cast<int>(row - b * M);
  const T* wr = w + b * sb + m * sm;
  T sum = 0;
  for (int n = 0; n < M; ++n) sum += wr[n * sn];
  const T diag = T(4) * (sum - wr[m * sn]);
  T largest = diag < 0 ? -diag : diag;
  bool nan = diag != diag;
  for (int n = 0; n < M; ++n) {
    if (n == m) continue;
    const T c = T(-4) * wr[n * sn];
    const T a = c < 0 ? -c : c;
    largest = a > largest ? a : largest;
    nan = nan || c != c;
  }
  // a NaN weight makes the whole row NaN (as amax propagates it); all-zero rows: 0 * 1 = 0
  const T r = nan ? std::numeric_limits<T>::quiet_NaN() : (largest == 0 ? T(1) : power_of_two_above(largest));
  const T inv = nan ? r : reciprocal(r);
  ref[static_cast<int64_t>(m) * N + b] = largest == 0 ? T(0) : r;  // (NaN compares unequal: stays NaN)
  T* f = factor + row * M;
  for (int n = 0; n < M; ++n) f[n] = (n == m ? diag : T(-4) * wr[n * sn]) * inv;
}

template <typename T>
Coefficients pair_coefficients(const at::Tensor& w, cudaStream_t stream) {
  const int64_t N = w.size(0), M = w.size(1);
  Coefficients c{at::empty({N, M, M}, w.options()), at::empty({M, N}, w.options())};
  launch("pair_coefficients_kernel", pair_coefficients_kernel<T>,
         dim3(static_cast<unsigned>((N * M + kThreads - 1) / kThreads)), dim3(kThreads), stream, w.const_data_ptr<T>(),
         w.stride(0), w.stride(1), w.stride(2), N, static_cast<int>(M), c.factor.mutable_data_ptr<T>(),
         c.ref.mutable_data_ptr<T>());
  return c;
}

// A = (coef_mn / ref_m) P_mn diag(s_n^2) in the operand dtype, one pass over a kept block
// P [rows, cols] of every sample (batch stride `stride`): s scales its columns (n >= m: the
// block P_mn itself) or its rows (n < m: the kept P_nm, whose transpose is the operand).
// The same operations, in the same order, as block * s^2 * factor in ATen.
template <typename Top>
__global__ void __launch_bounds__(kThreads)
    weighted_block_kernel(const Cmp<Top>* __restrict__ P, int64_t stride, int64_t rows, int64_t cols,
                          int64_t rows_per_chunk, const Cmp<Top>* __restrict__ s, int64_t s_ld, bool scale_rows,
                          const Cmp<Top>* __restrict__ factor, int64_t factor_stride, Top* __restrict__ out,
                          int64_t out_stride) {
  using T = Cmp<Top>;
  const int64_t chunk = blockIdx.x, b = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk, r1 = std::min(rows, r0 + rows_per_chunk);
  const T* p = P + b * stride;
  const T* sb = s + b * s_ld;
  const T f = factor[b * factor_stride];
  Top* o = out + b * out_stride;
  for (int64_t i = r0; i < r1; ++i) {  // consecutive threads: consecutive columns
    const T si = scale_rows ? sb[i] : T(0);
    for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
      const T sj = scale_rows ? si : sb[j];
      o[i * cols + j] = from_compute<Top>(p[i * cols + j] * (sj * sj) * f);
    }
  }
}

// A_m += f_mn (P_mn diag(s_n^2) - P_mm^(n) diag(s_m^2)) of the pair form (folded_blocks_kernel)
// in the compute dtype, [N, C, C] (`first`: A_m = that, nothing read): C rows of every sample,
// P_mm^(n) the kept P_mm read as P_mn is (transposed for n < m: `lower`). `same`: equal channel
// counts; else the pair's P_mn diag(s_n^2) X_n is a product of its own and A_m takes
// -f_mn P_mm^(n) diag(s_m^2) only. The two sides are formed alike before they are weighted: a
// pair with X_m = X_n bit for bit adds exactly 0.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pair_difference_kernel(const T* __restrict__ Pmn, int64_t mn_stride, const T* __restrict__ Pmm, int64_t mm_stride,
                           int64_t C, int64_t rows_per_chunk, bool lower, bool same, const T* __restrict__ sn,
                           const T* __restrict__ sm, int64_t s_ld, const T* __restrict__ factor, int64_t factor_stride,
                           bool first, T* __restrict__ acc) {
  const int64_t chunk = blockIdx.x, b = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk, r1 = std::min(C, r0 + rows_per_chunk);
  const T* pn = Pmn + b * mn_stride;
  const T* pm = Pmm + b * mm_stride;
  const T* s_n = sn + b * s_ld;
  const T* s_m = sm + b * s_ld;
  const T f = factor[b * factor_stride];
  T* o = acc + b * C * C;
  const int64_t st = lower ? C : 1;  // row i of a block as the product reads it: i + j C (lower) or i C + j
  // (loops not unrolled nor versioned: the sm_86 fp64 build parked a register on the stack)
#pragma unroll 1
  for (int64_t i = r0; i < r1; ++i) {  // consecutive threads: consecutive columns
    const T* mrow = pm + (lower ? i : i * C);
    const T* nrow = pn + (lower ? i : i * C);
    T* orow = o + i * C;
#pragma unroll 1
    for (int64_t j = threadIdx.x; j < C; j += kThreads) {
      const T smj = s_m[j], snj = same ? s_n[j] : T(0);
      const T n_side = same ? nrow[j * st] * (snj * snj) : T(0);
      const T add = f * (n_side - mrow[j * st] * (smj * smj));
      orow[j] = first ? add : orow[j] + add;
    }
  }
}

// The last pass after the folded student products (student_gram_grads), one block per row
// (b, c): a row without weight (ref = 0) gets its zero gradient and a NaN-weighted one NaN,
// neither read (the products may have written them from a filler slot); a row with weight is
// final, or (float16 inputs) its fp32 result is rounded into `out`.
template <typename Tg, typename Tout>
__global__ void __launch_bounds__(kThreads) folded_finish_kernel(const Tg* g, int64_t C, int64_t d, int64_t seg_len,
                                                                 const Cmp<Tout>* __restrict__ factor, Tout* out) {
  using T = Cmp<Tout>;
  const int64_t row = blockIdx.x;
  const int64_t b = static_cast<unsigned>(blockIdx.x) / static_cast<unsigned>(C);  // (32-bit: see normalize_backward)
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * seg_len, k1 = std::min(d, k0 + seg_len);  // (row_split)
  const T f = factor[b];
  Tout* o = out + row * d;
  if (f == T(0) || f != f) {
    const Tout v = from_compute<Tout>(f == T(0) ? T(0) : f);
    for (int64_t k = k0 + threadIdx.x; k < k1; k += kThreads) o[k] = v;
  } else if (static_cast<const void*>(g) != static_cast<const void*>(out)) {
    const Tg* gr = g + row * d;
    int64_t k = k0 + threadIdx.x;
    for (; k + 3 * kThreads < k1; k += 4 * kThreads) {  // four loads in flight
      Tg v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = gr[k + u * kThreads];
#pragma unroll
      for (int u = 0; u < 4; ++u) o[k + u * kThreads] = from_compute<Tout>(static_cast<T>(to_double<Tg>(v[u])));
    }
    for (; k < k1; k += kThreads) o[k] = from_compute<Tout>(static_cast<T>(to_double<Tg>(gr[k])));
  }
}

// dL/dfeats from the graw buffers: the fused normalization backward, in place when the
// input is in the compute dtype (float32/float64), else into a new tensor of the input
// dtype; an empty tensor for the modalities without needs[m]. `folded`: the buffers hold
// dL/dX of the rows with weight already (student_gram_grads), only the others are written.
template <typename T>
std::vector<at::Tensor> finish(std::vector<at::Tensor>& graw, const Prepared& p, const Coefficients& c,
                               const FeatInfo& info, double eps, at::TensorList feats, const Needs& needs, bool folded,
                               cudaStream_t stream) {
  using Tin = typename Raw<T>::type;
  std::vector<at::Tensor> grads;
  for (size_t m = 0; m < graw.size(); ++m) {
    if (!needs[m]) {
      grads.push_back(at::empty({0}, feats[m].options()));
      continue;
    }
    const at::Tensor& v = p.views[m];
    const at::Tensor factor = c.ref.select(0, static_cast<int64_t>(m));  // [N], contiguous
    const bool own = graw[m].scalar_type() == info.dtype;
    at::Tensor out = own ? graw[m] : unwritten(graw[m].sizes(), v.options());
    const int64_t rows = info.N * v.size(1), segs = row_split(rows, info.d, multiprocessors());
    const int64_t seg_len = (info.d + segs - 1) / segs;
    const dim3 grid(static_cast<unsigned>(rows), grid_dim(segs));
    if (folded && own) {
      launch("folded_finish_kernel", folded_finish_kernel<Tin, Tin>, grid, dim3(kThreads), stream,
             reinterpret_cast<const Tin*>(graw[m].const_data_ptr()), v.size(1), info.d, seg_len,
             factor.const_data_ptr<Cmp<Tin>>(), reinterpret_cast<Tin*>(out.mutable_data_ptr()));
    } else if (folded) {
      launch("folded_finish_kernel", folded_finish_kernel<Cmp<Tin>, Tin>, grid, dim3(kThreads), stream,
             graw[m].const_data_ptr<Cmp<Tin>>(), v.size(1), info.d, seg_len, factor.const_data_ptr<Cmp<Tin>>(),
             reinterpret_cast<Tin*>(out.mutable_data_ptr()));
    } else {
      launch("normalize_backward_kernel", normalize_backward_kernel<Tin>,
             dim3(static_cast<unsigned>(info.N * v.size(1))), dim3(kThreads), stream,
             graw[m].const_data_ptr<Cmp<Tin>>(), reinterpret_cast<const Tin*>(v.const_data_ptr<T>()), v.stride(0),
             v.stride(1), v.stride(2), v.size(1), info.d, p.norms[m].const_data_ptr<Cmp<Tin>>(),
             p.scales[m].const_data_ptr<Cmp<Tin>>(), p.scales[m].stride(0), factor.const_data_ptr<Cmp<Tin>>(), eps,
             eps > 0 ? 1.0 / eps : 0.0, reinterpret_cast<Tin*>(out.mutable_data_ptr<T>()));
    }
    grads.push_back(out.view(feats[m].sizes()));
  }
  return grads;
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
