// CUDA kernels of sqdist_forward and sqdist_backward (DESIGN.md §2-§3).
//
// The GEMM-shaped work runs in cuBLAS (through at::bmm / at::baddbmm, and the split-K Gram
// blocks through cublasGemmBatchedEx on ATen's handle; fp32 accumulation
// and output for fp16/bf16 operands, TF32 for fp32 exactly when torch allows it); our own
// kernels do what is around it, on the C x C blocks or the K strips: the row norms, the
// scaled square sums and square differences in fp64, the normalization backward. The
// normalization is folded into the products as per-channel scales: no normalized copy.
// Reductions are summed in a fixed order, without floating-point atomics: the same inputs
// give the same bits on every run.
//
// gram:   forward, the blocks P_mn = X_m X_n^T (n >= m) on the raw rows, kept for the
//         backward in one buffer [N, saved_width] (with the row norms and scales). Each block is its own product of its
//         own operands (no stacked matrix), and the blocks of one shape and layout are
//         entries of ONE pointer-array cuBLAS product (one kernel for all), so for X_m = X_n
//         the blocks P_mm, P_mn, P_nn are the same bits and S is exactly 0. Where the blocks
//         have too few output tiles for the GPU and a long contraction (Mixed_3c), the entries
//         are (block, slice of d, sample), into partials added in a fixed order (split-K,
//         gram_splits). S_mn = |G_mm|^2 - 2 |G_mn|^2 + |G_nn|^2 with
//         G = diag(s) P diag(s), squared and summed in fp64, clamped at 0.
//         backward, for each modality m that needs a gradient:
//         graw_m = sum_n coef_mn P_mn diag(s_n^2) X_n (the blocks reused, not recomputed;
//         each weighted in one pass of our own into the operand dtype), one product per
//         block over every sample. For equal channel counts the products run over the rows
//         with weight only (`students` rows a sample, picked on the GPU) and write dL/dX_m
//         itself, the normalization backward folded into the weighted blocks
//         (student_gram_grads; bf16: per strip of positions ONE product of K = M C over the
//         maps' stacked columns).
// direct: forward, strips of rows I of the upper triangle of every K_m = Xh_m^T Xh_m,
//         K_m[I, J >= I] = (X_m[:, I] s_m^2)^T X_m[:, J] (one GEMM per modality and strip),
//         squared differences of every pair summed in fp64 (the diagonal once, above it
//         twice). backward, strips of K_n[I, :] and E_m = sum_n coef_mn K_n[I, :],
//         graw_m += X_m[:, I] E_m. Nothing is kept: the strips are d x d in total.
// Both algorithms keep the row norms and scales (2 sum C_m values per sample) for the
// backward, which so reads each input only where a product or the normalization backward
// needs it.
// Then dL/dX_m from graw_m (dL/dXh_m = diag(s_m) graw_m) by the fused normalization
// backward (but after the folded student products), in place for fp32/fp64 inputs; a
// (sample, modality) row without SSA weight gets its zero gradient without being read.
// Launches: one per modality group where the work is per row (row norms, scaled strips),
// and no zero fills where the kernels write every entry. Beyond the gradients the backward
// holds the kept blocks (gram) and one stacked strip (its student products, bf16: at most
// kStripBudget entries, or 256 positions where those are more) or one set of strips of at
// most kStripBudget entries (direct).
//
// Operand precision: fp32 and fp64 inputs are their own operands. bf16 inputs are the
// operands of every product, and the small derived operands (X s^2, the coefficient-
// weighted blocks and strips) are rounded to bf16 (fp32's range; the per-sample factor
// that keeps them near 1 is applied after the product, or folded into the blocks where the
// gram student products write the gradient itself). fp16 inputs are the operands of
// the forward Gram blocks; the products whose operands carry the scales run in fp32 on
// fp32 copies, because fp16's range (6e-5 .. 65504) cannot hold x s^2 or P s^2.
//
// Everything runs on the current stream under the inputs' device guard with 64-bit
// indexing, and nothing is read back to the host, so the ops can be captured in CUDA
// graphs (torch.compile mode="reduce-overhead").
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "ssa_common.h"

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#ifndef MTUT_CUDA_EMULATE
#include <ATen/cuda/CUDAContext.h>  // cuBLAS handle (cublas_v2.h: setup.py finds it) and device properties
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#include <ATen/ops/full.h>   // unwritten(): NaN-filled buffers
#include "cuda_emulation.h"  // test-only: python_tests/cuda_emulation runs the kernels on the CPU
#endif

#include <algorithm>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mtut {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // threads per block (8 warps) of every kernel here

// CUDA spelling of the ATen element types.
template <typename T> struct Raw { using type = T; };
template <> struct Raw<at::Half> { using type = __half; };
template <> struct Raw<at::BFloat16> { using type = __nv_bfloat16; };

// What a kernel computes in: fp64 for fp64 inputs, fp32 otherwise.
template <typename Tin> using Cmp = std::conditional_t<std::is_same_v<Tin, double>, double, float>;

// Conversions that do not rely on the implicit ones torch's build flags switch off.
template <typename T> __device__ __forceinline__ double to_double(T v) { return static_cast<double>(v); }
template <> __device__ __forceinline__ double to_double<__half>(__half v) { return static_cast<double>(__half2float(v)); }
template <> __device__ __forceinline__ double to_double<__nv_bfloat16>(__nv_bfloat16 v) {
  return static_cast<double>(__bfloat162float(v));
}

template <typename Tin> __device__ __forceinline__ Tin from_compute(Cmp<Tin> v) { return static_cast<Tin>(v); }
template <> __device__ __forceinline__ __half from_compute<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The block's sum in a fixed order (warp shuffles, then warp 0); valid in thread 0.
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

#ifndef MTUT_CUDA_EMULATE
// kernel<<<grid, block, 0, stream>>>(args...), then the launch error check.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
using DeviceScope = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#else
using emulation::launch;
using DeviceScope = emulation::DeviceScope;
cudaStream_t current_stream() { return nullptr; }
#endif

constexpr int64_t kMaxGrid = 65535;  // grid.y and grid.z limit
// entries of one set of K strips (all modalities), or of one stacked strip (student products)
constexpr int64_t kGpuStripBudget = int64_t(1) << 24;
#ifndef MTUT_CUDA_EMULATE
constexpr int64_t kStripBudget = kGpuStripBudget;
constexpr int64_t kChunkEntries = int64_t(1) << 16;  // entries one block square-sums (gram blocks, strips)
constexpr int64_t kMinStackWidth = 256;  // positions of a stacked strip at least (a 16-bit output tile's width)
int64_t multiprocessors() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
#else
// so that the tests' small shapes walk many strips and many chunks of rows
constexpr int64_t kStripBudget = 3072;
constexpr int64_t kChunkEntries = 64;
constexpr int64_t kMinStackWidth = 16;
// and so that they split the Gram blocks' contraction (on an imagined 4-SM device)
int64_t multiprocessors() { return 4; }
#endif

// A buffer whose every entry a kernel writes (no zero-fill launch): at::empty, and NaN in
// the emulation, so that the tests see any entry left unwritten (or `fill`: a number, where
// an entry read but never written must show as a wrong number, not as an expected NaN).
at::Tensor unwritten(at::IntArrayRef sizes, const at::TensorOptions& options,
                     double fill = std::numeric_limits<double>::quiet_NaN()) {
#ifdef MTUT_CUDA_EMULATE
  return at::full(sizes, fill, options);
#else
  (void)fill;
  return at::empty(sizes, options);
#endif
}

unsigned grid_dim(int64_t n) {
  TORCH_CHECK(n <= kMaxGrid, "mtut: internal: grid dimension ", n, " exceeds ", kMaxGrid);
  return static_cast<unsigned>(n);
}

// ------------------------------------------------------------------ products

#ifdef MTUT_CUDA_EMULATE
// The operand and output dtypes of every product, for the tests (which products would
// run on the tensor cores).
std::vector<std::string>& gemm_log() {
  static std::vector<std::string> log;
  return log;
}
void record(at::ScalarType a, at::ScalarType b, at::ScalarType out) {
  gemm_log().push_back(std::string(c10::toString(a)) + "x" + c10::toString(b) + "->" + c10::toString(out));
}
void record(const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  record(a.scalar_type(), b.scalar_type(), out);
}
#endif

