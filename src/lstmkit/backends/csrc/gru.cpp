// Fused GRU scan: forward and hand-written backward through time. Gate order r, z, n as
// torch.nn.GRU; hr = h_{t-1} * m_h is the state as it enters the recurrent products
// (variational recurrent dropout), while the interpolation uses h_{t-1} itself.
//
// reset_after = true (torch, cuDNN):
//   a      = x_t W_ih^T + b_ih + [b_hr, b_hz, 0]     (all steps: one GEMM up front)
//   u      = hr W_hh^T,  u_n' = u_n + b_hn            (one GEMM per step)
//   r = sigmoid(a_r + u_r),  z = sigmoid(a_z + u_z),  n = tanh(a_n + r * u_n')
//   h'     = (1 - z) * n + z * h_{t-1}
// backward, with dh' the gradient of h' after the carry (common.h):
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
// product, and the gradients of the raw products (which the GEMMs take) come from du through
// the LN backward (common.h).
#include "ops.h"

namespace lstmkit {
namespace {

template <typename T>
void forward_loop(const Tensor& gates, StateSeq& hs, const Tensor& extra, const Tensor& y,
                  const Tensor& w_hh, const OptTensor& b_hh, const StepNorm& norm_hh,
                  const StepNorm& norm_n, const OptTensor& h_mask, const CarrySeq<T>& carry_h,
                  bool reset_after) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = y.size(2);
  const int64_t G = 3 * H;
  const T* mask = ptr_or_null<T>(h_mask);
  const T* b_hn = b_hh ? b_hh->data_ptr<T>() + 2 * H : nullptr;
  Tensor hr_buf = h_mask ? hs.at(0) * *h_mask : Tensor();
  const Tensor w_rz_t = w_hh.narrow(0, 0, 2 * H).t();
  const Tensor w_n_t = w_hh.narrow(0, 2 * H, H).t();
  Tensor u_buf = at::empty({B, reset_after ? G : 2 * H}, y.options());
  Tensor un_buf = reset_after ? Tensor() : at::empty({B, H}, y.options());
  const int64_t U = u_buf.size(1);
  // u = hr W^T (rows) into u_buf, or LN(hr W^T) with layer norm
  auto product = [](const StepNorm& norm, int64_t t, Tensor& buf, const Tensor& in,
                    const Tensor& w_t) {
    if (!norm.on) {
      at::mm_out(buf, in, w_t);
      return buf;
    }
    Tensor raw = norm.raw_at(t);
    at::mm_out(raw, in, w_t);
    return norm.forward(t);
  };

  for (int64_t t = 0; t < T_; ++t) {
    const Tensor hr_t = h_mask ? hr_buf : hs.at(t);
    T* a = gates.data_ptr<T>() + t * B * G;
    const T* h_prev = hs.ptr<T>(t);
    T* ex = step_ptr<T>(extra, t);  // u_n' (reset_after) or s = r * hr
    const HForward<T> h_out{h_prev, hs.ptr<T>(t + 1), y.data_ptr<T>() + t * B * H,
                            mask ? hr_buf.data_ptr<T>() : nullptr, mask, carry_h.at(t), H};
    if (reset_after) {
      const Tensor u_t = product(norm_hh, t, u_buf, hr_t, w_hh.t());
      const T* u = u_t.data_ptr<T>();
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        // This row's piece [j0, j1) of the r, z, n blocks; the activations replace the
        // pre-activations in place and u_n' goes to `extra`, as backward reads them.
        const int64_t n = j1 - j0;
        T* gr = a + b * G + j0;
        T* gz = gr + H;
        T* gn = gr + 2 * H;
        const T* ur = u + b * U + j0;
        const T* uz = ur + H;
        const T* un = ur + 2 * H;
        T* unb = ex + b * H + j0;
        for (int64_t k = 0; k < n; ++k) {
          gr[k] += ur[k];
          gz[k] += uz[k];
          unb[k] = b_hn ? un[k] + b_hn[j0 + k] : un[k];
        }
        sigmoid_(gr, n);
        sigmoid_(gz, n);
        for (int64_t k = 0; k < n; ++k) gn[k] += gr[k] * unb[k];
        tanh_(gn, n);
        const T* hp = h_prev + b * H + j0;
        for (int64_t k = 0; k < n; ++k) h_out(b, j0 + k, (T(1) - gz[k]) * gn[k] + gz[k] * hp[k]);
      });
    } else {
      const Tensor u_t = product(norm_hh, t, u_buf, hr_t, w_rz_t);
      const T* u = u_t.data_ptr<T>();
      const T* hr = hr_t.data_ptr<T>();
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        const int64_t n = j1 - j0;
        T* gr = a + b * G + j0;
        T* gz = gr + H;
        const T* ur = u + b * U + j0;
        const T* uz = ur + H;
        for (int64_t k = 0; k < n; ++k) {
          gr[k] += ur[k];
          gz[k] += uz[k];
        }
        sigmoid_(gr, n);
        sigmoid_(gz, n);
        T* sb = ex + b * H + j0;  // s = r * hr, the input of the candidate's recurrent GEMM
        for (int64_t k = 0; k < n; ++k) sb[k] = gr[k] * hr[b * H + j0 + k];
      });
      const Tensor un_t = product(norm_n, t, un_buf, extra[extra.size(0) == 1 ? 0 : t], w_n_t);
      const T* un = un_t.data_ptr<T>();
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        const int64_t n = j1 - j0;
        const T* gz = a + b * G + H + j0;
        T* gn = a + b * G + 2 * H + j0;
        for (int64_t k = 0; k < n; ++k) gn[k] += un[b * H + j0 + k];
        tanh_(gn, n);
        const T* hp = h_prev + b * H + j0;
        for (int64_t k = 0; k < n; ++k) h_out(b, j0 + k, (T(1) - gz[k]) * gn[k] + gz[k] * hp[k]);
      });
    }
  }
}

