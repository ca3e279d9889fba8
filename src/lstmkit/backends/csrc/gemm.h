// The engine under the fused recurrent kernels (lstm.cpp, gru.cpp, rnn.cpp): packed-weight
// matrix products with a register-blocked micro-kernel, fast activations, and a team of threads
// that stays together for a whole scan.
//
// Products. Every product of the kernels is C[r, col(g, u)] (+)= sum_k A[r, k] * W(k, g, u): a
// weight matrix read as ng groups (gates) of U units each, whose output unit u of group g goes
// to column g * gsC + u of C. The weights are packed once per call into panels of NB units of
// every group (NB * ng = 48 or 64 columns, 3 or 4 SIMD vectors), K rows each, contiguous: one
// panel is one stream of vectors, read once per MR rows of A (the micro-kernel keeps an MR x NV
// tile of C in registers and does MR * NV fused multiply-adds per k). A panel covers whole gate
// columns of a block of units, so the pointwise work of those units can follow the product at
// once, on data still in L1/L2. Each element of C is one chain of multiply-adds in k order from
// its initial value, whatever the tiling: results do not depend on the batch rows, the number
// of rows in a call or the thread count (the kernels are deterministic and position-free).
//
// bfloat16: with AVX512-BF16 the weights are packed as k pairs and A is bfloat16; vdpbf16ps
// multiplies pairs and accumulates in float32. Without it the weights are packed in float32
// and A is widened on the fly (same results up to the pair summation order).
//
// Threads. run_team() starts the intra-op threads (OpenMP, torch.get_num_threads()) once for a
// whole scan; the kernels split each step's work statically (by unit panels, then rows) and meet
// at a barrier between dependent phases. Nothing inside a team calls into ATen.
#pragma once

#include "common.h"

#include <c10/util/BFloat16.h>
#include <omp.h>

#include <atomic>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define LSTMKIT_BF16_DP 1
#else
#define LSTMKIT_BF16_DP 0
#endif

namespace lstmkit {

using BF16 = c10::BFloat16;

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
constexpr int64_t vlen() {
  return Vec<T>::size();
}

// ------------------------------------------------------------------------------ activations
// float: exp with 20 ulp on AVX-512 (torch's exp_u20), a few times cheaper than SLEEF's; the
// activations of float32 are then good to ~1e-6 relative. double: SLEEF's exp and tanh.
template <typename T>
__attribute__((always_inline)) inline Vec<T> vexp(const Vec<T>& x) {
  return x.exp();
}
#if defined(CPU_CAPABILITY_AVX512)
// exp(x) = 2^n p(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts), p the degree-5
// minimax polynomial of torch's exp_u20, and 2^n applied by vscalefps (which saturates to 0
// and inf). x is first clamped to [-88.7, 88.7] with the operands ordered so that NaN passes
// through (_mm512_min_ps returns its second operand when one is NaN).
__attribute__((always_inline)) inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.7f), x);
  x = _mm512_max_ps(_mm512_set1_ps(-88.7f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.00828929059f), _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
template <>
__attribute__((always_inline)) inline Vec<float> vexp<float>(const Vec<float>& x) {
  return exp_avx512(x);
}
#endif

template <typename T>
__attribute__((always_inline)) inline Vec<T> vsigmoid(const Vec<T>& x) {
  return (Vec<T>(T(1)) + vexp<T>(x.neg())).reciprocal();
}
#if defined(CPU_CAPABILITY_AVX512)
// 1 / (1 + e^-x) with the reciprocal by rcp14 and one Newton step (~1 ulp) instead of a
// division; 1 + e^-x = inf (x < -88) gives 0 as the division does.
template <>
__attribute__((always_inline)) inline Vec<float> vsigmoid<float>(const Vec<float>& x) {
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.f), vexp<float>(x.neg()));
  const __m512 r = _mm512_rcp14_ps(d);
  // r (2 - d r)
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));
}
#endif

// tanh(x) = 2 sigmoid(2x) - 1 in float32 (absolute error ~1e-7; relative error grows below
// |x| ~ 1e-3, where tanh(x) ~ x is tiny anyway); SLEEF's tanh in double.
template <typename T>
__attribute__((always_inline)) inline Vec<T> vtanh(const Vec<T>& x) {
  return x.tanh();
}
#if defined(CPU_CAPABILITY_AVX512)
template <>
__attribute__((always_inline)) inline Vec<float> vtanh<float>(const Vec<float>& x) {
  const Vec<float> two(2.f);
  return two * vsigmoid<float>(x * two) - Vec<float>(1.f);
}
#endif

