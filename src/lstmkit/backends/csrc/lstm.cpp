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
//   then zoneout and length masking of h' and c' (common.h).
//
// Backward, per step from t = T-1 down to 0, with dh', dc' the gradients of h' and c' after
// the carry (common.h) and dm = dh' W_hr (dm = dh' without projection):
//   do     = dm * tanh(c')
//   dc'   += dm * o * (1 - tanh(c')^2) + da_o * p_o,  da_o = do * o * (1 - o)
//   dc     = dc' where -clip <= c_raw <= clip, else 0    (as torch.clamp's gradient)
//   di     = dc * g,  dg = dc * i,  df = dc * c_{t-1}    CIFG: di -= df
//   da_g   = dg * (1 - g^2),  da_i = di * i (1 - i),  da_f = df * f (1 - f)
//   dc_{t-1} += dc * f + da_i * p_i + da_f * p_f
//   dh_{t-1} += (da W_hh) * m_h                          (one GEMM per step)
// and after the loop, with da stacked over time as (T*B, G):
//   dW_ih = da^T X,  dx = da W_ih,  dW_hh = da^T (H_{prev} * m_h),  db_ih = db_hh = sum da
//   dp_i = sum da_i c_{t-1},  dp_f = sum da_f c_{t-1},  dp_o = sum da_o c',  dW_hr = dh'^T M.
//
// layer_norm: the products are LN_ih(x_t W_ih^T) and LN_hh((h_{t-1} * m_h) W_hh^T), and the
// output uses c_out = LN_c(c') (with gain and bias) in place of c': m = o * tanh(c_out). The
// gradient dm * o * (1 - tanh(c_out)^2) of c_out reaches dc' through the LN backward, and the
// gradients of the raw products (which the GEMMs take) come from da the same way (common.h).
#include "ops.h"

