// Fused Elman RNN scan (torch.nn.RNN, tanh or relu): forward and hand-written backward.
//
// Forward:  a = x_t W_ih^T + b_ih + b_hh + (h_{t-1} * m_h) W_hh^T,   h' = phi(a)
//           then zoneout of h' and the carry (scan.h).
// Backward: da = dh' * phi'(a), with phi'(a) = 1 - h'^2 for tanh and [h' > 0] for relu;
//           dh_{t-1} += (da W_hh) * m_h  (one GEMM per step); after the loop
//           dW_ih = da^T X, dx = da W_ih, dW_hh = da^T (H_prev * m_h), db_ih = db_hh = sum da.
// layer_norm: the products are LN_ih(x_t W_ih^T) and LN_hh((h_{t-1} * m_h) W_hh^T); their
// gradients come from da through the LN backward, and the GEMMs above take them.
//
// Layout, threads, recompute: as the LSTM (lstm.cpp).
#include "ops.h"

#include "scan.h"

namespace lstmkit {
namespace {

template <typename T, typename TA>
struct RnnFwd {
  const Layout* lay = nullptr;
  int64_t B = 0, H = 0;
  bool relu = false, save = false, replay = false, ln = false, row_split = false;
  const Packed* W = nullptr;
  const T* g_hh = nullptr;
  InProj<T, TA> in;
  HSide<T, TA> hsd;
  T* gates = nullptr;  // pre-activations in, activations out
  T* u = nullptr;      // (N or B, H) raw products (layer norm)
  T *mean = nullptr, *rstd = nullptr;

  int64_t srow(int64_t t, int64_t b) const { return save ? lay->off[t] + b : b; }

  // units [j0, j1) of row b: h' = phi(a) (with LN_hh: a += LN(u) g first, whole rows)
  __attribute__((noinline)) void cell(int64_t t, int64_t b, int64_t j0, int64_t j1) const {
    constexpr int64_t L = vlen<T>();
    T* a = gates + in.grow(t, b) * H;
    const auto hr = hsd.row(t, b);
    Vec<T> vm(T(0)), vr(T(0));
    const T* ur = nullptr;
    if (ln) {
      const int64_t sr = srow(t, b);
      ur = u + sr * H;
      T m, s;
      row_moments(ur, H, m, s);
      mean[sr] = m;
      rstd[sr] = s;
      vm = Vec<T>(m);
      vr = Vec<T>(s);
    }
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      Vec<T> v = vload(a + j, n);
      if (ln) v = v + (vload(ur + j, n) - vm) * vr * vload(g_hh + j, n);
      const Vec<T> h = relu ? Vec<T>::blendv(v, Vec<T>(T(0)), v < Vec<T>(T(0))) : vtanh<T>(v);
      if (save) vstore(h, a + j, n);
      if (!replay) hsd.emit(hr, j, n, h);
    }
  }

  void product(int64_t t, int64_t p, const Rows& rs) const {
    const TA* A = hsd.operand(t, rs.b0);
    if (ln) {
      gemm_panel<T, TA>(*W, p, rs.count, A, rs.stride * H, u + srow(t, rs.b0) * H,
                        rs.stride * H, H, Init::kZero);
    } else {
      gemm_panel<T, TA>(*W, p, rs.count, A, rs.stride * H, gates + in.grow(t, rs.b0) * H,
                        rs.stride * H, H, Init::kLoad);
    }
  }

  void step_rows(int64_t t, const Rows& rs) const {
    for (int64_t p = 0; p < W->panels; ++p) product(t, p, rs);
    for (int64_t i = 0; i < rs.count; ++i) cell(t, rs.at(i), 0, H);
  }

  void run(const Team& team) const {
    for (int64_t t = 0; t < lay->T; ++t) {
      const int64_t n = lay->n[t];
      if (n == 0) break;
      if (row_split) {
        if (in.chunk_starts(t)) in.own(t, in.gnext[t], team.tid, team.nt);
        const Rows rs = Rows::owned(n, team.tid, team.nt);
        if (rs.count) step_rows(t, rs);
        continue;
      }
      if (in.chunk_starts(t)) in.team(team, t, in.gnext[t]);
      const Items it(*W, n, team.nt);
      auto [i0, i1] = team.share(it.count());
      for (int64_t i = i0; i < i1; ++i) {
        const Rows rs{it.r0(i), 1, it.r1(i) - it.r0(i)};
        if (rs.count > 0) product(t, it.panel(i), rs);
      }
      if (!ln) {
        it.segments(i0, i1, H, W->NB, [&](const Rows& rs, int64_t j0, int64_t j1) {
          for (int64_t q = 0; q < rs.count; ++q) cell(t, rs.at(q), j0, j1);
        });
      }
      team.barrier();
      if (ln) {
        auto [b0, b1] = team.share(n);
        for (int64_t b = b0; b < b1; ++b) cell(t, b, 0, H);
        team.barrier();
      }
    }
  }

