// The CUDA kernels of the four ops (docs/design.md §2-§3): the GEMM-shaped work in cuBLAS,
// our kernels around it (row norms, fp64 square sums in a fixed order, the normalization
// backward, the loss over S). How and why, launch shapes, alignment and precision:
// docs/cuda.md. The parts below, each one concern, are this one translation unit.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// (one anonymous namespace: internal linkage, no exported symbols)
#include "backward.cuh"
#include "common.cuh"
#include "direct.cuh"
#include "grads.cuh"
#include "gram.cuh"
#include "loss.cuh"
#include "products.cuh"
#include "rows.cuh"
#include "students.cuh"

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
  const Coefficients c =
      info.compute_dtype == at::kDouble ? pair_coefficients<double>(w, stream) : pair_coefficients<float>(w, stream);
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, info.dtype, "mtut_sqdist_backward_cuda", [&] {
    // the forward's row norms and Gram blocks, or (not kept: an empty saved) both again
    const bool kept = saved.numel() > 0;
    at::Tensor buffer = kept ? saved : new_saved(info, a, feats[0]);
    const Prepared p = prepare<scalar_t>(feats, info, eps, /*scaled_products=*/true, buffer, a, kept, stream);
    using Tin = typename Raw<scalar_t>::type;
    std::vector<at::Tensor> g;
    const bool folded = a == Algo::Gram && student_products_apply(p, info) && student_gram_aligned(p, info, needs);
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
    launch("loss_from_sqdist_kernel", loss_from_sqdist_kernel<T>, dim3(1), dim3(kThreads), current_stream(),
           loss_inputs<T>(S, cv, beta, lambda, dist, d.expect_int(), pair_cap), loss.mutable_data_ptr<T>());
  });
  return loss;
}

at::Tensor ssa_loss_from_sqdist_backward(const at::Tensor& grad, const at::Tensor& S, const at::Tensor& ce, double beta,
                                         double lambda, c10::string_view distance, c10::SymInt d,
                                         std::optional<double> pair_cap) {
  const Distance dist = check_loss_from_sqdist(S, ce, beta, lambda, distance, d, pair_cap);
  TORCH_CHECK_VALUE(grad.dim() == 0, "mtut: grad of the loss must be a scalar, got shape ", grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == S.device(), "mtut: grad is on ", grad.device(), " but S is on ", S.device());
  const DeviceScope guard(S.device());
  const at::Tensor g = grad.to(S.scalar_type());
  at::Tensor grad_S = at::empty(S.sizes(), S.options());
  dispatch_loss(S, ce, [&](auto t, const at::Tensor& cv) {
    using T = decltype(t);
    launch("loss_from_sqdist_backward_kernel", loss_from_sqdist_backward_kernel<T>, dim3(1), dim3(kThreads),
           current_stream(), loss_inputs<T>(S, cv, beta, lambda, dist, d.expect_int(), pair_cap), g.const_data_ptr<T>(),
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