namespace lstmkit {
namespace {

// Which block of the gate rows holds which gate.
struct GateSlots {
  int64_t i, f, g, o;
  explicit GateSlots(bool coupled)
      : i(0), f(coupled ? -1 : 1), g(coupled ? 1 : 2), o(coupled ? 2 : 3) {}
};

// Peephole vectors, in the order of weight_peephole: (i, f, o), or (i, o) with CIFG.
template <typename T>
struct Peepholes {
  const T* i = nullptr;
  const T* f = nullptr;
  const T* o = nullptr;
  Peepholes(const OptTensor& w, int64_t H, bool coupled) {
    if (!w) return;
    const T* p = w->data_ptr<T>();
    i = p;
    f = coupled ? nullptr : p + H;
    o = p + (coupled ? H : 2 * H);
  }
};

// LN_c of the LSTM cell: c_out = LN(c') * w + b for every step (one slot without saving).
struct CellNorm {
  bool on = false;
  Tensor weight, bias;
  Tensor out, mean, rstd;  // (T', B, H), (T', B, 1), (T', B, 1)
  CellNorm(const OptTensor& w, const OptTensor& b, int64_t T, int64_t B, int64_t H, bool save,
           const at::TensorOptions& o) {
    if (!w) return;
    on = true;
    weight = w->contiguous();
    bias = b->contiguous();
    const int64_t S = save ? T : 1;
    out = at::empty({S, B, H}, o);
    mean = at::empty({S, B, 1}, o);
    rstd = at::empty({S, B, 1}, o);
  }
  CellNorm(const OptTensor& w, const OptTensor& b, const OptTensor& out_,
           const OptTensor& mean_, const OptTensor& rstd_) {
    if (!w) return;
    on = true;
    weight = w->contiguous();
    bias = b->contiguous();
    out = *out_;
    mean = *mean_;
    rstd = *rstd_;
  }
  int64_t slot(int64_t t) const { return out.size(0) == 1 ? 0 : t; }
  void forward(int64_t t, const Tensor& c) const {
    const int64_t s = slot(t);
    auto r = at::native_layer_norm(c, {c.size(1)}, weight, bias, kLnEps);
    out[s].copy_(std::get<0>(r));
    mean[s].copy_(std::get<1>(r));
    rstd[s].copy_(std::get<2>(r));
  }
  // gradient of c' from that of c_out
  Tensor backward(int64_t t, const Tensor& d_out, const Tensor& c) const {
    auto r = at::native_layer_norm_backward(d_out, c, {c.size(1)}, mean[t], rstd[t], weight, bias,
                                            {true, false, false});
    return std::get<0>(r);
  }
};

template <typename T>
void forward_loop(const Tensor& gates, StateSeq& hs, StateSeq& cs, const Tensor& c_new,
                  const Tensor& m_all, const Tensor& y, const Tensor& w_hh, const OptTensor& w_peep,
                  const OptTensor& w_hr, const StepNorm& norm_hh, const CellNorm& norm_c,
                  const OptTensor& h_mask, const CarrySeq<T>& carry_h, const CarrySeq<T>& carry_c,
                  double cell_clip, bool coupled) {
  const int64_t T_ = gates.size(0), B = gates.size(1), G = gates.size(2);
  const int64_t H = c_new.size(2), P = y.size(2);
  const bool proj = w_hr.has_value();
  const bool clip_on = cell_clip > 0;
  const T clip = static_cast<T>(cell_clip);
  const GateSlots s(coupled);
  const Peepholes<T> peep(w_peep, H, coupled);
  const T* mask = ptr_or_null<T>(h_mask);
  Tensor hr_buf = h_mask ? hs.at(0) * *h_mask : Tensor();
  Tensor hraw_buf = proj ? at::empty({B, P}, y.options()) : Tensor();
  Tensor tanh_c = at::empty({B, H}, y.options());
  T* tc_buf = tanh_c.data_ptr<T>();
  const Tensor w_hh_t = w_hh.t();

  for (int64_t t = 0; t < T_; ++t) {
    Tensor a_t = gates[t];
    const Tensor& hr_t = h_mask ? hr_buf : hs.at(t);
    if (norm_hh.on) {  // a += LN_hh(hr W_hh^T)
      Tensor u = norm_hh.raw_at(t);
      at::mm_out(u, hr_t, w_hh_t);
      a_t.add_(norm_hh.forward(t));
    } else {  // a += hr W_hh^T
      a_t.addmm_(hr_t, w_hh_t);
    }
    T* a = a_t.data_ptr<T>();
    const T* c_prev = cs.ptr<T>(t);
    T* c_next = cs.ptr<T>(t + 1);
    T* cn = step_ptr<T>(c_new, t);
    T* m = proj ? step_ptr<T>(m_all, t) : nullptr;
    const Carry<T> cc = carry_c.at(t);
    const HForward<T> h_out{hs.ptr<T>(t), hs.ptr<T>(t + 1), y.data_ptr<T>() + t * B * P,
                            mask ? hr_buf.data_ptr<T>() : nullptr, mask, carry_h.at(t), P};

    // This row's piece [j0, j1) of each gate block: gates, c' and its carry. The
    // pre-activations are replaced in place by the activations i, f, g, o, which backward reads.
    auto cell_piece = [&](int64_t b, int64_t j0, int64_t j1) {
      const int64_t n = j1 - j0;
      T* ab = a + b * G;
      T* gi = ab + s.i * H + j0;
      T* gf = coupled ? nullptr : ab + s.f * H + j0;
      T* gg = ab + s.g * H + j0;
      T* go = ab + s.o * H + j0;
      const T* cp = c_prev + b * H + j0;
      T* c = cn + b * H + j0;
      if (peep.i) {
        for (int64_t k = 0; k < n; ++k) gi[k] += peep.i[j0 + k] * cp[k];
      }
      if (peep.f) {
        for (int64_t k = 0; k < n; ++k) gf[k] += peep.f[j0 + k] * cp[k];
      }
      sigmoid_(gi, n);
      if (!coupled) sigmoid_(gf, n);
      tanh_(gg, n);
      for (int64_t k = 0; k < n; ++k) {
        const T f = coupled ? T(1) - gi[k] : gf[k];
        const T v = f * cp[k] + gi[k] * gg[k];
        c[k] = clip_on ? std::min(std::max(v, -clip), clip) : v;
      }
      if (peep.o) {
        for (int64_t k = 0; k < n; ++k) go[k] += peep.o[j0 + k] * c[k];
      }
      sigmoid_(go, n);
      const bool ok = cc.ok(b);
      for (int64_t k = 0; k < n; ++k) {
        const T cz = lerp(c[k], cp[k], cc.keep(b, j0 + k));
        c_next[b * H + j0 + k] = ok ? cz : cp[k];
      }
    };
    // The output of the piece: m = o * tanh(c_out), then h (or m for the projection).
    auto out_piece = [&](int64_t b, int64_t j0, int64_t j1, const T* c_out) {
      const int64_t n = j1 - j0;
      const T* go = a + b * G + s.o * H + j0;
      T* tc = tc_buf + b * H + j0;
      tanh_to(c_out + b * H + j0, tc, n);
      for (int64_t k = 0; k < n; ++k) {
        const T out = go[k] * tc[k];
        if (proj) {
          m[b * H + j0 + k] = out;
        } else {
          h_out(b, j0 + k, out);
        }
      }
    };

    if (!norm_c.on) {
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        cell_piece(b, j0, j1);
        out_piece(b, j0, j1, cn);
      });
    } else {  // LN_c needs the whole row of c' first
      parallel_rows(B, H, cell_piece);
      norm_c.forward(t, c_new[c_new.size(0) == 1 ? 0 : t]);
      const T* c_out = norm_c.out.data_ptr<T>() + norm_c.slot(t) * B * H;
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) { out_piece(b, j0, j1, c_out); });
    }
    if (proj) {  // h' = m W_hr^T, then the h side in a second pass
      at::mm_out(hraw_buf, m_all[m_all.size(0) == 1 ? 0 : t], w_hr->t());
      const T* hraw = hraw_buf.data_ptr<T>();
      parallel_rows(B, P, [&](int64_t b, int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) h_out(b, k, hraw[b * P + k]);
      });
    }
  }
}

