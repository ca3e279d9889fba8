// col_dot (see common.h): the column reductions of the fused backward passes.
#include "common.h"

namespace lstmkit {
namespace {

template <typename TA, typename TB>
void col_dot_impl(const Tensor& a, const Tensor& b, const double* mean, const double* rstd,
                  double* out) {
  const int64_t N = a.size(0), n = a.size(1);
  const int64_t lda = a.stride(0);
  const TA* pa = a.const_data_ptr<TA>();
  if (!b.defined()) {  // plain column sums
    at::parallel_for(0, n, 256, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) out[j] = 0.0;
      for (int64_t r = 0; r < N; ++r) {
        const TA* ar = pa + r * lda;
        for (int64_t j = j0; j < j1; ++j) out[j] += static_cast<double>(ar[j]);
      }
    });
    return;
  }
  const int64_t ldb = b.stride(0);
  const TB* pb = b.const_data_ptr<TB>();
  constexpr int64_t kBlock = 64;  // columns per task: a few cache lines of every row
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
    double acc[kBlock];
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t j0 = k * kBlock, w = std::min(kBlock, n - j0);
      std::fill(acc, acc + w, 0.0);
      for (int64_t r = 0; r < N; ++r) {
        const TA* ar = pa + r * lda + j0;
        const TB* br = pb + r * ldb + j0;
        const double m = mean ? mean[r] : 0.0, s = rstd ? rstd[r] : 1.0;
        for (int64_t j = 0; j < w; ++j)
          acc[j] += static_cast<double>(ar[j]) * ((static_cast<double>(br[j]) - m) * s);
      }
      std::copy(acc, acc + w, out + j0);
    }
  });
}

template <typename TA>
void dispatch_b(const Tensor& a, const Tensor& b, const double* m, const double* s, double* o) {
  if (!b.defined()) return col_dot_impl<TA, TA>(a, b, m, s, o);
  switch (b.scalar_type()) {
    case at::kFloat: return col_dot_impl<TA, float>(a, b, m, s, o);
    case at::kDouble: return col_dot_impl<TA, double>(a, b, m, s, o);
    case at::kBFloat16: return col_dot_impl<TA, c10::BFloat16>(a, b, m, s, o);
    default: TORCH_CHECK(false, "col_dot: unsupported dtype ", b.scalar_type());
  }
}

}  // namespace

Tensor col_dot(const Tensor& a, const Tensor& b, const OptTensor& mean, const OptTensor& rstd) {
  TORCH_CHECK(a.dim() == 2 && (!b.defined() || (b.dim() == 2 && a.sizes() == b.sizes())),
              "col_dot: shapes ", a.sizes(), " and ", b.defined() ? b.sizes() : at::IntArrayRef{});
  TORCH_CHECK(a.stride(1) == 1 && (!b.defined() || b.stride(1) == 1),
              "col_dot: columns must be contiguous");
  const int64_t N = a.size(0);
  auto as_double = [N](const OptTensor& t) {
    return t.has_value() && t->defined() ? t->reshape({N}).to(at::kDouble).contiguous()
                                         : Tensor();
  };
  const Tensor m = as_double(mean), s = as_double(rstd);
  Tensor out = at::empty({a.size(1)}, a.options().dtype(at::kDouble));
  const double* pm = m.defined() ? m.const_data_ptr<double>() : nullptr;
  const double* ps = s.defined() ? s.const_data_ptr<double>() : nullptr;
  double* po = out.data_ptr<double>();
  switch (a.scalar_type()) {
    case at::kFloat: dispatch_b<float>(a, b, pm, ps, po); break;
    case at::kDouble: dispatch_b<double>(a, b, pm, ps, po); break;
    case at::kBFloat16: dispatch_b<c10::BFloat16>(a, b, pm, ps, po); break;
    default: TORCH_CHECK(false, "col_dot: unsupported dtype ", a.scalar_type());
  }
  return out.to(a.scalar_type());
}

}  // namespace lstmkit
