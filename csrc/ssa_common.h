// Pieces shared by every device's kernels: input validation, the choice of
// algorithm, the row normalization for the explicit correlation, and the
// device-agnostic ops (correlation, focal weight, the SSA loss over the squared
// distances) and the composites. Everything here is written with ATen ops, so it runs on
// any device; each device brings sqdist_forward and sqdist_backward (and the cuda backend
// a fused ssa_loss_from_sqdist and its backward).
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <string_view>
#include <tuple>
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
// ce: the per-sample losses [M, N] (sizes symbolic where the composites call it).
void check_ce(const at::Tensor& ce, const c10::SymInt& M, const c10::SymInt& N, const at::Tensor& like);
void check_weight(const at::Tensor& weight, const FeatInfo& info, const at::Tensor& like);
// needs_grad: one flag per modality (sqdist_backward skips the modalities without one).
using Needs = std::vector<char>;
Needs check_needs_grad(const c10::List<bool>& needs_grad, const FeatInfo& info);
// sqdist_backward's `students`: 0 (any number), or the most modalities per sample whose
// weight row (w[b, m, :]) is non-zero and not NaN, a promise the loss's own backward can
// make (M - 1: the modality with the lowest ce is nobody's student). The CUDA backward
// (equal channel counts) multiplies only that many rows per sample; a row beyond the
// promise gets a NaN gradient. Returns the slots per sample: min(students or M, M).
int64_t check_students(int64_t students, const FeatInfo& info);
void check_loss_args(double beta, double lambda, std::optional<double> pair_cap);
Distance parse_distance(std::string_view distance);

// "direct", "gram", or "auto" resolved by the FLOP rule of the device that runs it:
// direct while d (C + 2P) <= auto_factor(backend) C^2 (ssa_common.cpp says why). The
// rule does not depend on the dtype yet (a measured rule may).
enum class Backend { Cpu, Cuda };
double auto_factor(Backend backend);
Algo resolve_algo(std::string_view algo, int64_t d, const std::vector<int64_t>& channels, Backend backend,
                  at::ScalarType dtype);

// Row (channel) L2 normalization with ATen ops, for the explicit correlation (the loss
// kernels fold 1 / max(||x||, eps) into their products instead).
struct Normalized {
  at::Tensor xh;    // [N, C, d] contiguous, compute dtype (x / eps for rows of norm <= eps)
  at::Tensor norm;  // [N, C] row norms r
};
Normalized normalize_rows(const at::Tensor& feat, const FeatInfo& info, double eps);
// dL/dx = (g - xh <xh, g>) / r where r > eps, else g / eps, from g = dL/dxh [N, C, d];
// shaped like feat [N, C, *S] and in its dtype.
at::Tensor normalize_rows_backward(const at::Tensor& grad_xh, const Normalized& nx, double eps, const at::Tensor& feat);

// Device-agnostic ops, registered once (CompositeExplicitAutograd): the explicit
// correlation (the only op that builds d x d) and its backward, and the focal weight.
at::Tensor correlation(const at::Tensor& feat, double eps);
at::Tensor correlation_backward(const at::Tensor& grad, const at::Tensor& feat, double eps);
at::Tensor focal_weight(const at::Tensor& ce, double beta);

// The composites (CompositeImplicitAutograd): written with calls of the mtut ops through
// the dispatcher, so autograd, torch.compile, vmap and autocast see their parts.
// Symbolic-shape safe (sizes are read as SymInt).
//   pairwise_sqdist        = sqdist_forward(feats, directed=false)[0]
//   ssa_loss               = ssa_loss_from_sqdist(sqdist_forward(feats, directed=true)[0], ...)
at::Tensor pairwise_sqdist(at::TensorList feats, double eps, c10::string_view algo);
at::Tensor ssa_loss(at::TensorList feats, const at::Tensor& ce, double beta, double lambda, c10::string_view distance,
                    double eps, c10::string_view algo, std::optional<double> pair_cap);

