// The backward's products over the students' rows only, their pointers built on the GPU
// (gram: the normalization backward folded into the weighted blocks).
#pragma once

#include "backward.cuh"
#include "products.cuh"

namespace mtut {
namespace cuda {
namespace {

// ------------------------------------------------------------------ backward: the students' rows
//
// A (sample, modality) row gets gradient only where its weight row is non-zero: for the loss
// with M = 2, one network per sample (the one with the higher ce). Multiplying every row
// does M / L times the work for L students a sample; which rows those are is known on the GPU
// only (a host read of the weights would stall the host behind the networks' forward). So,
// where every modality has the same channel count and an operand layout cuBLAS reads alike,
// the backward's products are pointer-array products over L slots per sample, which
// student_pointers_kernel fills on the GPU: first the sample's students (rows with a weight
// neither 0 nor NaN, in modality order), then modalities that need a gradient but have none
// there (their rows are computed from whatever their operands hold and then overwritten: the
// last pass writes their 0, or for a NaN weight NaN, without reading). L is sqdist_backward's
// `students` (the loss's backward promises M - 1), at most the number of modalities that need
// a gradient; a student beyond it gets ref = NaN, i.e. a NaN gradient.
//   gram:   the pair form with the normalization backward folded into the weighted blocks
//           (folded_blocks_kernel), so that the products write dL/dX_m itself: per strip of
//           positions ONE product of K = M C per student over a stacked right operand
//           ([X_0; X_1 - X_0] for M = 2, else [X_m; X_n - X_m ...]), in the operand dtype.
//   direct: per strip of rows I one product graw_m (+)= X_m[:, I] E_m[I, :].
constexpr int kMaxStudentModalities = 8;  // slot lists are 3-bit fields of one word
struct StudentBases {
  // term (m, n): the left operand of sample b at left[m M + n] + b left_sample[m M + n], the
  // right one likewise (bytes); graw_m [N, C, d] (null where m needs no gradient)
  const char* left[kMaxStudentModalities * kMaxStudentModalities];
  const char* right[kMaxStudentModalities * kMaxStudentModalities];
  int64_t left_sample[kMaxStudentModalities * kMaxStudentModalities];
  int64_t right_sample[kMaxStudentModalities * kMaxStudentModalities];
  char* graw[kMaxStudentModalities];
};

// One thread per sample: its L slots, and for every slot k (modality m) and term j (n = m
// for j = 0, else the j-th other modality; `terms` of them) entry e = (j N + b) L + k of the
// pointer arrays: the left and right operands of (m, n), graw_m.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    student_pointers_kernel(const StudentBases bases, int64_t graw_sample, int64_t N, int M, int L, int terms,
                            T* __restrict__ ref, const void** left, const void** right, void** out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (b >= N) return;
  unsigned slots = 0, taken = 0;  // (bit fields, not arrays: no local memory)
  int used = 0;
  for (int m = 0; m < M; ++m) {
    if (bases.graw[m] == nullptr) continue;
    T& r = ref[m * N + b];
    if (r == T(0) || r != r) continue;  // gradient 0, or NaN: no product needed
    if (used < L) {
      slots |= static_cast<unsigned>(m) << (3 * used++);
      taken |= 1u << m;
    } else {
      r = std::numeric_limits<T>::quiet_NaN();  // beyond the caller's promise: NaN, never a wrong number
    }
  }
  for (int m = 0; m < M && used < L; ++m)
    if (bases.graw[m] != nullptr && !(taken >> m & 1u)) slots |= static_cast<unsigned>(m) << (3 * used++);
  const int64_t per_term = N * L;
  for (int k = 0; k < L; ++k) {
    const int m = static_cast<int>(slots >> (3 * k) & 7u);
    for (int j = 0; j < terms; ++j) {
      const int n = j == 0 ? m : (j - 1 < m ? j - 1 : j);
      const int q = m * M + n;
      const int64_t e = j * per_term + b * L + k;
      left[e] = bases.left[q] + b * bases.left_sample[q];
      right[e] = bases.right[q] + b * bases.right_sample[q];
      out[e] = bases.graw[m] + b * graw_sample;
    }
  }
}

// Whether the student products apply: at most kMaxStudentModalities modalities, one channel
// count, and operands cuBLAS reads with one operation and leading dimension.
bool student_products_apply(const Prepared& p, const FeatInfo& info) {
  if (info.M > kMaxStudentModalities) return false;
  const RowsLayout first = rows_layout(p.operands[0]);
  for (int64_t m = 0; m < info.M; ++m) {
    const RowsLayout l = rows_layout(p.operands[m]);
    if (info.channels[m] != info.channels[0] || !l.ok || l.positions_contiguous != first.positions_contiguous ||
        l.lead != first.lead)
      return false;
  }
  return true;
}

// The slots per sample (at most the modalities that need a gradient), the output buffers of
// those (graw in the compute dtype, or the gradient itself: `options`; emulated: 1, so that a
// student row without its products, NaN'd by the broken-promise rule, cannot pass for a row
// the rule left alone) and their bases.
int64_t student_graw(const FeatInfo& info, const Needs& needs, int64_t slots, const at::TensorOptions& options,
                     std::vector<at::Tensor>& g, StudentBases& bases) {
  const int64_t L = std::min<int64_t>(slots, std::count(needs.begin(), needs.end(), true));
  for (int64_t m = 0; m < info.M && L > 0; ++m) {
    if (!needs[m]) continue;
    g[m] = unwritten({info.N, info.channels[0], info.d}, options, 1.0);
    bases.graw[m] = static_cast<char*>(g[m].mutable_data_ptr());
  }
  return L;
}

// Fills `ptrs` [3, terms N L] for the bases (student_pointers_kernel); `graw_elem`: the
// element size of the outputs [N, C, d].
template <typename T>
at::Tensor student_pointers(const StudentBases& bases, const FeatInfo& info, int64_t L, int terms,
                            const Coefficients& c, int64_t graw_elem, cudaStream_t stream) {
  const int64_t N = info.N, total = terms * N * L;
  at::Tensor ptrs = at::empty({3, total}, c.ref.options().dtype(at::kLong));
  auto* arr = reinterpret_cast<void**>(ptrs.mutable_data_ptr<int64_t>());
  launch("student_pointers_kernel", student_pointers_kernel<T>,
         dim3(static_cast<unsigned>((N + kThreads - 1) / kThreads)), dim3(kThreads), stream, bases,
         info.channels[0] * info.d * graw_elem, N, static_cast<int>(info.M), static_cast<int>(L), terms,
         c.ref.mutable_data_ptr<T>(), const_cast<const void**>(arr), const_cast<const void**>(arr + total),
         arr + 2 * total);
  return ptrs;
}

// The normalization backward folded into the weighted blocks, so that the student products
// write dL/dX_m itself (no graw buffer, no pass over it). The pair form (docs/design.md §2):
// with f_mn = coef_mn / ref_m (n != m) and P_mm^(n) the kept P_mm read as P_mn is (its
// transpose for n < m: P_mn is then the kept P_nm transposed, and a computed P_mm is
// symmetric only up to rounding),
//   graw_m = A_m X_m + sum_{n != m} B'_mn (X_n - X_m),   B'_mn = f_mn P_mn diag(s_n^2),
//   A_m = sum_{n != m} f_mn (P_mn diag(s_n^2) - P_mm^(n) diag(s_m^2)).
// Each pair's two sides are formed alike before they are weighted, so a pair with X_m = X_n
// bit for bit (then P_mn = P_mm^(n)) adds exactly 0 to A_m, and its B'_mn multiplies rows
// X_n - X_m that are exactly 0 (stack_strip_kernel): the pair adds exactly nothing.
// With t_c = <x_c, graw_c> = sum_{n != m} f_mn sum_k ((P_mn[c, k] s_nk)^2 - (P_mm^(n)[c, k] s_mk)^2)
// (from the kept blocks, no pass over the maps), normalize_backward_kernel's
// dx_c = ref s_c^2 (graw_c - s_c^2 x_c t_c) (r_c > eps; else without the second term) is
// dx_m = B_m [X_m; X_n - X_m ...] with B_mn = ref s_c^2 B'_mn[c, k] (n != m) and
// B_mm = ref s_c^2 A_m[c, k], on its diagonal ref s_c^2 (A_m[c, c] - s_c^2 t_c), every entry
// computed in the compute dtype (the diagonal in fp64: its terms nearly cancel where graw_c
// lies along x_c) and rounded once to the operand dtype. (Bound: a rounded entry adds what
// the rounded weighted block adds before the projection, the diagonal at most
// u |<xh_c, dL/dxh_c>| |xh_c| more, which the projection's own error term covers:
// python_tests/error_bounds.py bf16_backward_bound.) One block per row (c, b) of modality m:
// row c of every B_mn at out + b out_stride + n block_step + c row_step (B_m = [B_m0 | B_m1 |
// ...], [C, M C] row-major: block_step C, row_step M C); rows of samples without weight
// (ref_m = 0) are left unwritten. The kept blocks P_ij (i <= j) of sample 0 are `blocks` +
// (their upper-triangle index) kept_step and the scales s_n `scales` + n C, `norm` the norms
// r_m (equal channel counts; no pointer arrays in the parameters: indexed at run time they
// were copied to the stack). (4 blocks per SM, as normalize_backward_kernel: otherwise ptxas
// spilled two registers.)
template <typename Top>
__global__ void __launch_bounds__(kThreads, 4)
    folded_blocks_kernel(const Cmp<Top>* __restrict__ blocks, int64_t kept_step, int64_t block_stride,
                         const Cmp<Top>* __restrict__ scales, int64_t s_ld, int64_t C, int M, int m, int64_t b0,
                         const Cmp<Top>* __restrict__ norm, double eps, const Cmp<Top>* __restrict__ factor,
                         const Cmp<Top>* __restrict__ ref, Top* __restrict__ out, int64_t out_stride,
                         int64_t block_step, int64_t row_step, bool shared) {
  using T = Cmp<Top>;
  __shared__ double scratch[kThreads / 32];
  __shared__ double t;
  const int64_t c = blockIdx.x, b = b0 + blockIdx.y;
  const T rf = ref[b];  // ref_m of sample b
  if (rf == T(0)) return;
  const T* f = factor + (b * M + m) * M;
  const T* sb = scales + b * s_ld;  // s_n of sample b at sb + n C
  const T* kept = blocks + b * block_stride;
  // row c of P_mn as the product reads it, entries `step` apart: the kept P_ij (i = min, j = max,
  // at index i M - i (i - 1) / 2 + j - i) read along its row c (n >= m) or its column c (n < m);
  // `of` = m reads P_mm in the orientation of n (P_mm^(n))
  const auto row = [&](int n, int of) {
    const int i = n < m ? n : m, j = n < m ? m : n;
    const T* P = kept + (i * M - i * (i - 1) / 2 + j - i) * kept_step;
    return of >= m ? P + c * C : P + c;
  };
  const auto step = [&](int n) { return n >= m ? int64_t(1) : C; };
  const T* sm = sb + m * C;
  const T sc = sm[c];
  const bool project = norm[b * s_ld + c] > eps;  // r_m of row c (the rule of normalize_backward)
  if (project) {                                  // (uniform over the block: the __syncthreads in block_sum are safe)
    double acc = 0;
    for (int n = 0; n < M; ++n) {
      if (n == m) continue;
      const T *pn = row(n, n), *pm = row(m, n), *s = sb + n * C;
      const int64_t st = step(n);
      double part = 0;
#pragma unroll 1
      for (int64_t k = threadIdx.x; k < C; k += kThreads) {
        const double v = static_cast<double>(pn[k * st]) * s[k], w = static_cast<double>(pm[k * st]) * sm[k];
        part += v * v - w * w;
      }
      acc += static_cast<double>(f[n]) * part;
    }
    const double total = block_sum(acc, scratch);
    if (threadIdx.x == 0) t = total;
    __syncthreads();
  }
  const T a = rf * sc * sc;
  Top* o = out + b * out_stride + c * row_step;
  // M = 2 shares one right operand [X_0; X_1 - X_0] (stack_strip_kernel for m = 0): modality 1's
  // X_1 = X_0 + (X_1 - X_0), so its B_1 = [A_1 | A_1 - B'_10]
  const bool swap = shared && m == 1;
  // (loops of few live values: the sm_80 build of one loop for both kept over 64 registers)
  if (!swap) {  // B_mn, n != m
    for (int n = 0; n < M; ++n) {
      if (n == m) continue;
      const T *pn = row(n, n), *s = sb + n * C;
      const int64_t st = step(n);
      const T fa = a * f[n];
      for (int64_t k = threadIdx.x; k < C; k += kThreads) {
        const T sk = s[k];
        o[n * block_step + k] = from_compute<Top>(fa * (pn[k * st] * (sk * sk)));
      }
    }
  }
#pragma unroll 1
  for (int64_t k = threadIdx.x; k < C; k += kThreads) {  // A_m off the diagonal (swap: and A_1 - B_10)
    if (k == c) continue;                                // the diagonal, below
    const T smk = sm[k];
    T diag = 0, pk = 0;
    for (int n = 0; n < M; ++n) {
      if (n == m) continue;
      const T sk = sb[n * C + k];
      const int64_t st = step(n);
      pk = row(n, n)[k * st] * (sk * sk);
      diag += f[n] * (pk - row(m, n)[k * st] * (smk * smk));
    }
    const T av = a * diag;
    if (swap) {
      o[k] = from_compute<Top>(av);
      o[block_step + k] = from_compute<Top>(av - a * f[0] * pk);  // (M = 2: pk is P_10's)
    } else {
      o[m * block_step + k] = from_compute<Top>(av);
    }
  }
  if (threadIdx.x == 0) {
    const double s2 = static_cast<double>(sc) * sc;
    const T pmc = row(m, m)[c];  // P_mm[c, c] (either orientation)
    double diag = 0;
    for (int n = 0; n < M; ++n) {
      if (n == m) continue;
      const double sn = sb[n * C + c];
      diag += static_cast<double>(f[n]) *
              (static_cast<double>(row(n, n)[c * step(n)]) * (sn * sn) - static_cast<double>(pmc) * s2);
    }
    diag -= project ? s2 * t : 0.0;
    const double av = static_cast<double>(a) * diag;
    if (swap) {
      const T sk = sb[c];  // s_0c: B'_10[c, c] as the loop forms it
      const T other = a * f[0] * (row(0, 0)[c * step(0)] * (sk * sk));
      o[c] = from_compute<Top>(static_cast<T>(av));
      o[block_step + c] = from_compute<Top>(static_cast<T>(av - static_cast<double>(other)));
    } else {
      o[m * block_step + c] = from_compute<Top>(static_cast<T>(av));
    }
  }
}

// The right operand of modality m's stacked product for one strip of positions (the pair
// form, folded_blocks_kernel): Xs[b, n C + c, i] = x_m[b, c, i0 + i] for n = m, else
// x_n[b, c, i0 + i] - x_m[b, c, i0 + i] (formed in the compute dtype, rounded once: exactly 0
// where the two maps are equal), i < width, rows `lead` apart; one block per row (b, n, c).
struct StackSources {
  const void* base[kMaxStudentModalities];
  int64_t sn[kMaxStudentModalities], sc[kMaxStudentModalities], sd[kMaxStudentModalities];  // elements
};

template <typename Tin>
__global__ void __launch_bounds__(kThreads)
    stack_strip_kernel(const StackSources src, int M, int m, int64_t C, int64_t i0, int64_t width, int64_t seg_len,
                       int64_t lead, Tin* __restrict__ out) {
  using T = Cmp<Tin>;
  // grid.x = N M C < 2^31, so 32-bit division (64-bit division is a called routine: a stack frame)
  const unsigned row = blockIdx.x, mc = static_cast<unsigned>(M * C);
  const unsigned b = row / mc, rest = row - b * mc, n = rest / static_cast<unsigned>(C);
  const int64_t c = rest - n * static_cast<unsigned>(C), sd = src.sd[n], sdm = src.sd[m];
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * seg_len, k1 = std::min(width, k0 + seg_len);  // (row_split)
  const Tin* x = static_cast<const Tin*>(src.base[n]) + b * src.sn[n] + c * src.sc[n] + i0 * sd;
  const Tin* xm = static_cast<const Tin*>(src.base[m]) + b * src.sn[m] + c * src.sc[m] + i0 * sdm;
  Tin* o = out + static_cast<int64_t>(row) * lead;
  int64_t i = k0 + threadIdx.x;
  if (static_cast<int>(n) == m) {
    for (; i + 3 * kThreads < k1; i += 4 * kThreads) {  // four loads in flight
      Tin v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = x[(i + u * kThreads) * sd];
#pragma unroll
      for (int u = 0; u < 4; ++u) o[i + u * kThreads] = v[u];
    }
    for (; i < k1; i += kThreads) o[i] = x[i * sd];
    return;
  }
  const auto diff = [](Tin p, Tin q) {
    return from_compute<Tin>(static_cast<T>(to_double<Tin>(p)) - static_cast<T>(to_double<Tin>(q)));
  };
  for (; i + 3 * kThreads < k1; i += 4 * kThreads) {  // eight loads in flight
    Tin v[4], w[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = x[(i + u * kThreads) * sd], w[u] = xm[(i + u * kThreads) * sdm];
#pragma unroll
    for (int u = 0; u < 4; ++u) o[i + u * kThreads] = diff(v[u], w[u]);
  }
  for (; i < k1; i += kThreads) o[i] = diff(x[i * sd], xm[i * sdm]);
}

// Positions per stacked strip: the most that keep the `groups` C rows of every sample's stacked
// operands (M per modality that needs a gradient) within kStripBudget entries, a multiple of
// 256 (the product's output tile width) where that is at least 256, but at least
// kMinStackWidth (many rows: thin strips would be launches, not products; a strip of 256
// positions is still far less than the fp32 buffer of every position it replaces), at most d.
int64_t stack_strip_width(int64_t N, int64_t groups, int64_t C, int64_t d, int64_t budget = kStripBudget,
                          int64_t min_width = kMinStackWidth) {
  int64_t width = budget / std::max<int64_t>(N * groups * C, 1);
  if (width >= 256) width = width / 256 * 256;
  return std::min(std::max(width, min_width), d);
}

// The bases the pointer kernel adds sample strides to (left, right, graw), checked against
// the alignment rule where the product is about to run: the caller's predicate
// (student_gram_aligned, direct_students_aligned) said they would pass.
void require_aligned(const StudentBases& bases, const FeatInfo& info, int64_t graw_elem) {
  AlignmentProof proof;
  const bool many = info.N > 1;
  proof.bytes(many ? info.channels[0] * info.d * graw_elem : 0);
  for (int q = 0; q < kMaxStudentModalities * kMaxStudentModalities; ++q)
    if (bases.left[q] != nullptr)
      proof.pointer(bases.left[q])
          .pointer(bases.right[q])
          .bytes(many ? bases.left_sample[q] : 0)
          .bytes(many ? bases.right_sample[q] : 0);
  for (const char* g : bases.graw) proof.pointer(g);
  TORCH_CHECK(proof.ok, "mtut: internal: a student product's pointer is not 16-byte aligned");
}

// The stacked right operands of student_gram_grads: one for M = 2 ([X_0; X_1 - X_0], shared),
// else one per modality that needs a gradient ([X_m; X_n - X_m ...]). (M = 2 with a shared
// operand is exact too: its one pair involves X_0. For M >= 3 a shared base would not be: a pair
// of two other modalities would enter as two rows of a product, not as their difference.)
int64_t stacked_operands(const FeatInfo& info, const Needs& needs) {
  return info.M == 2 ? 1 : std::count(needs.begin(), needs.end(), true);
}

// The entries of one modality's stacked strips, [N, M C, width], rounded up to 64 entries (so
// that every modality's starts 128-byte aligned, as W's blocks do).
int64_t stack_region(int64_t N, int64_t MC, int64_t width) { return (N * MC * width + 63) / 64 * 64; }

// Whether every pointer of student_gram_grads's products is proven aligned (AlignmentProof).
// Its own buffers are: W's blocks and samples start 64 entries apart, every modality's stacked
// strips too. What remains: the gradient's sample stride, the stacked strips' sample stride and
// the strips' offsets into the gradient.
bool student_gram_aligned(const Prepared& p, const FeatInfo& info, const Needs& needs) {
  const int64_t N = info.N, M = info.M, C = info.channels[0], d = info.d, e = c10::elementSize(p.operand);
  const bool many = N > 1;
  const int64_t width = stack_strip_width(N, M * stacked_operands(info, needs), C, d);
  AlignmentProof proof;
  proof.bytes(many ? C * d * e : 0).bytes(many ? M * C * width * e : 0);
  for (int64_t i0 = 0; i0 < d; i0 += width) proof.bytes(i0 * e);
  if (!proof.ok) note_fallback("gram students");
  return proof.ok;
}

// dL/dX_m of the gram backward through the student products (`slots` = L per sample), in the
// pair form with the normalization backward folded in (folded_blocks_kernel): per strip of
// positions the stacked right operands (stacked_operands: [X_0; X_1 - X_0] for M = 2, else
// [X_m; X_n - X_m ...] per modality m that needs a gradient; stack_strip_kernel), and ONE
// product per student, dx_m[:, strip] = B_m [C, M C] Xs [M C, width] (K = M C), writes the
// gradient's strip in the operand dtype: the gradient itself
// (bf16, float32, float64 inputs) or its fp32 buffer (float16). The rows without weight: finish
// (folded) writes them.
template <typename Top>
std::vector<at::Tensor> student_gram_grads(const Prepared& p, const at::Tensor& kept, const Coefficients& c,
                                           const FeatInfo& info, const Needs& needs, int64_t slots, double eps,
                                           cudaStream_t stream) {
  using T = Cmp<Top>;
  const int M = static_cast<int>(info.M);
  const int64_t N = info.N, C = info.channels[0], d = info.d, MC = M * C;
  std::vector<at::Tensor> g(M);
  StudentBases bases{};
  const int64_t L = student_graw(info, needs, slots, kept.options().dtype(p.operand), g, bases);
  if (L == 0) return g;
  // B_m [C, M C] row-major of every m that needs it. Every operand a product reads starts on a
  // 64-entry boundary (its pointer 128-byte aligned, as cuBLAS's vectorized loads like).
  const int64_t w_sample = (C * MC + 63) / 64 * 64;
  at::Tensor W = unwritten({M, N * w_sample}, kept.options().dtype(p.operand));
  // the kept blocks in upper-triangle order one kept_step apart, the scales C apart (saved's layout)
  const T* blocks = kept_block(kept, info.channels, 0, 0).const_data_ptr<T>();
  const int64_t kept_step = M > 1 ? kept_block(kept, info.channels, 0, 1).const_data_ptr<T>() - blocks : 0;
  for (int i = 0, index = 0; i < M; ++i)
    for (int j = i; j < M; ++j, ++index)
      TORCH_CHECK(kept_block(kept, info.channels, i, j).const_data_ptr<T>() == blocks + index * kept_step,
                  "mtut: internal: the kept blocks are not evenly spaced");
  const T* scales = p.scales[0].const_data_ptr<T>();
  for (int n = 0; n < M; ++n)
    TORCH_CHECK(p.scales[n].const_data_ptr<T>() == scales + n * C && p.scales[n].stride(0) == p.scales[0].stride(0),
                "mtut: internal: the row scales are not C apart");
  for (int m = 0; m < M; ++m) {
    if (!needs[m]) continue;
    for (int64_t b0 = 0; b0 < N; b0 += kMaxGrid)
      launch("folded_blocks_kernel", folded_blocks_kernel<Top>,
             dim3(static_cast<unsigned>(C), grid_dim(std::min(kMaxGrid, N - b0))), dim3(kThreads), stream, blocks,
             kept_step, kept.stride(0), scales, p.scales[0].stride(0), C, M, m, b0, p.norms[m].const_data_ptr<T>(), eps,
             c.factor.const_data_ptr<T>(), c.ref.select(0, m).const_data_ptr<T>(),
             static_cast<Top*>(W.select(0, m).mutable_data_ptr()), w_sample, C, MC, M == 2);
  }
  // the stacked right operands (stacked_operands), each region 64-entry aligned
  const bool shared = M == 2;
  const int64_t stacks = stacked_operands(info, needs);
  const int64_t width = stack_strip_width(N, M * stacks, C, d), region = stack_region(N, MC, width);
  at::Tensor Xs = unwritten({stacks, region}, kept.options().dtype(p.operand));
  StackSources src{};
  for (int m = 0; m < M; ++m) {
    const at::Tensor& x = p.operands[m];
    src.base[m] = x.const_data_ptr();
    src.sn[m] = x.stride(0), src.sc[m] = x.stride(1), src.sd[m] = x.stride(2);
  }
  const int64_t elem = Xs.element_size();
  for (int64_t i0 = 0; i0 < d; i0 += width) {
    const int64_t w = std::min(width, d - i0);
    const int64_t segs = row_split(N * MC, w, multiprocessors()), seg_len = (w + segs - 1) / segs;
    for (int m = 0, slot = 0; m < M; ++m) {
      if (!needs[m]) continue;
      const bool fresh = !shared || slot == 0;  // (shared: the first modality stacks, the other reads it)
      Top* xs = static_cast<Top*>(Xs.select(0, shared ? 0 : slot).mutable_data_ptr());
      ++slot;
      if (fresh)
        launch("stack_strip_kernel", stack_strip_kernel<Top>, dim3(static_cast<unsigned>(N * MC), grid_dim(segs)),
               dim3(kThreads), stream, src, M, shared ? 0 : m, C, i0, w, seg_len, width, xs);
      bases.left[m * M + m] = static_cast<const char*>(W.select(0, m).const_data_ptr());  // one term: all of B_m
      bases.left_sample[m * M + m] = w_sample * elem;
      bases.right[m * M + m] = reinterpret_cast<const char*>(xs);
      bases.right_sample[m * M + m] = MC * width * elem;
      bases.graw[m] = static_cast<char*>(g[m].mutable_data_ptr()) + i0 * elem;  // the strip's columns
    }
    const at::Tensor ptrs = student_pointers<T>(bases, info, L, 1, c, elem, stream);
    require_aligned(bases, info, elem);
    pointer_product(ptrs, 0, N * L, C, w, MC, {true, MC}, {true, width}, /*accumulate=*/false, p.operand, p.operand,
                    /*out_lead=*/d);
  }
  return g;
}

}  // namespace
}  // namespace cuda
}  // namespace mtut
