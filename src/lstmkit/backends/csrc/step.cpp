// Streaming step kernels (lstmkit.streaming.Streamer): ONE time step of a whole unidirectional
// stack, for a batch of B streams, in evaluation semantics, with no autograd and no allocation.
//
// Layout. Per layer l the step reads one row per stream, v = [x_t | h_{t-1}] (K = I + P columns,
// in the preallocated buffer `xh`), and every matrix product of the step is ONE pass over a
// *packed* copy of the weights, made when the Streamer is built (or refreshed):
//
//   * The gate rows are grouped in "slots" of H rows (one gate, or one gate's input or
//     recurrent half); each slot reads a column range [k0, k0 + width) of v. Where a gate's
//     input and recurrent products are simply added (LSTM and RNN without layer norm, the GRU's
//     r and z) its slot is the concatenation [W_ih | W_hh] over all K columns: one product
//     instead of two. Where they must stay apart (layer norm normalises each; the GRU's
//     candidate needs r * (W_hn h + b_hn)) a gate has one slot per half.
//   * Rows are packed in blocks of V units (V = the SIMD width: 16 floats with AVX-512) and,
//     inside a block, column-major: packed[u][slot][k][lane] = W_slot[u * V + lane][k]. The
//     product of one block is then V-wide fused multiply-adds over k, one contiguous stream of
//     weights, with no horizontal reductions: for batch 1 it runs at about the speed the
//     weights can be read, the floor of any implementation (measured faster than MKL's sgemv
//     on the same matrix: docs/streaming.md). Streams are done 8, 4, 2 or 1 at a time per
//     block, so that a block's weights are read from memory once and then from L1.
//   * Row counts are padded to a multiple of V with zero rows; padded outputs are never read.
//
// Each family's layer step is: copy h_{t-1} next to x_t, the product(s) into the gate buffer,
// then one pass per stream over the units doing all the pointwise work in place (biases, layer
// norms, peepholes, activations, cell clip, zoneout expectation); the LSTM projection and the
// GRU's reset-before candidate need a second product on a vector the first pass computes. The
// math is that of lstmkit/cells/*.py, in evaluation: zoneout uses its expectation
// lerp(new, old, rate), and no dropout applies.
#include "ops.h"

#include <map>
#include <memory>
#include <string>
#include <utility>

namespace lstmkit {
// Everything of this file but the StepKernel members lives in lstmkit::stream, so that its names
// never meet those of the scan kernels' headers.
namespace stream {

enum class Family { kLSTM, kGRU, kRNN };

// A product reading at least this many bytes of weights (times the batch) is split over the
// intra-op threads by unit blocks. Below it the step stays on the calling thread: a parallel
// region waits for its slowest thread, and on a busy machine (other processes, or other
// streamers on the other cores) a thread that is not running costs a scheduler time slice,
// milliseconds, where a batch-1 step of H = 256 takes ~30 us on one core. 4 MiB keeps every
// layer up to I = H = 256 at batch 1 single-threaded and splits the larger ones.
constexpr int64_t kParallelBytes = int64_t(4) << 20;

// Pointwise passes over at least this many gate elements are split over threads by streams.
constexpr int64_t kParallelPointwise = 1 << 15;

template <typename T>
inline T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

// Whether no two elements of the 2-D tensor t share an address (t is written to): any strides
// but those of an expanded tensor. Dims sorted by stride, each stride must pass the furthest
// offset the smaller ones reach (as Python's _non_overlapping in streaming.py).
inline bool writable(const Tensor& t) {
  int64_t stride[2], size[2];
  int d = 0;
  for (int i = 0; i < 2; ++i) {
    if (t.size(i) > 1) {
      stride[d] = t.stride(i);
      size[d] = t.size(i);
      ++d;
    }
  }
  if (d == 2 && stride[0] > stride[1]) {
    std::swap(stride[0], stride[1]);
    std::swap(size[0], size[1]);
  }
  int64_t reach = 0;
  for (int i = 0; i < d; ++i) {
    if (stride[i] <= reach) return false;
    reach += stride[i] * (size[i] - 1);
  }
  return true;
}

// ------------------------------------------------------------------------------ packed product
// A packed weight: slots of `rows` rows each, slot s reading columns [k0[s], k0[s] + width[s])
// of the input rows. data is (nU, block): block u holds, for each slot, width[s] x V values.
struct Packed {
  Tensor data;
  int64_t rows = 0, V = 0, nU = 0, block = 0;
  std::vector<int64_t> k0, width, offset;