// torch.lerp(start, end, w), vectorised with the same two-sided formula.
template <typename T>
inline Vec<T> vlerp(const Vec<T>& start, const Vec<T>& end, const Vec<T>& w) {
  const Vec<T> diff = end - start;
  const Vec<T> lo = start + w * diff;
  const Vec<T> hi = end - diff * (Vec<T>(T(1)) - w);
  return Vec<T>::blendv(hi, lo, w.abs() < Vec<T>(T(0.5)));
}

template <typename T>
inline Vec<T> vload(const T* p, int64_t n) {
  return n == vlen<T>() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, n);
}
template <typename T>
inline void vstore(const Vec<T>& v, T* p, int64_t n) {
  if (n == vlen<T>()) {
    v.store(p);
  } else {
    v.store(p, n);
  }
}
// float -> bfloat16 (round to nearest even, as torch's conversion) for n elements
inline void store_bf16(const Vec<float>& v, BF16* p, int64_t n) {
  alignas(64) float tmp[vlen<float>()];
  v.store(tmp);
  for (int64_t k = 0; k < n; ++k) p[k] = BF16(tmp[k]);
}

// ------------------------------------------------------------------------------ team
struct Team {
  int tid = 0, nt = 1;
  void barrier() const {
    if (nt > 1) {
#pragma omp barrier
    }
  }
  // this thread's share [begin, end) of n items
  std::pair<int64_t, int64_t> share(int64_t n) const {
    return {n * tid / nt, n * (tid + 1) / nt};
  }
};

// Threads for a scan whose steps do about `work` multiply-adds each: the intra-op threads,
// or 1 where a step is too small for a barrier to pay off.
inline int team_size(int64_t work) {
  const int nt = at::get_num_threads();
  if (nt <= 1 || work < (int64_t(1) << 15) || omp_in_parallel()) return 1;
  return nt;
}

template <typename F>
void run_team(int nt, const F& fn) {
  if (nt <= 1) {
    fn(Team{0, 1});
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    Team team{omp_get_thread_num(), omp_get_num_threads()};
    fn(team);
  }
}

// ------------------------------------------------------------------------------ packing
enum class WKind { kFloat, kDouble, kBF16Pairs };

// A packed weight: see the top of this file. W(k, g, u) = src[g * gs + u * us + k * ks].
struct Packed {
  Tensor data;
  WKind kind = WKind::kFloat;
  // panel p starts `stride` elements after panel p - 1; its row k starts k * ldw elements in
  // (ldw = NV * L packed; a row-major matrix used in place has ldw = its row length)
  int64_t K = 0, ng = 0, U = 0, NB = 0, NV = 0, L = 0, panels = 0, stride = 0, ldw = 0;
  bool defined() const { return data.defined(); }
  int64_t nr() const { return NV * L; }
};

// Panel geometry for ng groups: NV vectors of L lanes per k.
inline void geometry(Packed& p, int64_t ng, int64_t L) {
  p.ng = ng;
  p.L = L;
  p.NV = ng == 3 ? 3 : 4;
  p.NB = p.NV / ng * L;
  TORCH_CHECK(p.NB * ng == p.NV * L, "lstmkit fused: unsupported gate count ", ng);
}