  void run_replay(const Team& team) const {
    if (lay->T) in.team(team, 0, lay->T);
    constexpr int64_t kRows = 24;
    std::vector<std::pair<int64_t, int64_t>> items;
    for (int64_t t = 0; t < lay->T; ++t) {
      for (int64_t r = 0; r < lay->n[t]; r += kRows) items.emplace_back(t, r);
    }
    auto [i0, i1] = team.share(static_cast<int64_t>(items.size()));
    for (int64_t i = i0; i < i1; ++i) {
      const auto [t, r0] = items[i];
      step_rows(t, Rows{r0, 1, std::min(lay->n[t], r0 + kRows) - r0});
    }
  }
};

template <typename T, typename TA>
struct RnnBwd {
  const Layout* lay = nullptr;
  int64_t B = 0, H = 0;
  bool relu = false, ln = false, row_split = false;
  const Packed* W = nullptr;
  const T* g_hh = nullptr;
  HGrad<T> hg;
  const T* act = nullptr;  // (N, H)
  const T* u = nullptr;
  const T *mean = nullptr, *rstd = nullptr;
  T* dA = nullptr;
  T* dU = nullptr;    // = dA without layer norm
  TA* dUm = nullptr;  // the operand as TA (or null: dU)

  int64_t prow(int64_t t, int64_t b) const { return lay->off[t] + b; }
  const TA* operand(int64_t t, int64_t b) const {
    if constexpr (std::is_same_v<TA, T>) {
      return dU + prow(t, b) * H;
    } else {
      return dUm + prow(t, b) * H;
    }
  }

  // units [j0, j1) of row b (with layer norm: whole rows, then the LN backward)
  __attribute__((noinline)) void cell(int64_t t, int64_t b, int64_t j0, int64_t j1,
                                      T* sc) const {
    constexpr int64_t L = vlen<T>();
    hg(t, b, j0, j1, sc);
    const int64_t pr = prow(t, b);
    const T* h = act + pr * H;
    T* da = dA + pr * H;
    const Vec<T> one(T(1)), zero(T(0));
    for (int64_t j = j0; j < j1; j += L) {
      const int64_t n = std::min(L, j1 - j);
      const Vec<T> g = vload(sc + j, n), hv = vload(h + j, n);
      const Vec<T> d = relu ? Vec<T>::blendv(zero, g, hv > zero) : g * (one - hv * hv);
      vstore(d, da + j, n);
    }
    if (ln) {
      const Vec<T> vm(mean[pr]), vr(rstd[pr]);
      const T* v = u + pr * H;
      Vec<T> s1(T(0)), s2(T(0));
      for (int64_t k = 0; k < H; k += L) {
        const int64_t c = std::min(L, H - k);
        const Vec<T> dy = vload(da + k, c) * vload(g_hh + k, c);
        const Vec<T> vh = (vload(v + k, c) - vm) * vr;
        s1 = s1 + dy;
        s2 = s2 + (c == L ? dy * vh : Vec<T>::set(Vec<T>(T(0)), dy * vh, c));
      }
      auto sum_all = [](const Vec<T>& x) {
        return at::vec::vec_reduce_all<T>([](Vec<T>& p, Vec<T>& q) { return p + q; }, x);
      };
      const Vec<T> m1(sum_all(s1) / T(H)), m2(sum_all(s2) / T(H));
      T* du = dU + pr * H;
      for (int64_t k = 0; k < H; k += L) {
        const int64_t c = std::min(L, H - k);
        const Vec<T> dy = vload(da + k, c) * vload(g_hh + k, c);
        const Vec<T> vh = (vload(v + k, c) - vm) * vr;
        vstore(vr * (dy - m1 - vh * m2), du + k, c);
      }
      j0 = 0;
      j1 = H;
    }
    if constexpr (!std::is_same_v<TA, T>) {
      const T* src = dU + pr * H;
      TA* d = dUm + pr * H;
      for (int64_t k = j0; k < j1; k += L) store_bf16(vload(src + k, std::min(L, j1 - k)), d + k, std::min(L, j1 - k));
    }
  }

