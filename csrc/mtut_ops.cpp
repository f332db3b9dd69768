// The schemas of every mtut op, in one place. Kernels live in cpu/ and cuda/;
// the fake (meta) implementations and autograd formulas are registered from Python
// (mtut_ops/_registration.py).
#include <torch/library.h>

#ifdef MTUT_PYTHON_MODULE
#include <Python.h>
// An empty Python module, so that `import mtut_ops._C` loads this library and
// runs the TORCH_LIBRARY registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

TORCH_LIBRARY(mtut, m) {
  // feat [N, C, *S] -> K [N, d, d], d = prod(S): the normalized spatiotemporal
  // correlation. The only op that builds a d x d matrix (for inspection and tests).
  m.def("correlation(Tensor feat, float eps) -> Tensor");
  m.def("correlation_backward(Tensor grad, Tensor feat, float eps) -> Tensor");

  // feats: M tensors [N, C_m, *S] -> S [N, M, M], S[b,m,n] = ||K_m[b] - K_n[b]||_F^2.
  m.def("pairwise_sqdist(Tensor[] feats, float eps, str algo) -> Tensor");
  // For each m: sum_n weight[:, m, n] * dS_mn/dX_m with X_n held constant
  // (the partial in the first argument only). Serves both pairwise_sqdist's
  // backward (weight = g + g^T) and ssa_loss's (student-only gradient).
  m.def("sqdist_backward(Tensor[] feats, Tensor weight, float eps, str algo) -> Tensor[]");

  // ce [M, N] per-sample classification losses -> rho [N, M, M],
  // rho[b,m,n] = exp(beta * max(0, ce[m,b] - ce[n,b])) - 1. Carries no gradient.
  m.def("focal_weight(Tensor ce, float beta) -> Tensor");

  // The MTUT SSA loss (a scalar): lambda_ * sum_{m != n} mean_b(rho_mn[b] * delta_mn[b]),
  // each pair term optionally capped at pair_cap; gradient into X_m only for term (m, n).
  m.def(
      "ssa_loss(Tensor[] feats, Tensor ce, float beta, float lambda_, str distance, float eps, "
      "str algo, float? pair_cap) -> Tensor");
  m.def(
      "ssa_loss_backward(Tensor grad, Tensor[] feats, Tensor ce, float beta, float lambda_, "
      "str distance, float eps, str algo, float? pair_cap) -> Tensor[]");
}
