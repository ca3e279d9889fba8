// Shared pieces of the fused recurrent kernels: activations, the zoneout + length-masking
// "carry" of a state component, and a parallel loop over (batch row, unit) ranges.
//
// Conventions used by every kernel file (lstm.cpp, gru.cpp, rnn.cpp):
//   * T steps, B batch rows, H hidden units, P = size of h (P = proj_size or H), G gate rows.
//   * x is (T, B, I), already reversed and input-dropped by lstmkit.recurrent; every tensor that
//     reaches the kernels is made contiguous first, so raw pointers with row-major indexing are
//     used inside the pointwise passes.
//   * Pointwise passes run over all (b, j) of one step in parallel (at::parallel_for, OpenMP),
//     in pieces that stay inside one batch row. A piece is worked through in a few short loops
//     over its span (add the recurrent part, activations vectorised with at::vec, combine), so
//     its data stays in L1 cache: one pass over memory per step.
//   * GEMMs go through ATen (at::mm / at::addmm, i.e. MKL or oneDNN on CPU).
//   * "keep" is the zoneout keep value of a unit: the per-step mask (training) or the rate
//     (evaluation: the expectation), 0 without zoneout.
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
#include <optional>
#include <vector>

namespace lstmkit {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;

// Elements of one pointwise pass handed to one task. The work per element is a few
// transcendental functions, so tasks can be much smaller than ATen's default 32768.
constexpr int64_t kGrain = 4096;

// Activations applied in place to a contiguous span (a piece of one gate block of one row),
// vectorised: sigmoid(x) = 1 / (1 + exp(-x)) as torch.sigmoid computes it, and tanh.
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

// dst[k] = tanh(src[k]) for k < n
template <typename T>
inline void tanh_to(const T* src, T* dst, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  at::vec::map([](Vec v) { return v.tanh(); }, dst, src, n);
}

// torch.lerp(start, end, w) with the same two-sided formula (exact at w = 0 and w = 1).
// Zoneout is lerp(new, old, keep); d/d new = 1 - keep, d/d old = keep.
template <typename T>
inline T lerp(T start, T end, T w) {
  return std::abs(w) < T(0.5) ? start + w * (end - start) : end - (end - start) * (T(1) - w);
}

// Run fn(b, j0, j1) over the row-major index range [0, rows * cols) in parallel, split into
// pieces that never cross a row, so the inner loop over j is contiguous.
template <typename F>
inline void parallel_rows(int64_t rows, int64_t cols, const F& fn) {
  at::parallel_for(0, rows * cols, kGrain, [&](int64_t begin, int64_t end) {
    int64_t idx = begin;
    while (idx < end) {
      const int64_t b = idx / cols;
      const int64_t j0 = idx - b * cols;
      const int64_t j1 = std::min(cols, j0 + (end - idx));
      fn(b, j0, j1);
      idx += j1 - j0;
    }
  });
}

// Argument helpers -------------------------------------------------------------------------

inline Tensor contig(const Tensor& t) { return t.contiguous(); }

inline OptTensor contig(const OptTensor& t) {
  if (!t || !t->defined()) return std::nullopt;
  return t->contiguous();
}

template <typename T>
inline const T* ptr_or_null(const OptTensor& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

inline void check_float(const Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, "lstmkit fused: ", name, " has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.device().is_cpu(), "lstmkit fused: ", name, " must be on the CPU");
}

inline void check_opt(const OptTensor& t, at::ScalarType dtype, const char* name) {
  if (t) check_float(*t, dtype, name);
}

// sum over the first two dims of a (T, B, N) tensor -> (N,)
inline Tensor sum_tb(const Tensor& t) { return t.reshape({-1, t.size(-1)}).sum(0); }

// (T, B, N) -> (T * B, N) (a view when possible)
inline Tensor rows(const Tensor& t) { return t.reshape({-1, t.size(-1)}); }

// Zoneout and length masking of one state component of size N, for one step. Forward:
//   z      = lerp(raw, prev, keep)         (zoneout; keep = 0 without it)
//   state  = valid ? z : prev              (the state is carried past a sequence's length)
//   output = valid ? z : 0                 (only for h)
// Backward, with g_state the gradient of the carried state and g_out that of the output:
//   g      = valid ? g_state + g_out : 0
//   g_raw  = (1 - keep) * g
//   g_prev = valid ? keep * g : g_state    (plus what the step's math adds through raw)
template <typename T>
struct Carry {
  const T* keep_mask = nullptr;  // (B, N) zoneout keep mask of this step, or nullptr
  T keep_rate = T(0);            // used where keep_mask is nullptr
  const bool* valid = nullptr;   // (B,) validity of this step, or nullptr (all valid)
  int64_t N = 0;

  inline T keep(int64_t b, int64_t j) const {
    return keep_mask ? keep_mask[b * N + j] : keep_rate;
  }
  inline bool ok(int64_t b) const { return valid ? valid[b] : true; }
};

// Per-call description of zoneout and lengths for one state component; `at(t)` gives the
// Carry of step t.
template <typename T>
struct CarrySeq {
  const T* keep_mask = nullptr;  // (T, B, N) or nullptr
  T keep_rate = T(0);
  const bool* valid = nullptr;   // (T, B) or nullptr
  int64_t B = 0, N = 0;

  CarrySeq(const OptTensor& mask, double rate, const OptTensor& valid_, int64_t B_, int64_t N_)
      : keep_mask(mask ? mask->data_ptr<T>() : nullptr),
        keep_rate(static_cast<T>(rate)),
        valid(valid_ ? valid_->data_ptr<bool>() : nullptr),
        B(B_),
        N(N_) {}

  inline Carry<T> at(int64_t t) const {
    Carry<T> c;
    c.keep_mask = keep_mask ? keep_mask + t * B * N : nullptr;
    c.keep_rate = keep_rate;
    c.valid = valid ? valid + t * B : nullptr;
    c.N = N;
    return c;
  }
};

// The h side of every step, forward: zoneout and length masking of the raw new h, writing
// the carried state, the output and (with recurrent dropout) h * h_mask, which is what the next
// step's recurrent GEMM reads.
template <typename T>
struct HForward {
  const T* prev;        // (B, P) h before the step
  T* next;              // (B, P) h after the step (carried state)
  T* y;                 // (B, P) output of the step
  T* hr;                // (B, P) next * h_mask, or nullptr without recurrent dropout
  const T* mask;        // (B, P) recurrent-dropout mask, or nullptr
  Carry<T> carry;
  int64_t P;

  inline void operator()(int64_t b, int64_t k, T raw) const {
    const int64_t e = b * P + k;
    const T z = lerp(raw, prev[e], carry.keep(b, k));
    const bool ok = carry.ok(b);
    const T h = ok ? z : prev[e];
    next[e] = h;
    y[e] = ok ? z : T(0);
    if (mask) hr[e] = h * mask[e];
  }
};

// The h side of every step, backward. On entry dh holds the gradient of the carried h after
// the step except what flows back through the next step's recurrent product, which is
// dhr = dA_{t+1} W_hh (the gradient of h * h_mask); the total is dh + dhr * h_mask.
// Returns the gradient of the raw new h and leaves in dh the gradient of h before the step
// through the carry (the family's math adds its own terms, e.g. z * dh for the GRU).
template <typename T>
struct HBackward {
  T* dh;                // (B, P)
  const T* dhr;         // (B, P) or nullptr (last step: nothing flows back yet)
  const T* mask;        // (B, P) recurrent-dropout mask, or nullptr
  const T* gy;          // (B, P) gradient of the output of the step
  Carry<T> carry;
  int64_t P;

  inline T operator()(int64_t b, int64_t k) const {
    const int64_t e = b * P + k;
    T gs = dh[e];
    if (dhr) gs += mask ? dhr[e] * mask[e] : dhr[e];
    const bool ok = carry.ok(b);
    const T keep = carry.keep(b, k);
    const T g = ok ? gs + gy[e] : T(0);
    dh[e] = ok ? keep * g : gs;
    return (T(1) - keep) * g;
  }
};

// Buffers of a state component over time: all T + 1 states when saving for backward, two
// alternating ones otherwise (inference).
struct StateSeq {
  Tensor buf;
  bool save;
  StateSeq(const Tensor& init, int64_t T, bool save_) : save(save_) {
    std::vector<int64_t> shape{save ? T + 1 : 2};
    for (auto s : init.sizes()) shape.push_back(s);
    buf = at::empty(shape, init.options());
    buf[0].copy_(init);
  }
  int64_t slot(int64_t t) const { return save ? t : (t & 1); }
  Tensor at(int64_t t) const { return buf[slot(t)]; }
  template <typename T>
  T* ptr(int64_t t) const {
    return buf.data_ptr<T>() + slot(t) * buf[0].numel();
  }
};

// Buffers of a per-step quantity: one per step when saving, a single scratch otherwise.
inline Tensor step_buffer(int64_t T, int64_t B, int64_t N, bool save, const at::TensorOptions& o) {
  return at::empty({save ? T : 1, B, N}, o);
}

template <typename T>
inline T* step_ptr(const Tensor& buf, int64_t t) {
  const int64_t s = buf.size(0) == 1 ? 0 : t;
  return buf.data_ptr<T>() + s * buf.size(1) * buf.size(2);
}

// x W_ih^T + bias for every step at once: one GEMM, (T, B, I) -> (T, B, G).
inline Tensor input_projection(const Tensor& x, const Tensor& w_ih, const Tensor& bias) {
  const auto T = x.size(0), B = x.size(1);
  Tensor xp = bias.defined() ? at::addmm(bias, x.reshape({T * B, x.size(2)}), w_ih.t())
                             : at::mm(x.reshape({T * B, x.size(2)}), w_ih.t());
  return xp.view({T, B, w_ih.size(0)});
}

// Layer normalisation (eps 1e-5, as torch.nn.LayerNorm) of what the variants with
// layer_norm=True normalise: the input product x W_ih^T (all steps at once), each step's
// recurrent product (StepNorm) and the LSTM cell. Forward and backward are ATen's own
// native_layer_norm kernels; y = (v - mean) * rstd * gain (+ bias), and backward is
//   dv = rstd * (dy g - mean(dy g) - v_hat * mean(dy g v_hat)),  dgain = sum dy v_hat.
constexpr double kLnEps = 1e-5;

// x W_ih^T for every step, then LN_ih with its gain and the (folded) biases as LN bias.
// Returns {xp (T, B, G), x W_ih^T (T*B, G), mean, rstd}: what backward needs.
inline std::vector<Tensor> input_projection_ln(const Tensor& x, const Tensor& w_ih,
                                               const Tensor& bias, const Tensor& gain) {
  const auto T = x.size(0), B = x.size(1), G = w_ih.size(0);
  Tensor xw = at::mm(x.reshape({T * B, x.size(2)}), w_ih.t());
  auto r = at::native_layer_norm(xw, {G}, gain, bias.defined() ? OptTensor(bias) : std::nullopt,
                                 kLnEps);
  return {std::get<0>(r).view({T, B, G}), xw, std::get<1>(r), std::get<2>(r)};
}

// dx, dW_ih and (with LN_ih) its gain's gradient from the gradients dA (T*B, G) of the
// projected input xp. xw, mean, rstd are from input_projection_ln, undefined without LN.
inline std::vector<Tensor> input_grads(const Tensor& dA2, const Tensor& x, const Tensor& w_ih,
                                       bool need_dx, const OptTensor& gain, const OptTensor& xw,
                                       const OptTensor& mean, const OptTensor& rstd) {
  const auto T = x.size(0), B = x.size(1);
  Tensor d = dA2, dgain;
  if (gain) {
    auto r = at::native_layer_norm_backward(dA2, *xw, {w_ih.size(0)}, *mean, *rstd, *gain,
                                            std::nullopt, {true, true, false});
    d = std::get<0>(r);
    dgain = std::get<1>(r);
  }
  Tensor dx = need_dx ? d.mm(w_ih).view({T, B, x.size(2)}) : Tensor();
  return {dx, d.t().mm(x.reshape({T * B, x.size(2)})), dgain};
}

// LN of one step's recurrent product u (B, N), without bias (the biases are added after it).
// Keeps u, mean and rstd of every step (one slot without saving) for backward. `on` is false
// for the variants without layer norm, where the product is used as it is.
struct StepNorm {
  bool on = false;
  Tensor gain;             // (N,)
  Tensor raw, mean, rstd;  // (T', B, N), (T', B, 1), (T', B, 1)

  StepNorm() = default;
  // forward: buffers for T steps (1 without saving)
  StepNorm(const OptTensor& gain_, int64_t T, int64_t B, int64_t N, bool save,
           const at::TensorOptions& o) {
    if (!gain_) return;
    on = true;
    gain = gain_->contiguous();
    const int64_t S = save ? T : 1;
    raw = at::empty({S, B, N}, o);
    mean = at::empty({S, B, 1}, o);
    rstd = at::empty({S, B, 1}, o);
  }
  // backward: what forward saved
  StepNorm(const OptTensor& gain_, const OptTensor& raw_, const OptTensor& mean_,
           const OptTensor& rstd_) {
    if (!gain_) return;
    on = true;
    gain = gain_->contiguous();
    raw = *raw_;
    mean = *mean_;
    rstd = *rstd_;
  }
  int64_t slot(int64_t t) const { return raw.size(0) == 1 ? 0 : t; }
  // where the recurrent GEMM of step t writes u
  Tensor raw_at(int64_t t) const { return raw[slot(t)]; }
  // LN(u_t) * gain, a new (B, N) tensor
  Tensor forward(int64_t t) const {
    const int64_t s = slot(t);
    auto r = at::native_layer_norm(raw[s], {raw.size(2)}, gain, std::nullopt, kLnEps);
    mean[s].copy_(std::get<1>(r));
    rstd[s].copy_(std::get<2>(r));
    return std::get<0>(r);
  }
  // gradient of u_t from the gradient of LN(u_t) * gain
  Tensor backward(int64_t t, const Tensor& d_out) const {
    auto r = at::native_layer_norm_backward(d_out.contiguous(), raw[t], {raw.size(2)}, mean[t],
                                            rstd[t], gain, std::nullopt, {true, false, false});
    return std::get<0>(r);
  }
  // gradient of the gain from the gradients of LN(u) * gain of every step, (T, B, N)
  Tensor gain_grad(const Tensor& d_out_all) const {
    return sum_tb(d_out_all * ((raw - mean) * rstd));
  }
};

// The recurrent input of step t for dW_hh: h_{t-1} * h_mask for every step, (T, B, P).
inline Tensor recurrent_inputs(const Tensor& h_all, int64_t T, const OptTensor& h_mask) {
  Tensor h = h_all.narrow(0, 0, T);
  return h_mask ? h * *h_mask : h;
}

}  // namespace lstmkit