  void dhr_panel(int64_t t, int64_t p, const Rows& rs) const {
    if (t + 1 >= lay->T) return;
    Rows r = rs;
    const int64_t n1 = lay->n[t + 1];
    r.count = n1 > rs.b0 ? std::min(rs.count, (n1 - rs.b0 + rs.stride - 1) / rs.stride) : 0;
    if (r.count == 0) return;
    gemm_panel<T, TA>(*W, p, r.count, operand(t + 1, r.b0), r.stride * H, hg.dhr + r.b0 * H,
                      r.stride * H, H, Init::kZero);
  }

  void run(const Team& team) const {
    std::vector<T> sc(H);
    for (int64_t t = lay->T - 1; t >= 0; --t) {
      const int64_t n = lay->n[t];
      if (n == 0) continue;
      if (row_split) {
        const Rows rs = Rows::owned(n, team.tid, team.nt);
        for (int64_t p = 0; p < W->panels && rs.count; ++p) dhr_panel(t, p, rs);
        for (int64_t q = 0; q < rs.count; ++q) cell(t, rs.at(q), 0, H, sc.data());
        continue;
      }
      const Items it(*W, n, team.nt);
      auto [i0, i1] = team.share(it.count());
      for (int64_t i = i0; i < i1; ++i) {
        const Rows rs{it.r0(i), 1, it.r1(i) - it.r0(i)};
        if (rs.count > 0) dhr_panel(t, it.panel(i), rs);
      }
      if (!ln) {
        it.segments(i0, i1, H, W->NB, [&](const Rows& rs, int64_t j0, int64_t j1) {
          for (int64_t q = 0; q < rs.count; ++q) cell(t, rs.at(q), j0, j1, sc.data());
        });
      }
      team.barrier();
      if (ln) {
        auto [b0, b1] = team.share(n);
        for (int64_t b = b0; b < b1; ++b) cell(t, b, 0, H, sc.data());
        team.barrier();
      }
    }
    const int64_t n0 = lay->T ? lay->n[0] : 0;
    if (n0 == 0) return;
    if (row_split) {
      const Rows rs = Rows::owned(n0, team.tid, team.nt);
      for (int64_t p = 0; p < W->panels && rs.count; ++p) {
        gemm_panel<T, TA>(*W, p, rs.count, operand(0, rs.b0), rs.stride * H, hg.dhr + rs.b0 * H,
                          rs.stride * H, H, Init::kZero);
      }
      return;
    }
    const Items it(*W, n0, team.nt);
    auto [i0, i1] = team.share(it.count());
    for (int64_t i = i0; i < i1; ++i) {
      const Rows rs{it.r0(i), 1, it.r1(i) - it.r0(i)};
      if (rs.count <= 0) continue;
      gemm_panel<T, TA>(*W, it.panel(i), rs.count, operand(0, rs.b0), H, hg.dhr + rs.b0 * H, H, H,
                        Init::kZero);
    }
  }
};

struct RnnArgs {
  Tensor x, x_op, h0, w_ih, w_hh, bias, ln_ih, ln_hh, h_mask, zo_h;
  bool bf16 = false;
  int64_t T = 0, B = 0, H = 0, I = 0;
  at::ScalarType ct;