// Pack W given by (src, gs, us, ks) for K rows, ng groups of U units. `kind` picks the layout
// and the element type; src has the scalar type S.
template <typename S>
Packed pack_weight(const S* src, int64_t gs, int64_t us, int64_t ks, int64_t K, int64_t ng,
                   int64_t U, WKind kind) {
  Packed p;
  p.kind = kind;
  p.K = K;
  p.U = U;
  const int64_t L = kind == WKind::kDouble ? vlen<double>() : vlen<float>();
  geometry(p, ng, L);
  p.panels = (U + p.NB - 1) / p.NB;
  const int64_t NR = p.nr();
  const int64_t sub = p.NB / L;  // vectors per group
  if (kind == WKind::kBF16Pairs) {
    const int64_t K2 = (K + 1) / 2;
    p.stride = K2 * NR * 2;
    p.ldw = NR;
    p.data = at::empty({p.panels * p.stride}, at::TensorOptions().dtype(at::kBFloat16));
    BF16* d = p.data.data_ptr<BF16>();
    at::parallel_for(0, p.panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) {
        BF16* dq = d + q * p.stride;
        for (int64_t v = 0; v < p.NV; ++v) {
          const int64_t g = v / sub, s = v % sub;
          for (int64_t lane = 0; lane < L; ++lane) {
            const int64_t u = q * p.NB + s * L + lane;
            for (int64_t k = 0; k < 2 * K2; ++k) {
              const BF16 val = (u < U && k < K) ? BF16(src[g * gs + u * us + k * ks]) : BF16(0.f);
              dq[((k / 2) * NR + v * L + lane) * 2 + (k % 2)] = val;
            }
          }
        }
      }
    });
    return p;
  }
  p.stride = K * NR;
  p.ldw = NR;
  const auto dtype = kind == WKind::kDouble ? at::kDouble : at::kFloat;
  p.data = at::empty({p.panels * p.stride}, at::TensorOptions().dtype(dtype));
  auto fill = [&](auto* d) {
    using D = std::remove_pointer_t<decltype(d)>;
    at::parallel_for(0, p.panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q) {
        D* dq = d + q * p.stride;
        for (int64_t v = 0; v < p.NV; ++v) {
          const int64_t g = v / sub, s = v % sub;
          for (int64_t lane = 0; lane < L; ++lane) {
            const int64_t u = q * p.NB + s * L + lane;
            if (u < U) {
              const S* col = src + g * gs + u * us;
              for (int64_t k = 0; k < K; ++k) dq[k * NR + v * L + lane] = D(col[k * ks]);
            } else {
              for (int64_t k = 0; k < K; ++k) dq[k * NR + v * L + lane] = D(0);
            }
          }
        }
      }
    });
  };
  if (kind == WKind::kDouble) {
    fill(p.data.data_ptr<double>());
  } else {
    fill(p.data.data_ptr<float>());
  }
  return p;
}

// The kind of packing for weights of dtype `w` used with float/double compute.
inline WKind weight_kind(at::ScalarType w) {
  if (w == at::kDouble) return WKind::kDouble;
  if (w == at::kBFloat16 && LSTMKIT_BF16_DP) return WKind::kBF16Pairs;
  return WKind::kFloat;
}

// Pack `w` (a 2-D tensor) for C = A W^T: K = w.size(1) columns, ng groups of U rows each.
inline Packed pack_rows(const Tensor& w_, int64_t ng, WKind kind) {
  const Tensor w = w_.contiguous();
  const int64_t K = w.size(1), U = w.size(0) / ng;
  Packed out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "lstmkit_pack", [&] {
    out = pack_weight<scalar_t>(w.data_ptr<scalar_t>(), U * K, K, 1, K, ng, U, kind);
  });
  return out;
}

// A row-major (K, U) float/double matrix used as the W of C = A W in place (no copy): its
// panels are column blocks. Needs U to be a multiple of the panel width (see direct_ok).
inline Packed direct(const Tensor& w) {
  Packed p;
  p.kind = w.scalar_type() == at::kDouble ? WKind::kDouble : WKind::kFloat;
  p.K = w.size(0);
  p.U = w.size(1);
  geometry(p, 1, p.kind == WKind::kDouble ? vlen<double>() : vlen<float>());
  p.panels = p.U / p.NB;
  p.stride = p.NB;
  p.ldw = p.U;
  p.data = w;
  return p;
}
inline bool direct_ok(const Tensor& w) {
  const int64_t L = w.scalar_type() == at::kDouble ? vlen<double>() : vlen<float>();
  return w.is_contiguous() && w.dim() == 2 && w.size(1) % (4 * L) == 0 &&
         (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble);
}

// Pack `w` (a 2-D tensor, rows = K) for C = A W: one group of U = w.size(1) units.
inline Packed pack_cols(const Tensor& w_, WKind kind) {
  const Tensor w = w_.contiguous();
  const int64_t K = w.size(0), U = w.size(1);
  Packed out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.scalar_type(), "lstmkit_pack", [&] {
    out = pack_weight<scalar_t>(w.data_ptr<scalar_t>(), 0, 1, U, K, 1, U, kind);
  });
  return out;
}