template <typename T>
void backward_loop(const Tensor& dA, const Tensor& dU, const Tensor& dco_all, const Tensor& dh,
                   const Tensor& dc, Tensor dhr, const Tensor& dhraw_all, const Tensor& gy,
                   const Tensor& gates, const Tensor& c_all, const Tensor& c_new,
                   const Tensor& w_hh, const OptTensor& w_peep, const OptTensor& w_hr,
                   const StepNorm& norm_hh, const CellNorm& norm_c, const OptTensor& h_mask,
                   const CarrySeq<T>& carry_h, const CarrySeq<T>& carry_c, double cell_clip,
                   bool coupled) {
  const int64_t T_ = gates.size(0), B = gates.size(1), G = gates.size(2);
  const int64_t H = c_new.size(2), P = gy.size(2);
  const bool proj = w_hr.has_value();
  const bool clip_on = cell_clip > 0;
  const T clip = static_cast<T>(cell_clip);
  const GateSlots s(coupled);
  const Peepholes<T> peep(w_peep, H, coupled);
  const T* mask = ptr_or_null<T>(h_mask);
  Tensor dm_buf = proj ? at::empty({B, H}, gy.options()) : Tensor();
  Tensor tanh_c = at::empty({B, H}, gy.options());
  T* tc_buf = tanh_c.data_ptr<T>();
  T* dh_p = dh.data_ptr<T>();
  T* dc_p = dc.data_ptr<T>();

  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* a = gates.data_ptr<T>() + t * B * G;
    T* da = dA.data_ptr<T>() + t * B * G;
    const T* c_prev = c_all.data_ptr<T>() + t * B * H;
    const T* cn = c_new.data_ptr<T>() + t * B * H;
    const T* c_out = norm_c.on ? norm_c.out.data_ptr<T>() + t * B * H : cn;
    const Carry<T> cc = carry_c.at(t);
    const HBackward<T> h_grad{dh_p, t == T_ - 1 ? nullptr : dhr.data_ptr<T>(), mask,
                              gy.data_ptr<T>() + t * B * P, carry_h.at(t), P};

    // The output part for unit (b, j), given dm = dL/dm and tc = tanh(c_out) in tc_buf:
    // writes da_o and returns dL/dc_out.
    auto out_grad = [&](int64_t b, int64_t j, T dm) {
      const int64_t e = b * H + j;
      const T o = a[b * G + s.o * H + j];
      const T tc = tc_buf[e];
      da[b * G + s.o * H + j] = dm * tc * o * (T(1) - o);
      return dm * o * (T(1) - tc * tc);
    };
    // The cell part for unit (b, j), given g_out = dL/dc' through the output (and LN_c).
    auto cell_grad = [&](int64_t b, int64_t j, T g_out) {
      const int64_t e = b * H + j;
      const T* ab = a + b * G;
      T* dab = da + b * G;
      // carry of c: dc' from the state after the step, dc_prev through zoneout / masking
      const T gs = dc_p[e];
      const bool ok = cc.ok(b);
      const T keep = cc.keep(b, j);
      const T gcar = ok ? gs : T(0);
      T dc_prev = ok ? keep * gcar : gs;
      T dcn = (T(1) - keep) * gcar + g_out;
      const T i = ab[s.i * H + j], g = ab[s.g * H + j];
      const T f = coupled ? T(1) - i : ab[s.f * H + j];
      const T cp = c_prev[e];
      if (peep.o) dcn += dab[s.o * H + j] * peep.o[j];
      if (clip_on) {
        const T raw = f * cp + i * g;
        if (raw < -clip || raw > clip) dcn = T(0);
      }
      T di = dcn * g;
      const T dg = dcn * i;
      const T df = dcn * cp;
      dc_prev += dcn * f;
      if (coupled) di -= df;
      const T da_i = di * i * (T(1) - i);
      if (peep.i) dc_prev += da_i * peep.i[j];
      if (!coupled) {
        const T da_f = df * f * (T(1) - f);
        if (peep.f) dc_prev += da_f * peep.f[j];
        dab[s.f * H + j] = da_f;
      }
      dab[s.i * H + j] = da_i;
      dab[s.g * H + j] = dg * (T(1) - g * g);
      dc_p[e] = dc_prev;
    };

    const T* dm = nullptr;
    if (proj) {  // dh' of the projected output first, then dm = dh' W_hr
      T* dhraw = dhraw_all.data_ptr<T>() + t * B * P;
      parallel_rows(B, P, [&](int64_t b, int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) dhraw[b * P + k] = h_grad(b, k);
      });
      at::mm_out(dm_buf, dhraw_all[t], *w_hr);
      dm = dm_buf.data_ptr<T>();
    }
    auto dm_at = [&](int64_t b, int64_t j) { return dm ? dm[b * H + j] : h_grad(b, j); };

    if (!norm_c.on) {
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        tanh_to(c_out + b * H + j0, tc_buf + b * H + j0, j1 - j0);
        for (int64_t j = j0; j < j1; ++j) cell_grad(b, j, out_grad(b, j, dm_at(b, j)));
      });
    } else {  // through LN_c, which needs the whole row of dL/dc_out
      T* dco = dco_all.data_ptr<T>() + t * B * H;
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        tanh_to(c_out + b * H + j0, tc_buf + b * H + j0, j1 - j0);
        for (int64_t j = j0; j < j1; ++j) dco[b * H + j] = out_grad(b, j, dm_at(b, j));
      });
      const Tensor dcn_ln = norm_c.backward(t, dco_all[t], c_new[t]);
      const T* g = dcn_ln.data_ptr<T>();
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) cell_grad(b, j, g[b * H + j]);
      });
    }
    // gradient of h_{t-1} * m_h through the recurrent GEMM (and LN_hh)
    if (norm_hh.on) {
      Tensor du = dU[t];
      du.copy_(norm_hh.backward(t, dA[t]));
      at::mm_out(dhr, du, w_hh);
    } else {
      at::mm_out(dhr, dA[t], w_hh);
    }
  }
}

}  // namespace

