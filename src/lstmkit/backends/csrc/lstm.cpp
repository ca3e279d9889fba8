// Fused LSTM scan: forward and hand-written backward through time (BPTT).
//
// Forward, per step t (gate order i, f, g, o as torch.nn.LSTM; CIFG keeps i, g, o):
//   a      = x_t W_ih^T + b_ih + b_hh + (h_{t-1} * m_h) W_hh^T     (input part: one GEMM up front)
//   i      = sigmoid(a_i + p_i * c_{t-1})
//   f      = sigmoid(a_f + p_f * c_{t-1})           CIFG: f = 1 - i
//   g      = tanh(a_g)
//   c'     = clip(f * c_{t-1} + i * g)              clip(v) = clamp(v, -cell_clip, cell_clip)
//   o      = sigmoid(a_o + p_o * c')
//   m      = o * tanh(c')
//   h'     = m W_hr^T                               (without projection: h' = m)
//   then zoneout of h' and c': z = lerp(new, old, keep) (keep: the training mask, or the rate
//   at evaluation; no zoneout: z = new).
//
// Backward, per step from t = T-1 down to 0, with dh', dc' the gradients of h' and c' after
// the carry and dm = dh' W_hr (dm = dh' without projection):
//   do     = dm * tanh(c')
//   dc'   += dm * o * (1 - tanh(c')^2) + da_o * p_o,  da_o = do * o * (1 - o)
//   dc     = dc' where -clip <= c_raw <= clip, else 0    (as torch.clamp's gradient)
//   di     = dc * g,  dg = dc * i,  df = dc * c_{t-1}    CIFG: di -= df
//   da_g   = dg * (1 - g^2),  da_i = di * i (1 - i),  da_f = df * f (1 - f)
//   dc_{t-1} += dc * f + da_i * p_i + da_f * p_f
//   dh_{t-1} += (da W_hh) * m_h                          (one GEMM per step)
// and after the loop, with da stacked over the N = sum_t n_t rows as (N, G):
//   dW_ih = da^T X,  dx = da W_ih,  dW_hh = da^T (H_{prev} * m_h),  db_ih = db_hh = sum da
//   dp_i = sum da_i c_{t-1},  dp_f = sum da_f c_{t-1},  dp_o = sum da_o c',  dW_hr = dh'^T M.
//
// layer_norm: the products are LN_ih(x_t W_ih^T) and LN_hh((h_{t-1} * m_h) W_hh^T), and the
// output uses c_out = LN_c(c') (with gain and bias) in place of c': m = o * tanh(c_out). LN_hh
// and LN_c need whole rows, so with layer norm a step is two phases: the product of every
// panel, then one pass per row doing both normalisations and all the pointwise work; backward
// mirrors it (the LN backward dv = rstd * (dy g - mean(dy g) - v_hat * mean(dy g v_hat))).
//
// Layout and threads (gemm.h): rows are packed by step (lengths shrink the active batch); a
// step without layer norm is, for each panel of units and block of rows, the recurrent product
// of that panel followed at once by the pointwise work of those units; the team meets once per
// step (twice with a projection, whose product needs the whole of m).
//
// recompute: forward saves only the states (h, c at every step); backward first replays the
// forward steps from them (independent steps, in parallel over time) with the same code, so the
// gate activations, and hence the gradients, are bitwise those of a saving forward.
#include "ops.h"

#include "scan.h"


namespace lstmkit {
namespace {

// Which block of the gate rows holds which gate.
struct GateSlots {
  int64_t i, f, g, o;
  explicit GateSlots(bool coupled)
      : i(0), f(coupled ? -1 : 1), g(coupled ? 1 : 2), o(coupled ? 2 : 3) {}
};

// Everything one forward scan (or its replay) reads and writes. T is the compute type (float
// or double); TA the type of the recurrent product's left operand (T, or bfloat16).
template <typename T, typename TA>
struct Fwd {
  const Layout* lay = nullptr;
  int64_t B = 0, H = 0, P = 0, G = 0;
  bool coupled = false, proj = false, ln = false, save = false, replay = false;
  bool clip_on = false, zh = false, zc = false, mirror = false, row_split = false;
  T clip = T(0);
  GateSlots s{false};
  const Packed* Whh = nullptr;
  const Packed* Whr = nullptr;
  const T *p_i = nullptr, *p_f = nullptr, *p_o = nullptr;
  const T *g_hh = nullptr, *lnc_w = nullptr, *lnc_b = nullptr;
  const T* h_mask = nullptr;  // (B, P)
  const T* zo_h = nullptr;    // (N, P) keep masks, or null: rate
  const T* zo_c = nullptr;    // (N, H)
  T rate_h = T(0), rate_c = T(0);
  InProj<T, TA> in;  // the input projection
  T* gates = nullptr;  // gate rows: x W_ih^T + b in, activations out
  T* hs = nullptr;     // state slots (P)
  T* cs = nullptr;     // state slots (H)
  TA* ha = nullptr;    // slots of the recurrent product's operand (h * m_h, as TA)
  T* cnew = nullptr;   // (N or B, H) or null: c' before zoneout
  T* m_all = nullptr;  // (N or B, H) with projection
  T* hraw = nullptr;   // (B, P) with projection
  T* y = nullptr;      // (N, P)
  T* h_n = nullptr;    // (B, P)
  T* c_n = nullptr;    // (B, H)
  T* u = nullptr;      // (N or B, G) raw recurrent product (layer norm)
  T *mean_hh = nullptr, *rstd_hh = nullptr, *mean_c = nullptr, *rstd_c = nullptr;
  T* c_out = nullptr;  // (N or B, H) LN_c(c')

  int64_t slot(int64_t t) const { return save ? lay->off[t] : (t & 1) * B; }
  // row of a per-step buffer that has one slot per step when saving, one otherwise
  int64_t srow(int64_t t, int64_t b) const { return save ? lay->off[t] + b : b; }
  int64_t prow(int64_t t, int64_t b) const { return lay->off[t] + b; }
  // row of the gate buffer (all rows when saving, a chunk of steps otherwise)
  int64_t grow(int64_t t, int64_t b) const { return in.grow(t, b); }

  // h' (raw) of units [k0, k1) of row b: zoneout, state, output, next operand.
  void h_out(int64_t t, int64_t b, int64_t k0, int64_t k1, const T* raw) const {
    constexpr int64_t L = vlen<T>();
    const bool stays = b < lay->n[t + 1];
    const T* hp = hs + (slot(t) + b) * P;
    T* dst = stays ? hs + (slot(t + 1) + b) * P : h_n + b * P;
    T* yr = y + prow(t, b) * P;
    TA* hn = stays && mirror ? ha + (slot(t + 1) + b) * P : nullptr;
    const T* keep = zo_h ? zo_h + prow(t, b) * P : nullptr;
    const T* mask = h_mask ? h_mask + b * P : nullptr;
    for (int64_t k = k0; k < k1; k += L) {
      const int64_t c = std::min(L, k1 - k);
      Vec<T> z = vload(raw + (k - k0), c);
      if (zh) z = vlerp(z, vload(hp + k, c), keep ? vload(keep + k, c) : Vec<T>(rate_h));
      vstore(z, yr + k, c);
      if (replay) continue;
      vstore(z, dst + k, c);
      if (hn) {
        const Vec<T> v = mask ? z * vload(mask + k, c) : z;
        if constexpr (std::is_same_v<TA, T>) {
          vstore(v, hn + k, c);
        } else {
          store_bf16(v, hn + k, c);
        }
      }
    }
  }