// ------------------------------------------------------------------------------ micro-kernel
enum class Init { kZero, kLoad, kBias };

// Where the NV vectors of one panel go in a row of C: column offsets and valid lanes.
struct PanelCols {
  int64_t off[4];
  int64_t cnt[4];
};

inline PanelCols panel_cols(const Packed& W, int64_t panel, int64_t gsC) {
  PanelCols pc{};
  const int64_t sub = W.NB / W.L;
  for (int64_t v = 0; v < W.NV; ++v) {
    const int64_t g = v / sub, s = v % sub;
    const int64_t u0 = panel * W.NB + s * W.L;
    pc.off[v] = g * gsC + u0;
    pc.cnt[v] = std::max<int64_t>(0, std::min<int64_t>(W.L, W.U - u0));
  }
  return pc;
}

// The left operand: element (r, k) at A[r * lda + k], or with TRANS at A[r + k * lda].
// (Not inlined: inside big callers the compiler may spill the accumulators.)
template <typename T, typename TA, int MR, int NV, bool TRANS>
__attribute__((noinline)) void micro(int64_t K, const TA* A, int64_t lda, const T* W, int64_t ldw, T* C,
                  int64_t ldc, const PanelCols& pc, Init init, const T* bias) {
  constexpr int64_t L = vlen<T>();
  Vec<T> acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (init == Init::kZero || pc.cnt[v] == 0) {
        acc[r][v] = Vec<T>(T(0));
      } else {
        const T* src = init == Init::kLoad ? C + r * ldc + pc.off[v] : bias + pc.off[v];
        acc[r][v] = vload(src, pc.cnt[v]);
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec<T> w[NV];
    for (int v = 0; v < NV; ++v) w[v] = Vec<T>::loadu(W + k * ldw + v * L);
    for (int r = 0; r < MR; ++r) {
      const Vec<T> a(static_cast<T>(TRANS ? A[r + k * lda] : A[r * lda + k]));
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(a, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (pc.cnt[v]) vstore(acc[r][v], C + r * ldc + pc.off[v], pc.cnt[v]);
    }
  }
}

#if LSTMKIT_BF16_DP
// bfloat16 A and k-pair packed bfloat16 W, float32 C: vdpbf16ps.
template <int MR, int NV>
__attribute__((noinline)) void micro_bf16(int64_t K, const BF16* A, int64_t lda, const BF16* W, float* C,
                       int64_t ldc, const PanelCols& pc, Init init, const float* bias) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (init == Init::kZero || pc.cnt[v] == 0) {
        acc[r][v] = _mm512_setzero_ps();
      } else {
        const float* src = init == Init::kLoad ? C + r * ldc + pc.off[v] : bias + pc.off[v];
        acc[r][v] = vload<float>(src, pc.cnt[v]);
      }
    }
  }
  const int64_t K2 = K / 2;
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    __m512bh w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(W + (k2 * NV + v) * 32));
    }
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * k2, sizeof(pair));
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, w[v]);
    }
  }
  if (K % 2) {  // the last k alone: pair (a, 0); its packed partner row is zero
    __m512bh w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(W + (K2 * NV + v) * 32));
    }
    for (int r = 0; r < MR; ++r) {
      uint16_t bits;
      std::memcpy(&bits, A + r * lda + K - 1, sizeof(bits));
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(bits));
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, w[v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (pc.cnt[v]) vstore<float>(Vec<float>(acc[r][v]), C + r * ldc + pc.off[v], pc.cnt[v]);
    }
  }
}
#endif

// One call's operands: K rows of W from Wp (row stride ldw), A and C as in micro.
struct Call {
  const void* Wp;
  int64_t K, ldw;
  WKind kind;
};

template <typename T, typename TA, int MR, int NV, bool TRANS>
inline void micro_dispatch(const Call& c, const TA* A, int64_t lda, T* C, int64_t ldc,
                           const PanelCols& pc, Init init, const T* bias) {
#if LSTMKIT_BF16_DP
  if constexpr (std::is_same_v<T, float> && std::is_same_v<TA, BF16> && !TRANS) {
    if (c.kind == WKind::kBF16Pairs) {
      micro_bf16<MR, NV>(c.K, A, lda, static_cast<const BF16*>(c.Wp), C, ldc, pc, init, bias);
      return;
    }
  }
#endif
  micro<T, TA, MR, NV, TRANS>(c.K, A, lda, static_cast<const T*>(c.Wp), c.ldw, C, ldc, pc, init,
                              bias);
}

