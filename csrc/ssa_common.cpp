#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "ssa_common.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace mtut {

namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

at::ScalarType compute_dtype_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The mtut ops the composites call, through the dispatcher (so autograd, autocast,
// vmap and tracing see them).
const auto& sqdist_forward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mtut::sqdist_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList, double, c10::string_view, bool, bool)>();
  return op;
}

const auto& focal_weight_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mtut::focal_weight", "")
                       .typed<at::Tensor(const at::Tensor&, double)>();
  return op;
}

const auto& ssa_loss_from_sqdist_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mtut::ssa_loss_from_sqdist", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, double, c10::string_view,
                                         c10::SymInt, std::optional<double>)>();
  return op;
}

// Whether autograd will ask for the backward of an op over feats: then sqdist_forward
// also returns what its backward reuses.
bool for_backward(at::TensorList feats) {
  if (!c10::GradMode::is_enabled()) return false;
  for (const auto& f : feats)
    if (f.defined() && f.requires_grad()) return true;
  return false;
}

// d = prod of the spatiotemporal dims, symbolic under torch.compile's dynamic shapes.
c10::SymInt sym_positions(const at::Tensor& f) {
  c10::SymInt d = 1;
  for (int64_t k = 2; k < f.dim(); ++k) d = d * f.sym_size(k);
  return d;
}

}  // namespace

FeatInfo check_feats(at::TensorList feats) {
  TORCH_CHECK_VALUE(feats.size() >= 2, "mtut: feats must hold at least 2 modality feature maps [N, C_m, *S], got ",
                    feats.size());
  FeatInfo info;
  info.M = static_cast<int64_t>(feats.size());
  for (size_t i = 0; i < feats.size(); ++i) {
    const at::Tensor& f = feats[i];
    TORCH_CHECK_VALUE(f.defined(), "mtut: feats[", i, "] is an undefined tensor");
    TORCH_CHECK_TYPE(is_supported_float(f.scalar_type()), "mtut: feats[", i,
                     "] must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
                     f.scalar_type());
    TORCH_CHECK_VALUE(f.dim() >= 2, "mtut: feats[", i, "] must have shape [N, C, *S] (at least 2 dims), got shape ",
                      f.sizes());
    TORCH_CHECK_VALUE(f.numel() > 0, "mtut: feats[", i, "] is empty (shape ", f.sizes(),
                      "); N, C and every spatiotemporal dim must be >= 1");
    int64_t d = 1;
    for (int64_t k = 2; k < f.dim(); ++k) d *= f.size(k);
    if (i == 0) {
      info.N = f.size(0);
      info.d = d;
      info.dtype = f.scalar_type();
      info.compute_dtype = compute_dtype_of(info.dtype);
    } else {
      TORCH_CHECK_VALUE(f.device() == feats[0].device(), "mtut: feats[", i, "] is on ", f.device(),
                        " but feats[0] is on ", feats[0].device(), "; all feature maps must be on one device");
      TORCH_CHECK_TYPE(f.scalar_type() == info.dtype, "mtut: feats[", i, "] has dtype ", f.scalar_type(),
                       " but feats[0] has ", info.dtype, "; all feature maps must share one dtype");
      TORCH_CHECK_VALUE(f.size(0) == info.N, "mtut: feats[", i, "] has batch size N = ", f.size(0),
                        " but feats[0] has N = ", info.N);
      TORCH_CHECK_VALUE(d == info.d, "mtut: feats[", i, "] has d = prod(spatiotemporal dims) = ", d, " (shape ",
                        f.sizes(), ") but feats[0] has d = ", info.d);
    }
    info.channels.push_back(f.size(1));
  }
  return info;
}

void check_eps(double eps) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "mtut: eps must be a finite number >= 0, got ", eps);
}

void check_weight(const at::Tensor& weight, const FeatInfo& info, const at::Tensor& like) {
  TORCH_CHECK_TYPE(weight.is_floating_point(), "mtut: weight must be a floating-point tensor, got ",
                   weight.scalar_type());
  TORCH_CHECK_VALUE(
      weight.dim() == 3 && weight.size(0) == info.N && weight.size(1) == info.M && weight.size(2) == info.M,
      "mtut: weight must have shape [N, M, M] = [", info.N, ", ", info.M, ", ", info.M, "], got shape ",
      weight.sizes());
  TORCH_CHECK_VALUE(weight.device() == like.device(), "mtut: weight is on ", weight.device(), " but feats are on ",
                    like.device());
}

