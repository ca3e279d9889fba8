// Fused GRU scan: forward and hand-written backward through time. Gate order r, z, n as
// torch.nn.GRU; hr = h_{t-1} * m_h is the state as it enters the recurrent products
// (variational recurrent dropout), while the interpolation uses h_{t-1} itself.
//
// reset_after = true (torch, cuDNN):
//   a      = x_t W_ih^T + b_ih + [b_hr, b_hz, 0]     (all steps: one GEMM up front)
//   u      = hr W_hh^T,  u_n' = u_n + b_hn            (one GEMM per step)
//   r = sigmoid(a_r + u_r),  z = sigmoid(a_z + u_z),  n = tanh(a_n + r * u_n')
//   h'     = (1 - z) * n + z * h_{t-1}
// backward, with dh' the gradient of h' after the carry (scan.h):
//   dn = dh' (1 - z),  dz = dh' (h_{t-1} - n),  dh_{t-1} += dh' z
//   da_n = dn (1 - n^2),  da_r = da_n u_n' r (1 - r),  da_z = dz z (1 - z)
//   the input side gets da = [da_r, da_z, da_n], the recurrent side du = [da_r, da_z, da_n r]:
//   dh_{t-1} += (du W_hh) * m_h,  dW_hh = du^T Hr,  db_hh = sum du,  dW_ih = da^T X, ...
//
// reset_after = false (Cho et al. 2014):
//   a      = x_t W_ih^T + b_ih + b_hh
//   [u_r, u_z] = hr W_hrz^T;  r, z as above;  s = r * hr;  u_n = s W_hn^T   (two GEMMs per step)
//   n = tanh(a_n + u_n),  h' = (1 - z) * n + z * h_{t-1}
// backward: dn, dz, da_n, da_z as above, then
//   ds = da_n W_hn,  da_r = ds hr r (1 - r),  dhr = ds r + [da_r, da_z] W_hrz,
//   dh_{t-1} += dhr * m_h,  dW_hrz = [da_r, da_z]^T Hr,  dW_hn = da_n^T S,  db_ih = db_hh = sum da.
//
// layer_norm: LN_ih on x_t W_ih^T; LN_hh on the recurrent product, as one 3H vector with
// reset_after and as two (2H for r, z and H for n) without. u above is then LN_hh of the raw
// product (times its gain), and the gradients of the raw products (which the GEMMs take) come
// from du through the LN backward.
//
// Layout, threads, recompute: as the LSTM (lstm.cpp): rows packed by step, the row split
// (each thread its own sequences, no barrier) for batches large enough, else a unit split with
// a barrier between dependent phases; recompute replays the steps from the saved states.
#include "ops.h"

#include "scan.h"

namespace lstmkit {
namespace {

template <typename T, typename TA>
struct GruFwd {
  const Layout* lay = nullptr;
  int64_t B = 0, H = 0, G = 0;
  bool reset_after = true, save = false, replay = false, ln = false, row_split = false;
  const Packed* W = nullptr;   // reset_after: all 3H rows; else the r, z rows (2H)
  const Packed* Wn = nullptr;  // reset_before: the n rows
  const T* b_hn = nullptr;     // reset_after: b_hh of n (H), or null
  const T* g_hh = nullptr;     // LN_hh gains (3H) or null
  InProj<T, TA> in;
  HSide<T, TA> hsd;
  T* gates = nullptr;  // gate rows: a in, activations r, z, n out
  T* ex = nullptr;     // (N or B, H): u_n' (reset_after) or s = r * hr (reset_before)
  TA* exa = nullptr;   // s as the operand of the n product (= ex without a mirror)
  T* u = nullptr;      // (N or B, 3H) raw recurrent products
  T *mean = nullptr, *rstd = nullptr, *mean_n = nullptr, *rstd_n = nullptr;  // LN stats

  int64_t srow(int64_t t, int64_t b) const { return save ? lay->off[t] + b : b; }
  int64_t grow(int64_t t, int64_t b) const { return in.grow(t, b); }

  // LN of v (n values) into out: (v - mean) rstd g, keeping the statistics.
  static void ln_apply(const T* v, int64_t n, const T* g, T* out, T& mean_, T& rstd_) {
    constexpr int64_t L = vlen<T>();
    row_moments(v, n, mean_, rstd_);
    const Vec<T> vm(mean_), vr(rstd_);
    for (int64_t k = 0; k < n; k += L) {
      const int64_t c = std::min(L, n - k);
      vstore((vload(v + k, c) - vm) * vr * vload(g + k, c), out + k, c);
    }
  }

  // reset_after, units [j0, j1) of row b, with u the recurrent product row (normalised).
  void cell_after(int64_t t, int64_t b, int64_t j0, int64_t j1, const T* ur) const {
    constexpr int64_t L = vlen<T>();
    T* a = gates + grow(t, b) * G;
    T* e = ex + srow(t, b) * H;
    const auto hr = hsd.row(t, b);
    const Vec<T> one(T(1));
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      const Vec<T> r = vsigmoid<T>(vload(a + j, n) + vload(ur + j, n));
      const Vec<T> z = vsigmoid<T>(vload(a + H + j, n) + vload(ur + H + j, n));
      Vec<T> un = vload(ur + 2 * H + j, n);
      if (b_hn) un = un + vload(b_hn + j, n);
      const Vec<T> nn = vtanh<T>(vload(a + 2 * H + j, n) + r * un);
      if (save) {
        vstore(r, a + j, n);
        vstore(z, a + H + j, n);
        vstore(nn, a + 2 * H + j, n);
        vstore(un, e + j, n);
      }
      if (replay) continue;
      hsd.emit(hr, j, n, (one - z) * nn + z * vload(hr.hp + j, n));
    }
  }

