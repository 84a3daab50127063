// fastdarts C++/CUDA extension: shared declarations, argument checks and helpers.
//
// Kept light on purpose: only <ATen/core/Tensor.h> and c10 headers, so that every
// translation unit (including the .cu files compiled by nvcc) builds in seconds rather
// than the ~75 s per file that <torch/extension.h> costs on a 2-core machine.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>
#include <vector>

// ---------------------------------------------------------------------------------------
// Argument checks. Each names the offending argument (flash-attn's flash_api.cpp style).
// TORCH_CHECK is for user errors; TORCH_INTERNAL_ASSERT is kept for invariants.
// ---------------------------------------------------------------------------------------
#define CHECK_DEVICE(x, dev) \
  TORCH_CHECK((x).device() == (dev), #x " must be on device ", (dev), ", got ", (x).device())
#define CHECK_SAME_DEVICE(x, y) \
  TORCH_CHECK((x).device() == (y).device(), #x " (", (x).device(), ") and " #y " (", (y).device(), \
              ") must be on the same device")
#define CHECK_SAME_DTYPE(x, y) \
  TORCH_CHECK((x).scalar_type() == (y).scalar_type(), #x " (", (x).scalar_type(), ") and " #y " (", \
              (y).scalar_type(), ") must have the same dtype")
#define CHECK_DIM(x, d) TORCH_CHECK((x).dim() == (d), #x " must be ", (d), "-D, got ", (x).dim(), "-D tensor")
#define CHECK_SHAPE(x, ...)                                                                        \
  TORCH_CHECK((x).sizes() == c10::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ \
              ") = ", c10::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())
#define CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define CHECK_FLOATING(x)                                                                        \
  TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kHalf ||               \
                  (x).scalar_type() == at::kBFloat16 || (x).scalar_type() == at::kDouble,        \
              #x " must be float32, float16, bfloat16 or float64, got ", (x).scalar_type())

namespace fastdarts {

// Deterministic reductions: the weight gradient of mixed_sum is reduced as per-chunk
// partial sums over fixed chunks of kReduceChunk elements, then summed in chunk order.
// Chunk boundaries depend only on numel, never on the thread count, so results are
// bit-identical run to run and for any torch.get_num_threads().
constexpr int64_t kReduceChunk = 4096;

// CUDA kernels take the candidate tensors through a fixed-size pointer struct; larger K
// is processed in chunks of kMaxPtrs candidates per launch.
constexpr int kMaxPtrs = 8;

// Accumulation dtype of the mixed-sum kernels: float64 for float64 inputs, else float32.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Memory format the kernels walk: channels_last when t is channels_last-contiguous (and not
// also plain contiguous), else contiguous. Mirrored by _kernel_memory_format in
// fastdarts/_ext.py, whose fake kernels must produce the same output strides.
inline at::MemoryFormat kernel_memory_format(const at::Tensor& t) {
  return (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast))
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// Returns `ts`, each contiguous in ts[0]'s kernel_memory_format, so kernels may walk all of
// them linearly in one storage order. Tensors already laid out that way (the usual case:
// all contiguous, or all channels_last) are returned as is, without a copy; only mismatched
// or non-dense inputs are copied. Outputs allocated with at::empty_like(result[0]) follow
// the same storage order (xs[0]'s memory format).
inline std::vector<at::Tensor> same_storage_order(at::TensorList ts) {
  TORCH_INTERNAL_ASSERT(!ts.empty());
  const auto fmt = kernel_memory_format(ts[0]);
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous(fmt));
  return out;
}

// `t` laid out in the storage order of `ref` (a tensor returned by same_storage_order), without a
// copy when it already is. Backward kernels use it for grad: the inputs fix the layout, so a
// non-dense or differently laid out grad costs one copy of grad, never copies of the K inputs.
inline at::Tensor in_storage_order_of(const at::Tensor& t, const at::Tensor& ref) {
  return t.contiguous(kernel_memory_format(ref));
}

// Checks shared by the CPU and CUDA mixed_sum kernels (forward and backward).
inline void check_mixed_sum_args(at::TensorList xs, const at::Tensor& weights, const char* op) {
  TORCH_CHECK(!xs.empty(), op, ": xs must be a non-empty list of tensors");
  CHECK_DIM(weights, 1);
  TORCH_CHECK(weights.numel() == static_cast<int64_t>(xs.size()), op, ": got ", xs.size(),
              " tensors in xs but weights has ", weights.numel(), " entries (K mismatch)");
  TORCH_CHECK(weights.is_floating_point(), op, ": weights must be floating point, got ", weights.scalar_type());
  const at::Tensor& x0 = xs[0];
  CHECK_FLOATING(x0);
  CHECK_SAME_DEVICE(weights, x0);
  for (size_t k = 1; k < xs.size(); ++k) {
    TORCH_CHECK(xs[k].sizes() == x0.sizes(), op, ": xs[", k, "] has shape ", xs[k].sizes(),
                " but xs[0] has shape ", x0.sizes(), " (shape mismatch)");
    TORCH_CHECK(xs[k].scalar_type() == x0.scalar_type(), op, ": xs[", k, "] has dtype ", xs[k].scalar_type(),
                " but xs[0] has dtype ", x0.scalar_type(), " (dtype mismatch)");
    TORCH_CHECK(xs[k].device() == x0.device(), op, ": xs[", k, "] is on ", xs[k].device(), " but xs[0] is on ",
                x0.device(), " (device mismatch)");
  }
}

inline void check_mixed_sum_backward_args(const at::Tensor& grad, at::TensorList xs, const at::Tensor& weights,
                                          const c10::List<bool>& needs_input_grad, const char* op) {
  check_mixed_sum_args(xs, weights, op);
  TORCH_CHECK(grad.sizes() == xs[0].sizes(), op, ": grad has shape ", grad.sizes(), " but xs[0] has shape ",
              xs[0].sizes());
  CHECK_SAME_DTYPE(grad, xs[0]);
  CHECK_SAME_DEVICE(grad, xs[0]);
  TORCH_CHECK(needs_input_grad.size() == xs.size(), op, ": needs_input_grad has ", needs_input_grad.size(),
              " entries but xs has ", xs.size());
}

// Shape bookkeeping of pc_shuffle_cat (PC-DARTS partial-channel edge).
struct PcShape {
  int64_t N, C, H, W;  // x
  int64_t Cg;          // C / k: channels that went through the mixed op
  int64_t Ho, Wo;      // output spatial size (H, W for stride 1; floor(H/2), floor(W/2) for stride 2)
};

inline PcShape check_pc_args(const at::Tensor& x, int64_t k, int64_t stride, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D [N, C, H, W] tensor, got ", x.dim(), "-D");
  CHECK_FLOATING(x);
  TORCH_CHECK(k >= 1, op, ": k must be >= 1, got ", k);
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  PcShape s{x.size(0), x.size(1), x.size(2), x.size(3), 0, 0, 0};
  TORCH_CHECK(s.C % k == 0, op, ": channel count C=", s.C, " is not divisible by k=", k);
  s.Cg = s.C / k;
  s.Ho = stride == 2 ? s.H / 2 : s.H;
  s.Wo = stride == 2 ? s.W / 2 : s.W;
  return s;
}

inline void check_pc_ya(const at::Tensor& x, const at::Tensor& ya, const PcShape& s, const char* op) {
  CHECK_SAME_DTYPE(ya, x);
  CHECK_SAME_DEVICE(ya, x);
  TORCH_CHECK(ya.dim() == 4 && ya.size(0) == s.N && ya.size(1) == s.Cg && ya.size(2) == s.Ho && ya.size(3) == s.Wo,
              op, ": ya must have shape [N, C/k, Ho, Wo] = [", s.N, ", ", s.Cg, ", ", s.Ho, ", ", s.Wo,
              "] (ya shape mismatch), got ", ya.sizes());
}

inline void check_pc_grad(const at::Tensor& x, const at::Tensor& grad, const PcShape& s, const char* op) {
  CHECK_SAME_DTYPE(grad, x);
  CHECK_SAME_DEVICE(grad, x);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == s.N && grad.size(1) == s.C && grad.size(2) == s.Ho &&
                  grad.size(3) == s.Wo,
              op, ": grad must have shape [N, C, Ho, Wo] = [", s.N, ", ", s.C, ", ", s.Ho, ", ", s.Wo, "], got ",
              grad.sizes());
}

// Kernel entry points (registered through TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda).
at::Tensor mixed_sum_cpu(at::TensorList xs, const at::Tensor& weights);
std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cpu(const at::Tensor& grad, at::TensorList xs,
                                                                       const at::Tensor& weights,
                                                                       c10::List<bool> needs_input_grad);
at::Tensor pc_shuffle_cat_cpu(const at::Tensor& x, const at::Tensor& ya, int64_t k, int64_t stride);
std::tuple<at::Tensor, at::Tensor> pc_shuffle_cat_backward_cpu(const at::Tensor& grad, const at::Tensor& x, int64_t k,
                                                               int64_t stride);

#ifdef FASTDARTS_WITH_CUDA
at::Tensor mixed_sum_cuda(at::TensorList xs, const at::Tensor& weights);
std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cuda(const at::Tensor& grad, at::TensorList xs,
                                                                        const at::Tensor& weights,
                                                                        c10::List<bool> needs_input_grad);
at::Tensor pc_shuffle_cat_cuda(const at::Tensor& x, const at::Tensor& ya, int64_t k, int64_t stride);
std::tuple<at::Tensor, at::Tensor> pc_shuffle_cat_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                int64_t k, int64_t stride);
#endif

}  // namespace fastdarts