  int64_t slots() const { return static_cast<int64_t>(k0.size()); }
  int64_t padded() const { return nU * V; }  // row stride of one slot in the output
};

template <typename T>
Packed pack(const std::vector<Tensor>& mats, const std::vector<int64_t>& k0s, int64_t K) {
  TORCH_CHECK(!mats.empty() && mats.size() == k0s.size(),
              "lstmkit step: one column offset per slot expected");
  Packed p;
  p.V = at::vec::Vectorized<T>::size();
  p.rows = mats[0].size(0);
  p.nU = (p.rows + p.V - 1) / p.V;
  for (size_t s = 0; s < mats.size(); ++s) {
    const Tensor& m = mats[s];
    TORCH_CHECK(m.dim() == 2 && m.size(0) == p.rows, "lstmkit step: slot ", s, " has shape ",
                m.sizes(), ", expected (", p.rows, ", width)");
    TORCH_CHECK(k0s[s] >= 0 && k0s[s] + m.size(1) <= K, "lstmkit step: slot ", s,
                " reads past the ", K, " input columns");
    p.k0.push_back(k0s[s]);
    p.width.push_back(m.size(1));
    p.offset.push_back(p.block);
    p.block += p.V * m.size(1);
  }
  p.data = at::zeros({p.nU, p.block}, mats[0].options().dtype(c10::CppTypeToScalarType<T>()));
  T* d = ptr<T>(p.data);
  for (size_t s = 0; s < mats.size(); ++s) {
    const Tensor m = mats[s].to(p.data.scalar_type()).contiguous();
    const T* src = ptr<T>(m);
    const int64_t w = p.width[s];
    for (int64_t r = 0; r < p.rows; ++r) {
      T* dst = d + (r / p.V) * p.block + p.offset[s] + (r % p.V);
      for (int64_t k = 0; k < w; ++k) dst[k * p.V] = src[r * w + k];
    }
  }
  return p;
}

// out[b][0:V] = sum_k in[b][k] * w[k][0:V] for NB batch rows; U independent accumulators per
// row so that the fused multiply-adds do not wait on each other.
template <typename T, int NB, int U>
inline void tile(const T* w, int64_t width, const T* in, int64_t ldin, T* out, int64_t ldout) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[NB][U];
  for (int b = 0; b < NB; ++b) {
    for (int u = 0; u < U; ++u) acc[b][u] = Vec(T(0));
  }
  int64_t k = 0;
  for (; k + U <= width; k += U) {
    for (int u = 0; u < U; ++u) {
      const Vec wv = Vec::loadu(w + (k + u) * V);
      for (int b = 0; b < NB; ++b) {
        acc[b][u] = at::vec::fmadd(Vec(in[b * ldin + k + u]), wv, acc[b][u]);
      }
    }
  }
  for (; k < width; ++k) {
    const Vec wv = Vec::loadu(w + k * V);
    for (int b = 0; b < NB; ++b) acc[b][0] = at::vec::fmadd(Vec(in[b * ldin + k]), wv, acc[b][0]);
  }
  for (int b = 0; b < NB; ++b) {
    Vec sum = acc[b][0];
    for (int u = 1; u < U; ++u) sum = sum + acc[b][u];
    sum.store(out + b * ldout);
  }
}

// out[b][s * padded + r] = sum_k in[b][k0[s] + k] * W_s[r][k] for every stream b, slot s, row r.
template <typename T>
void product(const Packed& W, const T* in, int64_t ldin, T* out, int64_t ldout, int64_t B) {
  const T* data = ptr<T>(W.data);
  const int64_t S = W.slots(), V = W.V, Hp = W.padded();
  auto blocks = [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      for (int64_t s = 0; s < S; ++s) {
        const T* w = data + u * W.block + W.offset[s];
        const int64_t width = W.width[s];
        const T* x = in + W.k0[s];
        T* y = out + s * Hp + u * V;
        int64_t b = 0;
        for (; b + 8 <= B; b += 8) {
          tile<T, 8, 1>(w, width, x + b * ldin, ldin, y + b * ldout, ldout);
        }
        if (B - b >= 4) {
          tile<T, 4, 2>(w, width, x + b * ldin, ldin, y + b * ldout, ldout);
          b += 4;
        }
        if (B - b >= 2) {
          tile<T, 2, 2>(w, width, x + b * ldin, ldin, y + b * ldout, ldout);
          b += 2;
        }
        if (B - b == 1) tile<T, 1, 4>(w, width, x + b * ldin, ldin, y + b * ldout, ldout);
      }
    }
  };
  const int64_t bytes = W.data.numel() * static_cast<int64_t>(sizeof(T)) * B;
  if (bytes < kParallelBytes || W.nU < 2) {
    blocks(0, W.nU);
  } else {
    at::parallel_for(0, W.nU, 1, blocks);
  }
}

