// Shared base of the C++ extension lstmkit._C: the SIMD capability, the ATen includes, and a
// few scalar-type-generic helpers (activations over a span, torch.lerp, the layer-norm eps).
// The fused scans build on gemm.h (products, threads, layout) and scan.h (what the three
// families share); step.cpp (the streaming step) uses the helpers here.
#pragma once

// The SIMD width of at::vec::Vectorized (used for exp and tanh, through SLEEF as torch's own
// kernels do): the widest the compiler targets. setup.py compiles with -march=native, so on
// the machine that builds (and runs) the extension this is AVX512 or AVX2 where available.
// It must be set before any ATen header includes the vec headers.
#if !defined(CPU_CAPABILITY)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace lstmkit {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;

// Activations applied in place to a contiguous span, vectorised: sigmoid(x) = 1 / (1 + exp(-x))
// as torch.sigmoid computes it, and tanh (SLEEF, as torch's own kernels).
template <typename T>
inline void sigmoid_(T* p, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  at::vec::map([](Vec v) { return (Vec(T(1)) + v.neg().exp()).reciprocal(); }, p, p, n);
}

template <typename T>
inline void tanh_(T* p, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  at::vec::map([](Vec v) { return v.tanh(); }, p, p, n);
}

// torch.lerp(start, end, w) with the same two-sided formula (exact at w = 0 and w = 1).
// Zoneout is lerp(new, old, keep); d/d new = 1 - keep, d/d old = keep.
template <typename T>
inline T lerp(T start, T end, T w) {
  return std::abs(w) < T(0.5) ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

// Layer normalisation: eps 1e-5, as torch.nn.LayerNorm.
constexpr double kLnEps = 1e-5;

// The gradients of layer-norm gains and of peepholes after the backward loop: for each column
// j of two (N, n) views a and b (unit column stride, any row stride),
//   out[j] = sum_r a[r, j] * (b[r, j] - mean[r]) * rstd[r]
// (mean and rstd per row, each optional: 0 and 1 when undefined). One pass over a and b,
// parallel over blocks of columns, each column summed in row order in double precision: the
// same bits for any number of threads, where the ATen expression ((b - mean) * rstd * a).sum(0)
// makes three temporaries of (N, n). With b undefined: the column sums of a, in the same way.
// Returns a (n) tensor of a's dtype (colsum.cpp).
Tensor col_dot(const Tensor& a, const Tensor& b, const OptTensor& mean = std::nullopt,
               const OptTensor& rstd = std::nullopt);

}  // namespace lstmkit
