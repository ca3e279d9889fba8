// What the three families' scans share on top of the engine (gemm.h): the input projection of
// every step (with LN_ih), the h side of a step (zoneout, carried state, output, the next
// product's operand) forward and backward, the weight-gradient products, and the arguments.
#pragma once

#include "gemm.h"

#include <tuple>
#include <utility>

namespace lstmkit {

enum SaveMode : int64_t { kInference = 0, kSave = 1, kStates = 2 };

// ------------------------------------------------------------------------------ projection
// gates = x W_ih^T + b, or LN_ih(x W_ih^T) g_ih + b, for the rows of a scan. When saving, all
// rows at once (and x W_ih^T, mean, rstd for the LN backward); without saving, chunks of about
// 1 MB of gate rows, each projected just before its steps run (still in cache, and no buffer
// of the whole scan to fault in).
template <typename T, typename TA>
struct InProj {
  const Layout* lay = nullptr;
  const Packed* W = nullptr;
  const TA* x = nullptr;  // (N, I)
  int64_t I = 0, G = 0, H = 0;  // gate row length G, gate block H (column stride of a group)
  const T* bias = nullptr;      // (G) or null
  const T* g_ih = nullptr;      // LN_ih gain or null
  T* gates = nullptr;           // gate rows (all rows, or one chunk)
  T* xw = nullptr;              // (N, G) with LN_ih when saving
  T *mean = nullptr, *rstd = nullptr;
  std::vector<int64_t> gofs;   // per step: packed row of the first row of the gate buffer
  std::vector<int64_t> gnext;  // per step: the end of its chunk (a step)

  int64_t grow(int64_t t, int64_t b) const { return lay->off[t] + b - gofs[t]; }
  bool chunk_starts(int64_t t) const { return t == 0 || gnext[t - 1] == t; }

  void plan(bool chunked) {
    gofs.assign(lay->T, 0);
    gnext.assign(lay->T, lay->T);
    if (!chunked) return;
    const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 18) / G);
    int64_t t = 0;
    while (t < lay->T) {
      int64_t e = t + 1;
      while (e < lay->T && lay->off[e + 1] - lay->off[t] <= rows) ++e;
      for (int64_t k = t; k < e; ++k) {
        gofs[k] = lay->off[t];
        gnext[k] = e;
      }
      t = e;
    }
  }

  // Allocate the buffers (save: all rows) and return {gates, xw, mean, rstd}.
  std::vector<Tensor> allocate(bool save, const at::TensorOptions& o) {
    plan(!save);
    int64_t rows = lay->N;
    if (!save) {
      rows = 0;
      for (int64_t t = 0; t < lay->T; ++t) rows = std::max(rows, lay->off[gnext[t]] - lay->off[t]);
    }
    std::vector<Tensor> out{empty_big({rows, G}, o), Tensor(), Tensor(), Tensor()};
    if (save && g_ih) {
      out[1] = empty_big({lay->N, G}, o);
      out[2] = at::empty({lay->N}, o);
      out[3] = at::empty({lay->N}, o);
    }
    gates = ptr<T>(out[0]);
    xw = ptr<T>(out[1]);
    mean = ptr<T>(out[2]);
    rstd = ptr<T>(out[3]);
    return out;
  }

  // LN_ih of row b of step t.
  void ln_row(int64_t t, int64_t b) const {
    constexpr int64_t L = vlen<T>();
    const int64_t r = lay->off[t] + b;
    T* d = gates + grow(t, b) * G;
    const T* v = xw ? xw + r * G : d;
    T m, s;
    row_moments(v, G, m, s);
    if (mean) {
      mean[r] = m;
      rstd[r] = s;
    }
    const Vec<T> vm(m), vr(s);
    for (int64_t q = 0; q < G; q += L) {
      const int64_t c = std::min(L, G - q);
      Vec<T> z = (vload(v + q, c) - vm) * vr * vload(g_ih + q, c);
      if (bias) z = z + vload(bias + q, c);
      vstore(z, d + q, c);
    }
  }

  // Steps [t0, t1) by the team (ends with a barrier).
  void team(const Team& tm, int64_t t0, int64_t t1) const {
    const int64_t r0 = lay->off[t0], r1 = lay->off[t1];
    T* dest = gates + (r0 - gofs[t0]) * G;
    T* raw = g_ih && xw ? xw + r0 * G : dest;
    gemm_team<T, TA>(tm, *W, r1 - r0, x + r0 * I, I, raw, G, H,
                     bias && !g_ih ? Init::kBias : Init::kZero, bias);
    tm.barrier();
    if (!g_ih) return;
    auto [b0, b1] = tm.share(r1 - r0);
    int64_t t = t0;
    for (int64_t r = r0 + b0; r < r0 + b1; ++r) {
      while (lay->off[t + 1] <= r) ++t;
      ln_row(t, r - lay->off[t]);
    }
    tm.barrier();
  }

  // Steps [t0, t1), the rows b = k (mod nt) only (the row split: no barrier), panel by panel
  // so that a panel of W_ih is read once per chunk.
  void own(int64_t t0, int64_t t1, int64_t k, int64_t nt) const {
    for (int64_t p = 0; p < W->panels; ++p) {
      for (int64_t t = t0; t < t1; ++t) {
        const Rows rs = Rows::owned(lay->n[t], k, nt);
        if (rs.count == 0) continue;
        const int64_t r = lay->off[t] + k;
        T* dst = g_ih && xw ? xw + r * G : gates + grow(t, k) * G;
        gemm_panel<T, TA>(*W, p, rs.count, x + r * I, nt * I, dst, nt * G, H,
                          bias && !g_ih ? Init::kBias : Init::kZero, bias);
      }
    }
    if (!g_ih) return;
    for (int64_t t = t0; t < t1; ++t) {
      const Rows rs = Rows::owned(lay->n[t], k, nt);
      for (int64_t i = 0; i < rs.count; ++i) ln_row(t, rs.at(i));
    }
  }
};

