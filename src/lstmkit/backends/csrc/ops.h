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
// lstm.cpp). x holds the rows of every step, packed: (T, B, I) without batch_sizes, else
// (sum(batch_sizes), I) with the batch sorted by length (h0, c0 and the masks in that order).
// params: {w_ih, w_hh, b_ih, b_hh, w_peep, w_hr, ln_ih, ln_hh, ln_cell_weight, ln_cell_bias};
// masks: {h_mask (B, P), zoneout keep masks h (rows, P) and c (rows, H)}. mode 0: inference,
// 1: save for backward, 2: save only the states (backward recomputes the rest). Returns
// {y, h_T, c_T} and, with mode 1 or 2, 15 saved tensors for lstm_backward (which also takes
// c_T as a 16th).
std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                 const std::vector<OptTensor>& params,
                                 const std::vector<OptTensor>& masks,
                                 const OptTensor& batch_sizes, double rate_h, double rate_c,
                                 double cell_clip, bool coupled, int64_t mode);

// Returns {dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr, d ln_ih, d ln_hh,
// d ln_cell_weight, d ln_cell_bias}.
std::vector<Tensor> lstm_backward(const Tensor& gy, const Tensor& gh, const Tensor& gc,
                                  const Tensor& x, const Tensor& h0, const Tensor& c0,
                                  const std::vector<OptTensor>& params,
                                  const std::vector<OptTensor>& masks,
                                  const OptTensor& batch_sizes, double rate_h, double rate_c,
                                  double cell_clip, bool coupled,
                                  const std::vector<OptTensor>& saved, bool need_dx);

// GRU, reset_after true (torch/cuDNN) or false (Cho et al. 2014), optional layer norm (see
// gru.cpp). x, batch_sizes, masks {h_mask, zoneout keep mask} and mode as lstm_forward;
// params: {w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh}. Returns {y, h_T} and, with mode 1 or 2, 13
// saved tensors for gru_backward.
std::vector<Tensor> gru_forward(const Tensor& x, const Tensor& h0,
                                const std::vector<OptTensor>& params,
                                const std::vector<OptTensor>& masks, const OptTensor& batch_sizes,
                                double rate_h, bool reset_after, int64_t mode);

// Returns {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d ln_ih, d ln_hh}.
std::vector<Tensor> gru_backward(const Tensor& gy, const Tensor& gh, const Tensor& x,
                                 const Tensor& h0, const std::vector<OptTensor>& params,
                                 const std::vector<OptTensor>& masks,
                                 const OptTensor& batch_sizes, double rate_h, bool reset_after,
                                 const std::vector<OptTensor>& saved, bool need_dx);

// Elman RNN with tanh or relu, optional layer norm (see rnn.cpp); arguments as gru_forward.
// Returns {y, h_T} and, with mode 1 or 2, 9 saved tensors for rnn_backward.
std::vector<Tensor> rnn_forward(const Tensor& x, const Tensor& h0,
                                const std::vector<OptTensor>& params,
                                const std::vector<OptTensor>& masks, const OptTensor& batch_sizes,
                                double rate_h, bool relu, int64_t mode);

// Fills `out` (contiguous, CPU, floating or bool) with independent Bernoulli(p) draws as 1 and
// 0: element i is 1 where the i-th uniform of a counter-based generator seeded with `seed` is
// below p (masks.cpp). The same (seed, shape) gives the same tensor for any thread count.
void bernoulli_fill(const Tensor& out, double p, int64_t seed);

// Returns {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, d ln_ih, d ln_hh}.
std::vector<Tensor> rnn_backward(const Tensor& gy, const Tensor& gh, const Tensor& x,
                                 const Tensor& h0, const std::vector<OptTensor>& params,
                                 const std::vector<OptTensor>& masks,
                                 const OptTensor& batch_sizes, double rate_h, bool relu,
                                 const std::vector<OptTensor>& saved, bool need_dx);

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