// a [N, p, k] @ b [N, k, q] -> [N, p, q] in `out` dtype (fp32 accumulation for 16-bit operands).
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
#ifdef MTUT_CUDA_EMULATE
  record(a, b, out);
  return at::bmm(a.to(out), b.to(out));  // 16-bit products are exact in fp32, as on the tensor cores
#else
  return a.scalar_type() == out ? at::bmm(a, b) : at::bmm(a, b, out);
#endif
}

// acc += a @ b, acc in fp32/fp64 (`out`); an undefined acc becomes a @ b (no zero fill).
void gemm_acc(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  if (!acc.defined()) {
    acc = gemm(a, b, out);
    return;
  }
#ifdef MTUT_CUDA_EMULATE
  record(a, b, acc.scalar_type());
  acc.baddbmm_(a.to(acc.scalar_type()), b.to(acc.scalar_type()));
#else
  if (a.scalar_type() == acc.scalar_type()) acc.baddbmm_(a, b);
  else at::baddbmm_out(acc, acc, a, b, acc.scalar_type());
#endif
}

// out = a @ b into a preallocated fp32/fp64 view.
void gemm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
#ifdef MTUT_CUDA_EMULATE
  record(a, b, out.scalar_type());
  at::bmm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
#else
  if (a.scalar_type() == out.scalar_type()) at::bmm_out(out, a, b);
  else at::bmm_out(out, a, b, out.scalar_type());
#endif
}

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

// How cuBLAS can read the rows [C, d] of a view [N, C, d]: positions contiguous (a d x C
// column-major matrix, leading dimension the channel stride) or channels contiguous (C x d,
// leading dimension the position stride). Other layouts are neither grouped nor split (one
// at::bmm per block, which copies them).
struct RowsLayout {
  bool ok = false;
  bool positions_contiguous = false;
  int64_t lead = 0;
  int64_t channel_stride() const { return positions_contiguous ? lead : 1; }
  int64_t position_stride() const { return positions_contiguous ? 1 : lead; }
};

RowsLayout rows_layout(const at::Tensor& v) {
  const int64_t C = v.size(1), d = v.size(2), sc = v.stride(1), sd = v.stride(2);
  constexpr int64_t kIntMax = 2147483647;  // cuBLAS takes int sizes and leading dimensions
  RowsLayout r;
  if (sd == 1 && (sc >= d || C == 1)) r = {true, true, C == 1 ? d : sc};
  else if (sc == 1 && (sd >= C || d == 1)) r = {true, false, d == 1 ? C : sd};
  r.ok = r.ok && r.lead <= kIntMax && C <= kIntMax && d <= kIntMax;
  return r;
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

#ifndef MTUT_CUDA_EMULATE
cudaDataType_t cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return CUDA_R_64F;
    case at::kFloat: return CUDA_R_32F;
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: TORCH_CHECK(false, "mtut: internal: no cuBLAS type for ", t);
  }
}
#endif

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

// norm = ||x[b, c, :]|| and scale = 1 / max(norm, eps) of every row of a group (one launch
// for up to kRowGroup modalities): one warp per row, fp64 sum in a fixed order. The warps
// of rows b < N also zero sample b's entries [pad_from, ld) of saved (pad_from = ld: none).
template <typename Tin>
__global__ void __launch_bounds__(kThreads) row_scale_kernel(
    const RowGroup<Tin> rows, int64_t d, double eps, int64_t N, int64_t ld, int64_t s_offset,
    int64_t pad_from, Cmp<Tin>* __restrict__ saved) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (row >= rows.first[rows.count]) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  if (row < N)
    for (int64_t k = pad_from + lane; k < ld; k += 32) saved[row * ld + k] = static_cast<Cmp<Tin>>(0);
  int m = 0;
  while (row >= rows.first[m + 1]) ++m;
  const int64_t local = row - rows.first[m], b = local / rows.C[m], c = local - b * rows.C[m];
  const Tin* p = rows.x[m] + b * rows.sn[m] + c * rows.sc[m];
  const int64_t sd = rows.sd[m];
  double acc = 0;
  for (int64_t k = lane; k < d; k += 32) {
    const double v = to_double<Tin>(p[k * sd]);
    acc += v * v;
  }
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if (lane == 0) {
    const double r = sqrt(acc);
    Cmp<Tin>* at = saved + b * ld + rows.r_at[m] + c;
    at[0] = static_cast<Cmp<Tin>>(r);
    at[s_offset] = static_cast<Cmp<Tin>>(1.0 / (r < eps ? eps : r));  // NaN stays NaN, as clamp_min keeps it
  }
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

// sum_t partial[t * step] over the block in a fixed order; valid in thread 0.
__device__ __forceinline__ double block_sum_strided(const double* p, int64_t count, int64_t step, double* scratch) {
  double acc = 0;
  for (int64_t t = threadIdx.x; t < count; t += kThreads) acc += p[t * step];
  return block_sum(acc, scratch);
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
  TORCH_CHECK_VALUE(M <= 8, "mtut: the cuda direct algorithm takes at most 8 modalities, got ", M,
                    "; use algo='gram'");
}

// The strips K[m] (contiguous, fp32 or fp64) of every modality, from sample b0 on (each
// sample `per_sample` entries).
StripPairs strip_pairs(const std::vector<at::Tensor>& K, int64_t b0, int64_t per_sample) {
  StripPairs s{};
  s.M = static_cast<int>(K.size());
  for (size_t m = 0; m < K.size(); ++m) {
    if (K[m].scalar_type() == at::kDouble) s.k64[m] = K[m].const_data_ptr<double>() + b0 * per_sample;
    else s.k[m] = K[m].const_data_ptr<float>() + b0 * per_sample;
  }
  return s;
}

template <typename T>
__device__ __forceinline__ const T* strip_of(const StripPairs& s, int m);
template <> __device__ __forceinline__ const float* strip_of<float>(const StripPairs& s, int m) { return s.k[m]; }
template <> __device__ __forceinline__ const double* strip_of<double>(const StripPairs& s, int m) { return s.k64[m]; }