  // Gates and cell of units [j0, j1) of row b: the activations replace the pre-activations
  // (when saving: backward reads them), c' goes to `cdst` (a row, or null) and the carried c
  // to the state. With `fused` (no LN_c) also the output m = o tanh(c'), and h' from it.
  void cell(int64_t t, int64_t b, int64_t j0, int64_t j1, T* cdst, bool fused) const {
    constexpr int64_t L = vlen<T>();
    T* a = gates + grow(t, b) * G;
    const T* cp = cs + (slot(t) + b) * H;
    const bool stays = b < lay->n[t + 1];
    T* cnext = stays ? cs + (slot(t + 1) + b) * H : c_n + b * H;
    const T* keep = zo_c ? zo_c + prow(t, b) * H : nullptr;
    const bool keep_acts = save || !fused;
    T* m_row = proj ? m_all + srow(t, b) * H : nullptr;
    const bool out_h = fused && !proj && !replay;
    // the h side (without projection)
    const T* hp = hs + (slot(t) + b) * P;
    T* hdst = stays ? hs + (slot(t + 1) + b) * P : h_n + b * P;
    T* yr = y + prow(t, b) * P;
    TA* hn = stays && mirror ? ha + (slot(t + 1) + b) * P : nullptr;
    const T* keep_h = zo_h ? zo_h + prow(t, b) * P : nullptr;
    const T* mask = h_mask ? h_mask + b * P : nullptr;
    const Vec<T> one(T(1));
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      const Vec<T> c_prev = vload(cp + j, n);
      Vec<T> ai = vload(a + s.i * H + j, n);
      if (p_i) ai = ai + vload(p_i + j, n) * c_prev;
      const Vec<T> i = vsigmoid<T>(ai);
      Vec<T> f;
      if (coupled) {
        f = one - i;
      } else {
        Vec<T> af = vload(a + s.f * H + j, n);
        if (p_f) af = af + vload(p_f + j, n) * c_prev;
        f = vsigmoid<T>(af);
        if (keep_acts) vstore(f, a + s.f * H + j, n);
      }
      const Vec<T> g = vtanh<T>(vload(a + s.g * H + j, n));
      Vec<T> c = f * c_prev + i * g;
      if (clip_on) c = at::vec::clamp(c, Vec<T>(-clip), Vec<T>(clip));
      Vec<T> ao = vload(a + s.o * H + j, n);
      if (p_o) ao = ao + vload(p_o + j, n) * c;
      const Vec<T> o = vsigmoid<T>(ao);
      if (keep_acts) {
        vstore(i, a + s.i * H + j, n);
        vstore(g, a + s.g * H + j, n);
        vstore(o, a + s.o * H + j, n);
      }
      if (cdst) vstore(c, cdst + j, n);
      if (!replay) {
        const Vec<T> cz = zc ? vlerp(c, c_prev, keep ? vload(keep + j, n) : Vec<T>(rate_c)) : c;
        vstore(cz, cnext + j, n);
      }
      if (!fused) continue;
      const Vec<T> m = o * vtanh<T>(c);
      if (m_row) vstore(m, m_row + j, n);
      if (!out_h) continue;
      Vec<T> z = m;
      if (zh) z = vlerp(z, vload(hp + j, n), keep_h ? vload(keep_h + j, n) : Vec<T>(rate_h));
      vstore(z, yr + j, n);
      vstore(z, hdst + j, n);
      if (hn) {
        const Vec<T> v = mask ? z * vload(mask + j, n) : z;
        if constexpr (std::is_same_v<TA, T>) {
          vstore(v, hn + j, n);
        } else {
          store_bf16(v, hn + j, n);
        }
      }
    }
  }

  // m = o * tanh(c_out) of units [j0, j1) of row b; then h' = m (or m for the projection).
  void out(int64_t t, int64_t b, int64_t j0, int64_t j1, const T* cout_row) const {
    constexpr int64_t L = vlen<T>();
    const T* a = gates + grow(t, b) * G + s.o * H;
    if (proj) {
      T* m = m_all + srow(t, b) * H;
      for (int64_t j = j0; j < j1; j += L) {
        const int64_t n = std::min(L, j1 - j);
        vstore(vload(a + j, n) * vtanh<T>(vload(cout_row + j, n)), m + j, n);
      }
      return;
    }
    alignas(64) T tmp[L];
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      (vload(a + j, n) * vtanh<T>(vload(cout_row + j, n))).store(tmp);
      h_out(t, b, j, j + n, tmp);
    }
  }

  // Where c' of row b goes apart from the state: the c' buffer (with zoneout, layer norm, or
  // saving with peepholes), or a scratch row for LN_c in a replay; null when the state is c'.
  T* cdst(int64_t t, int64_t b, T* scratch) const {
    if (cnew) return cnew + srow(t, b) * H;
    if (ln) return replay ? scratch : (b < lay->n[t + 1] ? cs + (slot(t + 1) + b) * H : c_n + b * H);
    return nullptr;
  }

  // The pointwise work of units [j0, j1) of the rows `rs`, without layer norm.
  __attribute__((noinline)) void units(int64_t t, const Rows& rs, int64_t j0, int64_t j1,
                                       T* scratch) const {
    for (int64_t i = 0; i < rs.count; ++i) {
      const int64_t b = rs.at(i);
      cell(t, b, j0, j1, cdst(t, b, scratch), !replay || proj);
    }
  }

  // The whole row b with layer norm: LN_hh of the product, gates, cell, LN_c, output.
  __attribute__((noinline)) void ln_row(int64_t t, int64_t b, T* scratch) const {
    constexpr int64_t L = vlen<T>();
    const int64_t sr = srow(t, b);
    const T* ur = u + sr * G;
    T mean, rstd;
    row_moments(ur, G, mean, rstd);
    mean_hh[sr] = mean;
    rstd_hh[sr] = rstd;
    T* a = gates + grow(t, b) * G;
    const Vec<T> vm(mean), vr(rstd);
    for (int64_t k = 0; k < G; k += L) {
      const int64_t n = std::min(L, G - k);
      vstore(vload(a + k, n) + (vload(ur + k, n) - vm) * vr * vload(g_hh + k, n), a + k, n);
    }
    T* c = cdst(t, b, scratch);
    cell(t, b, 0, H, c, false);
    row_moments(c, H, mean, rstd);
    mean_c[sr] = mean;
    rstd_c[sr] = rstd;
    T* co = c_out + sr * H;
    const Vec<T> cm(mean), cr(rstd);
    for (int64_t j = 0; j < H; j += L) {
      const int64_t n = std::min(L, H - j);
      vstore((vload(c + j, n) - cm) * cr * vload(lnc_w + j, n) + vload(lnc_b + j, n), co + j, n);
    }
    if (!replay || proj) out(t, b, 0, H, co);
  }

  // The recurrent product of panel p for the rows `rs` of step t (with layer norm into u,
  // else onto the gate rows).
  void product(int64_t t, int64_t p, const Rows& rs) const {
    const TA* A = ha + (slot(t) + rs.b0) * P;
    if (ln) {
      gemm_panel<T, TA>(*Whh, p, rs.count, A, rs.stride * P, u + srow(t, rs.b0) * G,
                        rs.stride * G, H, Init::kZero);
    } else {
      gemm_panel<T, TA>(*Whh, p, rs.count, A, rs.stride * P, gates + grow(t, rs.b0) * G,
                        rs.stride * G, H, Init::kLoad);
    }
  }

  // h' = m W_hr^T for panel p of the P units and the rows `rs`, then the h side of those.
  void project_h(int64_t t, int64_t p, const Rows& rs) const {
    gemm_panel<T, T>(*Whr, p, rs.count, m_all + srow(t, rs.b0) * H, rs.stride * H,
                     hraw + rs.b0 * P, rs.stride * P, P, Init::kZero);
    const int64_t k0 = p * Whr->NB, k1 = std::min(P, k0 + Whr->NB);
    for (int64_t i = 0; i < rs.count; ++i) {
      const int64_t b = rs.at(i);
      h_out(t, b, k0, k1, hraw + b * P + k0);
    }
  }