void check_ce(const at::Tensor& ce, const c10::SymInt& M, const c10::SymInt& N, const at::Tensor& like) {
  TORCH_CHECK_TYPE(ce.is_floating_point(), "mtut: ce must be a floating-point tensor of per-sample losses, got ",
                   ce.scalar_type());
  TORCH_CHECK_VALUE(ce.dim() == 2 && ce.sym_size(0) == M && ce.sym_size(1) == N, "mtut: ce must have shape [M, N] = [",
                    M, ", ", N, "] (one per-sample loss per modality and sample), got shape ", ce.sym_sizes());
  TORCH_CHECK_VALUE(ce.device() == like.device(), "mtut: ce is on ", ce.device(), " but feats are on ", like.device());
}

Needs check_needs_grad(const c10::List<bool>& needs_grad, const FeatInfo& info) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(needs_grad.size()) == info.M,
                    "mtut: needs_grad must hold one flag per modality (M = ", info.M, "), got ", needs_grad.size());
  Needs needs;
  for (bool v : needs_grad) needs.push_back(v);
  return needs;
}

int64_t check_students(int64_t students, const FeatInfo& info) {
  TORCH_CHECK_VALUE(students >= 0,
                    "mtut: students must be >= 0 (0: any number of modalities per sample; k: at most k "
                    "modalities per sample have a non-zero weight row), got ",
                    students);
  return students == 0 ? info.M : std::min(students, info.M);
}

void check_loss_args(double beta, double lambda, std::optional<double> pair_cap) {
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta >= 0, "mtut: beta must be a finite number >= 0, got ", beta);
  TORCH_CHECK_VALUE(std::isfinite(lambda) && lambda >= 0, "mtut: lambda_ must be a finite number >= 0, got ", lambda);
  TORCH_CHECK_VALUE(!pair_cap.has_value() || *pair_cap >= 0, "mtut: pair_cap must be None or a number >= 0, got ",
                    *pair_cap);
}

Distance parse_distance(std::string_view distance) {
  if (distance == "rms") return Distance::Rms;
  TORCH_CHECK_VALUE(distance == "fro2", "mtut: distance must be 'rms' or 'fro2', got '", std::string(distance), "'");
  return Distance::Fro2;
}

// algo="auto", one FLOP rule per device (exposed as mtut_ops._C.AUTO_FACTOR_CPU/_CUDA).
// Per sample, with C = sum_m C_m and P = M(M-1)/2 pairs:
//   direct: the upper triangle of every K_m, d^2/2 * C multiply-adds, plus P squared
//           differences per K entry          ~ d^2 (C + 2P)
//   gram:   the upper blocks of [X_1..X_M][X_1..X_M]^T, d C^2 / 2 multiply-adds  ~ d C^2
// The backward passes have the same ratio. Direct while d (C + 2P) <= factor * C^2:
//   CPU 1: both run at the GEMM rate, so the FLOPs decide (roughly direct while d <= C).
//   CUDA 0.5, PROVISIONAL (no GPU has measured it; `make gpu-check` times torch.bmm at
//        both algorithms' shapes): direct's products are whole d x d matrices (twice the
//        triangle it needs) that go through memory to the squared differences; gram's
//        blocks are small C_m x C_n products of long rows.
// Both pick direct at I3D Mixed_5c (d = 392, C = 2 x 1024) and gram at Mixed_4f
// (d = 3136, C = 2 x 832) and Mixed_3c (d = 25088, C = 2 x 480).
double auto_factor(Backend backend) { return backend == Backend::Cpu ? 1.0 : 0.5; }