template <typename T>
__global__ void __launch_bounds__(kThreads) strip_sqdiff_kernel(
    const StripPairs strips, int64_t ti, int64_t width, int64_t rows_per_chunk, int64_t chunks, int64_t slot,
    int64_t slots, double* __restrict__ partial) {
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
        for (int64_t j = r + threadIdx.x; j < width; j += kThreads) {  // j < r lies below the diagonal
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
__global__ void __launch_bounds__(kThreads) sum_pair_partials_kernel(
    const double* __restrict__ partial, int64_t slots, int M, Out* __restrict__ S) {
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
__global__ void __launch_bounds__(kThreads, 4) normalize_backward_kernel(
    const Cmp<Tin>* graw, const Tin* __restrict__ x, int64_t sn, int64_t sc, int64_t sd, int64_t C, int64_t d,
    const Cmp<Tin>* __restrict__ norm, const Cmp<Tin>* __restrict__ scale, int64_t s_ld,
    const Cmp<Tin>* __restrict__ factor, double eps, double inv_eps, Tin* out) {
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
    const int64_t blocks = (group.first[group.count] + kThreads / 32 - 1) / (kThreads / 32);
    launch(row_scale_kernel<Tin>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), stream, group, info.d, eps,
           info.N, ld, layout.rows, pad_from, saved.mutable_data_ptr<Cmp<Tin>>());
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

// ------------------------------------------------------------------ direct

// The operand dtype of the scaled products: the input's, fp32 for fp16 (see the header).
template <typename Tin> using Operand = std::conditional_t<std::is_same_v<Tin, __half>, float, Tin>;

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
__global__ void __launch_bounds__(kThreads) scaled_strip_kernel(
    const StripSources<Tin> src, int64_t N, int64_t b0, int64_t i0, int64_t ti, int64_t rows_per_chunk, int64_t s_ld,
    Operand<Tin>* __restrict__ out) {
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
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkEntries / ti);
  for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
    const int64_t nb = std::min(kMaxGrid, N - b0);
    launch(scaled_strip_kernel<Tin>, dim3(grid_dim((rows + rows_per_chunk - 1) / rows_per_chunk), grid_dim(nb)),
           dim3(kThreads), stream, src, N, b0, i0, ti, rows_per_chunk, s_ld,
           static_cast<Operand<Tin>*>(out.mutable_data_ptr()));
  }
  std::vector<at::Tensor> lefts;
  for (int m = 0; m < M; ++m) {
    const int64_t C = src.first[m + 1] - src.first[m];
    lefts.push_back(out.narrow(0, N * src.first[m] * ti, N * C * ti).view({N, C, ti}).transpose(1, 2));
  }
  return lefts;
}

template <typename Tin>
at::Tensor sqdist_direct(const Prepared& p, const FeatInfo& info, cudaStream_t stream) {
  using Out = Cmp<Tin>;
  const int64_t M = info.M, N = info.N, d = info.d;
  check_direct_modalities(M);
  const int pairs = static_cast<int>(M * (M - 1) / 2);
  const int64_t rows = std::clamp<int64_t>(kStripBudget / std::max<int64_t>(N * d * M, 1), 1, d);
  const int64_t strips = (d + rows - 1) / rows;
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkEntries / d);
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  const int64_t slots = strips * chunks;
  // every slot is written (a strip's chunks past its rows write 0): no zero-fill launch
  at::Tensor partial = unwritten({N, pairs, slots}, at::TensorOptions().dtype(at::kDouble).device(p.views[0].device()));
  const at::ScalarType cdt = info.compute_dtype;
  for (int64_t s = 0; s < strips; ++s) {
    const int64_t i0 = s * rows, ti = std::min(rows, d - i0), width = d - i0;
    std::vector<at::Tensor> K = strip_lefts<Tin>(p, i0, ti, stream);  // each replaced by its product (frees
    for (int64_t m = 0; m < M; ++m)                                       // the operands with the last)
      K[m] = gemm(K[m], p.operands[m].narrow(2, i0, width), cdt);  // [N, ti, d - i0]
    for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
      const int64_t nb = std::min(kMaxGrid, N - b0);
      const StripPairs shifted = strip_pairs(K, b0, ti * width);  // the same strips, from sample b0 on
      const dim3 grid(grid_dim(chunks), grid_dim(nb));
      double* out = partial.mutable_data_ptr<double>() + b0 * pairs * slots;
      if (cdt == at::kDouble)
        launch(strip_sqdiff_kernel<double>, grid, dim3(kThreads), stream, shifted, ti, width, rows_per_chunk, chunks,
               s, slots, out);
      else
        launch(strip_sqdiff_kernel<float>, grid, dim3(kThreads), stream, shifted, ti, width, rows_per_chunk, chunks,
               s, slots, out);
    }
  }
  at::Tensor S = unwritten({N, M, M}, p.norms[0].options());  // every entry written here (M >= 2)
  for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid) {
    const int64_t nb = std::min(kMaxGrid, N - b0);
    launch(sum_pair_partials_kernel<Out>, dim3(grid_dim(nb), static_cast<unsigned>(pairs)), dim3(kThreads), stream,
           partial.const_data_ptr<double>() + b0 * pairs * slots, slots, static_cast<int>(M),
           S.mutable_data_ptr<Out>() + b0 * M * M);
  }
  return S;
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

__device__ __forceinline__ float reciprocal(float v) { return __frcp_rn(v); }  // not a division: no called routine
__device__ __forceinline__ double reciprocal(double v) { return __drcp_rn(v); }

