// CUDA kernels of sqdist_forward and sqdist_backward (docs/design.md §2-§3).
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
// The parts, each a header of one concern, compiled as this one translation unit (the
// kernels and helpers stay in one anonymous namespace: internal linkage, no exported symbols).
#include "common.cuh"
#include "products.cuh"
#include "rows.cuh"
#include "gram.cuh"
#include "direct.cuh"
#include "backward.cuh"
#include "students.cuh"
#include "grads.cuh"
#include "loss.cuh"

namespace mtut {
namespace cuda {
namespace {

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

#ifndef MTUT_CUDA_EMULATE  // (the emulation registers them itself: python_tests/cuda_emulation)
TORCH_LIBRARY_IMPL(mtut, CUDA, m) {
  m.impl("sqdist_forward", &mtut::cuda::sqdist_forward);
  m.impl("sqdist_backward", &mtut::cuda::sqdist_backward);
  m.impl("ssa_loss_from_sqdist", &mtut::cuda::ssa_loss_from_sqdist);
  m.impl("ssa_loss_from_sqdist_backward", &mtut::cuda::ssa_loss_from_sqdist_backward);
}
#endif