Algo resolve_algo(std::string_view algo, int64_t d, const std::vector<int64_t>& channels, Backend backend,
                  at::ScalarType /*dtype: not used by the provisional rule*/) {
  if (algo == "direct") return Algo::Direct;
  if (algo == "gram") return Algo::Gram;
  TORCH_CHECK_VALUE(algo == "auto", "mtut: algo must be 'auto', 'direct' or 'gram', got '", std::string(algo), "'");
  int64_t C = 0;
  for (int64_t c : channels) C += c;
  const int64_t M = static_cast<int64_t>(channels.size());
  const double direct_cost = static_cast<double>(d) * (static_cast<double>(C) + static_cast<double>(M * (M - 1)));
  const double gram_cost = auto_factor(backend) * static_cast<double>(C) * static_cast<double>(C);
  return direct_cost <= gram_cost ? Algo::Direct : Algo::Gram;
}

namespace {
int64_t padded(int64_t n) { return (n + kSavedAlign - 1) / kSavedAlign * kSavedAlign; }
}  // namespace

int64_t kept_gram_size(const std::vector<int64_t>& channels) {
  int64_t q = 0;
  for (size_t m = 0; m < channels.size(); ++m)
    for (size_t n = m; n < channels.size(); ++n) q += padded(channels[m] * channels[n]);
  return q;
}

at::Tensor kept_block(const at::Tensor& kept, const std::vector<int64_t>& channels, int64_t m, int64_t n) {
  int64_t offset = 0;
  const int64_t M = static_cast<int64_t>(channels.size());
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = i; j < M; ++j) {
      if (i == m && j == n)
        return kept.narrow(1, offset, channels[m] * channels[n]).view({kept.size(0), channels[m], channels[n]});
      offset += padded(channels[i] * channels[j]);
    }
  TORCH_CHECK(false, "mtut: internal: no kept block (", m, ", ", n, ") for ", M, " modalities");
}

SavedLayout saved_layout(const std::vector<int64_t>& channels, Algo a, Backend backend) {
  SavedLayout l;
  l.norms = a == Algo::Gram ? kept_gram_size(channels) : 0;
  if (backend == Backend::Cuda)
    for (int64_t c : channels) l.rows += c;
  l.width = l.norms + (l.rows > 0 ? padded(2 * l.rows) : 0);
  return l;
}

int64_t saved_width(const std::vector<int64_t>& channels, Algo a, Backend backend) {
  return saved_layout(channels, a, backend).width;
}

void check_saved(const at::Tensor& saved, const FeatInfo& info, Algo a, Backend backend, const at::Tensor& like) {
  if (saved.numel() == 0) return;
  const int64_t width = saved_width(info.channels, a, backend);
  TORCH_CHECK_VALUE(width > 0 && saved.dim() == 2 && saved.size(0) == info.N && saved.size(1) == width &&
                        saved.scalar_type() == info.compute_dtype && saved.device() == like.device(),
                    "mtut: saved must be empty or what sqdist_forward returned for these feats with this algo ([N, ",
                    width, "] in ", info.compute_dtype, "), got shape ", saved.sizes(), " and ", saved.scalar_type());
}

Normalized normalize_rows(const at::Tensor& feat, const FeatInfo& info, double eps) {
  // reshape copies only when the layout requires it (non-contiguous inputs).
  at::Tensor x = feat.reshape({feat.size(0), feat.size(1), info.d}).to(info.compute_dtype).contiguous();
  at::Tensor norm = x.norm(2, {-1});
  at::Tensor xh = x / norm.clamp_min(eps).unsqueeze(-1);
  return {xh, norm};
}

at::Tensor normalize_rows_backward(const at::Tensor& grad_xh, const Normalized& nx, double eps,
                                   const at::Tensor& feat) {
  at::Tensor r = nx.norm.unsqueeze(-1);
  at::Tensor dot = (nx.xh * grad_xh).sum(-1, /*keepdim=*/true);
  at::Tensor dx = at::where(r > eps, (grad_xh - nx.xh * dot) / r, grad_xh / eps);
  return dx.reshape(feat.sizes()).to(feat.scalar_type());
}

at::Tensor correlation(const at::Tensor& feat, double eps) {
  const FeatInfo info = check_feats({feat, feat});
  check_eps(eps);
  const Normalized nx = normalize_rows(feat, info, eps);
  return at::bmm(nx.xh.transpose(1, 2), nx.xh).to(feat.scalar_type());
}