// The power of two in (v, 2 v] for a finite v > 0 (else v itself): dividing by it and
// multiplying back are exact, so the scaled operands of a row carry the same bits up to
// that power whatever weights set it (an identical pair's exact 0 stays isolated).
template <typename T>
__device__ __forceinline__ T power_of_two_above(T v) {
  if (!(v < std::numeric_limits<T>::infinity())) return v;
  int e;
  frexp(v, &e);  // v = f 2^e, 0.5 <= f < 1
  return ldexp(T(1), e);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pair_coefficients_kernel(
    const T* __restrict__ w, int64_t sb, int64_t sm, int64_t sn, int64_t N, int M, T* __restrict__ factor,
    T* __restrict__ ref) {
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
  launch(pair_coefficients_kernel<T>, dim3(static_cast<unsigned>((N * M + kThreads - 1) / kThreads)), dim3(kThreads),
         stream, w.const_data_ptr<T>(), w.stride(0), w.stride(1), w.stride(2), N, static_cast<int>(M),
         c.factor.mutable_data_ptr<T>(), c.ref.mutable_data_ptr<T>());
  return c;
}

// A = (coef_mn / ref_m) P_mn diag(s_n^2) in the operand dtype, one pass over a kept block
// P [rows, cols] of every sample (batch stride `stride`): s scales its columns (n >= m: the
// block P_mn itself) or its rows (n < m: the kept P_nm, whose transpose is the operand).
// The same operations, in the same order, as block * s^2 * factor in ATen.
template <typename Top>
__global__ void __launch_bounds__(kThreads) weighted_block_kernel(
    const Cmp<Top>* __restrict__ P, int64_t stride, int64_t rows, int64_t cols, int64_t rows_per_chunk,
    const Cmp<Top>* __restrict__ s, int64_t s_ld, bool scale_rows, const Cmp<Top>* __restrict__ factor,
    int64_t factor_stride, Top* __restrict__ out, int64_t out_stride) {
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

// ------------------------------------------------------------------ backward: the students' rows
//
// A (sample, modality) row gets gradient only where its weight row is non-zero: for the loss
// with M = 2, one network per sample (the one with the higher ce). Multiplying every row
// does M / L times the work for L students a sample; which rows those are is known on the GPU
// only (a host read of the weights would stall the host behind the networks' forward). So,
// where every modality has the same channel count and an operand layout cuBLAS reads alike,
// the backward's products are pointer-array products over L slots per sample, which
// student_pointers_kernel fills on the GPU: first the sample's students (rows with a weight
// neither 0 nor NaN, in modality order), then modalities that need a gradient but have none
// there (their rows are computed from whatever their operands hold and then overwritten: the
// last pass writes their 0, or for a NaN weight NaN, without reading). L is sqdist_backward's
// `students` (the loss's backward promises M - 1), at most the number of modalities that need
// a gradient; a student beyond it gets ref = NaN, i.e. a NaN gradient.
//   gram:   the normalization backward folded into the weighted blocks (folded_blocks_kernel),
//           so that the products write dL/dX_m itself: for bf16 inputs per strip of positions
//           ONE product of K = M C over the maps' stacked columns (stack_strip_kernel), written
//           in bf16; else M products (term 0: dx_m = B_mm X_m; term j: dx_m += B_mn X_n).
//   direct: per strip of rows I one product graw_m (+)= X_m[:, I] E_m[I, :].
constexpr int kMaxStudentModalities = 8;  // slot lists are 3-bit fields of one word
struct StudentBases {
  // term (m, n): the left operand of sample b at left[m M + n] + b left_sample[m M + n], the
  // right one likewise (bytes); graw_m [N, C, d] (null where m needs no gradient)
  const char* left[kMaxStudentModalities * kMaxStudentModalities];
  const char* right[kMaxStudentModalities * kMaxStudentModalities];
  int64_t left_sample[kMaxStudentModalities * kMaxStudentModalities];
  int64_t right_sample[kMaxStudentModalities * kMaxStudentModalities];
  char* graw[kMaxStudentModalities];
};

// One thread per sample: its L slots, and for every slot k (modality m) and term j (n = m
// for j = 0, else the j-th other modality; `terms` of them) entry e = (j N + b) L + k of the
// pointer arrays: the left and right operands of (m, n), graw_m.
template <typename T>
__global__ void __launch_bounds__(kThreads) student_pointers_kernel(
    const StudentBases bases, int64_t graw_sample, int64_t N, int M, int L, int terms, T* __restrict__ ref,
    const void** left, const void** right, void** out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (b >= N) return;
  unsigned slots = 0, taken = 0;  // (bit fields, not arrays: no local memory)
  int used = 0;
  for (int m = 0; m < M; ++m) {
    if (bases.graw[m] == nullptr) continue;
    T& r = ref[m * N + b];
    if (r == T(0) || r != r) continue;  // gradient 0, or NaN: no product needed
    if (used < L) {
      slots |= static_cast<unsigned>(m) << (3 * used++);
      taken |= 1u << m;
    } else {
      r = std::numeric_limits<T>::quiet_NaN();  // beyond the caller's promise: NaN, never a wrong number
    }
  }
  for (int m = 0; m < M && used < L; ++m)
    if (bases.graw[m] != nullptr && !(taken >> m & 1u)) slots |= static_cast<unsigned>(m) << (3 * used++);
  const int64_t per_term = N * L;
  for (int k = 0; k < L; ++k) {
    const int m = static_cast<int>(slots >> (3 * k) & 7u);
    for (int j = 0; j < terms; ++j) {
      const int n = j == 0 ? m : (j - 1 < m ? j - 1 : j);
      const int q = m * M + n;
      const int64_t e = j * per_term + b * L + k;
      left[e] = bases.left[q] + b * bases.left_sample[q];
      right[e] = bases.right[q] + b * bases.right_sample[q];
      out[e] = bases.graw[m] + b * graw_sample;
    }
  }
}

// A matrix operand of the pointer-array products: entry (i, j) at i lead + j (row_major) or
// at j lead + i.
struct Matrix {
  bool row_major;
  int64_t lead;
};
Matrix rows_matrix(const RowsLayout& l) { return {l.positions_contiguous, l.lead}; }  // the rows [C, d] of a map

// out_e [rows, cols] (row-major, rows out_lead apart; `accumulate`: +=) = left_e [rows, k]
// right_e [k, cols] for the entries [first, first + count) of `ptrs` ([3, total]: left_e,
// right_e, out_e); `in` operands, `out` output (fp32/fp64 accumulation: a 16-bit output is the
// fp32 result rounded once), as sliced_gram_product.
void pointer_product(const at::Tensor& ptrs, int64_t first, int64_t count, int64_t rows, int64_t cols, int64_t k,
                     Matrix left, Matrix right, bool accumulate, at::ScalarType in, at::ScalarType out,
                     int64_t out_lead = 0) {
  if (out_lead == 0) out_lead = cols;
  const int64_t total = ptrs.size(1);
#ifdef MTUT_CUDA_EMULATE
  record(in, in, out);
  const int64_t* p = ptrs.const_data_ptr<int64_t>();
  const auto options = at::TensorOptions().dtype(in);
  const auto strides = [](Matrix x) { return x.row_major ? std::vector<int64_t>{x.lead, 1} : std::vector<int64_t>{1, x.lead}; };
  for (int64_t e = first; e < first + count; ++e) {
    const at::Tensor L = at::from_blob(reinterpret_cast<void*>(p[e]), {rows, k}, strides(left), options);
    const at::Tensor R = at::from_blob(reinterpret_cast<void*>(p[total + e]), {k, cols}, strides(right), options);
    at::Tensor G = at::from_blob(reinterpret_cast<void*>(p[2 * total + e]), {rows, cols}, {out_lead, 1}, options.dtype(out));
    const at::ScalarType acc = out == at::kDouble ? at::kDouble : at::kFloat;  // 16-bit products are exact in fp32
    const at::Tensor product = at::mm(L.to(acc), R.to(acc));                   // as on the tensor cores
    if (accumulate) G.add_(product);
    else G.copy_(product);
  }
#else
  // Column-major, cuBLAS computes out_e^T [cols, rows] = right_e^T [cols, k] left_e^T [k, rows]:
  // a row-major operand is its transpose column-major (no op), the other one needs op T.
  const auto* p = reinterpret_cast<void* const*>(ptrs.const_data_ptr<int64_t>());
  const bool f64 = out == at::kDouble;
  const float one = 1, beta = accumulate ? 1.0f : 0.0f;
  const double one64 = 1, beta64 = accumulate ? 1.0 : 0.0;
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // on the current stream
  TORCH_CUDABLAS_CHECK(cublasGemmBatchedEx(
      handle, right.row_major ? CUBLAS_OP_N : CUBLAS_OP_T, left.row_major ? CUBLAS_OP_N : CUBLAS_OP_T,
      static_cast<int>(cols), static_cast<int>(rows), static_cast<int>(k), f64 ? static_cast<const void*>(&one64) : &one,
      const_cast<const void**>(p + total + first), cuda_type(in), static_cast<int>(right.lead),
      const_cast<const void**>(p + first), cuda_type(in), static_cast<int>(left.lead),
      f64 ? static_cast<const void*>(&beta64) : &beta, const_cast<void**>(p + 2 * total + first), cuda_type(out),
      static_cast<int>(out_lead), static_cast<int>(count), f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
#endif
}

// Whether the student products apply: at most kMaxStudentModalities modalities, one channel
// count, and operands cuBLAS reads with one operation and leading dimension.
bool student_products_apply(const Prepared& p, const FeatInfo& info) {
  if (info.M > kMaxStudentModalities) return false;
  const RowsLayout first = rows_layout(p.operands[0]);
  for (int64_t m = 0; m < info.M; ++m) {
    const RowsLayout l = rows_layout(p.operands[m]);
    if (info.channels[m] != info.channels[0] || !l.ok || l.positions_contiguous != first.positions_contiguous ||
        l.lead != first.lead)
      return false;
  }
  return true;
}

// The slots per sample (at most the modalities that need a gradient), the output buffers of
// those (graw in the compute dtype, or the gradient itself: `options`; emulated: 1, so that a
// student row without its products, NaN'd by the broken-promise rule, cannot pass for a row
// the rule left alone) and their bases.
int64_t student_graw(const FeatInfo& info, const Needs& needs, int64_t slots, const at::TensorOptions& options,
                     std::vector<at::Tensor>& g, StudentBases& bases) {
  const int64_t L = std::min<int64_t>(slots, std::count(needs.begin(), needs.end(), true));
  for (int64_t m = 0; m < info.M && L > 0; ++m) {
    if (!needs[m]) continue;
    g[m] = unwritten({info.N, info.channels[0], info.d}, options, 1.0);
    bases.graw[m] = static_cast<char*>(g[m].mutable_data_ptr());
  }
  return L;
}

// Fills `ptrs` [3, terms N L] for the bases (student_pointers_kernel); `graw_elem`: the
// element size of the outputs [N, C, d].
template <typename T>
at::Tensor student_pointers(const StudentBases& bases, const FeatInfo& info, int64_t L, int terms,
                            const Coefficients& c, int64_t graw_elem, cudaStream_t stream) {
  const int64_t N = info.N, total = terms * N * L;
  at::Tensor ptrs = at::empty({3, total}, c.ref.options().dtype(at::kLong));
  auto* arr = reinterpret_cast<void**>(ptrs.mutable_data_ptr<int64_t>());
  launch(student_pointers_kernel<T>, dim3(static_cast<unsigned>((N + kThreads - 1) / kThreads)), dim3(kThreads),
         stream, bases, info.channels[0] * info.d * graw_elem, N, static_cast<int>(info.M), static_cast<int>(L),
         terms, c.ref.mutable_data_ptr<T>(), const_cast<const void**>(arr), const_cast<const void**>(arr + total),
         arr + 2 * total);
  return ptrs;
}

// The normalization backward folded into the weighted blocks, so that the student products
// write dL/dX_m itself (no graw buffer, no pass over it). With f_mn = coef_mn / ref_m and
// t_c = <x_c, graw_c> = sum_n f_mn sum_k (P_mn[c, k] s_nk)^2 (from the kept blocks, no pass
// over the maps), normalize_backward_kernel's dx_c = ref s_c^2 (graw_c - s_c^2 x_c t_c)
// (r_c > eps; else without the second term) is dx_m = sum_n B_mn X_n with
//   B_mn[c, k] = ref s_c^2 f_mn P_mn[c, k] s_nk^2, except on the diagonal of B_mm:
//   B_mm[c, c] = ref s_c^2 (f_mm P_mm[c, c] s_c^2 - s_c^2 t_c),
// every entry computed in the compute dtype (the diagonal in fp64: its two terms nearly cancel
// where graw_c lies along x_c) and rounded once to the operand dtype. (Bound: a rounded entry
// adds what the rounded weighted block adds before the projection, the diagonal at most
// u |<xh_c, dL/dxh_c>| |xh_c| more, which the projection's own error term covers:
// python_tests/error_bounds.py bf16_backward_bound.) One block per row (c, b) of modality m:
// row c of every B_mn at out + b out_stride + n block_step + c row_step (the stacked operand
// B_m = [B_m0 | B_m1 | ...], [C, M C] row-major: block_step C, row_step M C; or separate
// [C, C] blocks); rows of samples without weight (ref_m = 0) are left unwritten. The kept
// blocks P_ij (i <= j) of sample 0 are `blocks` + (their upper-triangle index) kept_step and
// the scales s_n `scales` + n C, `norm` the norms r_m (equal channel counts; no pointer arrays
// in the parameters: indexed at run time they were copied to the stack). (4 blocks per SM, as
// normalize_backward_kernel: otherwise ptxas spilled two registers.)
template <typename Top>
__global__ void __launch_bounds__(kThreads, 4) folded_blocks_kernel(
    const Cmp<Top>* __restrict__ blocks, int64_t kept_step, int64_t block_stride, const Cmp<Top>* __restrict__ scales,
    int64_t s_ld, int64_t C, int M, int m, int64_t b0, const Cmp<Top>* __restrict__ norm, double eps,
    const Cmp<Top>* __restrict__ factor,
    const Cmp<Top>* __restrict__ ref, Top* __restrict__ out, int64_t out_stride, int64_t block_step,
    int64_t row_step) {
  using T = Cmp<Top>;
  __shared__ double scratch[kThreads / 32];
  __shared__ double t;
  const int64_t c = blockIdx.x, b = b0 + blockIdx.y;
  const T rf = ref[b];  // ref_m of sample b
  if (rf == T(0)) return;
  const T* f = factor + (b * M + m) * M;
  const T* sb = scales + b * s_ld;  // s_n of sample b at sb + n C
  // P_mn[c, k]: the kept P_ij (i = min, j = max) at index i M - i (i - 1) / 2 + j - i
  const auto block = [&](int n) {
    const int i = n < m ? n : m, j = n < m ? m : n;
    return blocks + (i * M - i * (i - 1) / 2 + j - i) * kept_step + b * block_stride;
  };
  const T sc = sb[m * C + c];
  const bool project = norm[b * s_ld + c] > eps;  // r_m of row c (the rule of normalize_backward)
  if (project) {  // (uniform over the block: the __syncthreads in block_sum are safe)
    double acc = 0;
    for (int n = 0; n < M; ++n) {
      const T* P = block(n);
      const T* s = sb + n * C;
      double part = 0;
      for (int64_t k = threadIdx.x; k < C; k += kThreads) {
        const double v = static_cast<double>(n >= m ? P[c * C + k] : P[k * C + c]) * s[k];
        part += v * v;
      }
      acc += static_cast<double>(f[n]) * part;
    }
    const double total = block_sum(acc, scratch);
    if (threadIdx.x == 0) t = total;
    __syncthreads();
  }
  const T a = rf * sc * sc;
  Top* o = out + b * out_stride + c * row_step;
  for (int n = 0; n < M; ++n) {
    const T* P = block(n);
    const T* s = sb + n * C;
    const T fa = a * f[n];
    for (int64_t k = threadIdx.x; k < C; k += kThreads) {
      if (n == m && k == c) continue;  // the diagonal, below
      const T sk = s[k];
      o[n * block_step + k] = from_compute<Top>(fa * (n >= m ? P[c * C + k] : P[k * C + c]) * (sk * sk));
    }
  }
  if (threadIdx.x == 0) {
    const double s2 = static_cast<double>(sc) * sc;
    const double diag = static_cast<double>(f[m]) * block(m)[c * C + c] * s2 - (project ? s2 * t : 0.0);
    o[m * block_step + c] = from_compute<Top>(static_cast<T>(static_cast<double>(a) * diag));
  }
}

// Xs[b, m C + c, i] = x_m[b, c, i0 + i], i < width, rows `lead` apart: the maps' columns of one
// strip stacked (the right operand of K = M C), one block per row (b, m, c).
struct StackSources {
  const void* base[kMaxStudentModalities];
  int64_t sn[kMaxStudentModalities], sc[kMaxStudentModalities], sd[kMaxStudentModalities];  // elements
};

template <typename Tin>
__global__ void __launch_bounds__(kThreads) stack_strip_kernel(const StackSources src, int M, int64_t C, int64_t i0,
                                                               int64_t width, int64_t lead, Tin* __restrict__ out) {
  // grid.x = N M C < 2^31, so 32-bit division (64-bit division is a called routine: a stack frame)
  const unsigned row = blockIdx.x, mc = static_cast<unsigned>(M * C);
  const unsigned b = row / mc, rest = row - b * mc, m = rest / static_cast<unsigned>(C);
  const int64_t c = rest - m * static_cast<unsigned>(C), sd = src.sd[m];
  const Tin* x = static_cast<const Tin*>(src.base[m]) + b * src.sn[m] + c * src.sc[m] + i0 * sd;
  Tin* o = out + static_cast<int64_t>(row) * lead;
  for (int64_t i = threadIdx.x; i < width; i += kThreads) o[i] = x[i * sd];
}

// Positions per stacked strip: the most that keep N M C of them within kStripBudget entries, a
// multiple of 256 (the product's output tile width) where that is at least 256, but at least
// kMinStackWidth (large N M C: thin strips would be launches, not products; a strip of 256
// positions is still far less than the fp32 buffer of every position it replaces), at most d
// (bench/gpu_model.py stack_strip_width is the same rule).
int64_t stack_strip_width(int64_t N, int64_t M, int64_t C, int64_t d, int64_t budget = kStripBudget,
                          int64_t min_width = kMinStackWidth) {
  int64_t width = budget / std::max<int64_t>(N * M * C, 1);
  if (width >= 256) width = width / 256 * 256;
  return std::min(std::max(width, min_width), d);
}

// The emulation checks that every left operand of the student products (the folded blocks)
// starts on a 64-byte boundary (host memory is 64-byte aligned; on the GPU, 128).
void check_left_aligned(const at::Tensor& ptrs) {
#ifdef MTUT_CUDA_EMULATE
  const int64_t* lp = ptrs.const_data_ptr<int64_t>();
  for (int64_t e = 0; e < ptrs.size(1); ++e)
    TORCH_CHECK(lp[e] % 64 == 0, "mtut: internal: a folded block not on a 64-byte boundary");
#else
  (void)ptrs;
#endif
}

// dL/dX_m of the gram backward through the student products (`slots` = L per sample), the
// normalization backward folded in (folded_blocks_kernel): for 16-bit operands (bf16 inputs)
// per strip of positions the maps' columns stacked (stack_strip_kernel) and ONE product,
// dx_m[:, strip] = B_m [C, M C] Xs [M C, width], written in the input dtype (no fp32 buffer:
// the product's K = M C instead of M products of K = C accumulating in fp32 memory); else M
// products dx_m (+)= B_mn X_n (the left operand a column block of B_m) into the compute-dtype
// result (float32/float64: the gradient itself; float16: its fp32 buffer). The rows without
// weight: finish (folded) writes them.
template <typename Top>
std::vector<at::Tensor> student_gram_grads(const Prepared& p, const at::Tensor& kept, const Coefficients& c,
                                           const FeatInfo& info, const Needs& needs, int64_t slots, double eps,
                                           cudaStream_t stream) {
  using T = Cmp<Top>;
  const int M = static_cast<int>(info.M);
  const int64_t N = info.N, C = info.channels[0], d = info.d, MC = M * C;
  const bool stacked = p.operand == at::kBFloat16 || p.operand == at::kHalf;
  std::vector<at::Tensor> g(M);
  StudentBases bases{};
  const auto out_dtype = stacked ? p.operand : info.compute_dtype;
  const int64_t L = student_graw(info, needs, slots, kept.options().dtype(out_dtype), g, bases);
  if (L == 0) return g;
  // B_mn of every m that needs it: stacked, B_m [C, M C] row-major; else the blocks [C, C]
  // apart. Every operand a product reads starts on a 64-entry boundary (its pointer
  // 128-byte aligned, as cuBLAS's vectorized loads like).
  const int64_t w_block = (C * C + 63) / 64 * 64, w_sample = stacked ? (C * MC + 63) / 64 * 64 : M * N * w_block;
  at::Tensor W = unwritten({M, stacked ? N * w_sample : w_sample}, kept.options().dtype(p.operand));
  const int64_t out_stride = stacked ? w_sample : w_block, block_step = stacked ? C : N * w_block;
  // the kept blocks in upper-triangle order one kept_step apart, the scales C apart (saved's layout)
  const T* blocks = kept_block(kept, info.channels, 0, 0).const_data_ptr<T>();
  const int64_t kept_step = M > 1 ? kept_block(kept, info.channels, 0, 1).const_data_ptr<T>() - blocks : 0;
  for (int i = 0, index = 0; i < M; ++i)
    for (int j = i; j < M; ++j, ++index)
      TORCH_CHECK(kept_block(kept, info.channels, i, j).const_data_ptr<T>() == blocks + index * kept_step,
                  "mtut: internal: the kept blocks are not evenly spaced");
  const T* scales = p.scales[0].const_data_ptr<T>();
  for (int n = 0; n < M; ++n)
    TORCH_CHECK(p.scales[n].const_data_ptr<T>() == scales + n * C && p.scales[n].stride(0) == p.scales[0].stride(0),
                "mtut: internal: the row scales are not C apart");
  for (int m = 0; m < M; ++m) {
    if (!needs[m]) continue;
    for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid)
      launch(folded_blocks_kernel<Top>, dim3(static_cast<unsigned>(C), grid_dim(std::min(kMaxGrid, N - b0))),
             dim3(kThreads), stream, blocks, kept_step, kept.stride(0), scales, p.scales[0].stride(0), C, M, m, b0,
             p.norms[m].const_data_ptr<T>(), eps, c.factor.const_data_ptr<T>(), c.ref.select(0, m).const_data_ptr<T>(),
             static_cast<Top*>(W.select(0, m).mutable_data_ptr()), out_stride, block_step, stacked ? MC : C);
  }
  const int64_t elem_w = W.element_size(), elem_out = c10::elementSize(out_dtype);
  const auto left_base = [&](int m, int n) {
    return static_cast<const char*>(W.select(0, m).const_data_ptr()) + n * block_step * elem_w;
  };
  if (!stacked) {
    const int64_t elem = p.operands[0].element_size();
    for (int m = 0; m < M; ++m) {
      if (!needs[m]) continue;
      for (int n = 0; n < M; ++n) {
        bases.left[m * M + n] = left_base(m, n);
        bases.left_sample[m * M + n] = out_stride * elem_w;
        bases.right[m * M + n] = static_cast<const char*>(p.operands[n].const_data_ptr());
        bases.right_sample[m * M + n] = p.operands[n].stride(0) * elem;
      }
    }
    const at::Tensor ptrs = student_pointers<T>(bases, info, L, M, c, elem_out, stream);
    check_left_aligned(ptrs);
    const Matrix x = rows_matrix(rows_layout(p.operands[0]));
    for (int j = 0; j < M; ++j)
      pointer_product(ptrs, j * N * L, N * L, C, d, C, {true, C}, x, /*accumulate=*/j > 0, p.operand,
                      info.compute_dtype);
    return g;
  }
  const int64_t width = stack_strip_width(N, M, C, d);
  at::Tensor Xs = unwritten({N, MC, width}, kept.options().dtype(p.operand));
  StackSources src{};
  for (int m = 0; m < M; ++m) {
    const at::Tensor& x = p.operands[m];
    src.base[m] = x.const_data_ptr();
    src.sn[m] = x.stride(0), src.sc[m] = x.stride(1), src.sd[m] = x.stride(2);
  }
  const int64_t elem_x = Xs.element_size();
  for (int64_t i0 = 0; i0 < d; i0 += width) {
    const int64_t w = std::min(width, d - i0);
    launch(stack_strip_kernel<Top>, dim3(static_cast<unsigned>(N * MC)), dim3(kThreads), stream, src, M, C, i0, w,
           width, static_cast<Top*>(Xs.mutable_data_ptr()));
    for (int m = 0; m < M; ++m) {
      if (!needs[m]) continue;
      bases.left[m * M + m] = left_base(m, 0);  // one term: all of B_m
      bases.left_sample[m * M + m] = out_stride * elem_w;
      bases.right[m * M + m] = static_cast<const char*>(Xs.const_data_ptr());
      bases.right_sample[m * M + m] = MC * width * elem_x;
      bases.graw[m] = static_cast<char*>(g[m].mutable_data_ptr()) + i0 * elem_out;  // the strip's columns
    }
    const at::Tensor ptrs = student_pointers<T>(bases, info, L, 1, c, elem_out, stream);
    check_left_aligned(ptrs);
    pointer_product(ptrs, 0, N * L, C, w, MC, {true, MC}, {true, width}, /*accumulate=*/false, p.operand,
                    p.operand, /*out_lead=*/d);
  }
  return g;
}

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

// The last pass after the folded student products (student_gram_grads), one block per row
// (b, c): a row without weight (ref = 0) gets its zero gradient and a NaN-weighted one NaN,
// neither read (the products may have written them from a filler slot); a row with weight is
// final, or (float16 inputs) its fp32 result is rounded into `out`.
template <typename Tg, typename Tout>
__global__ void __launch_bounds__(kThreads) folded_finish_kernel(const Tg* g, int64_t C, int64_t d,
                                                                 const Cmp<Tout>* __restrict__ factor, Tout* out) {
  using T = Cmp<Tout>;
  const int64_t row = blockIdx.x;
  const int64_t b = static_cast<unsigned>(blockIdx.x) / static_cast<unsigned>(C);  // (32-bit: see normalize_backward)
  const T f = factor[b];
  Tout* o = out + row * d;
  if (f == T(0) || f != f) {
    const Tout v = from_compute<Tout>(f == T(0) ? T(0) : f);
    for (int64_t k = threadIdx.x; k < d; k += kThreads) o[k] = v;
  } else if (static_cast<const void*>(g) != static_cast<const void*>(out)) {
    const Tg* gr = g + row * d;
    for (int64_t k = threadIdx.x; k < d; k += kThreads) o[k] = from_compute<Tout>(static_cast<T>(to_double<Tg>(gr[k])));
  }
}

// dL/dfeats from the graw buffers: the fused normalization backward, in place when the
// input is in the compute dtype (float32/float64), else into a new tensor of the input
// dtype; an empty tensor for the modalities without needs[m]. `folded`: the buffers hold
// dL/dX of the rows with weight already (student_gram_grads), only the others are written.
template <typename T>
std::vector<at::Tensor> finish(std::vector<at::Tensor>& graw, const Prepared& p, const Coefficients& c,
                               const FeatInfo& info, double eps, at::TensorList feats, const Needs& needs,
                               bool folded, cudaStream_t stream) {
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
    if (folded && own) {
      launch(folded_finish_kernel<Tin, Tin>, dim3(static_cast<unsigned>(info.N * v.size(1))), dim3(kThreads), stream,
             reinterpret_cast<const Tin*>(graw[m].const_data_ptr()), v.size(1), info.d,
             factor.const_data_ptr<Cmp<Tin>>(), reinterpret_cast<Tin*>(out.mutable_data_ptr()));
    } else if (folded) {
      launch(folded_finish_kernel<Cmp<Tin>, Tin>, dim3(static_cast<unsigned>(info.N * v.size(1))), dim3(kThreads),
             stream, graw[m].const_data_ptr<Cmp<Tin>>(), v.size(1), info.d, factor.const_data_ptr<Cmp<Tin>>(),
             reinterpret_cast<Tin*>(out.mutable_data_ptr()));
    } else {
      launch(normalize_backward_kernel<Tin>, dim3(static_cast<unsigned>(info.N * v.size(1))), dim3(kThreads), stream,
             graw[m].const_data_ptr<Cmp<Tin>>(), reinterpret_cast<const Tin*>(v.const_data_ptr<T>()), v.stride(0),
             v.stride(1), v.stride(2), v.size(1), info.d, p.norms[m].const_data_ptr<Cmp<Tin>>(),
             p.scales[m].const_data_ptr<Cmp<Tin>>(), p.scales[m].stride(0), factor.const_data_ptr<Cmp<Tin>>(), eps,
             eps > 0 ? 1.0 / eps : 0.0, reinterpret_cast<Tin*>(out.mutable_data_ptr<T>()));
    }
    grads.push_back(out.view(feats[m].sizes()));
  }
  return grads;
}

// ------------------------------------------------------------------ the loss over S

// ssa_loss_from_sqdist and its backward, each one block of one kernel (the ATen arithmetic
// of ssa_common.cpp is ~16 launches each way, on [N, M, M] values). The same operations in
// the same precision (S's dtype T; see dispatch_loss for ce's); the mean over
// the batch sums in fp64 in a fixed order. Divisions are multiplications by reciprocals
// computed on the host or with __frcp_rn (a division is a called routine).
template <typename T>
struct LossInputs {
  const T* S;
  int64_t sb, sm, sn;  // S's strides
  const T* ce;
  int64_t cm, cb;  // ce's strides ([M, N])
  int64_t N;
  int M;
  T beta;
  T lambda, inv_n, inv_d, cap;  // 1 / N, 1 / d
  bool rms, capped;
};

// rho[b, m, n] = expm1(beta * max(0, ce[m, b] - ce[n, b]))
template <typename T>
__device__ __forceinline__ T focal_rho(const LossInputs<T>& in, int64_t b, int m, int n) {
  const T diff = in.ce[m * in.cm + b * in.cb] - in.ce[n * in.cm + b * in.cb];
  return expm1((diff < 0 ? T(0) : diff) * in.beta);  // clamp_min: a NaN passes
}

// lambda * mean_b(rho * delta) of pair (m, n), valid in thread 0; uncapped. rho is selected
// to 0 where S == 0 (as ssa_common.cpp:rho_where_apart): an overflowed rho (inf) never meets
// a zero delta. rho is selected
// to 0 where S == 0 (as ssa_common.cpp:rho_where_apart): an overflowed rho (inf) never meets
// a zero delta.
template <typename T>
__device__ T pair_term(const LossInputs<T>& in, int m, int n, double* scratch) {
  double acc = 0;
  for (int64_t b = threadIdx.x; b < in.N; b += kThreads) {
    const T s = in.S[b * in.sb + m * in.sm + n * in.sn];
    const T delta = in.rms ? (s == 0 ? T(0) : sqrt(s) * in.inv_d) : s;
    acc += static_cast<double>((s == 0 ? T(0) : focal_rho(in, b, m, n)) * delta);
  }
  return static_cast<T>(block_sum(acc, scratch) * static_cast<double>(in.inv_n)) * in.lambda;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) loss_from_sqdist_kernel(const LossInputs<T> in, T* __restrict__ loss) {
  __shared__ double scratch[kThreads / 32];
  double total = 0;  // over the M^2 pairs in a fixed order (the diagonal's terms are 0)
  for (int m = 0; m < in.M; ++m)
    for (int n = 0; n < in.M; ++n) {
      const T term = pair_term(in, m, n, scratch);
      total += static_cast<double>(in.capped && term > in.cap ? in.cap : term);  // clamp_max: a NaN passes
    }
  if (threadIdx.x == 0) *loss = static_cast<T>(total);
}

// dL/dS[b, m, n] = g_mn lambda / N rho, times ("rms") 1 / (2 d sqrt(S)), 0 where S == 0;
// g_mn = g, or 0 where the pair's term is capped (clamp_max passes the gradient at
// equality, not where the term is NaN). rho is selected to 0 before it multiplies where
// g_mn is 0 or S == 0 (an overflowed rho, inf, times 0 would be NaN). grad_S is [N, M, M]
// contiguous.
template <typename T>
__global__ void __launch_bounds__(kThreads) loss_from_sqdist_backward_kernel(
    const LossInputs<T> in, const T* __restrict__ grad, T* __restrict__ grad_S) {
  __shared__ double scratch[kThreads / 32];
  __shared__ bool passes;
  const T g = *grad;
  for (int m = 0; m < in.M; ++m)
    for (int n = 0; n < in.M; ++n) {
      if (in.capped) {
        const T term = pair_term(in, m, n, scratch);
        if (threadIdx.x == 0) passes = term <= in.cap;
        __syncthreads();
      }
      const T g_mean = (in.capped && !passes ? T(0) : g) * in.lambda * in.inv_n;
      for (int64_t b = threadIdx.x; b < in.N; b += kThreads) {
        const T s = in.S[b * in.sb + m * in.sm + n * in.sn];
        const T g_delta = g_mean * (g_mean == 0 || s == 0 ? T(0) : focal_rho(in, b, m, n));
        grad_S[(b * in.M + m) * in.M + n] =
            !in.rms ? g_delta : (s == 0 ? T(0) : g_delta * in.inv_d * reciprocal(sqrt(s) * T(2)));
      }
      __syncthreads();  // `passes` is rewritten for the next pair
    }
}

template <typename T>
LossInputs<T> loss_inputs(const at::Tensor& S, const at::Tensor& ce, double beta, double lambda, Distance dist,
                             int64_t d, std::optional<double> pair_cap) {
  const int64_t N = S.size(0);
  return {S.const_data_ptr<T>(), S.stride(0), S.stride(1), S.stride(2), ce.const_data_ptr<T>(), ce.stride(0),
          ce.stride(1), N, static_cast<int>(S.size(1)), static_cast<T>(beta), static_cast<T>(lambda),
          static_cast<T>(1.0 / static_cast<double>(N)), static_cast<T>(1.0 / static_cast<double>(d)),
          static_cast<T>(pair_cap.value_or(0)), dist == Distance::Rms, pair_cap.has_value()};
}

// S's dtype T (float or double); ce is read in T too. (The ATen arithmetic computes rho in
// ce's compute dtype; for a ce of the other precision than S's that differs by rounding
// only, and an instance per mix spilled on sm_90.)
template <typename F>
void dispatch_loss(const at::Tensor& S, const at::Tensor& ce, F&& body) {
  const at::Tensor c = ce.to(S.scalar_type());
  if (S.scalar_type() == at::kDouble) body(double{}, c);
  else body(float{}, c);
}

// ------------------------------------------------------------------ ops

std::tuple<at::Tensor, at::Tensor> sqdist_forward(at::TensorList feats, double eps, c10::string_view algo,
                                                  bool /*directed: the autograd formula's*/, bool for_backward) {
  const FeatInfo info = check_feats(feats);
  check_eps(eps);
  const Algo a = resolve_algo(algo, info.d, info.channels, Backend::Cuda, info.dtype);
  const DeviceScope guard(feats[0].device());
  cudaStream_t stream = current_stream();
  const auto options = feats[0].options().dtype(info.compute_dtype);
  at::Tensor S, saved = new_saved(info, a, feats[0]);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, info.dtype, "mtut_sqdist_forward_cuda", [&] {
    using Out = Cmp<typename Raw<scalar_t>::type>;
    const Prepared p = prepare<scalar_t>(feats, info, eps, /*scaled_products=*/a == Algo::Direct, saved, a,
                                         /*from_saved=*/false, stream);
    S = a == Algo::Direct ? sqdist_direct<typename Raw<scalar_t>::type>(p, info, stream)
                          : gram_forward<Out>(p, info, saved, stream);
  });
  return {S, for_backward ? saved : at::empty({0}, options)};
}

std::vector<at::Tensor> sqdist_backward(at::TensorList feats, const at::Tensor& saved, const at::Tensor& weight,
                                        double eps, c10::string_view algo, const c10::List<bool>& needs_grad,
                                        int64_t students) {
  const FeatInfo info = check_feats(feats);
  check_weight(weight, info, feats[0]);
  check_eps(eps);
  const Needs needs = check_needs_grad(needs_grad, info);
  const int64_t slots = check_students(students, info);
  const Algo a = resolve_algo(algo, info.d, info.channels, Backend::Cuda, info.dtype);
  check_saved(saved, info, a, Backend::Cuda, feats[0]);
  const DeviceScope guard(feats[0].device());
  cudaStream_t stream = current_stream();
  const at::Tensor w = weight.to(info.compute_dtype);
  const Coefficients c = info.compute_dtype == at::kDouble ? pair_coefficients<double>(w, stream)
                                                           : pair_coefficients<float>(w, stream);
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, info.dtype, "mtut_sqdist_backward_cuda", [&] {
    // the forward's row norms and Gram blocks, or (not kept: an empty saved) both again
    const bool kept = saved.numel() > 0;
    at::Tensor buffer = kept ? saved : new_saved(info, a, feats[0]);
    const Prepared p = prepare<scalar_t>(feats, info, eps, /*scaled_products=*/true, buffer, a, kept, stream);
    using Tin = typename Raw<scalar_t>::type;
    std::vector<at::Tensor> g;
    const bool folded = a == Algo::Gram && student_products_apply(p, info);
    if (a == Algo::Direct) {
      g = direct_grad_raw<Tin>(p, c, info, needs, slots, stream);
    } else {
      if (!kept) gram_forward<Cmp<Tin>>(p, info, buffer, stream);  // (S is not needed)
      g = folded ? student_gram_grads<Operand<Tin>>(p, buffer, c, info, needs, slots, eps, stream)
                 : gram_grad_raw<Operand<Tin>>(p, buffer, c, info, needs, stream);
    }
    grads = finish<scalar_t>(g, p, c, info, eps, feats, needs, folded, stream);
  });
  return grads;
}