  // Row split (a batch large enough for every thread): thread k runs the whole scan for the
  // rows b = k (mod nt) -- its own sequences -- with no barrier: the input projection of its
  // rows chunk by chunk, then each step's products and pointwise work.
  void run_rows(const Team& team) const {
    std::vector<T> scratch(H);
    const int64_t k = team.tid, nt = team.nt;
    for (int64_t t = 0; t < lay->T; ++t) {
      const Rows rs = Rows::owned(lay->n[t], k, nt);
      if (lay->n[t] == 0) break;
      if (in.chunk_starts(t)) in.own(t, in.gnext[t], k, nt);
      if (rs.count == 0) continue;
      for (int64_t p = 0; p < Whh->panels; ++p) product(t, p, rs);
      if (ln) {
        for (int64_t i = 0; i < rs.count; ++i) ln_row(t, rs.at(i), scratch.data());
      } else {
        units(t, rs, 0, H, scratch.data());
      }
      if (proj) {
        for (int64_t p = 0; p < Whr->panels; ++p) project_h(t, p, rs);
      }
    }
  }

  // Unit split (a small batch): every step is split by panels of units (and rows where
  // panels are few) over the team, which meets after each dependent phase.
  void run_units(const Team& team) const {
    std::vector<T> scratch(H);
    for (int64_t t = 0; t < lay->T; ++t) {
      const int64_t n = lay->n[t];
      if (n == 0) break;
      if (in.chunk_starts(t)) in.team(team, t, in.gnext[t]);
      const Items it(*Whh, n, team.nt);
      auto [i0, i1] = team.share(it.count());
      for (int64_t i = i0; i < i1; ++i) {
        const Rows rs{it.r0(i), 1, it.r1(i) - it.r0(i)};
        if (rs.count > 0) product(t, it.panel(i), rs);
      }
      if (!ln) {
        it.segments(i0, i1, H, Whh->NB, [&](const Rows& rs, int64_t j0, int64_t j1) {
          units(t, rs, j0, j1, scratch.data());
        });
      }
      team.barrier();
      if (ln) {
        auto [b0, b1] = team.share(n);
        for (int64_t b = b0; b < b1; ++b) ln_row(t, b, scratch.data());
        team.barrier();
      }
      if (proj) {
        const Items it2(*Whr, n, team.nt);
        auto [q0, q1] = team.share(it2.count());
        for (int64_t i = q0; i < q1; ++i) {
          const Rows rs{it2.r0(i), 1, it2.r1(i) - it2.r0(i)};
          if (rs.count > 0) project_h(t, it2.panel(i), rs);
        }
        team.barrier();
      }
    }
  }

  void run(const Team& team) const {
    if (row_split) {
      run_rows(team);
    } else {
      run_units(team);
    }
  }

  // The replay of every step from the saved states: steps are independent, no barrier.
  void run_replay(const Team& team) const {
    std::vector<T> scratch(H);
    if (lay->T) in.team(team, 0, lay->T);
    constexpr int64_t kRows = 24;
    std::vector<std::pair<int64_t, int64_t>> items;  // (t, r0)
    for (int64_t t = 0; t < lay->T; ++t) {
      for (int64_t r = 0; r < lay->n[t]; r += kRows) items.emplace_back(t, r);
    }
    auto [i0, i1] = team.share(static_cast<int64_t>(items.size()));
    for (int64_t i = i0; i < i1; ++i) {
      const auto [t, r0] = items[i];
      const Rows rs{r0, 1, std::min(lay->n[t], r0 + kRows) - r0};
      for (int64_t p = 0; p < Whh->panels; ++p) {
        product(t, p, rs);
        if (!ln) units(t, rs, p * Whh->NB, std::min(H, (p + 1) * Whh->NB), scratch.data());
      }
      if (ln) {
        for (int64_t j = 0; j < rs.count; ++j) ln_row(t, rs.at(j), scratch.data());
      }
    }
  }
};

// ------------------------------------------------------------------------------ backward
template <typename T, typename TA>
struct Bwd {
  const Layout* lay = nullptr;
  int64_t B = 0, H = 0, P = 0, G = 0;
  bool coupled = false, proj = false, ln = false, clip_on = false, zh = false, zc = false;
  bool row_split = false;
  T clip = T(0);
  GateSlots s{false};
  const Packed* Whh = nullptr;  // for dA W_hh: K = G, P units
  const Packed* Whr = nullptr;  // for dh' W_hr: K = P, H units
  const T *p_i = nullptr, *p_f = nullptr, *p_o = nullptr;
  const T *g_hh = nullptr, *lnc_w = nullptr;
  const T* h_mask = nullptr;
  const T *zo_h = nullptr, *zo_c = nullptr;
  T rate_h = T(0), rate_c = T(0);
  // saved
  const T* gates = nullptr;  // (N, G) activations
  const T* cs = nullptr;     // (N, H) c before each step
  const T* cnew = nullptr;   // (N, H) or null
  const T* c_n = nullptr;    // (B, H)
  const T* u = nullptr;      // (N, G) raw recurrent products (layer norm)
  const T *mean_hh = nullptr, *rstd_hh = nullptr, *mean_c = nullptr, *rstd_c = nullptr;
  const T* c_out = nullptr;  // (N, H)
  const T* gy = nullptr;     // (N, P)
  // gradients
  T* dA = nullptr;     // (N, G)
  TA* dAm = nullptr;   // (N, G) the product's operand: dA (or dU with layer norm) as TA
  T* dU = nullptr;     // (N, G) with layer norm
  T* dh = nullptr;     // (B, P)
  T* dc = nullptr;     // (B, H)
  T* dhr = nullptr;    // (B, P) (dA_{t+1} W_hh) of the rows still running
  T* dhraw = nullptr;  // (N, P) with projection
  T* dm = nullptr;     // (B, H) with projection
  T* dco = nullptr;    // (N, H) with layer norm: gradient of c_out
  // LN_ih in the loop (layer norm): gain, raw products, moments, and d_in = dL/d(x W_ih^T)
  const T *g_ih = nullptr, *xw = nullptr, *mean_ih = nullptr, *rstd_ih = nullptr;
  T* d_in = nullptr;  // (N, G)
  // Column sums per batch row (a lane of acc_stride per row b, over its steps), added lane by
  // lane after the loop: the gradients of the layer-norm gains and bias and of the
  // peepholes, accumulated while their operands are in cache instead of in passes over all
  // the saved rows after the loop. A row's steps run in time order whichever thread runs
  // them, so the sums do not depend on the thread count.
  T* acc = nullptr;
  int64_t acc_stride = 0;
  // offsets in a lane: dg_hh (G), dw_c (H), db_c (H), dg_ih (G), dpeep (3H: i, f, o)
  int64_t o_ghh = 0, o_wc = 0, o_bc = 0, o_gih = 0, o_peep = 0;

  T* lane(int64_t b) const { return acc + b * acc_stride; }

  int64_t prow(int64_t t, int64_t b) const { return lay->off[t] + b; }

  const T* c_new(int64_t t, int64_t b) const {
    if (cnew) return cnew + prow(t, b) * H;
    return b < lay->n[t + 1] ? cs + prow(t + 1, b) * H : c_n + b * H;
  }