at::Tensor correlation_backward(const at::Tensor& grad, const at::Tensor& feat, double eps) {
  const FeatInfo info = check_feats({feat, feat});
  check_eps(eps);
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == info.N && grad.size(1) == info.d && grad.size(2) == info.d,
                    "mtut: grad must have shape [N, d, d] = [", info.N, ", ", info.d, ", ", info.d, "], got ",
                    grad.sizes());
  const Normalized nx = normalize_rows(feat, info, eps);
  at::Tensor g = grad.to(info.compute_dtype);
  // K = Xh^T Xh, so dXh = Xh (g + g^T).
  at::Tensor grad_xh = at::bmm(nx.xh, g + g.transpose(1, 2));
  return normalize_rows_backward(grad_xh, nx, eps, feat);
}

at::Tensor focal_weight(const at::Tensor& ce, double beta) {
  TORCH_CHECK_TYPE(ce.is_floating_point(), "mtut: ce must be a floating-point tensor of per-sample losses, got ",
                   ce.scalar_type());
  TORCH_CHECK_VALUE(ce.dim() == 2 && ce.sym_size(0) >= 2 && ce.sym_size(1) >= 1,
                    "mtut: ce must have shape [M, N] with M >= 2 modalities and N >= 1 samples, got shape ",
                    ce.sym_sizes());
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta >= 0, "mtut: beta must be a finite number >= 0, got ", beta);
  at::Tensor c = ce.to(compute_dtype_of(ce.scalar_type())).t();  // [N, M]
  at::Tensor diff = c.unsqueeze(2) - c.unsqueeze(1);             // [b, m, n] = ce[m, b] - ce[n, b]
  return (diff.clamp_min(0) * beta).expm1().contiguous();        // clamp_min keeps NaN
}

at::Tensor pairwise_sqdist(at::TensorList feats, double eps, c10::string_view algo) {
  return std::get<0>(sqdist_forward_op().call(feats, eps, algo, /*directed=*/false, for_backward(feats)));
}

Distance check_loss_from_sqdist(const at::Tensor& S, const at::Tensor& ce, double beta, double lambda,
                                c10::string_view distance, const c10::SymInt& d, std::optional<double> pair_cap) {
  check_loss_args(beta, lambda, pair_cap);
  const Distance dist = parse_distance(distance);
  TORCH_CHECK_TYPE(S.scalar_type() == at::kFloat || S.scalar_type() == at::kDouble,
                   "mtut: S must be a float32 or float64 tensor of squared distances, got ", S.scalar_type());
  TORCH_CHECK_VALUE(S.dim() == 3 && S.sym_size(1) == S.sym_size(2), "mtut: S must have shape [N, M, M], got shape ",
                    S.sym_sizes());
  TORCH_CHECK_VALUE(S.sym_size(0) >= 1 && S.sym_size(1) >= 2,
                    "mtut: S must have shape [N, M, M] with N >= 1 samples and M >= 2 modalities, got shape ",
                    S.sym_sizes());
  check_ce(ce, S.sym_size(1), S.sym_size(0), S);
  TORCH_CHECK_VALUE(d >= 1, "mtut: d (the number of positions) must be >= 1, got ", d);
  return dist;
}

namespace {

// delta(S): sqrt(S) / d ("rms") or S ("fro2"). For "rms" the derivative at S == 0 is
// defined as 0 (identical features: loss 0, gradient 0, never NaN): where() selects the
// constant 0 there, so the infinite derivative of sqrt at 0 is dropped, not multiplied
// by 0. A NaN S stays NaN, and so does its gradient.
at::Tensor rms_root(const at::Tensor& S) { return at::where(S == 0, at::zeros_like(S), S).sqrt(); }

// rho, 0 where S == 0. rho overflows to inf past beta * gap ~ 88 (float32) or ~ 709
// (float64); a term with S == 0 is 0 and sends no gradient whatever its weight, so the
// weight is selected away there rather than multiplied by 0 (inf * 0 would be NaN).
at::Tensor rho_where_apart(const at::Tensor& S, const at::Tensor& rho) {
  return at::where(S == 0, at::zeros_like(rho), rho);
}

// lambda * mean_b(rho * delta) of every ordered pair, [M, M] (the diagonal is 0). A term
// with an overflowed rho and S > 0 is inf (then capped, or the loss is inf).
at::Tensor pair_terms(const at::Tensor& S, const at::Tensor& rho, double lambda, Distance dist, const c10::SymInt& d) {
  const at::Tensor delta = dist == Distance::Rms ? rms_root(S).div(c10::Scalar(d)) : S;
  return (rho_where_apart(S, rho) * delta).mean(0) * lambda;
}

}  // namespace

