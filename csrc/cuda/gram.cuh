// The gram forward: the Gram blocks of every pair, kept for the backward, and S from
// their scaled square sums.
#pragma once

#include "products.cuh"
#include "rows.cuh"

namespace mtut {
namespace cuda {
namespace {

// ------------------------------------------------------------------ split-K Gram blocks
//
// A Gram block P_mn = X_m X_n^T has few output tiles and a long contraction (Mixed_3c: 480 x
// 480 per sample, 6 samples, d = 25088: 48 tiles of 128 x 256 for 132 SMs): one GEMM entry
// per sample leaves SMs idle for a whole d-long tile. So the blocks of one shape share ONE
// pointer-array batched cuBLAS product, and where that is still short of tiles the
// contraction is cut into S equal slices: every (block, slice, sample) is an entry, into
// partial blocks which the square-sum kernel adds in a fixed order (block_sqnorm_kernel, which
// writes the kept block). Without a host read and with the same bits on every run.

constexpr int64_t kMaxSlices = 16;

// What the split costs and saves, in the time one output tile takes per position of the
// contraction ("a step"): a launch of T tiles of k positions takes waves(T) (k + overhead)
// steps; the partials cost (8 S - 4) N C_m C_n bytes more than one product into the kept block
// (S written and read, the sum written, instead of one written and read), at `step_bytes` a
// step. Hopper figures (bench/gpu_model.py's cuBLAS rates on 132 SMs): a 16-bit tile (128 x
// 256) steps in ~11 ns, a TF32 or fp64 one (128 x 128) in ~13 or ~86 ns; HBM moves ~2.8 TB/s.
struct SplitRule {
  int64_t min_k;          // each slice at least this many positions long
  int64_t align;          // and a multiple of it (16-byte aligned operands for the tensor cores)
  int64_t tile_overhead;  // a tile's fixed cost, in steps
};
constexpr SplitRule kGpuSplitRule{256, 8, 128};
#ifndef MTUT_CUDA_EMULATE
constexpr SplitRule kSplitRule = kGpuSplitRule;
#else
constexpr SplitRule kSplitRule{1, 1, 2};  // so that the tests' small shapes split
#endif

// The output tile cuBLAS is assumed to use (128 x 256 for 16-bit operands, 128 x 128
// otherwise) and the bytes HBM moves in one of its steps, by operand dtype.
struct TileCost {
  int64_t rows, cols;
  double step_bytes;
};
TileCost tile_cost(at::ScalarType operand) {
  switch (operand) {
    case at::kHalf:
    case at::kBFloat16: return {128, 256, 32768};
    case at::kFloat: return {128, 128, 32768};  // TF32's (without TF32 a split pays more)
    default: return {128, 128, 245760};
  }
}

// S for one block: the contraction d cut into S <= kMaxSlices slices of k = d / S (d % S == 0;
// k a multiple of rule.align and at least rule.min_k; S = 1 always allowed), the one of least
// cost (see SplitRule), the smaller S on a tie. bench/gpu_model.py gram_splits is the same
// rule (python_tests/test_cuda_emulated.py compares them).
int64_t gram_splits(int64_t N, int64_t Cm, int64_t Cn, int64_t d, int64_t sms, const TileCost& tile,
                    const SplitRule& rule = kSplitRule) {
  const int64_t tiles = N * ((Cm + tile.rows - 1) / tile.rows) * ((Cn + tile.cols - 1) / tile.cols);
  int64_t best = 1;
  double best_cost = 0;
  for (int64_t S = 1; S <= kMaxSlices; ++S) {
    if (d % S != 0) continue;
    const int64_t k = d / S;
    if (S > 1 && (k % rule.align != 0 || k < rule.min_k)) continue;
    const double waves = static_cast<double>((tiles * S + sms - 1) / sms);
    const double partials = static_cast<double>(8 * S - 4) * static_cast<double>(N * Cm * Cn);
    const double cost = waves * static_cast<double>(k + rule.tile_overhead) + (S > 1 ? partials / tile.step_bytes : 0);
    if (S == 1 || cost < best_cost) best = S, best_cost = cost;
  }
  return best;
}



// The blocks one pointer-array product computes (all of one shape and operand layout): per
// block the bases of X_m, X_n and of its output (partial 0, or the kept block), and the
// sample strides of X_m and X_n, in bytes. At most kMaxGroup blocks (the 36 of M = 8; larger
// groups are cut), passed by value as the kernel's parameters.
constexpr int kMaxGroup = 36;
struct BlockBases {
  const char* xm[kMaxGroup];
  const char* xn[kMaxGroup];
  char* out[kMaxGroup];
  int64_t xm_sample[kMaxGroup];
  int64_t xn_sample[kMaxGroup];
};

// The operand and output pointers of entry e = (j S + s) N + b (block j, slice s, sample b),
// one thread per entry: the rows of X_m[b] and X_n[b] from position s k on (byte steps
// xm_slice, xn_slice), partial s of block j for sample b (steps out_sample, out_slice).
__global__ void __launch_bounds__(kThreads) slice_pointers_kernel(
    const BlockBases bases, int64_t xm_slice, int64_t xn_slice, int64_t out_sample, int64_t out_slice, int64_t N,
    int64_t S, int64_t count, const void** a, const void** b, void** c) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= count) return;
  const int64_t smp = e % N, s = (e / N) % S;
  const int j = static_cast<int>(e / (N * S));
  a[e] = bases.xm[j] + smp * bases.xm_sample[j] + s * xm_slice;
  b[e] = bases.xn[j] + smp * bases.xn_sample[j] + s * xn_slice;
  c[e] = bases.out[j] + smp * out_sample + s * out_slice;
}



// out_e [Cm, Cn] (row-major) = A_e B_e^T for every entry e of the pointer arrays `ptrs`
// ([3, count]: A_e, B_e, out_e), A_e = Cm rows of X_m and B_e = Cn rows of X_n, k positions
// each, laid out as la / lb; `in` operands, `out` output and accumulation (fp32 for 16-bit
// and fp32 operands, TF32 exactly when torch's own matmuls use it: the handle's math mode is
// the one ATen sets for them; fp64 for fp64).
void sliced_gram_product(const at::Tensor& ptrs, int64_t count, int64_t Cm, int64_t Cn, int64_t k,
                         const RowsLayout& la, const RowsLayout& lb, at::ScalarType in, at::ScalarType out) {
#ifdef MTUT_CUDA_EMULATE
  record(in, in, out);
  const int64_t* p = ptrs.const_data_ptr<int64_t>();
  const auto options = at::TensorOptions().dtype(in);
  for (int64_t e = 0; e < count; ++e) {
    auto* a = reinterpret_cast<void*>(p[e]);
    auto* b = reinterpret_cast<void*>(p[count + e]);
    auto* c = reinterpret_cast<void*>(p[2 * count + e]);
    const at::Tensor A = at::from_blob(a, {Cm, k}, {la.channel_stride(), la.position_stride()}, options);
    const at::Tensor B = at::from_blob(b, {Cn, k}, {lb.channel_stride(), lb.position_stride()}, options);
    at::Tensor C = at::from_blob(c, {Cm, Cn}, {Cn, 1}, options.dtype(out));
    at::mm_out(C, A.to(out), B.to(out).t());  // 16-bit products are exact in fp32, as on the tensor cores
  }
#else
  // Column-major, cuBLAS computes out_e^T [Cn, Cm] = op(B_e) [Cn, k] op(A_e)^T [k, Cm].
  const auto* p = reinterpret_cast<void* const*>(ptrs.const_data_ptr<int64_t>());
  const cublasOperation_t opa = lb.positions_contiguous ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = la.positions_contiguous ? CUBLAS_OP_N : CUBLAS_OP_T;
  const bool f64 = out == at::kDouble;
  const float one = 1, zero = 0;
  const double one64 = 1, zero64 = 0;
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // on the current stream
  TORCH_CUDABLAS_CHECK(cublasGemmBatchedEx(
      handle, opa, opb, static_cast<int>(Cn), static_cast<int>(Cm), static_cast<int>(k),
      f64 ? static_cast<const void*>(&one64) : &one, const_cast<const void**>(p + count), cuda_type(in),
      static_cast<int>(lb.lead), const_cast<const void**>(p), cuda_type(in), static_cast<int>(la.lead),
      f64 ? static_cast<const void*>(&zero64) : &zero, const_cast<void**>(p + 2 * count), cuda_type(out),
      static_cast<int>(Cn), static_cast<int>(count), f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
#endif
}

// ------------------------------------------------------------------ gram: scaled square sums

// partial[b * row_stride + chunk] = sum over the rows of `chunk` of sum_j (s_m[i] P[i, j] s_n[j])^2
// in fp64, for one block P [C_m, C_n] of every sample (batch stride `stride`). With slices > 1
// the block is first the sum of its split-K partials (slice t at P's offset in `parts` plus
// t part_stride), added in slice order and written to P. The scales sm, sn live in the same
// buffer as the blocks (new_saved), so a sample's are `stride` apart too. (4 blocks per SM,
// as normalize_backward_kernel: otherwise ptxas spilled a register for sm_90.)
template <typename T>
__global__ void __launch_bounds__(kThreads, 4) block_sqnorm_kernel(
    T* __restrict__ P, int64_t stride, int64_t Cm, int64_t Cn, int64_t rows_per_chunk, const T* __restrict__ parts,
    int64_t part_stride, int64_t slices, const T* __restrict__ sm, const T* __restrict__ sn, int64_t row_stride,
    double* __restrict__ partial) {
  __shared__ double scratch[kThreads / 32];
  const int64_t chunk = blockIdx.x, b = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk, r1 = std::min(Cm, r0 + rows_per_chunk);
  T* p = P + b * stride;
  const T* a = sm + b * stride;
  const T* c = sn + b * stride;
  double acc = 0;
  for (int64_t i = r0; i < r1; ++i) {  // consecutive threads read consecutive columns
    const double ai = static_cast<double>(a[i]);
    for (int64_t j = threadIdx.x; j < Cn; j += kThreads) {
      T pij;
      if (slices > 1) {
        const T* q = parts + b * stride + i * Cn + j;
        pij = q[0];
        for (int64_t t = 1; t < slices; ++t) pij += q[t * part_stride];
        p[i * Cn + j] = pij;
      } else {
        pij = p[i * Cn + j];
      }
      const double v = ai * static_cast<double>(pij) * static_cast<double>(c[j]);
      acc += v * v;
    }
  }
  const double total = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[b * row_stride + chunk] = total;
}


// out[b, k] = sum_t in[b, k, t] (count values each), one block per (b, k).
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(
    const double* __restrict__ in, int64_t count, int64_t K, double* __restrict__ out) {
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

// The blocks P_mn = X_m X_n^T (n >= m) of every sample into views of kept [N,
// kept_gram_size] (the layout of ssa_common.cpp:kept_block_offset). The blocks of one shape
// and operand layout (all of them for equal channel counts and contiguous maps) are ONE
// pointer-array product, split-K where gram_splits says so for the group (then into partials,
// which sqdist_from_blocks adds into kept); a block alone of its kind that is not split is
// an at::bmm.
struct GramProducts {
  at::Tensor parts;             // [most slices, N, kept_gram_size] partial blocks, or undefined
  std::vector<int64_t> slices;  // per block (block_index order): 1, or its number of partials
};

GramProducts gram_blocks(const Prepared& p, const FeatInfo& info, at::Tensor& kept, cudaStream_t stream) {
  const int M = static_cast<int>(info.M);
  const int64_t N = info.N, d = info.d;
  const int64_t sms = multiprocessors();
  const TileCost tile = tile_cost(p.views[0].scalar_type());
  std::vector<RowsLayout> layouts;
  for (int m = 0; m < M; ++m) layouts.push_back(rows_layout(p.views[m]));
  // groups of blocks (m, n) by (C_m, C_n, layout of X_m, layout of X_n), in block order
  using Key = std::tuple<int64_t, int64_t, bool, int64_t, bool, int64_t>;
  std::vector<std::pair<Key, std::vector<std::pair<int, int>>>> groups;
  for (int m = 0; m < M; ++m)
    for (int n = m; n < M; ++n) {
      const int64_t q = block_index(m, n, M);
      const Key key = layouts[m].ok && layouts[n].ok
                          ? Key{info.channels[m], info.channels[n], layouts[m].positions_contiguous, layouts[m].lead,
                                layouts[n].positions_contiguous, layouts[n].lead}
                          : Key{info.channels[m], info.channels[n], false, -1 - q, false, -1 - q};  // alone: at::bmm
      auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) {
        return g.first == key && g.second.size() < static_cast<size_t>(kMaxGroup);  // a full group: the next one
      });
      if (it == groups.end()) groups.push_back({key, {}}), it = groups.end() - 1;
      it->second.emplace_back(m, n);
    }
  GramProducts g;  // the slices of every group, first: the partials buffer is sized by the most
  g.slices.assign(M * (M + 1) / 2, 1);
  for (const auto& [key, blocks] : groups) {
    const auto [m, n] = blocks[0];
    if (!layouts[m].ok || !layouts[n].ok) continue;
    const int64_t G = static_cast<int64_t>(blocks.size());
    const int64_t S = gram_splits(N * G, info.channels[m], info.channels[n], d, sms, tile);
    for (const auto& [bm, bn] : blocks) g.slices[block_index(bm, bn, M)] = S;
  }
  const int64_t most = *std::max_element(g.slices.begin(), g.slices.end());
  if (most > 1) g.parts = at::empty({most, N, kept.size(1)}, kept.options());
  const int64_t elem_in = p.views[0].element_size(), elem_out = kept.element_size();
  for (const auto& [key, blocks] : groups) {
    const auto [m, n] = blocks[0];
    const int64_t S = g.slices[block_index(m, n, M)], G = static_cast<int64_t>(blocks.size());
    if (G == 1 && S == 1) {
      gemm_into(kept_block(kept, info.channels, m, n), p.views[m], p.views[n].transpose(1, 2));
      continue;
    }
    BlockBases bases{};
    for (int64_t j = 0; j < G; ++j) {
      const auto [bm, bn] = blocks[j];
      const at::Tensor out = kept_block(S > 1 ? g.parts.select(0, 0) : kept, info.channels, bm, bn);
      bases.xm[j] = static_cast<const char*>(p.views[bm].const_data_ptr());
      bases.xn[j] = static_cast<const char*>(p.views[bn].const_data_ptr());
      bases.out[j] = static_cast<char*>(out.mutable_data_ptr());
      bases.xm_sample[j] = p.views[bm].stride(0) * elem_in;
      bases.xn_sample[j] = p.views[bn].stride(0) * elem_in;
    }
    const int64_t k = d / S, count = G * S * N;
    at::Tensor ptrs = at::empty({3, count}, kept.options().dtype(at::kLong));
    auto* arr = reinterpret_cast<void**>(ptrs.mutable_data_ptr<int64_t>());
    launch(slice_pointers_kernel, dim3(static_cast<unsigned>((count + kThreads - 1) / kThreads)), dim3(kThreads),
           stream, bases, k * layouts[m].position_stride() * elem_in, k * layouts[n].position_stride() * elem_in,
           kept.stride(0) * elem_out, (S > 1 ? g.parts.stride(0) : 0) * elem_out, N, S, count,
           const_cast<const void**>(arr), const_cast<const void**>(arr + count), arr + 2 * count);
    sliced_gram_product(ptrs, count, info.channels[m], info.channels[n], k, layouts[m], layouts[n],
                        p.views[m].scalar_type(), kept.scalar_type());
  }
  return g;
}

// S from the kept blocks (adding the split-K partials into them first).
template <typename Out>
at::Tensor sqdist_from_blocks(const Prepared& p, const FeatInfo& info, at::Tensor& kept, const GramProducts& g,
                              cudaStream_t stream) {
  using T = Out;
  const int M = static_cast<int>(info.M);
  const int blocks = M * (M + 1) / 2;
  const auto f64 = kept.options().dtype(at::kDouble);
  int64_t chunks = 1;  // the most row chunks of any block; ~64K entries a chunk
  std::vector<int64_t> rows_per_chunk(blocks);
  for (int m = 0; m < M; ++m)
    for (int n = m; n < M; ++n) {
      const int q = block_index(m, n, M);
      rows_per_chunk[q] = std::max<int64_t>(1, kChunkEntries / info.channels[n]);
      chunks = std::max(chunks, (info.channels[m] + rows_per_chunk[q] - 1) / rows_per_chunk[q]);
    }
  at::Tensor partial = at::zeros({info.N, blocks, chunks}, f64);
  for (int m = 0; m < M; ++m)
    for (int n = m; n < M; ++n) {
      const int q = block_index(m, n, M);
      at::Tensor block = kept_block(kept, info.channels, m, n);
      const int64_t slices = g.slices[q];
      const T* parts = slices > 1 ? kept_block(g.parts.select(0, 0), info.channels, m, n).const_data_ptr<T>() : nullptr;
      const int64_t part_stride = slices > 1 ? g.parts.stride(0) : 0;
      const int64_t my_chunks = (info.channels[m] + rows_per_chunk[q] - 1) / rows_per_chunk[q];
      at::Tensor out = partial.select(1, q);  // [N, chunks], row stride blocks * chunks
      const int64_t ld = block.stride(0);  // (N = 1: a size-1 dimension's stride is arbitrary)
      TORCH_CHECK(info.N == 1 || (p.scales[m].stride(0) == ld && p.scales[n].stride(0) == ld),
                  "mtut: internal: the scales and the kept blocks are not in one buffer");
      for (int64_t b0 = 0; b0 < info.N; b0 += kMaxGrid) {
        const int64_t nb = std::min(kMaxGrid, info.N - b0);
        launch(block_sqnorm_kernel<T>, dim3(grid_dim(my_chunks), grid_dim(nb)), dim3(kThreads), stream,
               block.mutable_data_ptr<T>() + b0 * block.stride(0), block.stride(0), info.channels[m], info.channels[n],
               rows_per_chunk[q], parts ? parts + b0 * block.stride(0) : nullptr, part_stride, slices,
               p.scales[m].const_data_ptr<T>() + b0 * p.scales[m].stride(0),
               p.scales[n].const_data_ptr<T>() + b0 * p.scales[n].stride(0), blocks * chunks,
               out.mutable_data_ptr<double>() + b0 * blocks * chunks);
      }
    }
  at::Tensor t = at::empty({info.N, blocks}, f64);
  for (int64_t b0 = 0; b0 < info.N; b0 += kMaxGrid) {
    const int64_t nb = std::min(kMaxGrid, info.N - b0);
    launch(sum_partials_kernel, dim3(grid_dim(nb), static_cast<unsigned>(blocks)), dim3(kThreads), stream,
           partial.const_data_ptr<double>() + b0 * blocks * chunks, chunks, static_cast<int64_t>(blocks),
           t.mutable_data_ptr<double>() + b0 * blocks);
  }
  at::Tensor S = at::empty({info.N, info.M, info.M}, kept.options());
  const int64_t count = info.N * M * M;
  launch(combine_gram_kernel<Out>, dim3(static_cast<unsigned>((count + kThreads - 1) / kThreads)), dim3(kThreads),
         stream, t.const_data_ptr<double>(), info.N, M, S.mutable_data_ptr<Out>());
  return S;
}

// The gram forward: the blocks into the kept part of a new_saved buffer, and S.
template <typename Out>
at::Tensor gram_forward(const Prepared& p, const FeatInfo& info, at::Tensor& kept, cudaStream_t stream) {
  const GramProducts g = gram_blocks(p, info, kept, stream);
  return sqdist_from_blocks<Out>(p, info, kept, g, stream);
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