// The rows left after the full MR-row tiles, in one call of a smaller tile.
template <typename T, typename TA, int NV, int R, bool TRANS>
inline void tail_rows(int64_t rem, const Call& c, const TA* A, int64_t lda, T* C, int64_t ldc,
                      const PanelCols& pc, Init init, const T* bias) {
  if constexpr (R >= 1) {
    if (rem == R) {
      micro_dispatch<T, TA, R, NV, TRANS>(c, A, lda, C, ldc, pc, init, bias);
    } else {
      tail_rows<T, TA, NV, R - 1, TRANS>(rem, c, A, lda, C, ldc, pc, init, bias);
    }
  }
}

template <typename T, typename TA, int NV, int MR, bool TRANS>
inline void rows_of_panel(const Call& c, int64_t M, const TA* A, int64_t lda, T* C, int64_t ldc,
                          const PanelCols& pc, Init init, const T* bias) {
  const int64_t step = TRANS ? MR : MR * lda;  // A advance per tile
  int64_t m = 0;
  for (; m + MR <= M; m += MR) {
    micro_dispatch<T, TA, MR, NV, TRANS>(c, A + (m / MR) * step, lda, C + m * ldc, ldc, pc,
                                         init, bias);
  }
  if (M > m) {
    tail_rows<T, TA, NV, MR - 1, TRANS>(M - m, c, A + (m / MR) * step, lda, C + m * ldc, ldc, pc,
                                        init, bias);
  }
}

// Rows per micro-kernel call for NV vectors per row (MR x NV accumulators of 32 registers).
inline int64_t micro_rows(int64_t NV) { return NV == 3 ? 8 : 6; }

// C[0:M, cols of `panel`] (+)= A[0:M, k0:k1] W(panel)[k0:k1]: one panel, M rows, the rows
// [k0, k1) of W (all by default; A then starts at column k0, or row k0 with TRANS).
template <typename T, typename TA, bool TRANS = false>
inline void gemm_panel(const Packed& W, int64_t panel, int64_t M, const TA* A, int64_t lda, T* C,
                       int64_t ldc, int64_t gsC, Init init, const T* bias = nullptr,
                       int64_t k0 = 0, int64_t k1 = -1) {
  if (M <= 0) return;
  if (k1 < 0) k1 = W.K;
  const PanelCols pc = panel_cols(W, panel, gsC);
  const int64_t es = W.data.element_size();
  const int64_t koff = W.kind == WKind::kBF16Pairs ? 0 : k0 * W.ldw;  // pairs: whole K only
  const Call c{static_cast<const char*>(W.data.data_ptr()) + (panel * W.stride + koff) * es,
               k1 - k0, W.ldw, W.kind};
  const TA* Ak = TRANS ? A + k0 * lda : A + k0;
  if (W.NV == 3) {
    rows_of_panel<T, TA, 3, 8, TRANS>(c, M, Ak, lda, C, ldc, pc, init, bias);
  } else {
    rows_of_panel<T, TA, 4, 6, TRANS>(c, M, Ak, lda, C, ldc, pc, init, bias);
  }
}

// A set of batch rows: b0, b0 + stride, ... (count rows).
struct Rows {
  int64_t b0 = 0, stride = 1, count = 0;
  int64_t at(int64_t i) const { return b0 + i * stride; }
  // the rows b < n with b = k (mod nt): thread k's share under the row split
  static Rows owned(int64_t n, int64_t k, int64_t nt) {
    return Rows{k, nt, n > k ? (n - k + nt - 1) / nt : 0};
  }
};

