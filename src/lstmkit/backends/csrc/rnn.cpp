// Fused Elman RNN scan (torch.nn.RNN, tanh or relu): forward and hand-written backward.
//
// Forward:  a = x_t W_ih^T + b_ih + b_hh + (h_{t-1} * m_h) W_hh^T,   h' = phi(a)
//           then zoneout and length masking of h' (common.h).
// Backward: da = dh' * phi'(a), with phi'(a) = 1 - h'^2 for tanh and [h' > 0] for relu;
//           dh_{t-1} += (da W_hh) * m_h  (one GEMM per step); after the loop
//           dW_ih = da^T X, dx = da W_ih, dW_hh = da^T (H_prev * m_h), db_ih = db_hh = sum da.
// layer_norm: the products are LN_ih(x_t W_ih^T) and LN_hh((h_{t-1} * m_h) W_hh^T); their
// gradients come from da through the LN backward (common.h), and the GEMMs above take them.
#include "ops.h"

namespace lstmkit {
namespace {

template <typename T>
void forward_loop(const Tensor& act, StateSeq& hs, const Tensor& y, const Tensor& w_hh,
                  const StepNorm& norm, const OptTensor& h_mask, const CarrySeq<T>& carry_h,
                  bool relu) {
  const int64_t T_ = act.size(0), B = act.size(1), H = y.size(2);
  const T* mask = ptr_or_null<T>(h_mask);
  Tensor hr_buf = h_mask ? hs.at(0) * *h_mask : Tensor();
  const Tensor w_hh_t = w_hh.t();

  for (int64_t t = 0; t < T_; ++t) {
    Tensor a_t = act[t];
    if (norm.on) {  // a += LN_hh(hr W_hh^T)
      Tensor u = norm.raw_at(t);
      at::mm_out(u, h_mask ? hr_buf : hs.at(t), w_hh_t);
      a_t.add_(norm.forward(t));
    } else {  // a += hr W_hh^T
      a_t.addmm_(h_mask ? hr_buf : hs.at(t), w_hh_t);
    }
    T* a = a_t.data_ptr<T>();
    const HForward<T> h_out{hs.ptr<T>(t), hs.ptr<T>(t + 1), y.data_ptr<T>() + t * B * H,
                            mask ? hr_buf.data_ptr<T>() : nullptr, mask, carry_h.at(t), H};
    parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      T* ab = a + b * H;  // phi(a) replaces a in place: backward reads it
      if (relu) {
        for (int64_t j = j0; j < j1; ++j) ab[j] = ab[j] < T(0) ? T(0) : ab[j];
      } else {
        tanh_(ab + j0, j1 - j0);
      }
      for (int64_t j = j0; j < j1; ++j) h_out(b, j, ab[j]);
    });
  }
}

template <typename T>
void backward_loop(const Tensor& dA, const Tensor& dU, const Tensor& dh, Tensor dhr,
                   const Tensor& gy, const Tensor& act, const Tensor& w_hh, const StepNorm& norm,
                   const OptTensor& h_mask, const CarrySeq<T>& carry_h, bool relu) {
  const int64_t T_ = act.size(0), B = act.size(1), H = gy.size(2);
  const T* mask = ptr_or_null<T>(h_mask);
  T* dh_p = dh.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const T* a = act.data_ptr<T>() + t * B * H;
    T* da = dA.data_ptr<T>() + t * B * H;
    const HBackward<T> h_grad{dh_p, t == T_ - 1 ? nullptr : dhr.data_ptr<T>(), mask,
                              gy.data_ptr<T>() + t * B * H, carry_h.at(t), H};
    parallel_rows(B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t e = b * H + j;
        const T g = h_grad(b, j);
        const T h = a[e];
        da[e] = relu ? (h > T(0) ? g : T(0)) : g * (T(1) - h * h);
      }
    });
    if (norm.on) {  // through LN_hh: du = LN backward of da
      Tensor du = dU[t];
      du.copy_(norm.backward(t, dA[t]));
      at::mm_out(dhr, du, w_hh);
    } else {
      at::mm_out(dhr, dA[t], w_hh);
    }
  }
}

}  // namespace