// ------------------------------------------------------------------------------ h side
// The h side of a step: zoneout z = lerp(raw, h_prev, keep), the carried state (slot t + 1 for
// the rows that go on, h_n for those whose sequence ends), the output, and the operand of the
// next recurrent product (h * m_h as TA) where that is a separate buffer.
template <typename T, typename TA>
struct HSide {
  const Layout* lay = nullptr;
  int64_t B = 0, P = 0;
  bool save = false, replay = false, zh = false, mirror = false;
  T rate_h = T(0);
  const T* zo_h = nullptr;    // (N, P) keep masks, or null
  const T* h_mask = nullptr;  // (B, P) or null
  T* hs = nullptr;            // state slots
  TA* ha = nullptr;           // operand slots (= hs without a mirror)
  T* y = nullptr;             // (N, P)
  T* h_n = nullptr;           // (B, P)

  int64_t slot(int64_t t) const { return save ? lay->off[t] : (t & 1) * B; }
  const T* prev(int64_t t, int64_t b) const { return hs + (slot(t) + b) * P; }
  const TA* operand(int64_t t, int64_t b) const { return ha + (slot(t) + b) * P; }

  struct Row {
    const T* hp;
    T* dst;
    T* y;
    TA* hn;
    const T* keep;
    const T* mask;
  };
  Row row(int64_t t, int64_t b) const {
    const bool stays = b < lay->n[t + 1];
    const int64_t pr = lay->off[t] + b;
    return Row{hs + (slot(t) + b) * P,
               stays ? hs + (slot(t + 1) + b) * P : h_n + b * P,
               y + pr * P,
               stays && mirror ? ha + (slot(t + 1) + b) * P : nullptr,
               zo_h ? zo_h + pr * P : nullptr,
               h_mask ? h_mask + b * P : nullptr};
  }
  // units [k, k + n) of a row: raw h' in, the rest out
  void emit(const Row& r, int64_t k, int64_t n, Vec<T> z) const {
    if (zh) z = vlerp(z, vload(r.hp + k, n), r.keep ? vload(r.keep + k, n) : Vec<T>(rate_h));
    vstore(z, r.y + k, n);
    if (replay) return;
    vstore(z, r.dst + k, n);
    if (r.hn) {
      const Vec<T> v = r.mask ? z * vload(r.mask + k, n) : z;
      if constexpr (std::is_same_v<TA, T>) {
        vstore(v, r.hn + k, n);
      } else {
        store_bf16(v, r.hn + k, n);
      }
    }
  }

