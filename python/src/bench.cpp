// The C++ side of bench/python_overhead.py: the same forward as Model.forward, timed in a
// C++ loop, so that the Python layer's per-call overhead is the difference.
#include <time.h>

#include <chrono>

#include "model.h"

namespace modula::python {

void init_bench(ModelClass& cls) {
  cls.def(
      "_time_forward",
      [](Model& self, const torch::Tensor& input_ids, int64_t calls) {
        py::gil_scoped_release release;
        torch::NoGradGuard no_grad;
        BackboneInput in;
        in.input_ids = input_ids;
        auto cpu_now = [] {  // this thread's CPU time: robust to other load on the machine
          timespec ts{};
          clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
          return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
        };
        const double cpu_start = cpu_now();
        const auto start = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < calls; ++i) {
          self.set_metadata({}, torch::Tensor());
          auto inputs = self.inputs();
          auto out = inputs.empty() ? self.backbone->forward(in) : forward_with(*self.backbone, inputs, in);
        }
        const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - start;
        const double cpu = cpu_now() - cpu_start;
        return std::make_pair(wall.count() / static_cast<double>(calls), cpu / static_cast<double>(calls));
      },
      py::arg("input_ids"), py::arg("calls"),
      "(wall, thread CPU) seconds per forward of `calls` forwards run in C++ (no grad); for\n"
      "bench/python_overhead.py.");
}

}  // namespace modula::python
