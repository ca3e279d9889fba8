// Entry points of the fused kernels, one forward and one backward per family. The Python side
// (lstmkit/backends/fused.py) wraps each pair in a torch.autograd.Function.
//
// Forward functions return {y, final state..., saved...}; the saved tensors (only with
// save=true) are passed back unchanged to the backward function. Backward functions return the
// gradients in a fixed order; an undefined tensor (None in Python) means "no gradient".
#pragma once

#include "common.h"

namespace lstmkit {

// LSTM with peepholes, CIFG (coupled_gates), cell clipping, projection and layer norm (see
// lstm.cpp). Returns {y, h_T, c_T} and, with save, {gates, h_all, c_all, c_new, m_all, xw,
// mean_ih, rstd_ih, raw_hh, mean_hh, rstd_hh, c_out, mean_c, rstd_c} (the last nine undefined
// without layer norm).
std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                 const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                 const OptTensor& b_hh, const OptTensor& w_peep,
                                 const OptTensor& w_hr, const OptTensor& h_mask,
                                 const OptTensor& valid, const OptTensor& zo_h,
                                 const OptTensor& zo_c, double rate_h, double rate_c,
                                 double cell_clip, bool coupled, const OptTensor& ln_ih,
                                 const OptTensor& ln_hh, const OptTensor& ln_c_w,
                                 const OptTensor& ln_c_b, bool save);

// Returns {dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr, d ln_ih, d ln_hh,
// d ln_cell_weight, d ln_cell_bias}.
std::vector<Tensor> lstm_backward(
    const Tensor& gy, const Tensor& gh, const Tensor& gc, const Tensor& x, const Tensor& w_ih,
    const Tensor& w_hh, bool has_bias, const OptTensor& w_peep, const OptTensor& w_hr,
    const OptTensor& h_mask, const OptTensor& valid, const OptTensor& zo_h,
    const OptTensor& zo_c, double rate_h, double rate_c, double cell_clip, bool coupled,
    const OptTensor& ln_ih, const OptTensor& ln_hh, const OptTensor& ln_c_w,
    const OptTensor& ln_c_b, const Tensor& gates, const Tensor& h_all, const Tensor& c_all,
    const Tensor& c_new, const OptTensor& m_all, const OptTensor& xw, const OptTensor& mean_ih,
    const OptTensor& rstd_ih, const OptTensor& raw_hh, const OptTensor& mean_hh,
    const OptTensor& rstd_hh, const OptTensor& c_out, const OptTensor& mean_c,
    const OptTensor& rstd_c, bool need_dx);

// GRU, reset_after true (torch/cuDNN) or false (Cho et al. 2014), optional layer norm (see
// gru.cpp). Returns {y, h_T} and, with save, {gates, h_all, extra, xw, mean_ih, rstd_ih,
// raw_hh, mean_hh, rstd_hh, raw_n, mean_n, rstd_n} (extra: u_n or r * h; the layer-norm ones
// undefined without it, the _n ones also with reset_after).
std::vector<Tensor> gru_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                const OptTensor& h_mask, const OptTensor& valid,
                                const OptTensor& zo_h, double rate_h, bool reset_after,
                                const OptTensor& ln_ih, const OptTensor& ln_hh, bool save);

// Returns {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d ln_ih, d ln_hh}.
std::vector<Tensor> gru_backward(const Tensor& gy, const Tensor& gh, const Tensor& x,
                                 const Tensor& w_ih, const Tensor& w_hh, bool has_bias,
                                 const OptTensor& h_mask, const OptTensor& valid,
                                 const OptTensor& zo_h, double rate_h, bool reset_after,
                                 const OptTensor& ln_ih, const OptTensor& ln_hh,
                                 const Tensor& gates, const Tensor& h_all, const Tensor& extra,
                                 const OptTensor& xw, const OptTensor& mean_ih,
                                 const OptTensor& rstd_ih, const OptTensor& raw_hh,
                                 const OptTensor& mean_hh, const OptTensor& rstd_hh,
                                 const OptTensor& raw_n, const OptTensor& mean_n,
                                 const OptTensor& rstd_n, bool need_dx);

// Elman RNN with tanh or relu, optional layer norm (see rnn.cpp). Returns {y, h_T} and, with
// save, {act, h_all, xw, mean_ih, rstd_ih, u_raw, mean_hh, rstd_hh} (the last six undefined
// without layer norm).
std::vector<Tensor> rnn_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                const OptTensor& h_mask, const OptTensor& valid,
                                const OptTensor& zo_h, double rate_h, bool relu,
                                const OptTensor& ln_ih, const OptTensor& ln_hh, bool save);

// Returns {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d ln_ih, d ln_hh}.
std::vector<Tensor> rnn_backward(const Tensor& gy, const Tensor& gh, const Tensor& x,
                                 const Tensor& w_ih, const Tensor& w_hh, bool has_bias,
                                 const OptTensor& h_mask, const OptTensor& valid,
                                 const OptTensor& zo_h, double rate_h, bool relu,
                                 const OptTensor& ln_ih, const OptTensor& ln_hh,
                                 const Tensor& act, const Tensor& h_all, const OptTensor& xw,
                                 const OptTensor& mean_ih, const OptTensor& rstd_ih,
                                 const OptTensor& u_raw, const OptTensor& mean_hh,
                                 const OptTensor& rstd_hh, bool need_dx);

}  // namespace lstmkit

// ---- Streaming step (step.cpp), used by lstmkit/streaming.py ---------------------------------
#include <map>
#include <memory>
#include <string>

namespace lstmkit {

// One time step of a unidirectional stack for B streams, in evaluation semantics, on buffers
// allocated once. Built from per-layer gate "slots" (H-row weight blocks, each reading a column
// range of [x | h]), optional second matrices (the LSTM projection W_hr, the GRU's W_hn with
// reset_after=false) and vectors ("bias", "b_hn", "peephole", "ln_ih", "ln_hh",
// "ln_cell_weight", "ln_cell_bias"); it packs copies of them. h (L, B, P) and, for the LSTM,
// c (L, B, H) are the state buffers, updated in place by step. step(x, out) returns false
// without touching anything when x (B, I) or out (B, P) has the wrong shape, dtype or device.
// (Hidden visibility, as pybind11's own types, which the Python binding of this class derives
// from: otherwise GCC warns that the binding is more visible than its base.)
class __attribute__((visibility("hidden"))) StepKernel {
 public:
  StepKernel(const std::string& family, const std::vector<std::vector<Tensor>>& slots,
             const std::vector<std::vector<int64_t>>& slot_k0, const std::vector<OptTensor>& second,
             const std::vector<std::map<std::string, Tensor>>& vectors,
             const std::vector<int64_t>& input_sizes, const Tensor& h, const OptTensor& c,
             bool coupled, bool reset_after, bool relu, bool residual, double cell_clip,
             double zoneout_h, double zoneout_c);
  ~StepKernel();
  bool step(const Tensor& x, const Tensor& out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lstmkit