// Work items of one product over `rows` rows: (panel, row range), panel-major, so that a thread
// keeps the same panels from step to step; rows are split only where there are too few panels
// to keep the team busy.
struct Items {
  int64_t panels = 0, chunks = 1, chunk = 0, rows = 0;
  Items(const Packed& W, int64_t rows_, int nt) : panels(W.panels), rows(rows_) {
    const int64_t mr = micro_rows(W.NV);
    const int64_t blocks = std::max<int64_t>(1, (rows + mr - 1) / mr);
    if (panels < 2 * nt) chunks = std::min<int64_t>(blocks, (2 * nt + panels - 1) / panels);
    chunk = ((blocks + chunks - 1) / chunks) * mr;
  }
  int64_t count() const { return panels * chunks; }
  int64_t panel(int64_t i) const { return i / chunks; }
  int64_t r0(int64_t i) const { return std::min(rows, (i % chunks) * chunk); }
  int64_t r1(int64_t i) const { return std::min(rows, (i % chunks + 1) * chunk); }
  // fn(rows, u0, u1) over items [i0, i1), with the units of consecutive panels that share
  // their rows merged into one range (of U units; NB per panel): the pointwise pass after the
  // products then runs once per row and range, not once per panel.
  template <typename F>
  void segments(int64_t i0, int64_t i1, int64_t U, int64_t NB, const F& fn) const {
    int64_t i = i0;
    while (i < i1) {
      int64_t e = i + 1;
      while (e < i1 && r0(e) == r0(i) && r1(e) == r1(i) && panel(e) == panel(e - 1) + 1) ++e;
      if (r1(i) > r0(i)) {
        fn(Rows{r0(i), 1, r1(i) - r0(i)}, panel(i) * NB, std::min(U, panel(e - 1) * NB + NB));
      }
      i = e;
    }
  }
};

// A whole product by the team (no barrier at the end): C = init + A W for M rows. Items are
// (block of rows, panel); with a long K (weight gradients: K = all the rows of a scan) each
// item walks K in blocks, so that its panel block and rows of A stay in cache (the sums are
// the same chains of multiply-adds either way).
template <typename T, typename TA, bool TRANS = false>
void gemm_team(const Team& team, const Packed& W, int64_t M, const TA* A, int64_t lda, T* C,
               int64_t ldc, int64_t gsC, Init init, const T* bias = nullptr) {
  const int64_t mr = micro_rows(W.NV);
  const int64_t kb = W.kind == WKind::kBF16Pairs ? W.K : 256;
  const int64_t block = TRANS || W.K > 1024 ? 8 * 6 * mr : 42 * mr;
  const int64_t nblocks = (M + block - 1) / block;
  const int64_t n = nblocks * W.panels;
  auto [i0, i1] = team.share(n);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t b = i / W.panels, p = i % W.panels;
    const int64_t r0 = b * block, r1 = std::min(M, r0 + block);
    const TA* Ar = TRANS ? A + r0 : A + r0 * lda;
    for (int64_t k0 = 0; k0 < W.K; k0 += kb) {
      gemm_panel<T, TA, TRANS>(W, p, r1 - r0, Ar, lda, C + r0 * ldc, ldc, gsC,
                               k0 ? Init::kLoad : init, bias, k0, std::min(W.K, k0 + kb));
    }
  }
}

// C (M, U) = S^T X for S (K, M) and X (K, U) row-major (a weight gradient: K = the rows of a
// scan), X used in place (direct). For each block of K a thread copies a slice of S transposed
// into tiles (MR rows x kb, k-major: what the micro-kernel reads) and runs its panels of X over
// it; the threads split the panels of X (each reads its part of the big operand once per K
// block), or the rows of C where the panels are too few. S should be the narrower operand.
template <typename T>
void gemm_tn(const T* S, int64_t M, const Packed& X, T* C) {
  const int64_t K = X.K, U = X.U;
  constexpr int MR = 6;
  const int64_t kb = 256;
  const int nt = team_size(M * K * U);
  const bool by_panels = X.panels >= nt;
  const int64_t mcap = 42 * MR;
  run_team(nt, [&](const Team& team) {
    int64_t p0 = 0, p1 = X.panels, m_lo = 0, m_hi = M;
    if (by_panels) {
      std::tie(p0, p1) = team.share(X.panels);
    } else {
      auto [t0, t1] = team.share((M + MR - 1) / MR);
      m_lo = std::min(M, t0 * MR);
      m_hi = std::min(M, t1 * MR);
    }
    if (p0 >= p1 || m_lo >= m_hi) return;
    std::vector<T> buf((std::min(mcap, m_hi - m_lo) + MR - 1) / MR * MR * kb);
    const int64_t NR = X.nr();
    std::vector<T> wbuf(kb * NR);  // one panel's K block, contiguous (X's rows are far apart)
    for (int64_t k0 = 0; k0 < K; k0 += kb) {
      const int64_t kl = std::min(kb, K - k0);
      const Init init = k0 ? Init::kLoad : Init::kZero;
      for (int64_t r0 = m_lo; r0 < m_hi; r0 += mcap) {
        const int64_t rows = std::min(mcap, m_hi - r0);
        for (int64_t m = 0; m < rows; m += MR) {  // buf[tile][k][r] = S[k0 + k][r0 + m + r]
          const int64_t w = std::min<int64_t>(MR, rows - m);
          T* dst = buf.data() + (m / MR) * kl * MR;
          const T* src = S + k0 * M + r0 + m;
          for (int64_t k = 0; k < kl; ++k) std::memcpy(dst + k * MR, src + k * M, w * sizeof(T));
        }
        for (int64_t p = p0; p < p1; ++p) {
          const PanelCols pc = panel_cols(X, p, U);
          const T* xs = X.data.data_ptr<T>() + p * X.stride + k0 * X.ldw;
          for (int64_t k = 0; k < kl; ++k) {
            std::memcpy(wbuf.data() + k * NR, xs + k * X.ldw, NR * sizeof(T));
          }
          const Call c{wbuf.data(), kl, NR, X.kind};
          int64_t m = 0;
          for (; m + MR <= rows; m += MR) {
            micro_dispatch<T, T, MR, 4, true>(c, buf.data() + (m / MR) * kl * MR, MR,
                                              C + (r0 + m) * U, U, pc, init, nullptr);
          }
          if (rows > m) {
            tail_rows<T, T, 4, MR - 1, true>(rows - m, c, buf.data() + (m / MR) * kl * MR, MR,
                                             C + (r0 + m) * U, U, pc, init, nullptr);
          }
        }
      }
    }
  });
}