at::Tensor ssa_loss_from_sqdist(const at::Tensor& S, const at::Tensor& ce, double beta, double lambda,
                                c10::string_view distance, c10::SymInt d, std::optional<double> pair_cap) {
  const Distance dist = check_loss_from_sqdist(S, ce, beta, lambda, distance, d, pair_cap);
  const DeviceScope guard(S.device());
  at::Tensor loss = at::empty({}, S.options());
  dispatch_loss(S, ce, [&](auto t, const at::Tensor& cv) {
    using T = decltype(t);
    launch(loss_from_sqdist_kernel<T>, dim3(1), dim3(kThreads), current_stream(),
           loss_inputs<T>(S, cv, beta, lambda, dist, d.expect_int(), pair_cap), loss.mutable_data_ptr<T>());
  });
  return loss;
}

at::Tensor ssa_loss_from_sqdist_backward(const at::Tensor& grad, const at::Tensor& S, const at::Tensor& ce,
                                         double beta, double lambda, c10::string_view distance, c10::SymInt d,
                                         std::optional<double> pair_cap) {
  const Distance dist = check_loss_from_sqdist(S, ce, beta, lambda, distance, d, pair_cap);
  TORCH_CHECK_VALUE(grad.dim() == 0, "mtut: grad of the loss must be a scalar, got shape ", grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == S.device(), "mtut: grad is on ", grad.device(), " but S is on ", S.device());
  const DeviceScope guard(S.device());
  const at::Tensor g = grad.to(S.scalar_type());
  at::Tensor grad_S = at::empty(S.sizes(), S.options());
  dispatch_loss(S, ce, [&](auto t, const at::Tensor& cv) {
    using T = decltype(t);
    launch(loss_from_sqdist_backward_kernel<T>, dim3(1), dim3(kThreads), current_stream(),
           loss_inputs<T>(S, cv, beta, lambda, dist, d.expect_int(), pair_cap), g.const_data_ptr<T>(),
           grad_S.mutable_data_ptr<T>());
  });
  return grad_S;
}

}  // namespace
}  // namespace cuda
}  // namespace mtut