  RnnArgs(const Tensor& x_, const Tensor& h0_, const std::vector<OptTensor>& params,
          const std::vector<OptTensor>& masks, const OptTensor& batch_sizes) {
    TORCH_CHECK(params.size() == 6 && masks.size() == 2,
                "lstmkit fused: rnn expects 6 parameters and 2 masks");
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
    B = h0.size(0);
    H = h0.size(1);
    I = w_ih.size(1);
    const Tensor b_ih = opt(params, 2), b_hh = opt(params, 3);
    if (b_ih.defined()) bias = b_hh.defined() ? b_ih.to(ct) + b_hh.to(ct) : b_ih.to(ct);
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
void setup(RnnFwd<T, TA>& f, const RnnArgs& a, const Layout& lay, double rate_h, bool relu,
           bool save, bool replay) {
  f.lay = &lay;
  f.B = a.B;
  f.H = a.H;
  f.relu = relu;
  f.save = save;
  f.replay = replay;
  f.ln = a.ln_hh.defined();
  f.g_hh = ptr<T>(a.ln_hh);
  f.in.lay = &lay;
  f.in.x = a.x_op.data_ptr<TA>();
  f.in.I = a.I;
  f.in.G = a.H;
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

// Saved (kSave): {act, hs, ha, u, mean, rstd, xw, mean_ih, rstd_ih}
constexpr int kRnnSaved = 9;

template <typename T, typename TA>
std::vector<Tensor> rnn_forward_impl(const RnnArgs& a, const Layout& lay, double rate_h,
                                     bool relu, int64_t mode, const Tensor& replay_hs) {
  const bool replay = replay_hs.defined();
  const bool save = mode != kInference || replay;
  const auto o = a.opts();
  RnnFwd<T, TA> f;
  setup(f, a, lay, rate_h, relu, save, replay);
  auto in = f.in.allocate(save, o);
  f.gates = f.in.gates;
  const Packed Wih = pack_rows(a.w_ih, 1, kind_for<TA>());
  f.in.W = &Wih;
  const Packed W = pack_rows(a.w_hh, 1, kind_for<TA>());
  f.W = &W;
  Tensor y = empty_big({lay.N, a.H}, o), h_n = at::empty({a.B, a.H}, o);
  f.hsd.y = ptr<T>(y);
  f.hsd.h_n = ptr<T>(h_n);
  std::vector<Tensor> hv;
  if (replay) {
    f.hsd.hs = ptr<T>(replay_hs);
    Tensor ha = f.hsd.mirror ? f.hsd.rebuild(replay_hs, o) : Tensor();
    f.hsd.ha = f.hsd.mirror ? ptr<TA>(ha) : reinterpret_cast<TA*>(f.hsd.hs);
    hv = {replay_hs, ha};
  } else {
    hv = f.hsd.allocate(a.h0, o);
  }
  const int64_t R = save ? lay.N : a.B;
  Tensor u, mean, rstd;
  if (f.ln) {
    u = empty_big({R, a.H}, o);
    mean = at::empty({R}, o);
    rstd = at::empty({R}, o);
  }
  f.u = ptr<T>(u);
  f.mean = ptr<T>(mean);
  f.rstd = ptr<T>(rstd);
  if (replay) {
    run_team(team_size(lay.N * std::max(a.H, a.I) * a.H / std::max<int64_t>(lay.T, 1)),
             [&](const Team& team) { f.run_replay(team); });
    return {in[0], hv[0], hv[1], u, mean, rstd, in[1], in[2], in[3]};
  }
  const int64_t n0 = lay.T ? lay.n[0] : 0;
  const int nt = team_size(n0 * std::max(a.H, a.I) * a.H);
  f.row_split = nt == 1 || split_rows(n0, nt, a.w_hh.numel() * int64_t(sizeof(TA)), false);
  run_team(nt, [&](const Team& team) { f.run(team); });
  std::vector<Tensor> out{y, h_n};
  if (mode == kSave) {
    out.insert(out.end(), {in[0], hv[0], hv[1], u, mean, rstd, in[1], in[2], in[3]});
  } else if (mode == kStates) {
    out.insert(out.end(), {Tensor(), hv[0]});
    for (int k = 2; k < kRnnSaved; ++k) out.emplace_back();
  }
  return out;
}

template <typename T, typename TA>
std::vector<Tensor> rnn_backward_impl(const RnnArgs& a, const Layout& lay, double rate_h,
                                      bool relu, const Tensor& gy_, const Tensor& gh,
                                      std::vector<Tensor> sv, bool need_dx) {
  const int64_t N = lay.N, B = a.B, H = a.H;
  const auto o = a.opts();
  if (!sv[0].defined()) sv = rnn_forward_impl<T, TA>(a, lay, rate_h, relu, kSave, sv[1]);
  const Tensor &act = sv[0], &hs = sv[1], &ha = sv[2], &u = sv[3], &mean = sv[4];
  const Tensor &rstd = sv[5], &xw = sv[6], &mean_ih = sv[7], &rstd_ih = sv[8];
  const Tensor gy = gy_.to(a.ct).reshape({N, H}).contiguous();
  RnnBwd<T, TA> b;
  b.lay = &lay;
  b.B = B;
  b.H = H;
  b.relu = relu;
  b.ln = a.ln_hh.defined();
  b.g_hh = ptr<T>(a.ln_hh);
  const Packed W = pack_cols(a.w_hh, kind_for<TA>());
  b.W = &W;
  b.act = ptr<T>(act);
  b.u = ptr<T>(u);
  b.mean = ptr<T>(mean);
  b.rstd = ptr<T>(rstd);
  Tensor dA = empty_big({N, H}, o);
  Tensor dU = b.ln ? empty_big({N, H}, o) : dA;
  Tensor dUm = std::is_same_v<TA, T> ? Tensor()
                                     : empty_big({N, H}, o.dtype(c10::CppTypeToScalarType<TA>()));
  Tensor dh = gh.to(a.ct).contiguous().clone(), dhr = at::empty({B, H}, o);
  b.dA = ptr<T>(dA);
  b.dU = ptr<T>(dU);
  b.dUm = ptr<TA>(dUm);
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
  const int nt = team_size(n0 * H * H);
  b.row_split = nt == 1 || split_rows(n0, nt, a.w_hh.numel() * int64_t(sizeof(TA)), true);
  run_team(nt, [&](const Team& team) { b.run(team); });

  Tensor dh0 = initial_state_grad(dh, dhr, a.h_mask, n0);
  Tensor d_in = dA, d_ln_ih;
  if (a.ln_ih.defined()) {
    std::tie(d_in, d_ln_ih) = ln_ih_backward(dA, xw, H, mean_ih, rstd_ih, a.ln_ih);
  }
  const Tensor d_in_op = a.bf16 ? d_in.to(at::kBFloat16) : d_in;
  Tensor dx = need_dx ? product(d_in_op, a.w_ih, false).view(a.x.sizes()) : Tensor();
  Tensor dw_ih = product(d_in_op, a.x2(), true);
  Tensor dw_hh = product(dUm.defined() ? dUm : dU, ha.defined() ? ha : hs, true);
  Tensor db_ih, db_hh, dg_hh;
  if (a.bias.defined()) {
    db_ih = dA.sum(0);
    db_hh = db_ih;
  }
  if (b.ln) dg_hh = col_dot(dA, u, mean, rstd);
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d_ln_ih, dg_hh};
}

}  // namespace

std::vector<Tensor> rnn_forward(const Tensor& x, const Tensor& h0,
                                const std::vector<OptTensor>& params,
                                const std::vector<OptTensor>& masks, const OptTensor& batch_sizes,
                                double rate_h, bool relu, int64_t mode) {
  c10::NoGradGuard no_grad;
  const RnnArgs a(x, h0, params, masks, batch_sizes);
  const Layout lay(batch_sizes, a.T, a.B);
  TORCH_CHECK(a.x2().size(0) == lay.N, "lstmkit fused: x has ", a.x2().size(0),
              " rows, the batch sizes add up to ", lay.N);
  auto out = dispatch_types(a.ct, a.bf16, [&](auto t, auto ta) {
    return rnn_forward_impl<decltype(t), decltype(ta)>(a, lay, rate_h, relu, mode, Tensor());
  });
  if (a.bf16) out[0] = out[0].to(at::kBFloat16);
  return out;
}

std::vector<Tensor> rnn_backward(const Tensor& gy, const Tensor& gh, const Tensor& x,
                                 const Tensor& h0, const std::vector<OptTensor>& params,
                                 const std::vector<OptTensor>& masks,
                                 const OptTensor& batch_sizes, double rate_h, bool relu,
                                 const std::vector<OptTensor>& saved, bool need_dx) {
  c10::NoGradGuard no_grad;
  const RnnArgs a(x, h0, params, masks, batch_sizes);
  const Layout lay(batch_sizes, a.T, a.B);
  std::vector<Tensor> sv;
  for (const auto& t : saved) sv.push_back(t && t->defined() ? *t : Tensor());
  TORCH_CHECK(sv.size() == kRnnSaved, "lstmkit fused: rnn backward expects ", kRnnSaved,
              " saved tensors");
  return dispatch_types(a.ct, a.bf16, [&](auto t, auto ta) {
    return rnn_backward_impl<decltype(t), decltype(ta)>(a, lay, rate_h, relu, gy, gh, sv,
                                                        need_dx);
  });
}

}  // namespace lstmkit