template <typename T>
void backward_loop(const Tensor& dA, const Tensor& dU, const Tensor& dRaw, const Tensor& dRawN,
                   const Tensor& dh, Tensor dhr, const Tensor& gy, const Tensor& gates,
                   const Tensor& h_all, const Tensor& extra, const Tensor& w_hh,
                   const StepNorm& norm_hh, const StepNorm& norm_n, const OptTensor& h_mask,
                   const CarrySeq<T>& carry_h, bool reset_after) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = gy.size(2);
  const int64_t G = 3 * H;
  const T* mask = ptr_or_null<T>(h_mask);
  const Tensor w_rz = w_hh.narrow(0, 0, 2 * H);
  const Tensor w_n = w_hh.narrow(0, 2 * H, H);
  Tensor ds_buf = reset_after ? Tensor() : at::empty({B, H}, gy.options());
  T* dh_p = dh.data_ptr<T>();
  // The gradient of the raw product of step t from that of its (normalised) use d: d itself
  // without layer norm, else the LN backward, kept in raw[t] for the weight gradient.
  auto raw_grad = [](const StepNorm& norm, int64_t t, const Tensor& d, const Tensor& raw) {
    if (!norm.on) return d;
    Tensor r = raw[t];
    r.copy_(norm.backward(t, d));
    return r;
  };

  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* a = gates.data_ptr<T>() + t * B * G;
    const T* ex = extra.data_ptr<T>() + t * B * H;
    const T* h_prev = h_all.data_ptr<T>() + t * B * H;
    T* da = dA.data_ptr<T>() + t * B * G;
    const HBackward<T> h_grad{dh_p, t == T_ - 1 ? nullptr : dhr.data_ptr<T>(), mask,
                              gy.data_ptr<T>() + t * B * H, carry_h.at(t), H};

    // Everything up to the pre-activation gradients of z and n; returns da_n.
    auto zn_grad = [&](int64_t b, int64_t j) {
      const int64_t e = b * H + j;
      const T dhn = h_grad(b, j);
      const T* ab = a + b * G;
      const T z = ab[H + j], n = ab[2 * H + j];
      const T dn = dhn * (T(1) - z);
      const T dz = dhn * (h_prev[e] - n);
      dh_p[e] += dhn * z;
      const T da_n = dn * (T(1) - n * n);
      da[b * G + H + j] = dz * z * (T(1) - z);
      da[b * G + 2 * H + j] = da_n;
      return da_n;
    };

    if (reset_after) {
      T* du = dU.data_ptr<T>() + t * B * G;
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const T da_n = zn_grad(b, j);
          const T r = a[b * G + j];
          const T da_r = da_n * ex[b * H + j] * r * (T(1) - r);
          da[b * G + j] = da_r;
          du[b * G + j] = da_r;
          du[b * G + H + j] = da[b * G + H + j];
          du[b * G + 2 * H + j] = da_n * r;
        }
      });
      at::mm_out(dhr, raw_grad(norm_hh, t, dU[t], dRaw), w_hh);
    } else {
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) zn_grad(b, j);
      });
      const Tensor dA_t = dA[t];
      at::mm_out(ds_buf, raw_grad(norm_n, t, dA_t.narrow(1, 2 * H, H), dRawN), w_n);  // ds
      const T* ds = ds_buf.data_ptr<T>();
      T* dhr_p = dhr.data_ptr<T>();
      parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t e = b * H + j;
          const T r = a[b * G + j];
          const T hr = mask ? h_prev[e] * mask[e] : h_prev[e];
          da[b * G + j] = ds[e] * hr * r * (T(1) - r);
          dhr_p[e] = ds[e] * r;
        }
      });
      dhr.addmm_(raw_grad(norm_hh, t, dA_t.narrow(1, 0, 2 * H), dRaw), w_rz);  // + du_rz W_hrz
    }
  }
}

}  // namespace