#ifdef MTUT_CUDA_EMULATE
// The emulated kernels take CPU tensors; they get their own namespace so that they
// never stand in for the real CPU kernels. Autocast is kept out of them as out of the
// real ops (csrc/mtut_ops.cpp), here for the CPU key the emulation runs on.
namespace mtut::cuda {
std::vector<std::string> take_gemm_log() { return std::exchange(gemm_log(), {}); }
// The GPU build's split rule and tile costs, for the test against bench/gpu_model.py.
std::vector<double> split_constants(at::ScalarType operand) {
  const TileCost t = tile_cost(operand);
  const SplitRule& r = kGpuSplitRule;
  return {double(r.min_k), double(r.align), double(r.tile_overhead), double(t.rows), double(t.cols), t.step_bytes,
          double(kMaxSlices)};
}
int64_t gram_splits_of(int64_t N, int64_t Cm, int64_t Cn, int64_t d, int64_t sms, at::ScalarType operand,
                       int64_t min_k, int64_t align, int64_t tile_overhead) {
  return gram_splits(N, Cm, Cn, d, sms, tile_cost(operand), {min_k, align, tile_overhead});
}
std::vector<int64_t> stack_strip_widths(int64_t N, int64_t M, int64_t C, int64_t d) {
  constexpr int64_t kGpuMinStackWidth = 256;
  return {stack_strip_width(N, M, C, d, kGpuStripBudget, kGpuMinStackWidth), kGpuStripBudget, kGpuMinStackWidth};
}
}  // namespace mtut::cuda