std::vector<Tensor> lstm_forward(const Tensor& x_, const Tensor& h0, const Tensor& c0,
                                 const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                 const OptTensor& b_hh, const OptTensor& w_peep_,
                                 const OptTensor& w_hr_, const OptTensor& h_mask_,
                                 const OptTensor& valid_, const OptTensor& zo_h_,
                                 const OptTensor& zo_c_, double rate_h, double rate_c,
                                 double cell_clip, bool coupled, const OptTensor& ln_ih,
                                 const OptTensor& ln_hh, const OptTensor& ln_c_w,
                                 const OptTensor& ln_c_b, bool save) {
  c10::NoGradGuard no_grad;
  const Tensor x = contig(x_);
  const auto dtype = x.scalar_type();
  check_float(x, dtype, "x");
  check_float(h0, dtype, "h0");
  check_float(c0, dtype, "c0");
  check_float(w_ih, dtype, "weight_ih");
  check_float(w_hh, dtype, "weight_hh");
  const OptTensor w_peep = contig(w_peep_), w_hr = contig(w_hr_), h_mask = contig(h_mask_),
                  valid = contig(valid_), zo_h = contig(zo_h_), zo_c = contig(zo_c_);
  check_opt(w_peep, dtype, "weight_peephole");
  check_opt(w_hr, dtype, "weight_hr");
  check_opt(h_mask, dtype, "h_mask");
  check_opt(zo_h, dtype, "zoneout mask h");
  check_opt(zo_c, dtype, "zoneout mask c");
  const int64_t T = x.size(0), B = x.size(1), H = c0.size(1), P = h0.size(1);
  const int64_t G = w_ih.size(0);
  TORCH_CHECK(G == (coupled ? 3 : 4) * H, "lstmkit fused: weight_ih has ", G, " rows, expected ",
              (coupled ? 3 : 4) * H);

  Tensor bias = b_ih ? (b_hh ? *b_ih + *b_hh : *b_ih) : Tensor();
  std::vector<Tensor> in_ln{Tensor(), Tensor(), Tensor(), Tensor()};
  if (ln_ih) in_ln = input_projection_ln(x, w_ih, bias, *ln_ih);
  Tensor gates = (ln_ih ? in_ln[0] : input_projection(x, w_ih, bias)).contiguous();
  StateSeq hs(h0.contiguous(), T, save), cs(c0.contiguous(), T, save);
  const auto opts = x.options();
  Tensor c_new = step_buffer(T, B, H, save, opts);
  Tensor m_all = w_hr ? step_buffer(T, B, H, save, opts) : Tensor();
  Tensor y = at::empty({T, B, P}, opts);
  const Tensor w_hh_c = w_hh.contiguous();
  const StepNorm norm_hh(ln_hh, T, B, G, save, opts);
  const CellNorm norm_c(ln_c_w, ln_c_b, T, B, H, save, opts);

  AT_DISPATCH_FLOATING_TYPES(dtype, "lstm_forward", [&] {
    CarrySeq<scalar_t> carry_h(zo_h, rate_h, valid, B, P), carry_c(zo_c, rate_c, valid, B, H);
    forward_loop<scalar_t>(gates, hs, cs, c_new, m_all, y, w_hh_c, w_peep, w_hr, norm_hh, norm_c,
                           h_mask, carry_h, carry_c, cell_clip, coupled);
  });

  std::vector<Tensor> out{y, hs.at(T).clone(), cs.at(T).clone()};
  if (save) {
    out.insert(out.end(),
               {gates, hs.buf, cs.buf, c_new, m_all, in_ln[1], in_ln[2], in_ln[3], norm_hh.raw,
                norm_hh.mean, norm_hh.rstd, norm_c.out, norm_c.mean, norm_c.rstd});
  }
  return out;
}