// Run fn(b0, b1) over the streams, in parallel when the pass is large.
template <typename F>
inline void over_streams(int64_t B, int64_t per_stream, const F& fn) {
  if (B * per_stream < kParallelPointwise || B < 2) {
    fn(0, B);
  } else {
    at::parallel_for(0, B, std::max<int64_t>(1, kParallelPointwise / per_stream), fn);
  }
}

// ------------------------------------------------------------------------------ pointwise helpers
// Mean and 1 / sqrt(var + eps) of the `parts` spans of n values at a, a + stride, ... (the slots
// of one side of a layer-normalised product), as torch.nn.functional.layer_norm (biased var).
template <typename T>
inline void moments(const T* a, int64_t stride, int64_t parts, int64_t n, T& mean, T& rstd) {
  double sum = 0.0;
  for (int64_t p = 0; p < parts; ++p) {
    for (int64_t j = 0; j < n; ++j) sum += a[p * stride + j];
  }
  const double count = static_cast<double>(parts * n);
  const double m = sum / count;
  double var = 0.0;
  for (int64_t p = 0; p < parts; ++p) {
    for (int64_t j = 0; j < n; ++j) {
      const double d = a[p * stride + j] - m;
      var += d * d;
    }
  }
  mean = static_cast<T>(m);
  rstd = static_cast<T>(1.0 / std::sqrt(var / count + kLnEps));
}

template <typename T>
inline void relu_(T* p, int64_t n) {
  for (int64_t j = 0; j < n; ++j) p[j] = p[j] > T(0) ? p[j] : (p[j] != p[j] ? p[j] : T(0));
}

// ------------------------------------------------------------------------------ the model
struct Layer {
  int64_t I = 0, P = 0, H = 0, K = 0;
  Packed main;    // the gate products
  Packed second;  // W_hr (LSTM projection) or W_hn (GRU, reset_after=false); may be empty
  Tensor bias, b_hn, peep, ln_ih, ln_hh, ln_c_w, ln_c_b;  // undefined where absent
  Tensor xh;      // (B, K): [x_t | h_{t-1}]
  Tensor gates;   // (B, slots, padded)
  Tensor cbuf;    // (B, H): the LSTM's new cell before zoneout
  Tensor mid;     // (B, H): the LSTM's m (projection input) or the GRU's r * h_{t-1}
  Tensor out2;    // (B, second.padded()): the second product
};

struct Model {
  Family family = Family::kLSTM;
  at::ScalarType dtype = at::kFloat;
  int64_t B = 0, L = 0, I0 = 0, P_out = 0;
  bool coupled = false, reset_after = true, relu = false, residual = false;
  double cell_clip = 0.0, zoneout_h = 0.0, zoneout_c = 0.0;
  Tensor h, c;  // the state buffers, shared with Python: (L, B, P), (L, B, H)
  std::vector<Layer> layers;

