// ssa_loss_from_sqdist and its backward, one single-block kernel each.
#pragma once

#include "common.cuh"

namespace mtut {
namespace cuda {
namespace {

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
// a zero delta.
template <typename T>
__device__ T pair_term(const LossInputs<T>& in, int m, int n, double* scratch) {
  double acc = 0;
  for (int64_t b = threadIdx.x; b < in.N; b += kThreads) {
    const T s = in.S[b * in.sb + m * in.sm + n * in.sn];
    const T delta = in.rms ? (s == 0 ? T(0) : sqrt(s) * in.inv_d) : s;
    if (s != 0) acc += static_cast<double>(focal_rho(in, b, m, n) * delta);
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
__global__ void __launch_bounds__(kThreads)
    loss_from_sqdist_backward_kernel(const LossInputs<T> in, const T* __restrict__ grad, T* __restrict__ grad_S) {
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
        const T rho = focal_rho(in, b, m, n);  // evaluated unconditionally: a branch around it spilled on sm_90
        const T g_delta = g_mean * (g_mean == 0 || s == 0 ? T(0) : rho);
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
  return {S.const_data_ptr<T>(),
          S.stride(0),
          S.stride(1),
          S.stride(2),
          ce.const_data_ptr<T>(),
          ce.stride(0),
          ce.stride(1),
          N,
          static_cast<int>(S.size(1)),
          static_cast<T>(beta),
          static_cast<T>(lambda),
          static_cast<T>(1.0 / static_cast<double>(N)),
          static_cast<T>(1.0 / static_cast<double>(d)),
          static_cast<T>(pair_cap.value_or(0)),
          dist == Distance::Rms,
          pair_cap.has_value()};
}

// S's dtype T (float or double); ce is read in T too. (The ATen arithmetic computes rho in
// ce's compute dtype; for a ce of the other precision than S's that differs by rounding
// only, and an instance per mix spilled on sm_90.)
template <typename F>
void dispatch_loss(const at::Tensor& S, const at::Tensor& ce, F&& body) {
  const at::Tensor c = ce.to(S.scalar_type());
  if (S.scalar_type() == at::kDouble)
    body(double{}, c);
  else
    body(float{}, c);
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