  // Allocate the state and operand slots and put h0 in (rows of empty sequences straight to
  // h_n). Returns {hs, ha}.
  std::vector<Tensor> allocate(const Tensor& h0, const at::TensorOptions& o) {
    const int64_t S = save ? lay->N : 2 * B;
    Tensor hs_t = empty_big({S, P}, o);
    Tensor ha_t = mirror ? empty_big({S, P}, o.dtype(c10::CppTypeToScalarType<TA>())) : Tensor();
    hs = ptr<T>(hs_t);
    ha = mirror ? ptr<TA>(ha_t) : reinterpret_cast<TA*>(hs);
    const int64_t n0 = lay->T ? lay->n[0] : 0;
    Tensor hn_t = at::from_blob(h_n, {B, P}, o);
    if (n0) {
      hs_t.narrow(0, 0, n0).copy_(h0.narrow(0, 0, n0));
      if (mirror) {
        Tensor h = h0.narrow(0, 0, n0);
        if (h_mask) h = h * at::from_blob(const_cast<T*>(h_mask), {B, P}, o).narrow(0, 0, n0);
        ha_t.narrow(0, 0, n0).copy_(h);
      }
    }
    if (n0 < B) hn_t.narrow(0, n0, B - n0).copy_(h0.narrow(0, n0, B - n0));
    return {hs_t, ha_t};
  }

  // The operand slots of a replay (saved states): h * m_h as TA, as forward built them.
  Tensor rebuild(const Tensor& hs_t, const at::TensorOptions& o) const {
    Tensor out = empty_big({lay->N, P}, o.dtype(c10::CppTypeToScalarType<TA>()));
    const T* h = hs_t.data_ptr<T>();
    TA* d = out.data_ptr<TA>();
    at::parallel_for(0, lay->T, 1, [&](int64_t t0, int64_t t1) {
      constexpr int64_t L = vlen<T>();
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t b = 0; b < lay->n[t]; ++b) {
          const int64_t r = lay->off[t] + b;
          for (int64_t k = 0; k < P; k += L) {
            const int64_t c = std::min(L, P - k);
            Vec<T> v = vload(h + r * P + k, c);
            if (h_mask) v = v * vload(h_mask + b * P + k, c);
            if constexpr (std::is_same_v<TA, T>) {
              vstore(v, d + r * P + k, c);
            } else {
              store_bf16(v, d + r * P + k, c);
            }
          }
        }
      }
    });
    return out;
  }
};

// The h side backward: dh (B, P) is the gradient of the carried state; dhr (B, P) the gradient
// of the operand of step t + 1's recurrent product (dA_{t+1} W_hh) for the rows that ran then.
template <typename T>
struct HGrad {
  const Layout* lay = nullptr;
  int64_t P = 0;
  bool zh = false;
  T rate_h = T(0);
  const T* zo_h = nullptr;
  const T* h_mask = nullptr;
  const T* gy = nullptr;  // (N, P)
  T* dh = nullptr;
  T* dhr = nullptr;

  // Gradient of the raw h' for units [k0, k1) of row b into out[k]; leaves in dh the gradient
  // of h_{t-1} through the carry (zoneout), which the family's own terms add to.
  void operator()(int64_t t, int64_t b, int64_t k0, int64_t k1, T* out) const {
    constexpr int64_t L = vlen<T>();
    const bool rec = b < lay->n[t + 1];
    T* d = dh + b * P;
    const T* r = dhr + b * P;
    const T* mask = h_mask ? h_mask + b * P : nullptr;
    const int64_t pr = lay->off[t] + b;
    const T* g_y = gy + pr * P;
    const T* keep = zo_h ? zo_h + pr * P : nullptr;
    for (int64_t k = k0; k < k1; k += L) {
      const int64_t c = std::min(L, k1 - k);
      Vec<T> gs = vload(d + k, c);
      if (rec) gs = gs + (mask ? vload(r + k, c) * vload(mask + k, c) : vload(r + k, c));
      const Vec<T> g = gs + vload(g_y + k, c);
      if (zh) {
        const Vec<T> kv = keep ? vload(keep + k, c) : Vec<T>(rate_h);
        vstore(kv * g, d + k, c);
        vstore((Vec<T>(T(1)) - kv) * g, out + k, c);
      } else {
        vstore(Vec<T>(T(0)), d + k, c);
        vstore(g, out + k, c);
      }
    }
  }
};