at::Tensor ssa_loss_from_sqdist(const at::Tensor& S, const at::Tensor& ce, double beta, double lambda,
                                c10::string_view distance, c10::SymInt d, std::optional<double> pair_cap) {
  const Distance dist = check_loss_from_sqdist(S, ce, beta, lambda, distance, d, pair_cap);
  const at::Tensor rho = focal_weight_op().call(ce, beta).to(S.scalar_type());  // no gradient into ce
  at::Tensor terms = pair_terms(S, rho, lambda, dist, d);
  if (pair_cap.has_value()) terms = terms.clamp_max(*pair_cap);  // mmpose's cap; gradient through at equality
  return terms.sum();
}

// The derivative of the arithmetic above, operation by operation as autograd takes it
// (sum -> clamp_max: where(terms <= cap) -> * lambda -> mean: / N -> * rho, 0 where S == 0
// -> "rms": / d, then sqrt's grad / (2 sqrt)). A capped term's weight is selected to 0
// before rho multiplies it: an overflowed rho never meets a 0 there (inf * 0 = NaN).
at::Tensor ssa_loss_from_sqdist_backward(const at::Tensor& grad, const at::Tensor& S, const at::Tensor& ce, double beta,
                                         double lambda, c10::string_view distance, c10::SymInt d,
                                         std::optional<double> pair_cap) {
  const Distance dist = check_loss_from_sqdist(S, ce, beta, lambda, distance, d, pair_cap);
  TORCH_CHECK_VALUE(grad.dim() == 0, "mtut: grad of the loss must be a scalar, got shape ", grad.sym_sizes());
  const at::Tensor rho = focal_weight_op().call(ce, beta).to(S.scalar_type());
  at::Tensor g = grad.to(S.scalar_type()).expand_symint({S.sym_size(1), S.sym_size(2)});
  if (pair_cap.has_value()) {
    const at::Tensor terms = pair_terms(S, rho, lambda, dist, d);
    g = at::where(terms <= *pair_cap, g, at::zeros_like(g));
  }
  const at::Tensor g_mean = (g * lambda).div(c10::Scalar(S.sym_size(0))).unsqueeze(0);  // [1, M, M]
  const at::Tensor r = rho_where_apart(S, at::where(g_mean == 0, at::zeros_like(rho), rho));
  const at::Tensor g_delta = g_mean * r;  // [N, M, M]
  if (dist == Distance::Fro2) return g_delta;
  const at::Tensor g_root = g_delta.div(c10::Scalar(d));
  return at::where(S == 0, at::zeros_like(S), g_root / (rms_root(S) * 2));
}

at::Tensor ssa_loss(at::TensorList feats, const at::Tensor& ce, double beta, double lambda, c10::string_view distance,
                    double eps, c10::string_view algo, std::optional<double> pair_cap) {
  TORCH_CHECK_VALUE(feats.size() >= 2, "mtut: feats must hold at least 2 modality feature maps [N, C_m, *S], got ",
                    feats.size());
  // The cheap checks first: a bad ce or loss argument fails before the distances are computed.
  TORCH_CHECK_VALUE(feats[0].dim() >= 2, "mtut: feats[0] must have shape [N, C, *S] (at least 2 dims), got shape ",
                    feats[0].sym_sizes());
  check_ce(ce, static_cast<int64_t>(feats.size()), feats[0].sym_size(0), feats[0]);
  check_loss_args(beta, lambda, pair_cap);
  parse_distance(distance);
  // Term (m, n) sends gradient into X_m only: the directed distances.
  const at::Tensor S = std::get<0>(sqdist_forward_op().call(feats, eps, algo, /*directed=*/true, for_backward(feats)));
  return ssa_loss_from_sqdist_op().call(S, ce, beta, lambda, distance, sym_positions(feats[0]), pair_cap);
}

void without_autocast(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  op.callBoxed(stack);
}

}  // namespace mtut
