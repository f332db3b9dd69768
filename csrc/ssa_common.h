// Pieces shared by every device's kernels: input validation, the choice of
// algorithm, the channel normalization and its backward, and the small
// [N, M, M] arithmetic of the focal weight and the SSA loss. Everything here is
// written with ATen ops, so it runs on any device.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <vector>

namespace mtut {

enum class Algo { Direct, Gram };
enum class Distance { Rms, Fro2 };

// What the kernels need to know about a list of modality feature maps.
struct FeatInfo {
  int64_t N = 0;                  // batch
  int64_t M = 0;                  // modalities
  int64_t d = 0;                  // prod of the spatiotemporal dims
  std::vector<int64_t> channels;  // C_m
  at::ScalarType dtype;           // dtype of the inputs (all the same)
  at::ScalarType compute_dtype;   // float for float16/bfloat16/float32, double for float64
};

// Checks feats (>= 2 modalities, floating, same N, d, dtype and device) and returns their shape facts.
FeatInfo check_feats(at::TensorList feats);
void check_eps(double eps);
void check_ce(const at::Tensor& ce, const FeatInfo& info, const at::Tensor& like);
void check_weight(const at::Tensor& weight, const FeatInfo& info, const at::Tensor& like);
void check_loss_args(double beta, double lambda, std::optional<double> pair_cap);
Distance parse_distance(std::string_view distance);

// "direct", "gram", or "auto" resolved by the cost model (see choose_algo in ssa_common.cpp).
Algo resolve_algo(std::string_view algo, int64_t d, const std::vector<int64_t>& channels);

// The per-pair pieces of the SSA loss, from the pairwise squared distances S [N, M, M].
struct LossTerms {
  at::Tensor rho;     // [N, M, M] focal weights
  at::Tensor ddelta;  // [N, M, M] d delta / d S
  at::Tensor terms;   // [M, M] lambda * mean_b(rho * delta), capped
  at::Tensor active;  // [M, M] 1 where the cap lets the gradient through
};
// Checks every argument of ssa_loss / ssa_loss_backward; returns the shape facts.
FeatInfo check_loss_inputs(
    at::TensorList feats, const at::Tensor& ce, double beta, double lambda, c10::string_view distance, double eps,
    c10::string_view algo, std::optional<double> pair_cap);
LossTerms loss_terms(
    const at::Tensor& S, const at::Tensor& ce, double beta, double lambda, c10::string_view distance, int64_t d,
    std::optional<double> pair_cap);
// weight[b, m, n] = grad * lambda / N * rho * ddelta * active: what sqdist_backward takes.
at::Tensor ssa_backward_weight(const LossTerms& t, const at::Tensor& grad, double lambda, int64_t N);

// Row (channel) L2 normalization with ATen ops, for the explicit correlation (the loss
// kernels fold 1 / max(||x||, eps) into their products instead).
struct Normalized {
  at::Tensor xh;    // [N, C, d] contiguous, compute dtype, rows of unit norm (x / eps for rows of norm <= eps)
  at::Tensor norm;  // [N, C] row norms r
};
Normalized normalize_rows(const at::Tensor& feat, const FeatInfo& info, double eps);
// dL/dx = (g - xh <xh, g>) / r where r > eps, else g / eps, from g = dL/dxh [N, C, d];
// shaped like feat [N, C, *S] and in its dtype.
at::Tensor normalize_rows_backward(const at::Tensor& grad_xh, const Normalized& nx, double eps, const at::Tensor& feat);

// Device-agnostic ops: the explicit correlation (the only op that builds d x d), the
// focal weight, and the SSA loss forward (which calls pairwise_sqdist through the
// dispatcher). Each device brings pairwise_sqdist, sqdist_backward and ssa_loss_backward.
at::Tensor correlation(const at::Tensor& feat, double eps);
at::Tensor correlation_backward(const at::Tensor& grad, const at::Tensor& feat, double eps);
at::Tensor focal_weight(const at::Tensor& ce, double beta);
at::Tensor ssa_loss(
    at::TensorList feats, const at::Tensor& ce, double beta, double lambda, c10::string_view distance,
    double eps, c10::string_view algo, std::optional<double> pair_cap);

}  // namespace mtut