  // Gradient of h' (raw) for units [k0, k1) of row b, into out; updates dh (carry).
  void h_grad(int64_t t, int64_t b, int64_t k0, int64_t k1, T* out) const {
    constexpr int64_t L = vlen<T>();
    const bool rec = b < lay->n[t + 1];
    T* d = dh + b * P;
    const T* r = dhr + b * P;
    const T* mask = h_mask ? h_mask + b * P : nullptr;
    const T* g_y = gy + prow(t, b) * P;
    const T* keep = zo_h ? zo_h + prow(t, b) * P : nullptr;
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

  // From dm (units [j0, j1) of row b): da_o, and dL/dc_out into `dcout`.
  void out_grad(int64_t t, int64_t b, int64_t j0, int64_t j1, const T* dmr, T* dcout) const {
    constexpr int64_t L = vlen<T>();
    const T* a = gates + prow(t, b) * G + s.o * H;
    T* da = dA + prow(t, b) * G + s.o * H;
    const T* co = ln ? c_out + prow(t, b) * H : c_new(t, b);
    const Vec<T> one(T(1));
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      const Vec<T> o = vload(a + j, n), tc = vtanh<T>(vload(co + j, n)), d = vload(dmr + j, n);
      vstore(d * tc * o * (one - o), da + j, n);
      vstore(d * o * (one - tc * tc), dcout + j, n);
    }
  }