  template <typename T>
  void run(const Tensor& x, const Tensor& out);
  template <typename T>
  void lstm_layer(Layer& L, int64_t l);
  template <typename T>
  void gru_layer(Layer& L, int64_t l);
  template <typename T>
  void rnn_layer(Layer& L, int64_t l);
};

inline Tensor vector_or_undefined(const std::map<std::string, Tensor>& m, const char* key,
                                  at::ScalarType dtype, int64_t size) {
  auto it = m.find(key);
  if (it == m.end() || !it->second.defined()) return Tensor();
  TORCH_CHECK(it->second.numel() == size, "lstmkit step: ", key, " has ", it->second.numel(),
              " elements, expected ", size);
  return it->second.to(dtype).contiguous().clone();
}

template <typename T>
void Model::run(const Tensor& x, const Tensor& out) {
  {  // x_t into the first layer's row buffer (any strides)
    Layer& L0 = layers[0];
    const T* xs = ptr<T>(x);
    T* dst = ptr<T>(L0.xh);
    const int64_t s0 = x.stride(0), s1 = x.stride(1);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t k = 0; k < L0.I; ++k) dst[b * L0.K + k] = xs[b * s0 + k * s1];
    }
  }
  for (int64_t l = 0; l < L; ++l) {
    Layer& Ly = layers[l];
    {  // h_{t-1} next to the input
      const T* hs = ptr<T>(h) + l * B * Ly.P;
      T* dst = ptr<T>(Ly.xh) + Ly.I;
      for (int64_t b = 0; b < B; ++b) std::copy(hs + b * Ly.P, hs + (b + 1) * Ly.P, dst + b * Ly.K);
    }
    switch (family) {
      case Family::kLSTM:
        lstm_layer<T>(Ly, l);
        break;
      case Family::kGRU:
        gru_layer<T>(Ly, l);
        break;
      case Family::kRNN:
        rnn_layer<T>(Ly, l);
        break;
    }
    // The layer's output (its new h, plus its input with residual connections above the first
    // layer) goes to the next layer's row buffer or to `out`.
    const T* hs = ptr<T>(h) + l * B * Ly.P;
    const T* xin = ptr<T>(Ly.xh);
    const bool add = residual && l > 0;
    T* dst;
    int64_t d0, d1;
    if (l + 1 < L) {
      dst = ptr<T>(layers[l + 1].xh);
      d0 = layers[l + 1].K;
      d1 = 1;
    } else {
      dst = ptr<T>(out);
      d0 = out.stride(0);
      d1 = out.stride(1);
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t k = 0; k < Ly.P; ++k) {
        const T v = hs[b * Ly.P + k];
        dst[b * d0 + k * d1] = add ? v + xin[b * Ly.K + k] : v;
      }
    }
  }
}

