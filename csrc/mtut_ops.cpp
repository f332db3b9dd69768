// The schemas of every mtut op, in one place, and the registrations that serve every
// device: the device-agnostic ops, the composites, and autocast. The kernels of
// sqdist_forward and sqdist_backward live in cpu/ and cuda/ (and cuda/ fuses the loss over
// S, ssa_loss_from_sqdist and its backward, into one kernel each); the fake (meta)
// implementations, autograd formulas and vmap rules are registered from Python
// (mtut_ops/_registration.py).
#include "ssa_common.h"

#include <torch/library.h>

#ifdef MTUT_PYTHON_MODULE
#include <Python.h>
// A Python module, so that `import mtut_ops._C` loads this library and runs the
// TORCH_LIBRARY registrations below; it carries the constants ssa_common states once
// (the auto rule's factors, the saved layout's alignment) for mtut_ops/_validation.py.
namespace {
int add_float(PyObject* module, const char* name, double value) {
  PyObject* v = PyFloat_FromDouble(value);
  if (v == nullptr) return -1;
  const int rc = PyModule_AddObjectRef(module, name, v);
  Py_DECREF(v);
  return rc;
}
}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (add_float(module, "AUTO_FACTOR_CPU", mtut::auto_factor(mtut::Backend::Cpu)) < 0 ||
      add_float(module, "AUTO_FACTOR_CUDA", mtut::auto_factor(mtut::Backend::Cuda)) < 0 ||
      PyModule_AddIntConstant(module, "SAVED_ALIGN", static_cast<long>(mtut::kSavedAlign)) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
#endif

TORCH_LIBRARY(mtut, m) {
  // feat [N, C, *S] -> K [N, d, d], d = prod(S): the normalized spatiotemporal
  // correlation. The only op that builds a d x d matrix (for inspection and tests).
  m.def("correlation(Tensor feat, float eps) -> Tensor");
  m.def("correlation_backward(Tensor grad, Tensor feat, float eps) -> Tensor");

  // What each backend provides. feats: M tensors [N, C_m, *S] ->
  //   S [N, M, M], S[b,m,n] = ||K_m[b] - K_n[b]||_F^2 (compute dtype), and `saved`: what
  //   the backward reuses when for_backward is set, [N, saved_width] (ssa_common.h: the Gram
  //   blocks for algo gram, and on cuda the row norms and scales), else an empty tensor.
  // directed picks the autograd formula: false, S_mn = S_nm depends on both inputs
  // (weight g + g^T); true, term (m, n) sends gradient into X_m only (weight g).
  m.def(mtut::schema::kSqdistForward);
  // For each m with needs_grad[m]: sum_n weight[:, m, n] * dS_mn/dX_m with X_n held
  // constant (the partial in the first argument). An empty tensor for the others.
  m.def(mtut::schema::kSqdistBackward);

  // S [N, M, M] for all pairs, differentiable into every input (the symmetric distances).
  m.def("pairwise_sqdist(Tensor[] feats, float eps, str algo) -> Tensor");

  // ce [M, N] per-sample classification losses -> rho [N, M, M],
  // rho[b,m,n] = exp(beta * max(0, ce[m,b] - ce[n,b])) - 1. Carries no gradient.
  m.def("focal_weight(Tensor ce, float beta) -> Tensor");

  // The MTUT SSA loss (a scalar): lambda_ * sum_{m != n} mean_b(rho_mn[b] * delta_mn[b]),
  // each pair term optionally capped at pair_cap; gradient into X_m only for term (m, n).
  // ssa_loss_from_sqdist is its arithmetic over given squared distances S [N, M, M]
  // (d = the number of positions, for "rms").
  m.def(mtut::schema::kLossFromSqdist);
  // Its gradient w.r.t. S for the loss's gradient grad (a scalar), [N, M, M] (no gradient into ce).
  m.def(mtut::schema::kLossFromSqdistBackward);
  m.def(
      "ssa_loss(Tensor[] feats, Tensor ce, float beta, float lambda_, str distance, float eps, "
      "str algo, float? pair_cap) -> Tensor");
}

TORCH_LIBRARY_IMPL(mtut, CompositeExplicitAutograd, m) {
  m.impl("correlation", &mtut::correlation);
  m.impl("correlation_backward", &mtut::correlation_backward);
  m.impl("focal_weight", &mtut::focal_weight);
  m.impl("ssa_loss_from_sqdist", &mtut::ssa_loss_from_sqdist);
  m.impl("ssa_loss_from_sqdist_backward", &mtut::ssa_loss_from_sqdist_backward);
}

// The composites decompose for autograd and, under vmap, for the batching rules of
// their parts (without the FuncTorchBatchedDecomposition entry vmap would loop).
#define MTUT_COMPOSITES(m)                           \
  m.impl("pairwise_sqdist", &mtut::pairwise_sqdist); \
  m.impl("ssa_loss", &mtut::ssa_loss)

TORCH_LIBRARY_IMPL(mtut, CompositeImplicitAutograd, m) { MTUT_COMPOSITES(m); }

TORCH_LIBRARY_IMPL(mtut, FuncTorchBatchedDecomposition, m) { MTUT_COMPOSITES(m); }

// Inside an autocast region every mtut op runs as it does outside (see without_autocast).
#define MTUT_WITHOUT_AUTOCAST(m)                                                                                       \
  for (const char* name :                                                                                              \
       {"correlation", "correlation_backward", "sqdist_forward", "sqdist_backward", "pairwise_sqdist", "focal_weight", \
        "ssa_loss_from_sqdist", "ssa_loss_from_sqdist_backward", "ssa_loss"})                                          \
  m.impl(name, torch::CppFunction::makeFromBoxedFunction<&mtut::without_autocast>())

TORCH_LIBRARY_IMPL(mtut, AutocastCPU, m) { MTUT_WITHOUT_AUTOCAST(m); }

TORCH_LIBRARY_IMPL(mtut, AutocastCUDA, m) { MTUT_WITHOUT_AUTOCAST(m); }