  // From dL/dc' through the output (g_out), units [j0, j1) of row b: the cell's gradients.
  void cell_grad(int64_t t, int64_t b, int64_t j0, int64_t j1, const T* g_out) const {
    constexpr int64_t L = vlen<T>();
    const T* a = gates + prow(t, b) * G;
    const T* cn = p_i ? c_new(t, b) : nullptr;
    T* dp = p_i ? lane(b) + o_peep : nullptr;
    T* da = dA + prow(t, b) * G;
    const T* cp = cs + prow(t, b) * H;
    const T* keep = zo_c ? zo_c + prow(t, b) * H : nullptr;
    T* dcr = dc + b * H;
    const Vec<T> one(T(1)), zero(T(0));
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      const Vec<T> gs = vload(dcr + j, n);
      Vec<T> dc_prev, dcn;
      if (zc) {
        const Vec<T> kv = keep ? vload(keep + j, n) : Vec<T>(rate_c);
        dc_prev = kv * gs;
        dcn = (one - kv) * gs + vload(g_out + j, n);
      } else {
        dc_prev = zero;
        dcn = gs + vload(g_out + j, n);
      }
      const Vec<T> i = vload(a + s.i * H + j, n), g = vload(a + s.g * H + j, n);
      const Vec<T> f = coupled ? one - i : vload(a + s.f * H + j, n);
      const Vec<T> c_prev = vload(cp + j, n);
      if (p_o) {
        const Vec<T> da_o = vload(da + s.o * H + j, n);
        dcn = dcn + da_o * vload(p_o + j, n);
        T* d = dp + (coupled ? H : 2 * H) + j;
        vstore(vload(d, n) + da_o * vload(cn + j, n), d, n);
      }
      if (clip_on) {
        const Vec<T> raw = f * c_prev + i * g;
        const Vec<T> out = (raw < Vec<T>(-clip)) | (raw > Vec<T>(clip));
        dcn = Vec<T>::blendv(dcn, zero, out);
      }
      Vec<T> di = dcn * g;
      const Vec<T> dg = dcn * i;
      const Vec<T> df = dcn * c_prev;
      dc_prev = dc_prev + dcn * f;
      if (coupled) di = di - df;
      const Vec<T> da_i = di * i * (one - i);
      if (p_i) {
        dc_prev = dc_prev + da_i * vload(p_i + j, n);
        vstore(vload(dp + j, n) + da_i * c_prev, dp + j, n);
      }
      if (!coupled) {
        const Vec<T> da_f = df * f * (one - f);
        if (p_f) {
          dc_prev = dc_prev + da_f * vload(p_f + j, n);
          vstore(vload(dp + H + j, n) + da_f * c_prev, dp + H + j, n);
        }
        vstore(da_f, da + s.f * H + j, n);
      }
      vstore(da_i, da + s.i * H + j, n);
      vstore(dg * (one - g * g), da + s.g * H + j, n);
      vstore(dc_prev, dcr + j, n);
    }
  }

  // The operand copy of row b of dA (or dU) for the products.
  void mirror_row(int64_t t, int64_t b, int64_t k0, int64_t k1, const T* src) const {
    if constexpr (!std::is_same_v<TA, T>) {
      constexpr int64_t L = vlen<T>();
      TA* d = dAm + prow(t, b) * G;
      for (int64_t k = k0; k < k1; k += L) {
        const int64_t c = std::min(L, k1 - k);
        store_bf16(vload(src + k, c), d + k, c);
      }
    }
  }

  // The operand rows of step t: dA (or dU) as TA.
  const TA* operand(int64_t t) const {
    if constexpr (std::is_same_v<TA, T>) {
      return (ln ? dU : dA) + lay->off[t] * G;
    } else {
      return dAm + lay->off[t] * G;
    }
  }

  // dhr = (dA_{t+1} W_hh) for panel p of the P units and the rows `rs` that run at step t+1.
  void dhr_panel(int64_t t, int64_t p, const Rows& rs) const {
    if (t + 1 >= lay->T) return;
    Rows r = rs;
    const int64_t n1 = lay->n[t + 1];
    r.count = n1 > rs.b0 ? std::min(rs.count, (n1 - rs.b0 + rs.stride - 1) / rs.stride) : 0;
    if (r.count == 0) return;
    gemm_panel<T, TA>(*Whh, p, r.count, operand(t + 1) + r.b0 * G, r.stride * G, dhr + r.b0 * P,
                      r.stride * P, P, Init::kZero);
  }

  // dm = dh' W_hr for panel p of the H units and the rows `rs`.
  void dm_product(int64_t t, int64_t p, const Rows& rs) const {
    gemm_panel<T, T>(*Whr, p, rs.count, dhraw + prow(t, rs.b0) * P, rs.stride * P,
                     dm + rs.b0 * H, rs.stride * H, H, Init::kZero);
  }

  // One step for the rows `rs` when this thread owns them (row split): no barrier.
  void step_rows(int64_t t, const Rows& rs, T* sc1, T* sc2) const {
    for (int64_t p = 0; p < Whh->panels; ++p) dhr_panel(t, p, rs);
    if (proj) {
      for (int64_t q = 0; q < rs.count; ++q) {
        const int64_t b = rs.at(q);
        h_grad(t, b, 0, P, dhraw + prow(t, b) * P);
      }
      for (int64_t p = 0; p < Whr->panels; ++p) dm_product(t, p, rs);
      cell_units(t, rs, 0, H, sc1, sc2);
    } else {
      cell_units(t, rs, 0, P, sc1, sc2);
    }
    if (ln) {
      for (int64_t q = 0; q < rs.count; ++q) ln_row(t, rs.at(q), sc1);
    }
  }

  // What step 0's recurrent product sends back to h0, for the rows `rs`.
  void final_dhr(int64_t p, const Rows& rs) const {
    gemm_panel<T, TA>(*Whh, p, rs.count, operand(0) + rs.b0 * G, rs.stride * G, dhr + rs.b0 * P,
                      rs.stride * P, P, Init::kZero);
  }

  void run_rows(const Team& team) const {
    std::vector<T> sc1(std::max(H, P)), sc2(std::max(H, P));
    for (int64_t t = lay->T - 1; t >= 0; --t) {
      const Rows rs = Rows::owned(lay->n[t], team.tid, team.nt);
      if (rs.count) step_rows(t, rs, sc1.data(), sc2.data());
    }
    const Rows rs = Rows::owned(lay->T ? lay->n[0] : 0, team.tid, team.nt);
    if (rs.count) {
      for (int64_t p = 0; p < Whh->panels; ++p) final_dhr(p, rs);
    }
  }

  void run_units(const Team& team) const {
    std::vector<T> sc1(std::max(H, P)), sc2(std::max(H, P));
    for (int64_t t = lay->T - 1; t >= 0; --t) {
      const int64_t n = lay->n[t];
      if (n == 0) continue;
      const Items it(*Whh, n, team.nt);
      auto [i0, i1] = team.share(it.count());
      for (int64_t i = i0; i < i1; ++i) {
        const Rows rs{it.r0(i), 1, it.r1(i) - it.r0(i)};
        if (rs.count > 0) dhr_panel(t, it.panel(i), rs);
      }
      it.segments(i0, i1, P, Whh->NB, [&](const Rows& rs, int64_t k0, int64_t k1) {
        if (proj) {
          for (int64_t q = 0; q < rs.count; ++q) {
            const int64_t b = rs.at(q);
            h_grad(t, b, k0, k1, dhraw + prow(t, b) * P);
          }
        } else {
          cell_units(t, rs, k0, k1, sc1.data(), sc2.data());
        }
      });
      team.barrier();
      if (proj) {
        const Items it2(*Whr, n, team.nt);
        auto [q0, q1] = team.share(it2.count());
        for (int64_t i = q0; i < q1; ++i) {
          const Rows rs{it2.r0(i), 1, it2.r1(i) - it2.r0(i)};
          if (rs.count > 0) dm_product(t, it2.panel(i), rs);
        }
        it2.segments(q0, q1, H, Whr->NB, [&](const Rows& rs, int64_t j0, int64_t j1) {
          cell_units(t, rs, j0, j1, sc1.data(), sc2.data());
        });
        team.barrier();
      }
      if (ln) {
        auto [b0, b1] = team.share(n);
        for (int64_t b = b0; b < b1; ++b) ln_row(t, b, sc1.data());
        team.barrier();
      }
    }
    const int64_t n0 = lay->T ? lay->n[0] : 0;
    if (n0 > 0) {
      const Items it(*Whh, n0, team.nt);
      auto [i0, i1] = team.share(it.count());
      for (int64_t i = i0; i < i1; ++i) {
        const Rows rs{it.r0(i), 1, it.r1(i) - it.r0(i)};
        if (rs.count > 0) final_dhr(it.panel(i), rs);
      }
    }
  }

  void run(const Team& team) const {
    if (row_split) {
      run_rows(team);
    } else {
      run_units(team);
    }
  }

  // Units [j0, j1) of the rows `rs` with dm known (the h side done): all the step's
  // pointwise gradients, or (layer norm) up to dL/dc_out.
  __attribute__((noinline)) void cell_units(int64_t t, const Rows& rs, int64_t j0, int64_t j1,
                                            T* scratch, T* scratch2) const {
    for (int64_t q = 0; q < rs.count; ++q) {
      const int64_t b = rs.at(q);
      const T* dmr;
      if (proj) {
        dmr = dm + b * H;
      } else {
        h_grad(t, b, j0, j1, scratch);
        dmr = scratch;
      }
      if (ln) {
        out_grad(t, b, j0, j1, dmr, dco + prow(t, b) * H);
      } else {
        out_grad(t, b, j0, j1, dmr, scratch2);
        cell_grad(t, b, j0, j1, scratch2);
        if constexpr (!std::is_same_v<TA, T>) {
          for (int64_t g = 0; g < G / H; ++g) {
            mirror_row(t, b, g * H + j0, g * H + j1, dA + prow(t, b) * G);
          }
        }
      }
    }
  }

  // With layer norm, row b: LN_c backward, the cell's gradients, LN_hh and LN_ih backward,
  // and this row's terms of the gains' and LN_c bias's gradients (into its lane).
  __attribute__((noinline)) void ln_row(int64_t t, int64_t b, T* scratch) const {
    constexpr int64_t L = vlen<T>();
    const int64_t pr = prow(t, b);
    T* sums = lane(b);
    // dc' = rstd * (dy - mean(dy) - c_hat * mean(dy c_hat)), dy = dco * w
    ln_backward(dco + pr * H, lnc_w, c_new(t, b), mean_c[pr], rstd_c[pr], H, scratch,
                sums + o_wc, sums + o_bc);
    cell_grad(t, b, 0, H, scratch);
    ln_backward(dA + pr * G, g_hh, u + pr * G, mean_hh[pr], rstd_hh[pr], G, dU + pr * G,
                sums + o_ghh, nullptr);
    if (g_ih) {
      ln_backward(dA + pr * G, g_ih, xw + pr * G, mean_ih[pr], rstd_ih[pr], G, d_in + pr * G,
                  sums + o_gih, nullptr);
    }
    if constexpr (!std::is_same_v<TA, T>) {
      TA* d = dAm + pr * G;
      for (int64_t k = 0; k < G; k += L) {
        const int64_t c = std::min(L, G - k);
        store_bf16(vload(dU + pr * G + k, c), d + k, c);
      }
    }
  }

  // out = the LN backward of dy_ (the gradient of gain * v_hat + bias); adds dy_ * v_hat to
  // the gain's sums and dy_ to the bias's (when given).
  static void ln_backward(const T* dy_, const T* gain, const T* v, T mean, T rstd, int64_t n,
                          T* out, T* gain_sum, T* bias_sum) {
    constexpr int64_t L = vlen<T>();
    const Vec<T> vm(mean), vr(rstd);
    Vec<T> s1(T(0)), s2(T(0));
    for (int64_t k = 0; k < n; k += L) {
      const int64_t c = std::min(L, n - k);
      const Vec<T> d = vload(dy_ + k, c);
      const Vec<T> dy = d * vload(gain + k, c);
      const Vec<T> vh = (vload(v + k, c) - vm) * vr;
      vstore(vload(gain_sum + k, c) + d * vh, gain_sum + k, c);
      if (bias_sum) vstore(vload(bias_sum + k, c) + d, bias_sum + k, c);
      s1 = s1 + dy;
      s2 = s2 + (c == L ? dy * vh : Vec<T>::set(Vec<T>(T(0)), dy * vh, c));
    }
    auto sum_all = [](const Vec<T>& a) {
      return at::vec::vec_reduce_all<T>([](Vec<T>& x, Vec<T>& y) { return x + y; }, a);
    };
    const Vec<T> m1(sum_all(s1) / T(n)), m2(sum_all(s2) / T(n));
    for (int64_t k = 0; k < n; k += L) {
      const int64_t c = std::min(L, n - k);
      const Vec<T> dy = vload(dy_ + k, c) * vload(gain + k, c);
      const Vec<T> vh = (vload(v + k, c) - vm) * vr;
      vstore(vr * (dy - m1 - vh * m2), out + k, c);
    }
  }

};

struct Options {
  double rate_h, rate_c, cell_clip;
  bool coupled;
};

// Checked and converted arguments shared by forward and backward.
struct Args {
  Tensor x, h0, c0, w_ih, w_hh, bias, w_peep, w_hr, ln_ih, ln_hh, ln_cw, ln_cb;
  Tensor h_mask, zo_h, zo_c;
  Tensor x_op;  // x as the left operand of the input product (float without AVX512-BF16)
  int64_t T = 0, B = 0, H = 0, P = 0, G = 0, I = 0;
  at::ScalarType ct;  // compute type
  bool bf16 = false;