// LSTM: slots i, f, g, o (i, g, o with CIFG) over [x | h]; with layer norm the input halves
// first, then the recurrent halves. Optional second product: the projection W_hr.
template <typename T>
void Model::lstm_layer(Layer& Ly, int64_t l) {
  const int64_t H = Ly.H, P = Ly.P, K = Ly.K, I = Ly.I;
  const int64_t NG = coupled ? 3 : 4;
  const int64_t sf = 1, sg = coupled ? 1 : 2, so = coupled ? 2 : 3;
  const int64_t Hp = Ly.main.padded(), ld = Ly.main.slots() * Hp;
  T* xh = ptr<T>(Ly.xh);
  T* gates = ptr<T>(Ly.gates);
  product<T>(Ly.main, xh, K, gates, ld, B);

  T* hs = ptr<T>(h) + l * B * P;
  T* cs = ptr<T>(c) + l * B * H;
  const T* bias = ptr<T>(Ly.bias);
  const T* peep = ptr<T>(Ly.peep);
  const T* g_ih = ptr<T>(Ly.ln_ih);
  const T* g_hh = ptr<T>(Ly.ln_hh);
  const T* lc_w = ptr<T>(Ly.ln_c_w);
  const T* lc_b = ptr<T>(Ly.ln_c_b);
  T* cbuf = ptr<T>(Ly.cbuf);
  T* mid = ptr<T>(Ly.mid);
  const bool proj = Ly.second.data.defined();
  const bool clip_on = cell_clip > 0;
  const T clip = static_cast<T>(cell_clip);
  const T zh = static_cast<T>(zoneout_h), zc = static_cast<T>(zoneout_c);

  over_streams(B, ld, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* a = gates + b * ld;
      const T* hp = xh + b * K + I;
      T* cp = cs + b * H;  // c_{t-1}, overwritten with the new state below
      T* cn = cbuf + b * H;
      if (g_ih) {  // a = LN_ih(x W_ih^T) + LN_hh(h W_hh^T) + b, into the input slots
        T mx, rx, mh, rh;
        moments(a, Hp, NG, H, mx, rx);
        moments(a + NG * Hp, Hp, NG, H, mh, rh);
        for (int64_t s = 0; s < NG; ++s) {
          T* as = a + s * Hp;
          const T* ah = a + (NG + s) * Hp;
          for (int64_t j = 0; j < H; ++j) {
            T v = (as[j] - mx) * rx * g_ih[s * H + j] + (ah[j] - mh) * rh * g_hh[s * H + j];
            as[j] = bias ? v + bias[s * H + j] : v;
          }
        }
      } else if (bias) {
        for (int64_t s = 0; s < NG; ++s) {
          T* as = a + s * Hp;
          for (int64_t j = 0; j < H; ++j) as[j] += bias[s * H + j];
        }
      }
      T* ai = a;
      T* af = coupled ? nullptr : a + sf * Hp;
      T* ag = a + sg * Hp;
      T* ao = a + so * Hp;
      if (peep) {
        const T* p_i = peep;
        for (int64_t j = 0; j < H; ++j) ai[j] += p_i[j] * cp[j];
        if (af) {
          const T* p_f = peep + H;
          for (int64_t j = 0; j < H; ++j) af[j] += p_f[j] * cp[j];
        }
      }
      sigmoid_(ai, H);
      if (af) sigmoid_(af, H);
      tanh_(ag, H);
      for (int64_t j = 0; j < H; ++j) {
        const T f = af ? af[j] : T(1) - ai[j];
        T v = f * cp[j] + ai[j] * ag[j];
        if (clip_on) v = std::min(std::max(v, -clip), clip);
        cn[j] = v;
        cp[j] = lerp(v, cp[j], zc);
      }
      if (peep) {
        const T* p_o = peep + (coupled ? H : 2 * H);
        for (int64_t j = 0; j < H; ++j) ao[j] += p_o[j] * cn[j];
      }
      sigmoid_(ao, H);
      if (lc_w) {  // c_out = LN_c(c') in place (c' is not needed any more)
        T mc, rc;
        moments(cn, H, 1, H, mc, rc);
        for (int64_t j = 0; j < H; ++j) cn[j] = (cn[j] - mc) * rc * lc_w[j] + lc_b[j];
      }
      tanh_(cn, H);
      if (proj) {
        T* m = mid + b * H;
        for (int64_t j = 0; j < H; ++j) m[j] = ao[j] * cn[j];
      } else {
        T* hn = hs + b * P;
        for (int64_t j = 0; j < H; ++j) hn[j] = lerp(ao[j] * cn[j], hp[j], zh);
      }
    }
  });
  if (proj) {  // h' = W_hr m, then zoneout
    const int64_t Pp = Ly.second.padded();
    T* o2 = ptr<T>(Ly.out2);
    product<T>(Ly.second, mid, H, o2, Pp, B);
    for (int64_t b = 0; b < B; ++b) {
      const T* hp = xh + b * K + I;
      for (int64_t k = 0; k < P; ++k) hs[b * P + k] = lerp(o2[b * Pp + k], hp[k], zh);
    }
  }
}