std::vector<Tensor> gru_forward(const Tensor& x_, const Tensor& h0, const Tensor& w_ih,
                                const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh_,
                                const OptTensor& h_mask_, const OptTensor& valid_,
                                const OptTensor& zo_h_, double rate_h, bool reset_after,
                                const OptTensor& ln_ih, const OptTensor& ln_hh, bool save) {
  c10::NoGradGuard no_grad;
  const Tensor x = contig(x_);
  const auto dtype = x.scalar_type();
  check_float(x, dtype, "x");
  check_float(h0, dtype, "h0");
  check_float(w_ih, dtype, "weight_ih");
  check_float(w_hh, dtype, "weight_hh");
  const OptTensor b_hh = contig(b_hh_), h_mask = contig(h_mask_), valid = contig(valid_),
                  zo_h = contig(zo_h_);
  check_opt(h_mask, dtype, "h_mask");
  check_opt(zo_h, dtype, "zoneout mask h");
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1);
  TORCH_CHECK(w_ih.size(0) == 3 * H, "lstmkit fused: GRU weight_ih must have 3 * H rows");

  Tensor bias;
  if (b_ih) {
    bias = b_ih->clone();
    if (b_hh) {
      // b_hn sits inside r * (...) with reset_after and cannot be folded into the projection.
      if (reset_after) {
        bias.narrow(0, 0, 2 * H).add_(b_hh->narrow(0, 0, 2 * H));
      } else {
        bias.add_(*b_hh);
      }
    }
  }
  std::vector<Tensor> in_ln{Tensor(), Tensor(), Tensor(), Tensor()};
  if (ln_ih) in_ln = input_projection_ln(x, w_ih, bias, *ln_ih);
  Tensor gates = (ln_ih ? in_ln[0] : input_projection(x, w_ih, bias)).contiguous();
  StateSeq hs(h0.contiguous(), T, save);
  Tensor extra = step_buffer(T, B, H, save, x.options());
  const auto opts = x.options();
  const OptTensor g_hh = reset_after || !ln_hh ? ln_hh : OptTensor(ln_hh->narrow(0, 0, 2 * H));
  const OptTensor g_n = reset_after || !ln_hh ? std::nullopt : OptTensor(ln_hh->narrow(0, 2 * H, H));
  const StepNorm norm_hh(g_hh, T, B, reset_after ? 3 * H : 2 * H, save, opts);
  const StepNorm norm_n(g_n, T, B, H, save, opts);
  Tensor y = at::empty({T, B, H}, x.options());
  const Tensor w_hh_c = w_hh.contiguous();
  const OptTensor b_hn_src = reset_after ? b_hh : std::nullopt;

  AT_DISPATCH_FLOATING_TYPES(dtype, "gru_forward", [&] {
    CarrySeq<scalar_t> carry_h(zo_h, rate_h, valid, B, H);
    forward_loop<scalar_t>(gates, hs, extra, y, w_hh_c, b_hn_src, norm_hh, norm_n, h_mask,
                           carry_h, reset_after);
  });

  std::vector<Tensor> out{y, hs.at(T).clone()};
  if (save) {
    out.insert(out.end(), {gates, hs.buf, extra, in_ln[1], in_ln[2], in_ln[3], norm_hh.raw,
                           norm_hh.mean, norm_hh.rstd, norm_n.raw, norm_n.mean, norm_n.rstd});
  }
  return out;
}

