// fastdarts._C: operator schemas of the fastdarts:: namespace.
//
// Kernels are registered per backend with TORCH_LIBRARY_IMPL in csrc/cpu/*.cpp and
// csrc/cuda/*.cu; fake (meta) kernels and autograd formulas are registered from Python in
// fastdarts/_ext.py (the pytorch/extension-cpp pattern). No pybind11 bindings: the module
// only has to be importable so that loading it runs the static registrations below.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "fastdarts.h"

extern "C" {
// `import fastdarts._C` only needs a module object; the ops live in torch.ops.fastdarts.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",   // name
      "fastdarts C++/CUDA operators (registered in torch.ops.fastdarts)",  // doc
      -1,     // size
      nullptr,  // methods
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastdarts, m) {
  // y = sum_k weights[k] * xs[k]; xs are K same-shape tensors (not stacked).
  m.def("mixed_sum(Tensor[] xs, Tensor weights) -> Tensor");
  // (grad_xs, grad_weights): grad_xs[k] = weights[k] * grad where needs_input_grad[k]
  // (an empty tensor otherwise), grad_weights[k] = <grad, xs[k]> in fp32 (fp64 for fp64).
  m.def(
      "mixed_sum_backward(Tensor grad, Tensor[] xs, Tensor weights, bool[] needs_input_grad) -> (Tensor[], "
      "Tensor)");
  // PC-DARTS edge output: cat([ya, maxpool?(x[:, C/k:])], 1) followed by the channel shuffle.
  m.def("pc_shuffle_cat(Tensor x, Tensor ya, int k, int stride) -> Tensor");
  // (grad_x, grad_ya)
  m.def("pc_shuffle_cat_backward(Tensor grad, Tensor x, int k, int stride) -> (Tensor, Tensor)");
}
