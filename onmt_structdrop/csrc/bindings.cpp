// The Python module onmt_structdrop._native: the entry points of layer.cpp, sequence.cpp and steps.cpp, and the
// instruction set's name (isa.cpp).
#include "engine.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "onmt_structdrop's native CPU engine (see onmt_structdrop/ops/native_backend.py)";
  m.def("isa", [] { return structdrop::isa_name(); }, "the instruction set the kernels run with");
  m.def("set_isa", &structdrop::set_isa, "run the kernels built for another instruction set (tests)");
  m.def("sequence_product", &structdrop::sequence_product);
  m.def("sequence_backward", &structdrop::sequence_gradients);
  m.def("gathered", &structdrop::gathered, "the kept columns of every step, multipliers applied");
  m.def("lstm_layer_forward", &structdrop::lstm_layer_forward);
  m.def("lstm_layer_backward", &structdrop::lstm_layer_backward);
  m.def("kept_step_product", &structdrop::kept_step_product, "out += (a[:, K] * mult) @ wt[K]");
  m.def("kept_step_input_grad", &structdrop::kept_step_input_grad, "da[:, K] = mult * (dout @ wt[K]^T), zero elsewhere");
  m.def("kept_step_weight_grad", &structdrop::kept_step_weight_grad, "dwt[K] += (a[:, K] * mult)^T @ dout");
  m.def("cell_forward", &structdrop::cell_forward, "the LSTM cell in torch's gate layout, into act, c, tanh_c, h");
  m.def("cell_backward", &structdrop::cell_backward, "its gradient into dgates; dc becomes that of c_prev");
}