std::vector<Tensor> gru_backward(const Tensor& gy_, const Tensor& gh, const Tensor& x_,
                                 const Tensor& w_ih, const Tensor& w_hh, bool has_bias,
                                 const OptTensor& h_mask_, const OptTensor& valid_,
                                 const OptTensor& zo_h_, double rate_h, bool reset_after,
                                 const OptTensor& ln_ih, const OptTensor& ln_hh,
                                 const Tensor& gates, const Tensor& h_all, const Tensor& extra,
                                 const OptTensor& xw, const OptTensor& mean_ih,
                                 const OptTensor& rstd_ih, const OptTensor& raw_hh,
                                 const OptTensor& mean_hh, const OptTensor& rstd_hh,
                                 const OptTensor& raw_n, const OptTensor& mean_n,
                                 const OptTensor& rstd_n, bool need_dx) {
  c10::NoGradGuard no_grad;
  const Tensor x = contig(x_), gy = contig(gy_);
  const OptTensor h_mask = contig(h_mask_), valid = contig(valid_), zo_h = contig(zo_h_);
  const int64_t T = gates.size(0), B = gates.size(1), H = h_all.size(2);
  const int64_t G = 3 * H;
  const auto opts = gates.options();

  Tensor dA = at::empty({T, B, G}, opts);
  Tensor dU = reset_after ? at::empty({T, B, G}, opts) : Tensor();
  Tensor dh = gh.contiguous().clone();
  Tensor dhr = at::zeros({B, H}, opts);
  const Tensor w_hh_c = w_hh.contiguous();
  const OptTensor g_hh = reset_after || !ln_hh ? ln_hh : OptTensor(ln_hh->narrow(0, 0, 2 * H));
  const OptTensor g_n = reset_after || !ln_hh ? std::nullopt : OptTensor(ln_hh->narrow(0, 2 * H, H));
  const StepNorm norm_hh(g_hh, raw_hh, mean_hh, rstd_hh), norm_n(g_n, raw_n, mean_n, rstd_n);
  // gradients of the raw recurrent products, with layer norm
  Tensor dRaw = norm_hh.on ? at::empty({T, B, reset_after ? G : 2 * H}, opts) : Tensor();
  Tensor dRawN = norm_n.on ? at::empty({T, B, H}, opts) : Tensor();

  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    CarrySeq<scalar_t> carry_h(zo_h, rate_h, valid, B, H);
    backward_loop<scalar_t>(dA, dU, dRaw, dRawN, dh, dhr, gy, gates, h_all, extra, w_hh_c,
                            norm_hh, norm_n, h_mask, carry_h, reset_after);
  });

  Tensor dh0 = h_mask ? dh + dhr * *h_mask : dh + dhr;
  const Tensor dA2 = rows(dA);
  auto in = input_grads(dA2, x, w_ih, need_dx, ln_ih, xw, mean_ih, rstd_ih);
  const Tensor hr_all = rows(recurrent_inputs(h_all, T, h_mask));
  Tensor dw_hh, db_ih, db_hh, dg_hh;
  if (reset_after) {
    const Tensor dU2 = rows(dU);
    dw_hh = rows(norm_hh.on ? dRaw : dU).t().mm(hr_all);
    if (has_bias) {
      db_ih = dA2.sum(0);
      db_hh = dU2.sum(0);
    }
    if (norm_hh.on) dg_hh = norm_hh.gain_grad(dU);
  } else {
    const Tensor du_rz = norm_hh.on ? rows(dRaw) : dA2.narrow(1, 0, 2 * H);
    const Tensor du_n = norm_n.on ? rows(dRawN) : dA2.narrow(1, 2 * H, H);
    dw_hh = at::cat({du_rz.t().mm(hr_all), du_n.t().mm(rows(extra))});
    if (has_bias) {
      db_ih = dA2.sum(0);
      db_hh = db_ih.clone();
    }
    if (norm_hh.on) {
      dg_hh = at::cat({norm_hh.gain_grad(dA.narrow(2, 0, 2 * H)),
                       norm_n.gain_grad(dA.narrow(2, 2 * H, H))});
    }
  }
  return {in[0], dh0, in[1], dw_hh, db_ih, db_hh, in[2], dg_hh};
}

}  // namespace lstmkit
