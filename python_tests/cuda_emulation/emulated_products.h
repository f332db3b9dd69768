// Test-only: the products of csrc/cuda/products.cuh for the emulation (products.cuh includes
// this file in place of its cuBLAS / at::bmm code when MTUT_CUDA_EMULATE is defined). Each
// runs as CPU at::mm / at::bmm on operands upcast to the accumulation dtype (16-bit products
// are exact in fp32, as on the tensor cores) and records its operand and output dtypes.
#pragma once

namespace mtut {
namespace cuda {
namespace {

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

// a [N, p, k] @ b [N, k, q] -> [N, p, q] in `out` dtype (fp32 accumulation for 16-bit operands).
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  if (emulation::dry_run) return at::empty({a.size(0), a.size(1), b.size(2)}, a.options().dtype(out));
  record(a, b, out);
  return at::bmm(a.to(out), b.to(out));  // 16-bit products are exact in fp32, as on the tensor cores
}

// acc += a @ b, acc in fp32/fp64 (`out`); an undefined acc becomes a @ b (no zero fill).
void gemm_acc(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  if (!acc.defined()) {
    acc = gemm(a, b, out);
    return;
  }
  if (emulation::dry_run) return;
  record(a, b, acc.scalar_type());
  acc.baddbmm_(a.to(acc.scalar_type()), b.to(acc.scalar_type()));
}

// out = a @ b into a preallocated fp32/fp64 view.
void gemm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  if (emulation::dry_run) return;
  record(a, b, out.scalar_type());
  at::bmm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
}

// out_e [rows, cols] (row-major, rows out_lead apart; `accumulate`: +=) = left_e [rows, k]
// right_e [k, cols] for the entries [first, first + count) of `ptrs` ([3, total]: left_e,
// right_e, out_e); `in` operands, `out` output (fp32/fp64 accumulation: a 16-bit output is the
// fp32 result rounded once), as sliced_gram_product.
void pointer_product(const at::Tensor& ptrs, int64_t first, int64_t count, int64_t rows, int64_t cols, int64_t k,
                     Matrix left, Matrix right, bool accumulate, at::ScalarType in, at::ScalarType out,
                     int64_t out_lead = 0) {
  if (out_lead == 0) out_lead = cols;
  const int64_t total = ptrs.size(1);
  if (emulation::dry_run) return;
  record(in, in, out);
  const int64_t* p = ptrs.const_data_ptr<int64_t>();
  // what cuBLAS's 16-byte loads need, and a GPU would fault on ("misaligned address")
  for (int64_t e = first; e < first + count; ++e)
    TORCH_CHECK(p[e] % 16 == 0 && p[total + e] % 16 == 0 && p[2 * total + e] % 16 == 0,
                "emulated cuBLAS: misaligned address (entry ", e, ")");
  const auto options = at::TensorOptions().dtype(in);
  const auto strides = [](Matrix x) {
    return x.row_major ? std::vector<int64_t>{x.lead, 1} : std::vector<int64_t>{1, x.lead};
  };
  for (int64_t e = first; e < first + count; ++e) {
    const at::Tensor L = at::from_blob(reinterpret_cast<void*>(p[e]), {rows, k}, strides(left), options);
    const at::Tensor R = at::from_blob(reinterpret_cast<void*>(p[total + e]), {k, cols}, strides(right), options);
    at::Tensor G =
        at::from_blob(reinterpret_cast<void*>(p[2 * total + e]), {rows, cols}, {out_lead, 1}, options.dtype(out));
    const at::ScalarType acc = out == at::kDouble ? at::kDouble : at::kFloat;  // 16-bit products are exact in fp32
    const at::Tensor product = at::mm(L.to(acc), R.to(acc));                   // as on the tensor cores
    if (accumulate)
      G.add_(product);
    else
      G.copy_(product);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