  Args(const Tensor& x_, const Tensor& h0_, const Tensor& c0_,
       const std::vector<OptTensor>& params, const std::vector<OptTensor>& masks,
       const OptTensor& batch_sizes, bool coupled) {
    auto get = [](const std::vector<OptTensor>& v, size_t k) {
      return k < v.size() && v[k] && v[k]->defined() ? v[k]->contiguous() : Tensor();
    };
    TORCH_CHECK(params.size() == 10 && masks.size() == 3,
                "lstmkit fused: lstm expects 10 parameters and 3 masks");
    x = x_.contiguous();
    bf16 = x.scalar_type() == at::kBFloat16;
    ct = bf16 ? at::kFloat : x.scalar_type();
    x_op = bf16 && !LSTMKIT_BF16_DP ? x.to(at::kFloat) : x;
    TORCH_CHECK(ct == at::kFloat || ct == at::kDouble, "lstmkit fused: unsupported dtype ",
                x.scalar_type());
    auto conv = [&](const Tensor& t) { return t.defined() ? t.to(ct).contiguous() : t; };
    h0 = conv(h0_);
    c0 = conv(c0_);
    w_ih = get(params, 0);
    w_hh = get(params, 1);
    TORCH_CHECK(w_ih.scalar_type() == x.scalar_type() && w_hh.scalar_type() == x.scalar_type(),
                "lstmkit fused: the weights must have the dtype of the input");
    const Tensor b_ih = get(params, 2), b_hh = get(params, 3);
    if (b_ih.defined()) bias = b_hh.defined() ? b_ih.to(ct) + b_hh.to(ct) : b_ih.to(ct);
    w_peep = conv(get(params, 4));
    w_hr = get(params, 5);
    ln_ih = conv(get(params, 6));
    ln_hh = conv(get(params, 7));
    ln_cw = conv(get(params, 8));
    ln_cb = conv(get(params, 9));
    h_mask = conv(get(masks, 0));
    zo_h = conv(get(masks, 1));
    zo_c = conv(get(masks, 2));
    T = batch_sizes ? batch_sizes->size(0) : x.size(0);
    B = h0.size(0);
    H = c0.size(1);
    P = h0.size(1);
    G = w_ih.size(0);
    I = w_ih.size(1);
    TORCH_CHECK(G == (coupled ? 3 : 4) * H, "lstmkit fused: weight_ih has ", G,
                " rows, expected ", (coupled ? 3 : 4) * H);
    TORCH_CHECK(w_hh.size(0) == G && w_hh.size(1) == P, "lstmkit fused: weight_hh shape");
  }
  at::TensorOptions opts() const { return x.options().dtype(ct); }
  // the input rows (N, I)
  Tensor x2() const { return x.reshape({-1, I}); }
};

template <typename T, typename TA>
void setup_fwd(Fwd<T, TA>& f, const Args& a, const Layout& lay, const Options& o) {
  f.lay = &lay;
  f.B = a.B;
  f.H = a.H;
  f.P = a.P;
  f.G = a.G;
  f.coupled = o.coupled;
  f.s = GateSlots(o.coupled);
  f.proj = a.w_hr.defined();
  f.ln = a.ln_hh.defined();
  f.clip_on = o.cell_clip > 0;
  f.clip = static_cast<T>(o.cell_clip);
  f.zh = a.zo_h.defined() || o.rate_h != 0;
  f.zc = a.zo_c.defined() || o.rate_c != 0;
  f.rate_h = static_cast<T>(o.rate_h);
  f.rate_c = static_cast<T>(o.rate_c);
  if (a.w_peep.defined()) {
    const T* p = a.w_peep.data_ptr<T>();
    f.p_i = p;
    f.p_f = o.coupled ? nullptr : p + a.H;
    f.p_o = p + (o.coupled ? a.H : 2 * a.H);
  }
  f.g_hh = ptr<T>(a.ln_hh);
  f.lnc_w = ptr<T>(a.ln_cw);
  f.lnc_b = ptr<T>(a.ln_cb);
  f.h_mask = ptr<T>(a.h_mask);
  f.zo_h = ptr<T>(a.zo_h);
  f.zo_c = ptr<T>(a.zo_c);
  f.mirror = a.h_mask.defined() || !std::is_same_v<T, TA>;
  f.in.lay = &lay;
  f.in.x = a.x_op.data_ptr<TA>();
  f.in.I = a.I;
  f.in.G = a.G;
  f.in.H = a.H;
  f.in.bias = ptr<T>(a.bias);
  f.in.g_ih = ptr<T>(a.ln_ih);
}

// The forward of one scan (mode kInference, kSave or kStates). Returns {y, h_n, c_n, saved...}.
template <typename T, typename TA>
std::vector<Tensor> forward_impl(const Args& a, const Layout& lay, const Options& o,
                                 int64_t mode) {
  const bool save = mode != kInference;
  const int64_t N = lay.N, B = a.B, H = a.H, P = a.P, G = a.G;
  const auto opts = a.opts();
  Fwd<T, TA> f;
  setup_fwd(f, a, lay, o);
  f.save = save;
  auto in = f.in.allocate(save, opts);
  f.gates = f.in.gates;
  const Packed Wih = pack_rows(a.w_ih, G / H, kind_for<TA>());
  f.in.W = &Wih;
  const Packed Whh = pack_rows(a.w_hh, G / H, kind_for<TA>());
  const Packed Whr = f.proj ? pack_rows(a.w_hr, 1, kind_for<T>()) : Packed();
  f.Whh = &Whh;
  f.Whr = f.proj ? &Whr : nullptr;
  const int64_t S = save ? N : 2 * B;  // state rows
  Tensor gates = in[0], hs = empty_big({S, P}, opts), cs = empty_big({S, H}, opts);
  Tensor ha = f.mirror ? empty_big({S, P}, opts.dtype(c10::CppTypeToScalarType<TA>())) : Tensor();
  Tensor y = empty_big({N, P}, opts), h_n = at::empty({B, P}, opts), c_n = at::empty({B, H}, opts);
  const int64_t R = save ? N : B;  // rows of per-step buffers
  // c' apart from the state: with zoneout (the state is then another value), layer norm (LN_c
  // reads the whole row of c'), and when saving with peepholes (backward reads c' per row)
  const bool need_cnew = f.zc || f.ln || (save && a.w_peep.defined());
  Tensor cnew = need_cnew ? empty_big({R, H}, opts) : Tensor();
  Tensor m_all = f.proj ? empty_big({R, H}, opts) : Tensor();
  Tensor hraw = f.proj ? at::empty({B, P}, opts) : Tensor();
  Tensor u, mean_hh, rstd_hh, c_out, mean_c, rstd_c;
  if (f.ln) {
    u = empty_big({R, G}, opts);
    mean_hh = at::empty({R}, opts);
    rstd_hh = at::empty({R}, opts);
    c_out = empty_big({R, H}, opts);
    mean_c = at::empty({R}, opts);
    rstd_c = at::empty({R}, opts);
  }
  f.hs = ptr<T>(hs);
  f.cs = ptr<T>(cs);
  f.ha = f.mirror ? ptr<TA>(ha) : reinterpret_cast<TA*>(f.hs);
  f.cnew = ptr<T>(cnew);
  f.m_all = ptr<T>(m_all);
  f.hraw = ptr<T>(hraw);
  f.y = ptr<T>(y);
  f.h_n = ptr<T>(h_n);
  f.c_n = ptr<T>(c_n);
  f.u = ptr<T>(u);
  f.mean_hh = ptr<T>(mean_hh);
  f.rstd_hh = ptr<T>(rstd_hh);
  f.c_out = ptr<T>(c_out);
  f.mean_c = ptr<T>(mean_c);
  f.rstd_c = ptr<T>(rstd_c);

  // initial state: rows of the first step into slot 0, rows of empty sequences straight out
  const int64_t n0 = lay.T ? lay.n[0] : 0;
  if (n0) {
    hs.narrow(0, 0, n0).copy_(a.h0.narrow(0, 0, n0));
    cs.narrow(0, 0, n0).copy_(a.c0.narrow(0, 0, n0));
    if (f.mirror) {
      Tensor h = a.h_mask.defined() ? a.h0.narrow(0, 0, n0) * a.h_mask.narrow(0, 0, n0)
                                     : a.h0.narrow(0, 0, n0);
      ha.narrow(0, 0, n0).copy_(h);
    }
  }
  if (n0 < B) {
    h_n.narrow(0, n0, B - n0).copy_(a.h0.narrow(0, n0, B - n0));
    c_n.narrow(0, n0, B - n0).copy_(a.c0.narrow(0, n0, B - n0));
  }
  const int nt = team_size(n0 * std::max(P, a.I) * G);
  f.row_split = nt == 1 || split_rows(n0, nt, a.w_hh.numel() * int64_t(sizeof(TA)), false);
  run_team(nt, [&](const Team& team) { f.run(team); });

  std::vector<Tensor> out{y, h_n, c_n};
  if (mode == kSave) {
    out.insert(out.end(), {gates, hs, cs, cnew, m_all, ha, in[1], in[2], in[3], u, mean_hh,
                           rstd_hh, c_out, mean_c, rstd_c});
  } else if (mode == kStates) {
    out.insert(out.end(), {Tensor(), hs, cs});
    for (int k = 0; k < 12; ++k) out.emplace_back();
  }
  return out;
}