// ------------------------------------------------------------------------------ products
// a @ b (a^T @ b with trans) in float32/float64 by the packed kernels where the operand used
// in place fills whole panels, else by ATen. a^T b is computed as S^T X with the narrower of
// the two packed as S (and the result transposed back when that is b).
inline Tensor matmul(const Tensor& a_, const Tensor& b_, bool trans) {
  const Tensor a = a_.contiguous(), b = b_.contiguous();
  TORCH_CHECK(a.size(trans ? 0 : 1) == b.size(0), "lstmkit fused: product shapes ", a.sizes(),
              " and ", b.sizes());
  if (a.size(0) == 0 || a.size(1) == 0 || b.size(1) == 0) return (trans ? a.t() : a).mm(b);
  const bool same = a.scalar_type() == b.scalar_type() && a.scalar_type() != at::kBFloat16;
  if (!trans) {
    if (!same || !direct_ok(b)) return a.mm(b);
    Tensor out = empty_big({a.size(0), b.size(1)}, b.options());
    const Packed W = direct(b);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "lstmkit_matmul", [&] {
      gemm<scalar_t, scalar_t>(W, a.size(0), a.data_ptr<scalar_t>(), a.size(1),
                               out.data_ptr<scalar_t>(), b.size(1), b.size(1), Init::kZero);
    });
    return out;
  }
  const bool swap = b.size(1) < a.size(1);  // X = the wider one, in place
  const Tensor& S = swap ? b : a;
  const Tensor& X = swap ? a : b;
  if (!same || !direct_ok(X)) return a.t().mm(b);
  Tensor out = at::empty({S.size(1), X.size(1)}, X.options());
  const Packed W = direct(X);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "lstmkit_matmul_tn", [&] {
    gemm_tn<scalar_t>(S.data_ptr<scalar_t>(), S.size(1), W, out.data_ptr<scalar_t>());
  });
  return swap ? out.t().contiguous() : out;
}

// a @ b or a^T @ b where the operands may be bfloat16 (then ATen: oneDNN, float32 accumulation)
inline Tensor product(const Tensor& a, const Tensor& b, bool trans) {
  if (a.scalar_type() == at::kBFloat16 || b.scalar_type() == at::kBFloat16) {
    const Tensor a16 = a.to(at::kBFloat16), b16 = b.to(at::kBFloat16);
    return (trans ? a16.t() : a16).mm(b16);
  }
  return matmul(a, b, trans);
}

// dL/dh0 of a backward scan: the gradient carried past step 0 (dh, updated in place) plus
// what step 0's recurrent product sent back (dhr), through the recurrent-dropout mask; only the
// n0 rows that step 0 runs (the batch is sorted by length).
inline Tensor initial_state_grad(Tensor dh, const Tensor& dhr, const Tensor& h_mask, int64_t n0) {
  if (n0) {
    Tensor back = dhr.narrow(0, 0, n0);
    if (h_mask.defined()) back = back * h_mask.narrow(0, 0, n0);
    dh.narrow(0, 0, n0).add_(back);
  }
  return dh;
}

// LN_ih backward over all rows (N, width): {dL/d(x W_ih^T), dL/d gain}. ATen computes the
// input gradient row by row; the gain's is a column sum by col_dot, the same bits for any
// number of threads.
inline std::pair<Tensor, Tensor> ln_ih_backward(const Tensor& dA, const Tensor& xw, int64_t width,
                                                const Tensor& mean, const Tensor& rstd,
                                                const Tensor& gain) {
  const int64_t N = dA.size(0);
  auto r = at::native_layer_norm_backward(dA, xw, {width}, mean.view({N, 1}),
                                          rstd.view({N, 1}), gain, std::nullopt,
                                          {true, false, false});
  return {std::get<0>(r), col_dot(dA, xw, mean, rstd)};
}

// ------------------------------------------------------------------------------ arguments
inline Tensor opt(const std::vector<OptTensor>& v, size_t k) {
  return k < v.size() && v[k] && v[k]->defined() ? v[k]->contiguous() : Tensor();
}

// Dispatch on (compute type, operand type): double; float with a bfloat16 operand (bfloat16
// inputs on a CPU with AVX512-BF16); float.
template <typename F>
auto dispatch_types(at::ScalarType ct, bool bf16, const F& fn) {
  if (ct == at::kDouble) return fn(double(), double());
  if (bf16 && LSTMKIT_BF16_DP) return fn(float(), BF16());
  return fn(float(), float());
}

}  // namespace lstmkit
