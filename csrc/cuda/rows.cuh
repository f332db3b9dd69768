// The rows of every input: their norms and scales (row_sqsum_kernel, row_scale_kernel) and the views and
// operands the products read (prepare).
#pragma once

#include "common.cuh"

namespace mtut {
namespace cuda {
namespace {

// ------------------------------------------------------------------ row scales

// The rows of up to kRowGroup modalities for one row_scale_kernel launch: modality m's rows
// are the group's rows [first[m], first[m + 1]) (N C_m of them, sample-major), its norms go
// to a sample's row of `saved` at r_at[m] and its scales at r_at[m] + s_offset.
constexpr int kRowGroup = 8;
template <typename Tin>
struct RowGroup {
  const Tin* x[kRowGroup];
  int64_t sn[kRowGroup], sc[kRowGroup], sd[kRowGroup], C[kRowGroup], r_at[kRowGroup];
  int64_t first[kRowGroup + 1];
  int count;
};

// The segments of every row for row_sqsum_kernel (grid (row blocks, segments), a warp a row
// and segment): two waves of blocks where the rows are long enough for that, at least 128
// entries (four a lane) a segment.
int64_t row_segments(int64_t rows, int64_t d, int64_t sms) {
  const int64_t row_blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
  const int64_t wanted = (fill_blocks(sms) + row_blocks - 1) / row_blocks;
  return std::clamp<int64_t>(wanted, 1, std::max<int64_t>(1, d / 128));
}

// partial[row * segs + seg] = sum of x[b, c, k]^2 over segment `seg` of the row (fp64), for
// every row of a group (up to kRowGroup modalities): a warp per (row, segment), four sums a
// lane (four loads in flight) added in a fixed order, then the warp's shuffle sum.
template <typename Tin>
__global__ void __launch_bounds__(kThreads)
    row_sqsum_kernel(const RowGroup<Tin> rows, int64_t d, int64_t seg_len, double* __restrict__ partial) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (row >= rows.first[rows.count]) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  int m = 0;
  while (row >= rows.first[m + 1]) ++m;
  const int64_t local = row - rows.first[m], b = local / rows.C[m], c = local - b * rows.C[m];
  const Tin* p = rows.x[m] + b * rows.sn[m] + c * rows.sc[m];
  const int64_t sd = rows.sd[m];
  const int64_t k1 = std::min(d, (static_cast<int64_t>(blockIdx.y) + 1) * seg_len);
  int64_t k = static_cast<int64_t>(blockIdx.y) * seg_len + lane;
  double acc[4] = {0, 0, 0, 0};
  for (; k + 96 < k1; k += 128) {
    double v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = to_double<Tin>(p[(k + 32 * u) * sd]);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc[u] += v[u] * v[u];
  }
  for (; k < k1; k += 32) {
    const double v = to_double<Tin>(p[k * sd]);
    acc[0] += v * v;
  }
  double sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) partial[row * gridDim.y + blockIdx.y] = sum;
}

// norm = ||x[b, c, :]|| (the sum of the row's `segs` partial sums, in order) and scale =
// 1 / max(norm, eps) of every row of a group, a thread per row. The threads of rows b < N also
// zero sample b's entries [pad_from, ld) of saved (pad_from = ld: none).
template <typename Tin>
__global__ void __launch_bounds__(kThreads)
    row_scale_kernel(const RowGroup<Tin> rows, const double* __restrict__ partial, int64_t segs, double eps, int64_t N,
                     int64_t ld, int64_t s_offset, int64_t pad_from, Cmp<Tin>* __restrict__ saved) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (row >= rows.first[rows.count]) return;
  if (row < N)
    for (int64_t k = pad_from; k < ld; ++k) saved[row * ld + k] = static_cast<Cmp<Tin>>(0);
  int m = 0;
  while (row >= rows.first[m + 1]) ++m;
  const int64_t local = row - rows.first[m], b = local / rows.C[m], c = local - b * rows.C[m];
  double acc = 0;
  for (int64_t t = 0; t < segs; ++t) acc += partial[row * segs + t];
  const double r = sqrt(acc);
  Cmp<Tin>* at = saved + b * ld + rows.r_at[m] + c;
  at[0] = static_cast<Cmp<Tin>>(r);
  at[s_offset] = static_cast<Cmp<Tin>>(1.0 / (r < eps ? eps : r));  // NaN stays NaN, as clamp_min keeps it
}