// The replay of a kStates forward: everything a kSave forward would have saved.
template <typename T, typename TA>
std::vector<Tensor> replay_impl(const Args& a, const Layout& lay, const Options& o,
                                const Tensor& hs, const Tensor& cs) {
  const int64_t N = lay.N, H = a.H, P = a.P, G = a.G;
  const auto opts = a.opts();
  Fwd<T, TA> f;
  setup_fwd(f, a, lay, o);
  f.save = true;
  f.replay = true;
  auto in = f.in.allocate(true, opts);
  f.gates = f.in.gates;
  const Packed Wih = pack_rows(a.w_ih, G / H, kind_for<TA>());
  f.in.W = &Wih;
  const Packed Whh = pack_rows(a.w_hh, G / H, kind_for<TA>());
  f.Whh = &Whh;
  // the recurrent product's operand, h * m_h as TA, rebuilt as forward built it
  Tensor ha = f.mirror ? empty_big({N, P}, opts.dtype(c10::CppTypeToScalarType<TA>())) : Tensor();
  if (f.mirror) {
    const T* h = hs.data_ptr<T>();
    const T* mask = f.h_mask;
    TA* d = ha.data_ptr<TA>();
    at::parallel_for(0, lay.T, 1, [&](int64_t t0, int64_t t1) {
      constexpr int64_t L = vlen<T>();
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t b = 0; b < lay.n[t]; ++b) {
          const int64_t r = lay.off[t] + b;
          for (int64_t k = 0; k < P; k += L) {
            const int64_t c = std::min(L, P - k);
            Vec<T> v = vload(h + r * P + k, c);
            if (mask) v = v * vload(mask + b * P + k, c);
            if constexpr (std::is_same_v<TA, T>) {
              vstore(v, d + r * P + k, c);
            } else {
              store_bf16(v, d + r * P + k, c);
            }
          }
        }
      }
    });
  }
  Tensor y = empty_big({N, P}, opts);  // outputs are recomputed and dropped
  const bool need_cnew = f.zc || f.ln || a.w_peep.defined();
  Tensor cnew = need_cnew ? empty_big({N, H}, opts) : Tensor();
  Tensor m_all = f.proj ? empty_big({N, H}, opts) : Tensor();
  Tensor u, mean_hh, rstd_hh, c_out, mean_c, rstd_c;
  if (f.ln) {
    u = empty_big({N, G}, opts);
    mean_hh = at::empty({N}, opts);
    rstd_hh = at::empty({N}, opts);
    c_out = empty_big({N, H}, opts);
    mean_c = at::empty({N}, opts);
    rstd_c = at::empty({N}, opts);
  }
  f.hs = ptr<T>(hs);
  f.cs = ptr<T>(cs);
  f.ha = f.mirror ? ptr<TA>(ha) : reinterpret_cast<TA*>(f.hs);
  f.cnew = ptr<T>(cnew);
  f.m_all = ptr<T>(m_all);
  f.y = ptr<T>(y);
  f.u = ptr<T>(u);
  f.mean_hh = ptr<T>(mean_hh);
  f.rstd_hh = ptr<T>(rstd_hh);
  f.c_out = ptr<T>(c_out);
  f.mean_c = ptr<T>(mean_c);
  f.rstd_c = ptr<T>(rstd_c);
  run_team(team_size(lay.N * std::max(P, a.I) * G / std::max<int64_t>(lay.T, 1)),
           [&](const Team& team) { f.run_replay(team); });
  // in the order of a kSave forward's saved tensors
  return {in[0], hs, cs, cnew, m_all, ha, in[1], in[2], in[3], u, mean_hh, rstd_hh, c_out,
          mean_c, rstd_c};
}