template <typename T, typename TA, bool TRANS = false>
void gemm(const Packed& W, int64_t M, const TA* A, int64_t lda, T* C, int64_t ldc, int64_t gsC,
          Init init, const T* bias = nullptr) {
  run_team(team_size(M * W.K * W.U * W.ng), [&](const Team& team) {
    gemm_team<T, TA, TRANS>(team, W, M, A, lda, C, ldc, gsC, init, bias);
  });
}

}  // namespace lstmkit

namespace lstmkit {

// ------------------------------------------------------------------------------ batch layout
// The rows of a scan, packed as torch.nn.utils.rnn.PackedSequence packs them: the batch is
// sorted by length (descending) by the caller, step t has the n[t] rows [0, n[t]) still inside
// their sequences, at rows [off[t], off[t] + n[t]) of every per-step buffer (N rows in all).
// Without lengths n[t] = B and off[t] = t * B: the plain (T, B, .) layout.
struct Layout {
  int64_t T = 0, B = 0, N = 0;
  std::vector<int64_t> n, off;  // T + 1 entries; n[T] = 0, off[T] = N

  Layout(const OptTensor& batch_sizes, int64_t T_, int64_t B_) : T(T_), B(B_) {
    n.resize(T + 1);
    off.resize(T + 1);
    const int64_t* bs = nullptr;
    Tensor keep;
    if (batch_sizes) {
      keep = batch_sizes->to(at::kLong).contiguous();
      TORCH_CHECK(keep.dim() == 1 && keep.size(0) == T, "lstmkit fused: batch_sizes must have ",
                  T, " entries");
      bs = keep.data_ptr<int64_t>();
    }
    int64_t acc = 0;
    for (int64_t t = 0; t < T; ++t) {
      n[t] = bs ? bs[t] : B;
      TORCH_CHECK(n[t] >= 0 && n[t] <= (t ? n[t - 1] : B),
                  "lstmkit fused: batch_sizes must be non-increasing and at most the batch");
      off[t] = acc;
      acc += n[t];
    }
    n[T] = 0;
    off[T] = acc;
    N = acc;
  }
};

// Bytes of one core's L2 cache (1 MB where the system does not say).
inline int64_t l2_bytes() {
  static const int64_t bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? int64_t(v) : int64_t(1) << 20;
  }();
  return bytes;
}