// ------------------------------------------------------------------ host side

struct Prepared {
  std::vector<at::Tensor> views;     // [N, C_m, d] views of the inputs (copies only where no view exists)
  std::vector<at::Tensor> operands;  // the rows as product operands: the views, or fp32 copies for fp16
  std::vector<at::Tensor> norms;     // [N, C_m] compute dtype, r = ||x||, a view of the saved buffer
  std::vector<at::Tensor> scales;    // [N, C_m] compute dtype, s = 1 / max(r, eps), likewise (same strides)
  at::ScalarType operand;            // the dtype of the scaled operands (see the header)
};

// The buffer sqdist_forward returns as `saved` (ssa_common.h saved_width): [N, the kept
// blocks (gram) | r of every modality | s of every modality | padding], every entry defined:
// zeroed for gram (the blocks' padding), for direct written whole by prepare's row_scale
// launch (no zero-fill launch). The forward uses the same buffer whether or not it is
// returned, so that S is the same bits either way.
at::Tensor new_saved(const FeatInfo& info, Algo a, const at::Tensor& like) {
  const auto options = like.options().dtype(info.compute_dtype);
  const int64_t width = saved_width(info.channels, a, Backend::Cuda);
  return a == Algo::Gram ? at::zeros({info.N, width}, options) : unwritten({info.N, width}, options);
}

// The rows of every modality as views, with their norms and scales in `saved` (a
// new_saved buffer): computed there (one pass over each input, one launch for up to
// kRowGroup modalities, which also zeroes the direct layout's padding), or, with
// `from_saved`, the forward's (no pass over the inputs).
template <typename T>
Prepared prepare(at::TensorList feats, const FeatInfo& info, double eps, bool scaled_products, const at::Tensor& saved,
                 Algo a, bool from_saved, cudaStream_t stream) {
  using Tin = typename Raw<T>::type;
  Prepared p;
  p.operand = info.dtype == at::kHalf ? at::kFloat : info.dtype;
  const SavedLayout layout = saved_layout(info.channels, a, Backend::Cuda);
  const int64_t ld = layout.width;
  int64_t at_r = layout.norms, pad_from = a == Algo::Gram ? ld : layout.padding();  // gram: zeroed by new_saved
  RowGroup<Tin> group{};
  auto flush = [&] {
    const int64_t rows = group.first[group.count];
    const int64_t segs = row_segments(rows, info.d, multiprocessors()), seg_len = (info.d + segs - 1) / segs;
    const at::Tensor partial = unwritten({rows * segs}, saved.options().dtype(at::kDouble));
    launch("row_sqsum_kernel", row_sqsum_kernel<Tin>,
           dim3(static_cast<unsigned>((rows + kThreads / 32 - 1) / (kThreads / 32)), grid_dim(segs)), dim3(kThreads),
           stream, group, info.d, seg_len, partial.mutable_data_ptr<double>());
    launch("row_scale_kernel", row_scale_kernel<Tin>, dim3(static_cast<unsigned>((rows + kThreads - 1) / kThreads)),
           dim3(kThreads), stream, group, partial.const_data_ptr<double>(), segs, eps, info.N, ld, layout.rows,
           pad_from, saved.mutable_data_ptr<Cmp<Tin>>());
    group = RowGroup<Tin>{};
    pad_from = ld;  // (the first launch zeroed it)
  };
  for (const auto& f : feats) {
    at::Tensor v = f.reshape({info.N, f.size(1), info.d});
    at::Tensor r = saved.narrow(1, at_r, f.size(1));
    at::Tensor s = saved.narrow(1, at_r + layout.rows, f.size(1));
    if (!from_saved) {
      const int g = group.count++;
      group.x[g] = reinterpret_cast<const Tin*>(v.const_data_ptr<T>());
      group.sn[g] = v.stride(0), group.sc[g] = v.stride(1), group.sd[g] = v.stride(2);
      group.C[g] = f.size(1), group.r_at[g] = at_r;
      group.first[g + 1] = group.first[g] + info.N * f.size(1);
      if (group.count == kRowGroup) flush();
    }
    at_r += f.size(1);
    p.operands.push_back(scaled_products && p.operand != info.dtype ? v.to(p.operand) : v);
    p.views.push_back(v);
    p.norms.push_back(r);
    p.scales.push_back(s);
  }
  if (group.count > 0) flush();
  return p;
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