std::vector<Tensor> rnn_forward(const Tensor& x_, const Tensor& h0, const Tensor& w_ih,
                                const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                const OptTensor& h_mask_, const OptTensor& valid_,
                                const OptTensor& zo_h_, double rate_h, bool relu,
                                const OptTensor& ln_ih, const OptTensor& ln_hh, bool save) {
  c10::NoGradGuard no_grad;
  const Tensor x = contig(x_);
  const auto dtype = x.scalar_type();
  check_float(x, dtype, "x");
  check_float(h0, dtype, "h0");
  check_float(w_ih, dtype, "weight_ih");
  check_float(w_hh, dtype, "weight_hh");
  const OptTensor h_mask = contig(h_mask_), valid = contig(valid_), zo_h = contig(zo_h_);
  check_opt(h_mask, dtype, "h_mask");
  check_opt(zo_h, dtype, "zoneout mask h");
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1);

  Tensor bias = b_ih ? (b_hh ? *b_ih + *b_hh : *b_ih) : Tensor();
  std::vector<Tensor> in_ln{Tensor(), Tensor(), Tensor(), Tensor()};
  if (ln_ih) in_ln = input_projection_ln(x, w_ih, bias, *ln_ih);
  Tensor act = (ln_ih ? in_ln[0] : input_projection(x, w_ih, bias)).contiguous();
  StateSeq hs(h0.contiguous(), T, save);
  Tensor y = at::empty({T, B, H}, x.options());
  const Tensor w_hh_c = w_hh.contiguous();
  const StepNorm norm(ln_hh, T, B, H, save, x.options());

  AT_DISPATCH_FLOATING_TYPES(dtype, "rnn_forward", [&] {
    CarrySeq<scalar_t> carry_h(zo_h, rate_h, valid, B, H);
    forward_loop<scalar_t>(act, hs, y, w_hh_c, norm, h_mask, carry_h, relu);
  });

  std::vector<Tensor> out{y, hs.at(T).clone()};
  if (save) {
    out.insert(out.end(), {act, hs.buf, in_ln[1], in_ln[2], in_ln[3], norm.raw, norm.mean,
                           norm.rstd});
  }
  return out;
}

std::vector<Tensor> rnn_backward(const Tensor& gy_, const Tensor& gh, const Tensor& x_,
                                 const Tensor& w_ih, const Tensor& w_hh, bool has_bias,
                                 const OptTensor& h_mask_, const OptTensor& valid_,
                                 const OptTensor& zo_h_, double rate_h, bool relu,
                                 const OptTensor& ln_ih, const OptTensor& ln_hh,
                                 const Tensor& act, const Tensor& h_all, const OptTensor& xw,
                                 const OptTensor& mean_ih, const OptTensor& rstd_ih,
                                 const OptTensor& u_raw, const OptTensor& mean_hh,
                                 const OptTensor& rstd_hh, bool need_dx) {
  c10::NoGradGuard no_grad;
  const Tensor x = contig(x_), gy = contig(gy_);
  const OptTensor h_mask = contig(h_mask_), valid = contig(valid_), zo_h = contig(zo_h_);
  const int64_t T = act.size(0), B = act.size(1), H = act.size(2);
  const auto opts = act.options();

  Tensor dA = at::empty({T, B, H}, opts);
  Tensor dh = gh.contiguous().clone();
  Tensor dhr = at::zeros({B, H}, opts);
  const Tensor w_hh_c = w_hh.contiguous();
  const StepNorm norm(ln_hh, u_raw, mean_hh, rstd_hh);
  Tensor dU = norm.on ? at::empty({T, B, H}, opts) : dA;  // gradient of the raw recurrent product

  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "rnn_backward", [&] {
    CarrySeq<scalar_t> carry_h(zo_h, rate_h, valid, B, H);
    backward_loop<scalar_t>(dA, dU, dh, dhr, gy, act, w_hh_c, norm, h_mask, carry_h, relu);
  });

  Tensor dh0 = h_mask ? dh + dhr * *h_mask : dh + dhr;
  const Tensor dA2 = rows(dA);
  auto in = input_grads(dA2, x, w_ih, need_dx, ln_ih, xw, mean_ih, rstd_ih);
  Tensor dw_hh = rows(dU).t().mm(rows(recurrent_inputs(h_all, T, h_mask)));
  Tensor db_ih, db_hh;
  if (has_bias) {
    db_ih = dA2.sum(0);
    db_hh = db_ih.clone();
  }
  Tensor dg_hh = norm.on ? norm.gain_grad(dA) : Tensor();
  return {in[0], dh0, in[1], dw_hh, db_ih, db_hh, in[2], dg_hh};
}

}  // namespace lstmkit