// GRU. reset_after=true: slots r, z over [x | h], then n_x over x and n_h over h (with layer
// norm: r_x, z_x, n_x, then r_h, z_h, n_h). reset_after=false: r, z over [x | h] and n_x over x
// (layer norm: r_x, z_x, n_x, r_h, z_h), and the second product W_hn (r * h_{t-1}).
template <typename T>
void Model::gru_layer(Layer& Ly, int64_t l) {
  const int64_t H = Ly.H, K = Ly.K, I = Ly.I;
  const int64_t Hp = Ly.main.padded(), ld = Ly.main.slots() * Hp;
  T* xh = ptr<T>(Ly.xh);
  T* gates = ptr<T>(Ly.gates);
  product<T>(Ly.main, xh, K, gates, ld, B);

  T* hs = ptr<T>(h) + l * B * H;
  const T* bias = ptr<T>(Ly.bias);
  const T* b_hn = ptr<T>(Ly.b_hn);
  const T* g_ih = ptr<T>(Ly.ln_ih);
  const T* g_hh = ptr<T>(Ly.ln_hh);
  T* mid = ptr<T>(Ly.mid);
  const T zh = static_cast<T>(zoneout_h);
  const bool ln = g_ih != nullptr;
  // where the recurrent part of the candidate is (reset_after): slot 3, or 5 with layer norm
  const int64_t s_un = ln ? 5 : 3;

  // h' = (1 - z) n + z h_{t-1}, zoneout, for one stream whose candidate pre-activation is in an
  auto finish = [&](int64_t b, T* an) {
    const T* z = gates + b * ld + Hp;
    const T* hp = xh + b * K + I;
    tanh_(an, H);
    T* hn = hs + b * H;
    for (int64_t j = 0; j < H; ++j) {
      const T v = (T(1) - z[j]) * an[j] + z[j] * hp[j];
      hn[j] = lerp(v, hp[j], zh);
    }
  };

  over_streams(B, ld, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* a = gates + b * ld;
      const T* hp = xh + b * K + I;
      T* ar = a;
      T* az = a + Hp;
      T* an = a + 2 * Hp;
      if (ln) {
        const int64_t nh = reset_after ? 3 : 2;  // recurrent slots under LN_hh
        T mx, rx, mh, rh;
        moments(a, Hp, 3, H, mx, rx);
        moments(a + 3 * Hp, Hp, nh, H, mh, rh);
        for (int64_t s = 0; s < 2; ++s) {  // r, z: both halves
          T* as = a + s * Hp;
          const T* ah = a + (3 + s) * Hp;
          for (int64_t j = 0; j < H; ++j) {
            T v = (as[j] - mx) * rx * g_ih[s * H + j] + (ah[j] - mh) * rh * g_hh[s * H + j];
            as[j] = bias ? v + bias[s * H + j] : v;
          }
        }
        for (int64_t j = 0; j < H; ++j) {  // n_x
          T v = (an[j] - mx) * rx * g_ih[2 * H + j];
          an[j] = bias ? v + bias[2 * H + j] : v;
        }
        if (reset_after) {  // u_n = LN_hh part of n_h + b_hn
          T* un = a + s_un * Hp;
          for (int64_t j = 0; j < H; ++j) {
            T v = (un[j] - mh) * rh * g_hh[2 * H + j];
            un[j] = b_hn ? v + b_hn[j] : v;
          }
        }
      } else {
        if (bias) {
          for (int64_t s = 0; s < 3; ++s) {
            T* as = a + s * Hp;
            for (int64_t j = 0; j < H; ++j) as[j] += bias[s * H + j];
          }
        }
        if (reset_after && b_hn) {
          T* un = a + s_un * Hp;
          for (int64_t j = 0; j < H; ++j) un[j] += b_hn[j];
        }
      }
      sigmoid_(ar, H);
      sigmoid_(az, H);
      if (reset_after) {
        const T* un = a + s_un * Hp;
        for (int64_t j = 0; j < H; ++j) an[j] += ar[j] * un[j];
        finish(b, an);
      } else {
        T* m = mid + b * H;
        for (int64_t j = 0; j < H; ++j) m[j] = ar[j] * hp[j];
      }
    }
  });
  if (!reset_after) {  // n = tanh(a_n + LN(W_hn (r * h)) + b_hn) (b_hn is folded in the bias)
    const int64_t Hp2 = Ly.second.padded();
    T* o2 = ptr<T>(Ly.out2);
    product<T>(Ly.second, mid, H, o2, Hp2, B);
    over_streams(B, Hp2, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* an = gates + b * ld + 2 * Hp;
        const T* u = o2 + b * Hp2;
        if (ln) {
          T mu, ru;
          moments(u, Hp2, 1, H, mu, ru);
          for (int64_t j = 0; j < H; ++j) an[j] += (u[j] - mu) * ru * g_hh[2 * H + j];
        } else {
          for (int64_t j = 0; j < H; ++j) an[j] += u[j];
        }
        finish(b, an);
      }
    });
  }
}

