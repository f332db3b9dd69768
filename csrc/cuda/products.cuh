// The products: at::bmm / at::baddbmm, and the pointer-array cuBLAS products whose
// pointers are built on the GPU.
#pragma once

#include "common.cuh"

namespace mtut {
namespace cuda {
namespace {

// ------------------------------------------------------------------ products

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
  if (sd == 1 && (sc >= d || C == 1))
    r = {true, true, C == 1 ? d : sc};
  else if (sc == 1 && (sd >= C || d == 1))
    r = {true, false, d == 1 ? C : sd};
  r.ok = r.ok && r.lead <= kIntMax && C <= kIntMax && d <= kIntMax;
  return r;
}

// A matrix operand of the pointer-array products: entry (i, j) at i lead + j (row_major) or
// at j lead + i.
struct Matrix {
  bool row_major;
  int64_t lead;
};
Matrix rows_matrix(const RowsLayout& l) { return {l.positions_contiguous, l.lead}; }  // the rows [C, d] of a map

// The alignment rule of the pointer-array products (pointer_product). cuBLAS reads their
// pointers on the GPU and cannot check them (the leading dimensions it sees on the host); its
// 16-bit and TF32 kernels load 16 bytes at a time, and a misaligned pointer is "misaligned
// address", which ends the CUDA context. Every pointer the pointer kernels form is a base plus
// a sample stride times the sample (plus a strip offset), so the bases, the sample strides
// (where there is more than one sample) and the offsets, in bytes, all multiples of 16 prove
// every pointer aligned: checked on the host before the product, and where it fails the
// caller takes its ATen path (note_fallback).
constexpr int64_t kAlign = 16;
struct AlignmentProof {
  bool ok = true;
  AlignmentProof& pointer(const void* p) { return bytes(reinterpret_cast<intptr_t>(p)); }
  AlignmentProof& bytes(int64_t v) {
    ok = ok && v % kAlign == 0;
    return *this;
  }
  // the rows [N, C, d] of an operand: its base and sample stride
  AlignmentProof& rows(const at::Tensor& x) {
    return pointer(x.const_data_ptr()).bytes(x.size(0) > 1 ? x.stride(0) * x.element_size() : 0);
  }
};

}  // namespace
}  // namespace cuda
}  // namespace mtut

#ifdef MTUT_CUDA_EMULATE
#include "emulated_products.h"  // test-only: the same products as CPU at::mm, logged
#else
namespace mtut {
namespace cuda {
namespace {

// a [N, p, k] @ b [N, k, q] -> [N, p, q] in `out` dtype (fp32 accumulation for 16-bit operands).
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  return a.scalar_type() == out ? at::bmm(a, b) : at::bmm(a, b, out);
}

// acc += a @ b, acc in fp32/fp64 (`out`); an undefined acc becomes a @ b (no zero fill).
void gemm_acc(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  if (!acc.defined()) {
    acc = gemm(a, b, out);
    return;
  }
  if (a.scalar_type() == acc.scalar_type())
    acc.baddbmm_(a, b);
  else
    at::baddbmm_out(acc, acc, a, b, acc.scalar_type());
}

// out = a @ b into a preallocated fp32/fp64 view.
void gemm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == out.scalar_type())
    at::bmm_out(out, a, b);
  else
    at::bmm_out(out, a, b, out.scalar_type());
}

cudaDataType_t cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return CUDA_R_64F;
    case at::kFloat:
      return CUDA_R_32F;
    case at::kHalf:
      return CUDA_R_16F;
    case at::kBFloat16:
      return CUDA_R_16BF;
    default:
      TORCH_CHECK(false, "mtut: internal: no cuBLAS type for ", t);
  }
}

// out_e [rows, cols] (row-major, rows out_lead apart; `accumulate`: +=) = left_e [rows, k]
// right_e [k, cols] for the entries [first, first + count) of `ptrs` ([3, total]: left_e,
// right_e, out_e); `in` operands, `out` output (fp32/fp64 accumulation: a 16-bit output is the
// fp32 result rounded once). The caller has proven every pointer aligned (AlignmentProof).
void pointer_product(const at::Tensor& ptrs, int64_t first, int64_t count, int64_t rows, int64_t cols, int64_t k,
                     Matrix left, Matrix right, bool accumulate, at::ScalarType in, at::ScalarType out,
                     int64_t out_lead = 0) {
  if (out_lead == 0) out_lead = cols;
  const int64_t total = ptrs.size(1);
  // Column-major, cuBLAS computes out_e^T [cols, rows] = right_e^T [cols, k] left_e^T [k, rows]:
  // a row-major operand is its transpose column-major (no op), the other one needs op T.
  const auto* p = reinterpret_cast<void* const*>(ptrs.const_data_ptr<int64_t>());
  const bool f64 = out == at::kDouble;
  const float one = 1, beta = accumulate ? 1.0f : 0.0f;
  const double one64 = 1, beta64 = accumulate ? 1.0 : 0.0;
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // on the current stream
  // A 16-bit output: the fp32 sum rounded once (cuBLAS may otherwise add split-K partials in
  // 16 bits), in the handle's math mode otherwise (torch's TF32 choice); restored after.
  const bool narrow = out == at::kBFloat16 || out == at::kHalf;
  cublasMath_t mode;
  TORCH_CUDABLAS_CHECK(cublasGetMathMode(handle, &mode));
  if (narrow)
    TORCH_CUDABLAS_CHECK(
        cublasSetMathMode(handle, static_cast<cublasMath_t>(mode | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  const cublasStatus_t status = cublasGemmBatchedEx(
      handle, right.row_major ? CUBLAS_OP_N : CUBLAS_OP_T, left.row_major ? CUBLAS_OP_N : CUBLAS_OP_T,
      static_cast<int>(cols), static_cast<int>(rows), static_cast<int>(k),
      f64 ? static_cast<const void*>(&one64) : &one, const_cast<const void**>(p + total + first), cuda_type(in),
      static_cast<int>(right.lead), const_cast<const void**>(p + first), cuda_type(in), static_cast<int>(left.lead),
      f64 ? static_cast<const void*>(&beta64) : &beta, const_cast<void**>(p + 2 * total + first), cuda_type(out),
      static_cast<int>(out_lead), static_cast<int>(count), f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT);
  if (narrow) TORCH_CUDABLAS_CHECK(cublasSetMathMode(handle, mode));  // before the status check can throw
  TORCH_CUDABLAS_CHECK(status);
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
#endif  // MTUT_CUDA_EMULATE