std::vector<Tensor> lstm_backward(
    const Tensor& gy_, const Tensor& gh, const Tensor& gc, const Tensor& x_, const Tensor& w_ih,
    const Tensor& w_hh, bool has_bias, const OptTensor& w_peep_, const OptTensor& w_hr_,
    const OptTensor& h_mask_, const OptTensor& valid_, const OptTensor& zo_h_,
    const OptTensor& zo_c_, double rate_h, double rate_c, double cell_clip, bool coupled,
    const OptTensor& ln_ih, const OptTensor& ln_hh, const OptTensor& ln_c_w,
    const OptTensor& ln_c_b, const Tensor& gates, const Tensor& h_all, const Tensor& c_all,
    const Tensor& c_new, const OptTensor& m_all, const OptTensor& xw, const OptTensor& mean_ih,
    const OptTensor& rstd_ih, const OptTensor& raw_hh, const OptTensor& mean_hh,
    const OptTensor& rstd_hh, const OptTensor& c_out, const OptTensor& mean_c,
    const OptTensor& rstd_c, bool need_dx) {
  c10::NoGradGuard no_grad;
  const Tensor x = contig(x_), gy = contig(gy_);
  const OptTensor w_peep = contig(w_peep_), w_hr = contig(w_hr_), h_mask = contig(h_mask_),
                  valid = contig(valid_), zo_h = contig(zo_h_), zo_c = contig(zo_c_);
  const int64_t T = gates.size(0), B = gates.size(1), G = gates.size(2);
  const int64_t H = c_new.size(2), P = h_all.size(2);
  const auto opts = gates.options();

  Tensor dA = at::empty({T, B, G}, opts);
  Tensor dh = gh.contiguous().clone();
  Tensor dc = gc.contiguous().clone();
  Tensor dhr = at::zeros({B, P}, opts);
  Tensor dhraw_all = w_hr ? at::empty({T, B, P}, opts) : Tensor();
  const Tensor w_hh_c = w_hh.contiguous();
  const StepNorm norm_hh(ln_hh, raw_hh, mean_hh, rstd_hh);
  const CellNorm norm_c(ln_c_w, ln_c_b, c_out, mean_c, rstd_c);
  Tensor dU = norm_hh.on ? at::empty({T, B, G}, opts) : dA;  // of the raw recurrent product
  Tensor dco = norm_c.on ? at::empty({T, B, H}, opts) : Tensor();  // of c_out

  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    CarrySeq<scalar_t> carry_h(zo_h, rate_h, valid, B, P), carry_c(zo_c, rate_c, valid, B, H);
    backward_loop<scalar_t>(dA, dU, dco, dh, dc, dhr, dhraw_all, gy, gates, c_all, c_new, w_hh_c,
                            w_peep, w_hr, norm_hh, norm_c, h_mask, carry_h, carry_c, cell_clip,
                            coupled);
  });

  // What flows back from step 0's recurrent product reaches h0 through the dropout mask.
  Tensor dh0 = h_mask ? dh + dhr * *h_mask : dh + dhr;
  const Tensor dA2 = rows(dA);
  auto in = input_grads(dA2, x, w_ih, need_dx, ln_ih, xw, mean_ih, rstd_ih);
  Tensor dw_hh = rows(dU).t().mm(rows(recurrent_inputs(h_all, T, h_mask)));
  Tensor db_ih, db_hh;
  if (has_bias) {
    db_ih = dA2.sum(0);
    db_hh = db_ih.clone();
  }
  Tensor dpeep;
  if (w_peep) {
    const GateSlots s(coupled);
    const Tensor c_prev = c_all.narrow(0, 0, T);
    std::vector<Tensor> parts{sum_tb(dA.narrow(2, s.i * H, H) * c_prev)};
    if (!coupled) parts.push_back(sum_tb(dA.narrow(2, s.f * H, H) * c_prev));
    parts.push_back(sum_tb(dA.narrow(2, s.o * H, H) * c_new));
    dpeep = at::cat(parts);
  }
  Tensor dw_hr = w_hr ? rows(dhraw_all).t().mm(rows(*m_all)) : Tensor();
  Tensor dg_hh = norm_hh.on ? norm_hh.gain_grad(dA) : Tensor();
  Tensor dw_c, db_c;
  if (norm_c.on) {  // c_out = c_hat * w + b
    dw_c = sum_tb(dco * ((c_new - norm_c.mean) * norm_c.rstd));
    db_c = sum_tb(dco);
  }
  return {in[0], dh0, dc, in[1], dw_hh, db_ih, db_hh, dpeep, dw_hr, in[2], dg_hh, dw_c, db_c};
}

}  // namespace lstmkit