// RNN: one slot over [x | h], or with layer norm the input slot then the recurrent slot.
template <typename T>
void Model::rnn_layer(Layer& Ly, int64_t l) {
  const int64_t H = Ly.H, K = Ly.K, I = Ly.I;
  const int64_t Hp = Ly.main.padded(), ld = Ly.main.slots() * Hp;
  T* xh = ptr<T>(Ly.xh);
  T* gates = ptr<T>(Ly.gates);
  product<T>(Ly.main, xh, K, gates, ld, B);

  T* hs = ptr<T>(h) + l * B * H;
  const T* bias = ptr<T>(Ly.bias);
  const T* g_ih = ptr<T>(Ly.ln_ih);
  const T* g_hh = ptr<T>(Ly.ln_hh);
  const T zh = static_cast<T>(zoneout_h);
  over_streams(B, ld, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* a = gates + b * ld;
      const T* hp = xh + b * K + I;
      if (g_ih) {
        T mx, rx, mh, rh;
        moments(a, Hp, 1, H, mx, rx);
        moments(a + Hp, Hp, 1, H, mh, rh);
        for (int64_t j = 0; j < H; ++j) {
          T v = (a[j] - mx) * rx * g_ih[j] + (a[Hp + j] - mh) * rh * g_hh[j];
          a[j] = bias ? v + bias[j] : v;
        }
      } else if (bias) {
        for (int64_t j = 0; j < H; ++j) a[j] += bias[j];
      }
      if (relu) {
        relu_(a, H);
      } else {
        tanh_(a, H);
      }
      T* hn = hs + b * H;
      for (int64_t j = 0; j < H; ++j) hn[j] = lerp(a[j], hp[j], zh);
    }
  });
}

}  // namespace stream

// ------------------------------------------------------------------------------ StepKernel
struct StepKernel::Impl : stream::Model {};