TORCH_LIBRARY(mtut_emulated, m) {
  m.def(mtut::schema::kSqdistForward);
  // The products run since the last call, as "operand x operand -> output" dtypes.
  m.def("take_gemm_log() -> str[]", &mtut::cuda::take_gemm_log);
  // The split-K rule of the Gram blocks, for the test against bench/gpu_model.py's copy.
  m.def("split_constants(ScalarType operand) -> float[]", &mtut::cuda::split_constants);
  m.def("gram_splits(int N, int Cm, int Cn, int d, int sms, ScalarType operand, int min_k, int align, "
        "int tile_overhead) -> int",
        &mtut::cuda::gram_splits_of);
  // The GPU build's stacked-strip width (student products), its budget and least width, likewise.
  m.def("stack_strip_width(int N, int M, int C, int d) -> int[]", &mtut::cuda::stack_strip_widths);
  m.def(mtut::schema::kSqdistBackward);
  m.def(mtut::schema::kLossFromSqdist);
  m.def(mtut::schema::kLossFromSqdistBackward);
}
TORCH_LIBRARY_IMPL(mtut_emulated, CPU, m) {
  m.impl("sqdist_forward", &mtut::cuda::sqdist_forward);
  m.impl("sqdist_backward", &mtut::cuda::sqdist_backward);
  m.impl("ssa_loss_from_sqdist", &mtut::cuda::ssa_loss_from_sqdist);
  m.impl("ssa_loss_from_sqdist_backward", &mtut::cuda::ssa_loss_from_sqdist_backward);
}
TORCH_LIBRARY_IMPL(mtut_emulated, AutocastCPU, m) {
  for (const char* name :
       {"sqdist_forward", "sqdist_backward", "ssa_loss_from_sqdist", "ssa_loss_from_sqdist_backward"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&mtut::without_autocast>());
}
#else
TORCH_LIBRARY_IMPL(mtut, CUDA, m) {
  m.impl("sqdist_forward", &mtut::cuda::sqdist_forward);
  m.impl("sqdist_backward", &mtut::cuda::sqdist_backward);
  m.impl("ssa_loss_from_sqdist", &mtut::cuda::ssa_loss_from_sqdist);
  m.impl("ssa_loss_from_sqdist_backward", &mtut::cuda::ssa_loss_from_sqdist_backward);
}
#endif