  // reset_before, first half: r, z and s = r * hr of units [j0, j1) of row b.
  void cell_rz(int64_t t, int64_t b, int64_t j0, int64_t j1, const T* ur) const {
    constexpr int64_t L = vlen<T>();
    T* a = gates + grow(t, b) * G;
    T* e = ex + srow(t, b) * H;
    TA* ea = exa + srow(t, b) * H;
    const T* hp = hsd.prev(t, b);
    const T* mask = hsd.h_mask ? hsd.h_mask + b * H : nullptr;
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      const Vec<T> r = vsigmoid<T>(vload(a + j, n) + vload(ur + j, n));
      const Vec<T> z = vsigmoid<T>(vload(a + H + j, n) + vload(ur + H + j, n));
      vstore(r, a + j, n);
      vstore(z, a + H + j, n);
      Vec<T> hr = vload(hp + j, n);
      if (mask) hr = hr * vload(mask + j, n);
      const Vec<T> sv = r * hr;
      vstore(sv, e + j, n);
      if constexpr (!std::is_same_v<TA, T>) store_bf16(sv, ea + j, n);
    }
  }

  // reset_before, second half: n and h' of units [j0, j1) of row b, un the n product row.
  void cell_n(int64_t t, int64_t b, int64_t j0, int64_t j1, const T* un) const {
    constexpr int64_t L = vlen<T>();
    T* a = gates + grow(t, b) * G;
    const auto hr = hsd.row(t, b);
    const Vec<T> one(T(1));
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      const Vec<T> z = vload(a + H + j, n);
      const Vec<T> nn = vtanh<T>(vload(a + 2 * H + j, n) + vload(un + j, n));
      if (save) vstore(nn, a + 2 * H + j, n);
      if (replay) continue;
      hsd.emit(hr, j, n, (one - z) * nn + z * vload(hr.hp + j, n));
    }
  }

  // The normalised recurrent product of row b (in place into scratch when given).
  const T* norm_u(int64_t t, int64_t b, int64_t off, int64_t n, T* sc, T* m_, T* r_) const {
    const int64_t sr = srow(t, b);
    const T* ur = u + sr * G + off;
    if (!ln) return ur;
    ln_apply(ur, n, g_hh + off, sc + off, m_[sr], r_[sr]);
    return sc;
  }

  // ---- products of panel p for the rows `rs` of step t
  void product_u(int64_t t, int64_t p, const Rows& rs) const {
    gemm_panel<T, TA>(*W, p, rs.count, hsd.operand(t, rs.b0), rs.stride * H,
                      u + srow(t, rs.b0) * G, rs.stride * G, H, Init::kZero);
  }
  void product_n(int64_t t, int64_t p, const Rows& rs) const {
    gemm_panel<T, TA>(*Wn, p, rs.count, exa + srow(t, rs.b0) * H, rs.stride * H,
                      u + srow(t, rs.b0) * G + 2 * H, rs.stride * G, H, Init::kZero);
  }

  // the pointwise work after the first product, rows rs, units [j0, j1) (no layer norm)
  __attribute__((noinline)) void units_first(int64_t t, const Rows& rs, int64_t j0,
                                             int64_t j1) const {
    for (int64_t i = 0; i < rs.count; ++i) {
      const int64_t b = rs.at(i);
      const T* ur = u + srow(t, b) * G;
      if (reset_after) {
        cell_after(t, b, j0, j1, ur);
      } else {
        cell_rz(t, b, j0, j1, ur);
      }
    }
  }
  __attribute__((noinline)) void units_n(int64_t t, const Rows& rs, int64_t j0, int64_t j1) const {
    for (int64_t i = 0; i < rs.count; ++i) {
      const int64_t b = rs.at(i);
      cell_n(t, b, j0, j1, u + srow(t, b) * G + 2 * H);
    }
  }
  // with layer norm, whole rows: first half
  __attribute__((noinline)) void ln_first(int64_t t, int64_t b, T* sc) const {
    if (reset_after) {
      cell_after(t, b, 0, H, norm_u(t, b, 0, G, sc, mean, rstd));
    } else {
      cell_rz(t, b, 0, H, norm_u(t, b, 0, 2 * H, sc, mean, rstd));
    }
  }
  __attribute__((noinline)) void ln_n(int64_t t, int64_t b, T* sc) const {
    cell_n(t, b, 0, H, norm_u(t, b, 2 * H, H, sc, mean_n, rstd_n) + 2 * H);
  }

  // One step for rows this thread owns (row split): no barrier.
  void step_rows(int64_t t, const Rows& rs, T* sc) const {
    for (int64_t p = 0; p < W->panels; ++p) product_u(t, p, rs);
    for (int64_t i = 0; i < rs.count && ln; ++i) ln_first(t, rs.at(i), sc);
    if (!ln) units_first(t, rs, 0, H);
    if (reset_after) return;
    for (int64_t p = 0; p < Wn->panels; ++p) product_n(t, p, rs);
    for (int64_t i = 0; i < rs.count && ln; ++i) ln_n(t, rs.at(i), sc);
    if (!ln) units_n(t, rs, 0, H);
  }

  void run_rows(const Team& team) const {
    std::vector<T> sc(G);
    for (int64_t t = 0; t < lay->T; ++t) {
      if (lay->n[t] == 0) break;
      if (in.chunk_starts(t)) in.own(t, in.gnext[t], team.tid, team.nt);
      const Rows rs = Rows::owned(lay->n[t], team.tid, team.nt);
      if (rs.count) step_rows(t, rs, sc.data());
    }
  }

  void run_units(const Team& team) const {
    std::vector<T> sc(G);
    for (int64_t t = 0; t < lay->T; ++t) {
      const int64_t n = lay->n[t];
      if (n == 0) break;
      if (in.chunk_starts(t)) in.team(team, t, in.gnext[t]);
      for (int half = 0; half < (reset_after ? 1 : 2); ++half) {
        const Packed& Wp = half ? *Wn : *W;
        const Items it(Wp, n, team.nt);
        auto [i0, i1] = team.share(it.count());
        for (int64_t i = i0; i < i1; ++i) {
          const Rows rs{it.r0(i), 1, it.r1(i) - it.r0(i)};
          if (rs.count <= 0) continue;
          if (half) {
            product_n(t, it.panel(i), rs);
          } else {
            product_u(t, it.panel(i), rs);
          }
        }
        if (!ln) {
          it.segments(i0, i1, H, Wp.NB, [&](const Rows& rs, int64_t j0, int64_t j1) {
            if (half) {
              units_n(t, rs, j0, j1);
            } else {
              units_first(t, rs, j0, j1);
            }
          });
        }
        team.barrier();
        if (ln) {
          auto [b0, b1] = team.share(n);
          for (int64_t b = b0; b < b1; ++b) {
            if (half) {
              ln_n(t, b, sc.data());
            } else {
              ln_first(t, b, sc.data());
            }
          }
          team.barrier();
        }
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

  // replay from the saved states: every (step, block of rows) on its own
  void run_replay(const Team& team) const {
    std::vector<T> sc(G);
    if (lay->T) in.team(team, 0, lay->T);
    constexpr int64_t kRows = 24;
    std::vector<std::pair<int64_t, int64_t>> items;
    for (int64_t t = 0; t < lay->T; ++t) {
      for (int64_t r = 0; r < lay->n[t]; r += kRows) items.emplace_back(t, r);
    }
    auto [i0, i1] = team.share(static_cast<int64_t>(items.size()));
    for (int64_t i = i0; i < i1; ++i) {
      const auto [t, r0] = items[i];
      step_rows(t, Rows{r0, 1, std::min(lay->n[t], r0 + kRows) - r0}, sc.data());
    }
  }
};

template <typename T, typename TA>
struct GruBwd {
  const Layout* lay = nullptr;
  int64_t B = 0, H = 0, G = 0;
  bool reset_after = true, ln = false, row_split = false;
  const Packed* W = nullptr;   // dU W_hh (reset_after: K = 3H) or [du_r, du_z] W_rz (K = 2H)
  const Packed* Wn = nullptr;  // reset_before: du_n W_n (K = H)
  const T* g_hh = nullptr;
  HGrad<T> hg;
  const T* h_mask = nullptr;
  const T* gates = nullptr;  // (N, 3H) activations
  const T* hs = nullptr;     // (N, H) h before each step
  const T* ex = nullptr;     // (N, H)
  const T* u = nullptr;      // (N, 3H) raw products (layer norm)
  const T *mean = nullptr, *rstd = nullptr, *mean_n = nullptr, *rstd_n = nullptr;
  T* dA = nullptr;   // (N, 3H) input side
  T* dU = nullptr;   // (N, 3H) recurrent side (raw products: after the LN backward)
  TA* dUm = nullptr; // dU as TA (the products' operand)
  T* ds = nullptr;   // (B, H) reset_before: ds = du_n W_n

  int64_t prow(int64_t t, int64_t b) const { return lay->off[t] + b; }
  const TA* operand(int64_t t, int64_t b) const {
    if constexpr (std::is_same_v<TA, T>) {
      return dU + prow(t, b) * G;
    } else {
      return dUm + prow(t, b) * G;
    }
  }
  void mirror(int64_t t, int64_t b, int64_t k0, int64_t k1) const {
    if constexpr (!std::is_same_v<TA, T>) {
      constexpr int64_t L = vlen<T>();
      const T* src = dU + prow(t, b) * G;
      TA* d = dUm + prow(t, b) * G;
      for (int64_t k = k0; k < k1; k += L) store_bf16(vload(src + k, std::min(L, k1 - k)), d + k, std::min(L, k1 - k));
    }
  }
  // the normalised recurrent product (recomputed from the raw one and the statistics)
  Vec<T> unorm(int64_t pr, int64_t k, int64_t n, const T* m_, const T* r_) const {
    const Vec<T> v = vload(u + pr * G + k, n);
    if (!ln) return v;
    return (v - Vec<T>(m_[pr])) * Vec<T>(r_[pr]) * vload(g_hh + k, n);
  }

  // dh' and the z, n gradients of units [j0, j1) of row b (both forms); reset_after also r
  // and the recurrent-side gradients.
  void zn(int64_t t, int64_t b, int64_t j0, int64_t j1, T* sc) const {
    constexpr int64_t L = vlen<T>();
    hg(t, b, j0, j1, sc);
    const int64_t pr = prow(t, b);
    const T* a = gates + pr * G;
    const T* hp = hs + pr * H;
    const T* e = ex + pr * H;
    T* da = dA + pr * G;
    T* du = dU + pr * G;
    T* dh = hg.dh + b * H;
    const Vec<T> one(T(1));
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      const Vec<T> d = vload(sc + j, n);
      const Vec<T> z = vload(a + H + j, n), nn = vload(a + 2 * H + j, n);
      const Vec<T> dn = d * (one - z), dz = d * (vload(hp + j, n) - nn);
      vstore(vload(dh + j, n) + d * z, dh + j, n);
      const Vec<T> da_n = dn * (one - nn * nn);
      const Vec<T> da_z = dz * z * (one - z);
      vstore(da_z, da + H + j, n);
      vstore(da_n, da + 2 * H + j, n);
      if (reset_after) {
        const Vec<T> r = vload(a + j, n);
        const Vec<T> da_r = da_n * vload(e + j, n) * r * (one - r);
        vstore(da_r, da + j, n);
        vstore(da_r, du + j, n);
        vstore(da_z, du + H + j, n);
        vstore(da_n * r, du + 2 * H + j, n);
      } else {
        vstore(da_z, du + H + j, n);
        vstore(da_n, du + 2 * H + j, n);
      }
    }
  }

  // reset_before: with ds = du_n W_n known, da_r and the s part of dhr for units [j0, j1)
  void r_part(int64_t t, int64_t b, int64_t j0, int64_t j1) const {
    constexpr int64_t L = vlen<T>();
    const int64_t pr = prow(t, b);
    const T* a = gates + pr * G;
    const T* hp = hs + pr * H;
    const T* mask = h_mask ? h_mask + b * H : nullptr;
    const T* dsr = ds + b * H;
    T* da = dA + pr * G;
    T* du = dU + pr * G;
    T* dhr = hg.dhr + b * H;
    const Vec<T> one(T(1));
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      const Vec<T> r = vload(a + j, n), d = vload(dsr + j, n);
      Vec<T> hr = vload(hp + j, n);
      if (mask) hr = hr * vload(mask + j, n);
      const Vec<T> da_r = d * hr * r * (one - r);
      vstore(da_r, da + j, n);
      vstore(da_r, du + j, n);
      vstore(d * r, dhr + j, n);
    }
  }

  // LN backward of row b over [off, off + n) of du, in place (from the normalised-product
  // gradient to the raw-product gradient).
  void ln_back(int64_t t, int64_t b, int64_t off, int64_t n, const T* m_, const T* r_) const {
    constexpr int64_t L = vlen<T>();
    const int64_t pr = prow(t, b);
    T* d = dU + pr * G + off;
    const T* v = u + pr * G + off;
    const T* g = g_hh + off;
    const Vec<T> vm(m_[pr]), vr(r_[pr]);
    Vec<T> s1(T(0)), s2(T(0));
    for (int64_t k = 0; k < n; k += L) {
      const int64_t c = std::min(L, n - k);
      const Vec<T> dy = vload(d + k, c) * vload(g + k, c);
      const Vec<T> vh = (vload(v + k, c) - vm) * vr;
      s1 = s1 + dy;
      s2 = s2 + (c == L ? dy * vh : Vec<T>::set(Vec<T>(T(0)), dy * vh, c));
    }
    auto sum_all = [](const Vec<T>& x) {
      return at::vec::vec_reduce_all<T>([](Vec<T>& p, Vec<T>& q) { return p + q; }, x);
    };
    const Vec<T> m1(sum_all(s1) / T(n)), m2(sum_all(s2) / T(n));
    for (int64_t k = 0; k < n; k += L) {
      const int64_t c = std::min(L, n - k);
      const Vec<T> dy = vload(d + k, c) * vload(g + k, c);
      const Vec<T> vh = (vload(v + k, c) - vm) * vr;
      vstore(vr * (dy - m1 - vh * m2), d + k, c);
    }
  }

  // dhr (B rows) = operand(t + 1) W for the rows `rs` that ran at step t + 1 (reset_after:
  // the whole product; reset_before: added to the s part already in dhr)
  void dhr_panel(int64_t t, int64_t p, const Rows& rs) const {
    if (t + 1 >= lay->T) return;
    Rows r = rs;
    const int64_t n1 = lay->n[t + 1];
    r.count = n1 > rs.b0 ? std::min(rs.count, (n1 - rs.b0 + rs.stride - 1) / rs.stride) : 0;
    if (r.count == 0) return;
    gemm_panel<T, TA>(*W, p, r.count, operand(t + 1, r.b0), r.stride * G, hg.dhr + r.b0 * H,
                      r.stride * H, H, reset_after ? Init::kZero : Init::kLoad);
  }
  void ds_panel(int64_t t, int64_t p, const Rows& rs) const {
    gemm_panel<T, TA>(*Wn, p, rs.count, operand(t, rs.b0) + 2 * H, rs.stride * G,
                      ds + rs.b0 * H, rs.stride * H, H, Init::kZero);
  }

  __attribute__((noinline)) void zn_units(int64_t t, const Rows& rs, int64_t j0, int64_t j1,
                                          T* sc) const {
    for (int64_t q = 0; q < rs.count; ++q) {
      const int64_t b = rs.at(q);
      zn(t, b, j0, j1, sc);
      if (!ln) mirror_units(t, b, j0, j1);
    }
  }
  void mirror_units(int64_t t, int64_t b, int64_t j0, int64_t j1) const {
    if (reset_after) {
      for (int g = 0; g < 3; ++g) mirror(t, b, g * H + j0, g * H + j1);
    } else {
      mirror(t, b, H + j0, H + j1);
      mirror(t, b, 2 * H + j0, 2 * H + j1);
    }
  }
  __attribute__((noinline)) void r_units(int64_t t, const Rows& rs, int64_t j0, int64_t j1) const {
    for (int64_t q = 0; q < rs.count; ++q) {
      const int64_t b = rs.at(q);
      r_part(t, b, j0, j1);
      if (!ln) mirror(t, b, j0, j1);
    }
  }
  // the LN backward of the first product's part of row b (after zn, and r_part for
  // reset_before), then its operand copy
  void ln_first(int64_t t, int64_t b) const {
    ln_back(t, b, 0, reset_after ? G : 2 * H, mean, rstd);
    mirror(t, b, 0, reset_after ? G : 2 * H);
  }
  void ln_second(int64_t t, int64_t b) const {
    ln_back(t, b, 2 * H, H, mean_n, rstd_n);
    mirror(t, b, 2 * H, G);
  }

  // One step of the rows this thread owns (row split).
  void step_rows(int64_t t, const Rows& rs, T* sc) const {
    if (reset_after) {
      for (int64_t p = 0; p < W->panels; ++p) dhr_panel(t, p, rs);
      zn_units(t, rs, 0, H, sc);
      for (int64_t q = 0; q < rs.count && ln; ++q) ln_first(t, rs.at(q));
      return;
    }
    // reset_before: dhr of step t + 1's rz product was added at its end (below)
    zn_units(t, rs, 0, H, sc);
    for (int64_t q = 0; q < rs.count && ln; ++q) ln_second(t, rs.at(q));
    for (int64_t p = 0; p < Wn->panels; ++p) ds_panel(t, p, rs);
    r_units(t, rs, 0, H);
    for (int64_t q = 0; q < rs.count && ln; ++q) ln_first(t, rs.at(q));
  }

  void run_rows(const Team& team) const {
    std::vector<T> sc(G);
    for (int64_t t = lay->T - 1; t >= 0; --t) {
      const Rows rs = Rows::owned(lay->n[t], team.tid, team.nt);
      if (!rs.count) continue;
      if (!reset_after) {  // dhr of step t + 1 (its s part is there already)
        for (int64_t p = 0; p < W->panels; ++p) dhr_panel(t, p, rs);
      }
      step_rows(t, rs, sc.data());
    }
    final_rows(Rows::owned(lay->T ? lay->n[0] : 0, team.tid, team.nt));
  }

  // what step 0 sends back to h0 (dhr for the rows of step 0)
  void final_rows(const Rows& rs) const {
    if (!rs.count) return;
    for (int64_t p = 0; p < W->panels; ++p) {
      gemm_panel<T, TA>(*W, p, rs.count, operand(0, rs.b0), rs.stride * G, hg.dhr + rs.b0 * H,
                        rs.stride * H, H, reset_after ? Init::kZero : Init::kLoad);
    }
  }

  void run_units(const Team& team) const {
    std::vector<T> sc(G);
    for (int64_t t = lay->T - 1; t >= 0; --t) {
      const int64_t n = lay->n[t];
      if (n == 0) continue;
      // phase 1: dhr of step t + 1 and the z, n gradients
      const Items it(*W, n, team.nt);
      auto [i0, i1] = team.share(it.count());
      for (int64_t i = i0; i < i1; ++i) {
        const Rows rs{it.r0(i), 1, it.r1(i) - it.r0(i)};
        if (rs.count > 0) dhr_panel(t, it.panel(i), rs);
      }
      it.segments(i0, i1, H, W->NB, [&](const Rows& rs, int64_t j0, int64_t j1) {
        zn_units(t, rs, j0, j1, sc.data());
      });
      team.barrier();
      if (!reset_after) {
        if (ln) {
          auto [b0, b1] = team.share(n);
          for (int64_t b = b0; b < b1; ++b) ln_second(t, b);
          team.barrier();
        }
        const Items it2(*Wn, n, team.nt);
        auto [q0, q1] = team.share(it2.count());
        for (int64_t i = q0; i < q1; ++i) {
          const Rows rs{it2.r0(i), 1, it2.r1(i) - it2.r0(i)};
          if (rs.count > 0) ds_panel(t, it2.panel(i), rs);
        }
        it2.segments(q0, q1, H, Wn->NB, [&](const Rows& rs, int64_t j0, int64_t j1) {
          r_units(t, rs, j0, j1);
        });
        team.barrier();
      }
      if (ln) {
        auto [b0, b1] = team.share(n);
        for (int64_t b = b0; b < b1; ++b) ln_first(t, b);
        team.barrier();
      }
    }
    const int64_t n0 = lay->T ? lay->n[0] : 0;
    if (n0 > 0) {
      const Items it(*W, n0, team.nt);
      auto [i0, i1] = team.share(it.count());
      for (int64_t i = i0; i < i1; ++i) {
        const Rows rs{it.r0(i), 1, it.r1(i) - it.r0(i)};
        if (rs.count <= 0) continue;
        gemm_panel<T, TA>(*W, it.panel(i), rs.count, operand(0, rs.b0), G, hg.dhr + rs.b0 * H,
                          H, H, reset_after ? Init::kZero : Init::kLoad);
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
};

struct GruArgs {
  Tensor x, x_op, h0, w_ih, w_hh, bias, b_hn, ln_ih, ln_hh, h_mask, zo_h;
  bool has_bias = false, bf16 = false;
  int64_t T = 0, B = 0, H = 0, G = 0, I = 0;
  at::ScalarType ct;

  GruArgs(const Tensor& x_, const Tensor& h0_, const std::vector<OptTensor>& params,
          const std::vector<OptTensor>& masks, const OptTensor& batch_sizes, bool reset_after) {
    TORCH_CHECK(params.size() == 6 && masks.size() == 2,
                "lstmkit fused: gru expects 6 parameters and 2 masks");
    x = x_.contiguous();
    bf16 = x.scalar_type() == at::kBFloat16;
    ct = bf16 ? at::kFloat : x.scalar_type();
    TORCH_CHECK(ct == at::kFloat || ct == at::kDouble, "lstmkit fused: unsupported dtype ",
                x.scalar_type());
    x_op = bf16 && !LSTMKIT_BF16_DP ? x.to(at::kFloat) : x;
    auto conv = [&](const Tensor& t) { return t.defined() ? t.to(ct).contiguous() : t; };
    h0 = conv(h0_);
    w_ih = opt(params, 0);
    w_hh = opt(params, 1);
    TORCH_CHECK(w_ih.scalar_type() == x.scalar_type() && w_hh.scalar_type() == x.scalar_type(),
                "lstmkit fused: the weights must have the dtype of the input");
    H = h0.size(1);
    B = h0.size(0);
    G = 3 * H;
    I = w_ih.size(1);
    TORCH_CHECK(w_ih.size(0) == G && w_hh.size(0) == G && w_hh.size(1) == H,
                "lstmkit fused: GRU weight shapes");
    const Tensor b_ih = opt(params, 2), b_hh = opt(params, 3);
    has_bias = b_ih.defined();
    if (has_bias) {
      bias = b_ih.to(ct).clone();
      if (b_hh.defined()) {
        if (reset_after) {  // b_hn sits inside r * (...): it cannot join the input side
          bias.narrow(0, 0, 2 * H).add_(b_hh.to(ct).narrow(0, 0, 2 * H));
          b_hn = b_hh.to(ct).narrow(0, 2 * H, H).contiguous();
        } else {
          bias.add_(b_hh.to(ct));
        }
      }
    }
    ln_ih = conv(opt(params, 4));
    ln_hh = conv(opt(params, 5));
    h_mask = conv(opt(masks, 0));
    zo_h = conv(opt(masks, 1));
    T = batch_sizes ? batch_sizes->size(0) : x.size(0);
  }
  at::TensorOptions opts() const { return x.options().dtype(ct); }
  Tensor x2() const { return x.reshape({-1, I}); }
};

template <typename T, typename TA>
void setup(GruFwd<T, TA>& f, const GruArgs& a, const Layout& lay, double rate_h,
           bool reset_after, bool save, bool replay) {
  f.lay = &lay;
  f.B = a.B;
  f.H = a.H;
  f.G = a.G;
  f.reset_after = reset_after;
  f.save = save;
  f.replay = replay;
  f.ln = a.ln_hh.defined();
  f.b_hn = ptr<T>(a.b_hn);
  f.g_hh = ptr<T>(a.ln_hh);
  f.in.lay = &lay;
  f.in.x = a.x_op.data_ptr<TA>();
  f.in.I = a.I;
  f.in.G = a.G;
  f.in.H = a.H;
  f.in.bias = ptr<T>(a.bias);
  f.in.g_ih = ptr<T>(a.ln_ih);
  auto& h = f.hsd;
  h.lay = &lay;
  h.B = a.B;
  h.P = a.H;
  h.save = save;
  h.replay = replay;
  h.zh = a.zo_h.defined() || rate_h != 0;
  h.rate_h = static_cast<T>(rate_h);
  h.zo_h = ptr<T>(a.zo_h);
  h.h_mask = ptr<T>(a.h_mask);
  h.mirror = a.h_mask.defined() || !std::is_same_v<T, TA>;
}

// The buffers of a forward (or replay): {ex, exa, u, mean, rstd, mean_n, rstd_n}
template <typename T, typename TA>
std::vector<Tensor> step_buffers(GruFwd<T, TA>& f, const GruArgs& a, int64_t R) {
  const auto o = a.opts();
  std::vector<Tensor> v(7);
  v[0] = empty_big({R, a.H}, o);
  if (!f.reset_after && !std::is_same_v<TA, T>) {
    v[1] = empty_big({R, a.H}, o.dtype(c10::CppTypeToScalarType<TA>()));
  }
  v[2] = empty_big({R, a.G}, o);
  if (f.ln) {
    for (int k = 3; k < 7; ++k) v[k] = at::empty({R}, o);
  }
  f.ex = ptr<T>(v[0]);
  f.exa = v[1].defined() ? ptr<TA>(v[1]) : reinterpret_cast<TA*>(f.ex);
  f.u = ptr<T>(v[2]);
  f.mean = ptr<T>(v[3]);
  f.rstd = ptr<T>(v[4]);
  f.mean_n = ptr<T>(v[5]);
  f.rstd_n = ptr<T>(v[6]);
  return v;
}

// Saved (kSave): {gates, hs, ha, ex, exa, u, mean, rstd, mean_n, rstd_n, xw, mean_ih, rstd_ih}
constexpr int kGruSaved = 13;

template <typename T, typename TA>
std::vector<Tensor> gru_forward_impl(const GruArgs& a, const Layout& lay, double rate_h,
                                     bool reset_after, int64_t mode) {
  const bool save = mode != kInference;
  const auto o = a.opts();
  GruFwd<T, TA> f;
  setup(f, a, lay, rate_h, reset_after, save, false);
  auto in = f.in.allocate(save, o);
  f.gates = f.in.gates;
  const Packed Wih = pack_rows(a.w_ih, 3, kind_for<TA>());
  f.in.W = &Wih;
  const Packed W = reset_after ? pack_rows(a.w_hh, 3, kind_for<TA>())
                               : pack_rows(a.w_hh.narrow(0, 0, 2 * a.H), 2, kind_for<TA>());
  const Packed Wn = reset_after ? Packed() : pack_rows(a.w_hh.narrow(0, 2 * a.H, a.H), 1, kind_for<TA>());
  f.W = &W;
  f.Wn = reset_after ? nullptr : &Wn;
  Tensor y = empty_big({lay.N, a.H}, o), h_n = at::empty({a.B, a.H}, o);
  f.hsd.y = ptr<T>(y);
  f.hsd.h_n = ptr<T>(h_n);
  auto hv = f.hsd.allocate(a.h0, o);
  auto sb = step_buffers(f, a, save ? lay.N : a.B);
  const int64_t n0 = lay.T ? lay.n[0] : 0;
  const int nt = team_size(n0 * std::max(a.H, a.I) * a.G);
  f.row_split = nt == 1 || split_rows(n0, nt, a.w_hh.numel() * int64_t(sizeof(TA)), false);
  run_team(nt, [&](const Team& team) { f.run(team); });
  std::vector<Tensor> out{y, h_n};
  if (mode == kSave) {
    out.insert(out.end(), {in[0], hv[0], hv[1], sb[0], sb[1], sb[2], sb[3], sb[4], sb[5], sb[6],
                           in[1], in[2], in[3]});
  } else if (mode == kStates) {
    out.insert(out.end(), {Tensor(), hv[0]});
    for (int k = 2; k < kGruSaved; ++k) out.emplace_back();
  }
  return out;
}

template <typename T, typename TA>
std::vector<Tensor> gru_replay(const GruArgs& a, const Layout& lay, double rate_h,
                               bool reset_after, const Tensor& hs) {
  const auto o = a.opts();
  GruFwd<T, TA> f;
  setup(f, a, lay, rate_h, reset_after, true, true);
  auto in = f.in.allocate(true, o);
  f.gates = f.in.gates;
  const Packed Wih = pack_rows(a.w_ih, 3, kind_for<TA>());
  f.in.W = &Wih;
  const Packed W = reset_after ? pack_rows(a.w_hh, 3, kind_for<TA>())
                               : pack_rows(a.w_hh.narrow(0, 0, 2 * a.H), 2, kind_for<TA>());
  const Packed Wn = reset_after ? Packed() : pack_rows(a.w_hh.narrow(0, 2 * a.H, a.H), 1, kind_for<TA>());
  f.W = &W;
  f.Wn = reset_after ? nullptr : &Wn;
  Tensor y = empty_big({lay.N, a.H}, o);
  f.hsd.y = ptr<T>(y);
  f.hsd.hs = ptr<T>(hs);
  Tensor ha = f.hsd.mirror ? f.hsd.rebuild(hs, o) : Tensor();
  f.hsd.ha = f.hsd.mirror ? ptr<TA>(ha) : reinterpret_cast<TA*>(f.hsd.hs);
  auto sb = step_buffers(f, a, lay.N);
  run_team(team_size(lay.N * std::max(a.H, a.I) * a.G / std::max<int64_t>(lay.T, 1)),
           [&](const Team& team) { f.run_replay(team); });
  return {in[0], hs, ha, sb[0], sb[1], sb[2], sb[3], sb[4], sb[5], sb[6], in[1], in[2], in[3]};
}

template <typename T, typename TA>
std::vector<Tensor> gru_backward_impl(const GruArgs& a, const Layout& lay, double rate_h,
                                      bool reset_after, const Tensor& gy_, const Tensor& gh,
                                      std::vector<Tensor> sv, bool need_dx) {
  const int64_t N = lay.N, B = a.B, H = a.H, G = a.G;
  const auto o = a.opts();
  if (!sv[0].defined()) sv = gru_replay<T, TA>(a, lay, rate_h, reset_after, sv[1]);
  const Tensor &gates = sv[0], &hs = sv[1], &ha = sv[2], &ex = sv[3], &exa = sv[4], &u = sv[5];
  const Tensor &mean = sv[6], &rstd = sv[7], &mean_n = sv[8], &rstd_n = sv[9];
  const Tensor &xw = sv[10], &mean_ih = sv[11], &rstd_ih = sv[12];
  const Tensor gy = gy_.to(a.ct).reshape({N, H}).contiguous();
  GruBwd<T, TA> b;
  b.lay = &lay;
  b.B = B;
  b.H = H;
  b.G = G;
  b.reset_after = reset_after;
  b.ln = a.ln_hh.defined();
  b.g_hh = ptr<T>(a.ln_hh);
  b.h_mask = ptr<T>(a.h_mask);
  const Packed W = reset_after ? pack_cols(a.w_hh, kind_for<TA>())
                               : pack_cols(a.w_hh.narrow(0, 0, 2 * H), kind_for<TA>());
  const Packed Wn = reset_after ? Packed() : pack_cols(a.w_hh.narrow(0, 2 * H, H), kind_for<TA>());
  b.W = &W;
  b.Wn = reset_after ? nullptr : &Wn;
  b.gates = ptr<T>(gates);
  b.hs = ptr<T>(hs);
  b.ex = ptr<T>(ex);
  b.u = ptr<T>(u);
  b.mean = ptr<T>(mean);
  b.rstd = ptr<T>(rstd);
  b.mean_n = ptr<T>(mean_n);
  b.rstd_n = ptr<T>(rstd_n);
  Tensor dA = empty_big({N, G}, o), dU = empty_big({N, G}, o);
  Tensor dUm = std::is_same_v<TA, T> ? Tensor()
                                     : empty_big({N, G}, o.dtype(c10::CppTypeToScalarType<TA>()));
  Tensor dh = gh.to(a.ct).contiguous().clone(), dhr = at::empty({B, H}, o);
  Tensor ds = reset_after ? Tensor() : at::empty({B, H}, o);
  b.dA = ptr<T>(dA);
  b.dU = ptr<T>(dU);
  b.dUm = ptr<TA>(dUm);
  b.ds = ptr<T>(ds);
  b.hg.lay = &lay;
  b.hg.P = H;
  b.hg.zh = a.zo_h.defined() || rate_h != 0;
  b.hg.rate_h = static_cast<T>(rate_h);
  b.hg.zo_h = ptr<T>(a.zo_h);
  b.hg.h_mask = ptr<T>(a.h_mask);
  b.hg.gy = ptr<T>(gy);
  b.hg.dh = ptr<T>(dh);
  b.hg.dhr = ptr<T>(dhr);
  const int64_t n0 = lay.T ? lay.n[0] : 0;
  const int nt = team_size(n0 * H * G);
  b.row_split = nt == 1 || split_rows(n0, nt, a.w_hh.numel() * int64_t(sizeof(TA)), true);
  run_team(nt, [&](const Team& team) { b.run(team); });

  Tensor dh0 = initial_state_grad(dh, dhr, a.h_mask, n0);
  Tensor d_in = dA, d_ln_ih;
  if (a.ln_ih.defined()) {
    std::tie(d_in, d_ln_ih) = ln_ih_backward(dA, xw, G, mean_ih, rstd_ih, a.ln_ih);
  }
  const Tensor x2 = a.x2();
  const Tensor w_ih = a.w_ih;
  Tensor dx = need_dx ? product(a.bf16 ? d_in.to(at::kBFloat16) : d_in, w_ih, false)
                            .view(a.x.sizes())
                      : Tensor();
  Tensor dw_ih = product(a.bf16 ? d_in.to(at::kBFloat16) : d_in, x2, true);
  const Tensor dUop = dUm.defined() ? dUm : dU;
  const Tensor hr = ha.defined() ? ha : hs;
  Tensor dw_hh, db_ih, db_hh, dg_hh;
  if (reset_after) {
    dw_hh = product(dUop, hr, true);
  } else {
    const Tensor s = exa.defined() ? exa : ex;
    dw_hh = at::cat({product(dUop.narrow(1, 0, 2 * H), hr, true),
                     product(dUop.narrow(1, 2 * H, H), s, true)});
  }
  // the gradient of the normalised recurrent product (the biases b_hh are added after LN_hh):
  // [da_r, da_z, da_n r] with reset_after, da without
  Tensor dnorm = dA;
  if (reset_after) {
    dnorm = dA.clone();
    dnorm.narrow(1, 2 * H, H).mul_(gates.narrow(1, 0, H));
  }
  if (a.has_bias) {
    db_ih = dA.sum(0);
    db_hh = reset_after ? dnorm.sum(0) : db_ih;
  }
  if (b.ln) {  // gain gradient: sum of dnorm * u_hat
    if (reset_after) {
      dg_hh = col_dot(dnorm, u, mean, rstd);
    } else {
      dg_hh = at::cat({col_dot(dnorm.narrow(1, 0, 2 * H), u.narrow(1, 0, 2 * H), mean, rstd),
                       col_dot(dnorm.narrow(1, 2 * H, H), u.narrow(1, 2 * H, H), mean_n, rstd_n)});
    }
  }
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d_ln_ih, dg_hh};
}

}  // namespace

std::vector<Tensor> gru_forward(const Tensor& x, const Tensor& h0,
                                const std::vector<OptTensor>& params,
                                const std::vector<OptTensor>& masks, const OptTensor& batch_sizes,
                                double rate_h, bool reset_after, int64_t mode) {
  c10::NoGradGuard no_grad;
  const GruArgs a(x, h0, params, masks, batch_sizes, reset_after);
  const Layout lay(batch_sizes, a.T, a.B);
  TORCH_CHECK(a.x2().size(0) == lay.N, "lstmkit fused: x has ", a.x2().size(0),
              " rows, the batch sizes add up to ", lay.N);
  auto out = dispatch_types(a.ct, a.bf16, [&](auto t, auto ta) {
    return gru_forward_impl<decltype(t), decltype(ta)>(a, lay, rate_h, reset_after, mode);
  });
  if (a.bf16) out[0] = out[0].to(at::kBFloat16);
  return out;
}

std::vector<Tensor> gru_backward(const Tensor& gy, const Tensor& gh, const Tensor& x,
                                 const Tensor& h0, const std::vector<OptTensor>& params,
                                 const std::vector<OptTensor>& masks,
                                 const OptTensor& batch_sizes, double rate_h, bool reset_after,
                                 const std::vector<OptTensor>& saved, bool need_dx) {
  c10::NoGradGuard no_grad;
  const GruArgs a(x, h0, params, masks, batch_sizes, reset_after);
  const Layout lay(batch_sizes, a.T, a.B);
  std::vector<Tensor> sv;
  for (const auto& t : saved) sv.push_back(t && t->defined() ? *t : Tensor());
  TORCH_CHECK(sv.size() == kGruSaved, "lstmkit fused: gru backward expects ", kGruSaved,
              " saved tensors");
  return dispatch_types(a.ct, a.bf16, [&](auto t, auto ta) {
    return gru_backward_impl<decltype(t), decltype(ta)>(a, lay, rate_h, reset_after, gy, gh, sv,
                                                        need_dx);
  });
}

}  // namespace lstmkit