StepKernel::StepKernel(const std::string& family,
                       const std::vector<std::vector<Tensor>>& slots,
                       const std::vector<std::vector<int64_t>>& slot_k0,
                       const std::vector<OptTensor>& second,
                       const std::vector<std::map<std::string, Tensor>>& vectors,
                       const std::vector<int64_t>& input_sizes, const Tensor& h,
                       const OptTensor& c, bool coupled, bool reset_after, bool relu,
                       bool residual, double cell_clip, double zoneout_h, double zoneout_c)
    : impl_(std::make_unique<Impl>()) {
  using stream::Family;
  using stream::vector_or_undefined;
  Impl& k = *impl_;
  const auto pack = [&](const std::vector<Tensor>& mats, const std::vector<int64_t>& k0,
                        int64_t K) {
    return k.dtype == at::kDouble ? stream::pack<double>(mats, k0, K)
                                  : stream::pack<float>(mats, k0, K);
  };
  TORCH_CHECK(family == "lstm" || family == "gru" || family == "rnn",
              "lstmkit step: unknown family ", family);
  k.family = family == "lstm" ? Family::kLSTM : family == "gru" ? Family::kGRU : Family::kRNN;
  TORCH_CHECK(h.dim() == 3 && h.is_contiguous() && h.device().is_cpu(),
              "lstmkit step: h must be a contiguous (L, B, P) CPU tensor");
  TORCH_CHECK(h.scalar_type() == at::kFloat || h.scalar_type() == at::kDouble,
              "lstmkit step: float32 or float64 expected, got ", h.scalar_type());
  k.dtype = h.scalar_type();
  k.L = h.size(0);
  k.B = h.size(1);
  k.h = h;
  TORCH_CHECK(k.L >= 1 && k.B >= 1, "lstmkit step: empty state");
  TORCH_CHECK(static_cast<int64_t>(slots.size()) == k.L && slot_k0.size() == slots.size() &&
                  second.size() == slots.size() && vectors.size() == slots.size() &&
                  input_sizes.size() == slots.size(),
              "lstmkit step: one entry per layer expected in every list");
  if (k.family == Family::kLSTM) {
    TORCH_CHECK(c && c->dim() == 3 && c->is_contiguous() && c->size(0) == k.L &&
                    c->size(1) == k.B && c->scalar_type() == k.dtype,
                "lstmkit step: the LSTM needs a contiguous (L, B, H) cell state");
    k.c = *c;
  }
  k.coupled = coupled;
  k.reset_after = reset_after;
  k.relu = relu;
  k.residual = residual;
  k.cell_clip = cell_clip;
  k.zoneout_h = zoneout_h;
  k.zoneout_c = zoneout_c;
  k.I0 = input_sizes[0];

  const auto opts = h.options();
  for (int64_t l = 0; l < k.L; ++l) {
    stream::Layer L;
    L.I = input_sizes[l];
    L.P = h.size(2);
    L.K = L.I + L.P;
    L.main = pack(slots[l], slot_k0[l], L.K);
    L.H = L.main.rows;
    if (k.family == Family::kLSTM) {
      TORCH_CHECK(k.c.size(2) == L.H, "lstmkit step: the cell state has ", k.c.size(2),
                  " units, the weights ", L.H);
    } else {
      TORCH_CHECK(L.P == L.H, "lstmkit step: h has ", L.P, " units, the weights ", L.H);
    }
    if (second[l] && second[l]->defined()) {
      const int64_t cols = second[l]->size(1);
      L.second = pack({*second[l]}, {0}, cols);
      L.out2 = at::zeros({k.B, L.second.padded()}, opts);
    }
    const int64_t G = (k.family == Family::kLSTM ? (coupled ? 3 : 4)
                       : k.family == Family::kGRU ? 3
                                                  : 1) *
                      L.H;
    const auto& vec = vectors[l];
    L.bias = vector_or_undefined(vec, "bias", k.dtype, G);
    L.b_hn = vector_or_undefined(vec, "b_hn", k.dtype, L.H);
    L.peep = vector_or_undefined(vec, "peephole", k.dtype, (coupled ? 2 : 3) * L.H);
    L.ln_ih = vector_or_undefined(vec, "ln_ih", k.dtype, G);
    L.ln_hh = vector_or_undefined(vec, "ln_hh", k.dtype, G);
    L.ln_c_w = vector_or_undefined(vec, "ln_cell_weight", k.dtype, L.H);
    L.ln_c_b = vector_or_undefined(vec, "ln_cell_bias", k.dtype, L.H);
    L.xh = at::zeros({k.B, L.K}, opts);
    L.gates = at::zeros({k.B, L.main.slots(), L.main.padded()}, opts);
    if (k.family == Family::kLSTM) L.cbuf = at::zeros({k.B, L.H}, opts);
    if (L.second.data.defined()) L.mid = at::zeros({k.B, L.H}, opts);
    if (l > 0) {
      TORCH_CHECK(L.I == k.layers.back().P, "lstmkit step: layer ", l, " reads ", L.I,
                  " features, the layer below gives ", k.layers.back().P);
    }
    k.layers.push_back(std::move(L));
  }
  k.P_out = k.layers.back().P;
}

StepKernel::~StepKernel() = default;

bool StepKernel::step(const Tensor& x, const Tensor& out) {
  Impl& k = *impl_;
  const auto ok = [&](const Tensor& t, int64_t cols) {
    return t.defined() && t.layout() == at::kStrided && t.device().is_cpu() &&
           t.scalar_type() == k.dtype && t.dim() == 2 && t.size(0) == k.B && t.size(1) == cols;
  };
  if (!ok(x, k.I0) || !ok(out, k.P_out) || !stream::writable(out)) return false;
  c10::InferenceMode guard;
  if (k.dtype == at::kDouble) {
    k.run<double>(x, out);
  } else {
    k.run<float>(x, out);
  }
  return true;
}

}  // namespace lstmkit
