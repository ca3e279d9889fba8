// Python bindings of the fused kernels: the module lstmkit._C, built by setup.py at install
// time and used by lstmkit/backends/fused.py. Arguments are positional; see ops.h. The kernels
// only use ATen, so they release the GIL while they run.
// ops.h first: it sets the SIMD capability before any ATen header includes the vec headers.
#include "ops.h"
#include "gemm.h"

#include <torch/extension.h>

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  m.doc() = "lstmkit fused recurrent kernels (CPU): forward and hand-written BPTT";
  m.def("lstm_forward", &lstmkit::lstm_forward, "Fused LSTM scan, forward", no_gil);
  m.def("lstm_backward", &lstmkit::lstm_backward, "Fused LSTM scan, backward", no_gil);
  m.def("gru_forward", &lstmkit::gru_forward, "Fused GRU scan, forward", no_gil);
  m.def("gru_backward", &lstmkit::gru_backward, "Fused GRU scan, backward", no_gil);
  m.def("rnn_forward", &lstmkit::rnn_forward, "Fused RNN scan, forward", no_gil);
  m.def("rnn_backward", &lstmkit::rnn_backward, "Fused RNN scan, backward", no_gil);
  m.def("buffer_cache_info", &lstmkit::buffer_cache_info,
        "{idle bytes, idle buffers, cap bytes} of the kernels' cache of large buffers");
  m.def("release_buffer_cache", &lstmkit::release_buffer_cache,
        "Free the idle buffers of the kernels' cache; returns the bytes freed");
  m.def("set_buffer_cache", &lstmkit::set_buffer_cache,
        "Turn the cache of large buffers on or off for new requests; returns the previous setting");
  m.def("set_scan_split", &lstmkit::set_scan_split,
        "How scans split over threads: 0 by the size rule, 1 by rows, 2 by units; returns the "
        "previous setting");
  m.def("bernoulli_fill", &lstmkit::bernoulli_fill,
        "Fill a CPU tensor with Bernoulli(p) draws (1/0) from a counter-based generator", no_gil);
  py::class_<lstmkit::StepKernel>(m, "StepKernel", "One streaming time step (step.cpp)")
      .def(py::init<const std::string&, const std::vector<std::vector<at::Tensor>>&,
                    const std::vector<std::vector<int64_t>>&,
                    const std::vector<std::optional<at::Tensor>>&,
                    const std::vector<std::map<std::string, at::Tensor>>&,
                    const std::vector<int64_t>&, const at::Tensor&,
                    const std::optional<at::Tensor>&, bool, bool, bool, bool, double, double,
                    double>())
      .def("step", &lstmkit::StepKernel::step, "One step: x (B, I) -> out (B, P)", no_gil);
}