template <typename T, typename TA>
std::vector<Tensor> backward_impl(const Args& a, const Layout& lay, const Options& o,
                                  const Tensor& gy_, const Tensor& gh, const Tensor& gc,
                                  std::vector<Tensor> sv, bool need_dx) {
  const int64_t N = lay.N, B = a.B, H = a.H, P = a.P, G = a.G;
  const auto opts = a.opts();
  const Tensor c_n = sv.size() > 15 ? sv[15] : Tensor();
  if (!sv[0].defined()) sv = replay_impl<T, TA>(a, lay, o, sv[1], sv[2]);
  const Tensor &gates = sv[0], &hs = sv[1], &cs = sv[2], &cnew = sv[3], &m_all = sv[4];
  const Tensor &ha = sv[5], &xw = sv[6], &mean_ih = sv[7], &rstd_ih = sv[8], &u = sv[9];
  const Tensor &mean_hh = sv[10], &rstd_hh = sv[11], &c_out = sv[12], &mean_c = sv[13];
  const Tensor& rstd_c = sv[14];
  const Tensor gy = gy_.to(a.ct).reshape({N, P}).contiguous();

  Bwd<T, TA> b;
  b.lay = &lay;
  b.B = B;
  b.H = H;
  b.P = P;
  b.G = G;
  b.coupled = o.coupled;
  b.s = GateSlots(o.coupled);
  b.proj = a.w_hr.defined();
  b.ln = a.ln_hh.defined();
  b.clip_on = o.cell_clip > 0;
  b.clip = static_cast<T>(o.cell_clip);
  b.zh = a.zo_h.defined() || o.rate_h != 0;
  b.zc = a.zo_c.defined() || o.rate_c != 0;
  b.rate_h = static_cast<T>(o.rate_h);
  b.rate_c = static_cast<T>(o.rate_c);
  if (a.w_peep.defined()) {
    const T* p = a.w_peep.data_ptr<T>();
    b.p_i = p;
    b.p_f = o.coupled ? nullptr : p + H;
    b.p_o = p + (o.coupled ? H : 2 * H);
  }
  b.g_hh = ptr<T>(a.ln_hh);
  b.lnc_w = ptr<T>(a.ln_cw);
  b.h_mask = ptr<T>(a.h_mask);
  b.zo_h = ptr<T>(a.zo_h);
  b.zo_c = ptr<T>(a.zo_c);
  const Packed Whh = pack_cols(a.w_hh, kind_for<TA>());
  const Packed Whr = b.proj ? pack_cols(a.w_hr, kind_for<T>()) : Packed();
  b.Whh = &Whh;
  b.Whr = b.proj ? &Whr : nullptr;
  b.gates = ptr<T>(gates);
  b.cs = ptr<T>(cs);
  b.cnew = ptr<T>(cnew);
  b.c_n = ptr<T>(c_n);
  b.u = ptr<T>(u);
  b.mean_hh = ptr<T>(mean_hh);
  b.rstd_hh = ptr<T>(rstd_hh);
  b.mean_c = ptr<T>(mean_c);
  b.rstd_c = ptr<T>(rstd_c);
  b.c_out = ptr<T>(c_out);
  b.gy = ptr<T>(gy);
  TORCH_CHECK(cnew.defined() || c_n.defined(), "lstmkit fused: lstm backward needs c_n");

  Tensor dA = empty_big({N, G}, opts);
  Tensor dAm = std::is_same_v<TA, T> ? Tensor()
                                     : empty_big({N, G}, opts.dtype(c10::CppTypeToScalarType<TA>()));
  Tensor dU = b.ln ? empty_big({N, G}, opts) : Tensor();
  Tensor dh = gh.to(a.ct).contiguous().clone(), dc = gc.to(a.ct).contiguous().clone();
  Tensor dhr = at::empty({B, P}, opts);
  Tensor dhraw = b.proj ? empty_big({N, P}, opts) : Tensor();
  Tensor dm = b.proj ? at::empty({B, H}, opts) : Tensor();
  Tensor dco = b.ln ? empty_big({N, H}, opts) : Tensor();
  b.dA = ptr<T>(dA);
  b.dAm = ptr<TA>(dAm);
  b.dU = ptr<T>(dU);
  b.dh = ptr<T>(dh);
  b.dc = ptr<T>(dc);
  b.dhr = ptr<T>(dhr);
  b.dhraw = ptr<T>(dhraw);
  b.dm = ptr<T>(dm);
  b.dco = ptr<T>(dco);
  const bool ln_ih_in_loop = b.ln && a.ln_ih.defined();
  Tensor d_in = dA, d_ln_ih;
  if (ln_ih_in_loop) {
    d_in = empty_big({N, G}, opts);
    b.d_in = ptr<T>(d_in);
    b.g_ih = ptr<T>(a.ln_ih);
    b.xw = ptr<T>(xw);
    b.mean_ih = ptr<T>(mean_ih);
    b.rstd_ih = ptr<T>(rstd_ih);
  }
  const int64_t n0 = lay.T ? lay.n[0] : 0;
  const int nt = team_size(n0 * P * G);
  // the column sums' lanes
  const int64_t n_peep = a.w_peep.defined() ? (o.coupled ? 2 : 3) * H : 0;
  b.o_ghh = 0;
  b.o_wc = b.ln ? G : 0;
  b.o_bc = b.o_wc + (b.ln ? H : 0);
  b.o_gih = b.o_bc + (b.ln ? H : 0);
  b.o_peep = b.o_gih + (ln_ih_in_loop ? G : 0);
  b.acc_stride = b.o_peep + n_peep;
  Tensor acc = b.acc_stride ? at::zeros({n0, b.acc_stride}, opts) : Tensor();
  b.acc = ptr<T>(acc);
  b.row_split = nt == 1 || split_rows(n0, nt, a.w_hh.numel() * int64_t(sizeof(TA)), true);
  run_team(nt, [&](const Team& team) { b.run(team); });
  const Tensor sums = acc.defined() ? col_dot(acc, Tensor()) : Tensor();

  // dh0: the carry, plus what step 0's recurrent product sends back through the dropout mask
  Tensor dh0 = initial_state_grad(dh, dhr, a.h_mask, n0);
  // the products over all rows
  const Tensor operand = std::is_same_v<TA, T> ? (b.ln ? dU : dA) : dAm;
  if (ln_ih_in_loop) {
    d_ln_ih = sums.narrow(0, b.o_gih, G);
  } else if (a.ln_ih.defined()) {
    std::tie(d_in, d_ln_ih) = ln_ih_backward(dA, xw, G, mean_ih, rstd_ih, a.ln_ih);
  }
  const Tensor d_in_op = a.bf16 ? (a.ln_ih.defined() || !std::is_same_v<TA, BF16> ? d_in.to(at::kBFloat16) : dAm)
                                : d_in;
  const Tensor x2 = a.x2();
  const Tensor hr = ha.defined() ? ha : hs;
  Tensor dx = need_dx ? product(d_in_op, a.w_ih, false).view(a.x.sizes()) : Tensor();
  Tensor dw_ih = product(d_in_op, x2, true);
  Tensor dw_hh = product(operand, hr, true);
  Tensor db_ih, db_hh;
  if (a.bias.defined()) {
    db_ih = dA.sum(0);
    db_hh = db_ih;
  }
  const Tensor dpeep = n_peep ? sums.narrow(0, b.o_peep, n_peep) : Tensor();
  Tensor dw_hr = b.proj ? product(dhraw, m_all, true) : Tensor();
  Tensor dg_hh, dw_c, db_c;
  if (b.ln) {
    dg_hh = sums.narrow(0, b.o_ghh, G);
    dw_c = sums.narrow(0, b.o_wc, H);
    db_c = sums.narrow(0, b.o_bc, H);
  }
  return {dx, dh0, dc, dw_ih, dw_hh, db_ih, db_hh, dpeep, dw_hr, d_ln_ih, dg_hh, dw_c, db_c};
}

// Dispatch on (compute type, operand type).
template <typename F>
auto dispatch(const Args& a, const F& fn) {
  if (a.ct == at::kDouble) return fn(double(), double());
  if (a.bf16 && LSTMKIT_BF16_DP) return fn(float(), BF16());
  return fn(float(), float());
}

}  // namespace

std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                 const std::vector<OptTensor>& params,
                                 const std::vector<OptTensor>& masks,
                                 const OptTensor& batch_sizes, double rate_h, double rate_c,
                                 double cell_clip, bool coupled, int64_t mode) {
  c10::NoGradGuard no_grad;
  const Args a(x, h0, c0, params, masks, batch_sizes, coupled);
  const Layout lay(batch_sizes, a.T, a.B);
  TORCH_CHECK(a.x2().size(0) == lay.N, "lstmkit fused: x has ", a.x2().size(0),
              " rows, the batch sizes add up to ", lay.N);
  const Options o{rate_h, rate_c, cell_clip, coupled};
  auto out = dispatch(a, [&](auto t, auto ta) {
    return forward_impl<decltype(t), decltype(ta)>(a, lay, o, mode);
  });
  if (a.bf16) out[0] = out[0].to(at::kBFloat16);
  return out;
}

std::vector<Tensor> lstm_backward(const Tensor& gy, const Tensor& gh, const Tensor& gc,
                                  const Tensor& x, const Tensor& h0, const Tensor& c0,
                                  const std::vector<OptTensor>& params,
                                  const std::vector<OptTensor>& masks,
                                  const OptTensor& batch_sizes, double rate_h, double rate_c,
                                  double cell_clip, bool coupled,
                                  const std::vector<OptTensor>& saved, bool need_dx) {
  c10::NoGradGuard no_grad;
  const Args a(x, h0, c0, params, masks, batch_sizes, coupled);
  const Layout lay(batch_sizes, a.T, a.B);
  const Options o{rate_h, rate_c, cell_clip, coupled};
  std::vector<Tensor> sv;
  for (const auto& t : saved) sv.push_back(t && t->defined() ? *t : Tensor());
  TORCH_CHECK(sv.size() == 16, "lstmkit fused: lstm backward expects 16 saved tensors");
  return dispatch(a, [&](auto t, auto ta) {
    return backward_impl<decltype(t), decltype(ta)>(a, lay, o, gy, gh, gc, sv, need_dx);
  });
}

}  // namespace lstmkit