// Whether a scan splits its batch rows over the team (each thread runs its own sequences, no
// barrier) rather than each step's units (a barrier per step): with enough rows per thread for
// the micro-kernel. A backward scan also takes the unit split where the recurrent weights
// (`weight_bytes`) overflow a core's L2 while a thread's share of them fits: its product
// dA_t W_hh has K = 4H, and the row split streams all of W_hh from L3 on every step and thread
// where the unit split keeps each thread's share in its L2. Measured at T=50, B=32, I=128,
// H=256 (W_hh 1 MB, L2 1 MB), training time over nn.LSTM's, 15 alternated calls, two threads:
// layer norm 1.30 with the backward by units and the forward by rows, 1.42 rows in both, 1.40
// units in both; plain 1.09, 1.10, 1.12. The forward keeps the row split: there the unit split
// was slower (inference 1.29 against 1.08 of nn.LSTM at the same shape), and at H=128
// (256 KB) and H=512 (4 MB) the row split is as fast or faster in both directions.
//
// set_scan_split overrides the rule for diagnostics and benchmarks, for forward scans (bits 0-1)
// and backward scans (bits 2-3) apart: 0 the rule, 1 the row split wherever every thread gets a
// row, 2 the unit split; returns the previous setting.
inline std::atomic<int>& scan_split_mode() {
  static std::atomic<int> mode{0};
  return mode;
}
inline int set_scan_split(int mode) {
  TORCH_CHECK(mode >= 0 && mode < 16 && (mode & 3) != 3 && (mode >> 2) != 3,
              "set_scan_split: bad mode ", mode);
  return scan_split_mode().exchange(mode);
}
inline bool split_rows(int64_t batch, int nt, int64_t weight_bytes, bool backward) {
  const int forced = (scan_split_mode().load(std::memory_order_relaxed) >> (backward ? 2 : 0)) & 3;
  if (forced) return nt > 1 && forced == 1 && batch >= nt;
  if (nt <= 1 || batch < 8 * nt) return false;
  if (!backward) return true;
  const int64_t fits = l2_bytes() * 3 / 4;
  return !(weight_bytes > fits && weight_bytes / nt <= fits);
}

// An uninitialised CPU tensor for a kernel buffer. From kPooledBytes up it comes from a cache
// of freed buffers (pool.cpp: their pages stay mapped, so no page faults on reuse; from 8 MB
// up allocated 2 MB-aligned with transparent huge pages asked for); smaller ones are at::empty.
constexpr size_t kPooledBytes = size_t(1) << 20;
Tensor empty_big(at::IntArrayRef sizes, const at::TensorOptions& o);
// {idle bytes, idle buffers, cap in bytes} of the cache, and releasing its idle buffers
// (returns the bytes released).
std::vector<int64_t> buffer_cache_info();
int64_t release_buffer_cache();
// Turn the cache on or off for new requests; returns the previous setting.
bool set_buffer_cache(bool enabled);

// The rows of ATen tensors that kernels fill by raw pointers.
template <typename T>
inline T* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
inline T* ptr(const OptTensor& t) {
  return t && t->defined() ? t->data_ptr<T>() : nullptr;
}

// Layer normalisation statistics of a row (two passes, vectorised; biased variance, eps 1e-5).
template <typename T>
inline void row_moments(const T* v, int64_t n, T& mean, T& rstd) {
  constexpr int64_t L = vlen<T>();
  auto sum_all = [](const Vec<T>& a) {
    return at::vec::vec_reduce_all<T>([](Vec<T>& x, Vec<T>& y) { return x + y; }, a);
  };
  Vec<T> s(T(0));
  for (int64_t k = 0; k < n; k += L) s = s + vload(v + k, std::min(L, n - k));
  mean = sum_all(s) / T(n);
  const Vec<T> m(mean);
  Vec<T> q(T(0));
  for (int64_t k = 0; k < n; k += L) {
    const int64_t c = std::min(L, n - k);
    const Vec<T> d = vload(v + k, c) - m;
    q = q + (c == L ? d * d : Vec<T>::set(Vec<T>(T(0)), d * d, c));
  }
  rstd = T(1) / std::sqrt(sum_all(q) / T(n) + T(kLnEps));
}

}  // namespace lstmkit

namespace lstmkit {
// The packing that goes with a left operand of type TA.
template <typename TA>
constexpr WKind kind_for() {
  if constexpr (std::is_same_v<TA, double>) {
    return WKind::kDouble;
  } else if constexpr (std::is_same_v<TA, BF16>) {
    return LSTMKIT_BF16_DP ? WKind::kBF16Pairs : WKind::kFloat;
  } else {
    return WKind::kFloat;
  }
}
}  // namespace lstmkit