// The loss arithmetic over S [N, M, M] (focal weight, distance, mean, lambda, cap, sum)
// and its gradient w.r.t. S, an op pair with an autograd formula (mtut_ops/_registration.py).
// Written here with ATen ops for every device (CompositeExplicitAutograd); the cuda
// backend replaces them with one kernel each (csrc/cuda/ssa_cuda.cu), because as ATen ops
// they are ~16 tiny launches each way. check_loss_from_sqdist is the arguments' check
// both share.
Distance check_loss_from_sqdist(const at::Tensor& S, const at::Tensor& ce, double beta, double lambda,
                                c10::string_view distance, const c10::SymInt& d, std::optional<double> pair_cap);
at::Tensor ssa_loss_from_sqdist(const at::Tensor& S, const at::Tensor& ce, double beta, double lambda,
                                c10::string_view distance, c10::SymInt d, std::optional<double> pair_cap);
at::Tensor ssa_loss_from_sqdist_backward(const at::Tensor& grad, const at::Tensor& S, const at::Tensor& ce, double beta,
                                         double lambda, c10::string_view distance, c10::SymInt d,
                                         std::optional<double> pair_cap);

// What sqdist_forward keeps for the backward with algorithm gram, [N, kept_gram_size]:
// the unscaled blocks P_mn = X_m X_n^T, n >= m, of each sample one after the other (m
// major), each starting at a multiple of kSavedAlign entries (every block's GEMM sees the
// same alignment; the padding is zero); kept_block is the [N, C_m, C_n] view of block (m, n).
// kSavedAlign is exposed as mtut_ops._C.SAVED_ALIGN (the fake implementations need the width).
constexpr int64_t kSavedAlign = 64;  // entries
int64_t kept_gram_size(const std::vector<int64_t>& channels);
at::Tensor kept_block(const at::Tensor& kept, const std::vector<int64_t>& channels, int64_t m, int64_t n);
// A sample's row of sqdist_forward's `saved` (for_backward): the cpu backend keeps the Gram
// blocks (algo gram; nothing for direct); the cuda backend keeps them too, followed by the
// row norms r and then the scales s = 1 / max(r, eps) of every modality (2 sum C_m entries,
// padded to kSavedAlign), so that its backward reads neither the inputs for them nor recomputes them.
struct SavedLayout {
  int64_t norms = 0;  // where r of modality 0 starts (after the kept blocks); r of m at norms + sum_{k<m} C_k
  int64_t rows = 0;   // sum C_m (cuda; 0 on cpu): the scales start at norms + rows
  int64_t width = 0;  // entries per sample; [norms + 2 rows, width) is padding (zero)
  int64_t scales() const { return norms + rows; }
  int64_t padding() const { return norms + 2 * rows; }
};
SavedLayout saved_layout(const std::vector<int64_t>& channels, Algo algo, Backend backend);
int64_t saved_width(const std::vector<int64_t>& channels, Algo algo, Backend backend);  // saved_layout().width
// Checks sqdist_backward's `saved`: empty, or what sqdist_forward returned for these feats.
void check_saved(const at::Tensor& saved, const FeatInfo& info, Algo algo, Backend backend, const at::Tensor& like);

// The schemas of the ops a device implements, declared by csrc/mtut_ops.cpp and, under its
// own namespace, by the test-only CUDA emulation (python_tests/cuda_emulation): one text for both.
namespace schema {
inline constexpr const char* kSqdistForward =
    "sqdist_forward(Tensor[] feats, float eps, str algo, bool directed, bool for_backward) -> (Tensor, Tensor)";
inline constexpr const char* kSqdistBackward =
    "sqdist_backward(Tensor[] feats, Tensor saved, Tensor weight, float eps, str algo, bool[] needs_grad, "
    "int students=0) -> Tensor[]";
inline constexpr const char* kLossFromSqdist =
    "ssa_loss_from_sqdist(Tensor S, Tensor ce, float beta, float lambda_, str distance, SymInt d, "
    "float? pair_cap) -> Tensor";
inline constexpr const char* kLossFromSqdistBackward =
    "ssa_loss_from_sqdist_backward(Tensor grad, Tensor S, Tensor ce, float beta, float lambda_, str distance, "
    "SymInt d, float? pair_cap) -> Tensor";
}  // namespace schema

// The boxed kernel every mtut op registers for the Autocast keys: autocast is switched
// off for the op and everything it calls (the kernels' own at::mm / at::bmm, the
// composites' arithmetic), so inside an autocast region an op runs as it does outside;
// the ops handle 16-bit inputs themselves.
void without_autocast(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack);

}  // namespace mtut
