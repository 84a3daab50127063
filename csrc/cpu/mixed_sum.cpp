// CPU kernels of fastdarts::mixed_sum and fastdarts::mixed_sum_backward.
//
//   forward : y = sum_k w[k] * xs[k]                  (accumulated in fp32, fp64 for fp64)
//   backward: grad_xs[k] = w[k] * grad, grad_w[k] = <grad, xs[k]>   (one pass over grad)
//
// The candidate tensors are read in place (no torch.stack copy). All tensors are walked
// linearly in one common storage order (see same_storage_order), so channels_last inputs
// stay channels_last without a copy.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fastdarts.h"

namespace fastdarts {
namespace {

// Elements per inner tile of the forward: the fp32 accumulator (4 KiB) stays in L1 while
// the K candidates stream through it.
constexpr int64_t kTile = 1024;
// Independent accumulator lanes of the dot products: lets the compiler vectorise a
// reduction it may not reorder (no -ffast-math); the lane order is fixed, so the result is
// still deterministic.
constexpr int64_t kLanes = 16;

template <typename acc_t>
std::vector<acc_t> weights_to_host(const at::Tensor& weights) {
  const auto w = weights.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* p = w.template data_ptr<acc_t>();
  return std::vector<acc_t>(p, p + w.numel());
}

}  // namespace

at::Tensor mixed_sum_cpu(at::TensorList xs_in, const at::Tensor& weights) {
  check_mixed_sum_args(xs_in, weights, "fastdarts::mixed_sum");
  const auto xs = same_storage_order(xs_in);
  at::Tensor out = at::empty_like(xs[0]);
  const int64_t n = out.numel();
  const int64_t K = static_cast<int64_t>(xs.size());
  if (n == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fastdarts::mixed_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> w = weights_to_host<acc_t>(weights);
    std::vector<const scalar_t*> ptrs(K);
    for (int64_t k = 0; k < K; ++k) ptrs[k] = xs[k].const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();

    at::parallel_for(0, n, 16 * kTile, [&](int64_t begin, int64_t end) {
      acc_t acc[kTile];
      for (int64_t t0 = begin; t0 < end; t0 += kTile) {
        const int64_t len = std::min(kTile, end - t0);
        {
          const scalar_t* x = ptrs[0] + t0;
          const acc_t wk = w[0];
          for (int64_t i = 0; i < len; ++i) acc[i] = wk * static_cast<acc_t>(x[i]);
        }
        for (int64_t k = 1; k < K; ++k) {
          const scalar_t* x = ptrs[k] + t0;
          const acc_t wk = w[k];
          for (int64_t i = 0; i < len; ++i) acc[i] += wk * static_cast<acc_t>(x[i]);
        }
        scalar_t* yt = y + t0;
        for (int64_t i = 0; i < len; ++i) yt[i] = static_cast<scalar_t>(acc[i]);
      }
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cpu(const at::Tensor& grad_in,
                                                                       at::TensorList xs_in,
                                                                       const at::Tensor& weights,
                                                                       c10::List<bool> needs_input_grad) {
  check_mixed_sum_backward_args(grad_in, xs_in, weights, needs_input_grad, "fastdarts::mixed_sum_backward");
  const int64_t K = static_cast<int64_t>(xs_in.size());
  // The inputs fix the storage order (and so the layout of grad_xs): a non-dense or differently
  // laid out grad costs one copy of grad, never copies of the K inputs.
  const auto xs = same_storage_order(xs_in);
  const at::Tensor grad = in_storage_order_of(grad_in, xs[0]);

  std::vector<at::Tensor> grad_xs(K);
  for (int64_t k = 0; k < K; ++k) {
    grad_xs[k] = needs_input_grad.get(k) ? at::empty_like(xs[0]) : at::empty({0}, grad.options());
  }
  const auto acc_type = acc_dtype(grad.scalar_type());
  at::Tensor grad_w = at::empty({K}, grad.options().dtype(acc_type));
  const int64_t n = grad.numel();
  if (n == 0) {
    grad_w.zero_();
    return {grad_xs, grad_w};
  }

  const auto dtype = grad.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastdarts::mixed_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> w = weights_to_host<acc_t>(weights);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    std::vector<const scalar_t*> xp(K);
    std::vector<scalar_t*> gxp(K, nullptr);
    for (int64_t k = 0; k < K; ++k) {
      xp[k] = xs[k].const_data_ptr<scalar_t>();
      if (needs_input_grad.get(k)) gxp[k] = grad_xs[k].mutable_data_ptr<scalar_t>();
    }
    // partial[c * K + k] = <grad, xs[k]> over chunk c. Chunks are fixed-size (kReduceChunk),
    // so their boundaries and the final in-order sum do not depend on the thread count.
    const int64_t num_chunks = (n + kReduceChunk - 1) / kReduceChunk;
    std::vector<acc_t> partial(num_chunks * K);

    at::parallel_for(0, num_chunks, 1, [&](int64_t cbegin, int64_t cend) {
      for (int64_t c = cbegin; c < cend; ++c) {
        const int64_t base = c * kReduceChunk;
        const int64_t len = std::min(kReduceChunk, n - base);
        const scalar_t* gc = g + base;
        // The chunk of grad (<= 16 KiB in fp32) stays in cache across the K candidates:
        // grad is read from memory once.
        for (int64_t k = 0; k < K; ++k) {
          const scalar_t* x = xp[k] + base;
          acc_t lanes[kLanes] = {};
          int64_t i = 0;
          for (; i + kLanes <= len; i += kLanes) {
            for (int64_t j = 0; j < kLanes; ++j) {
              lanes[j] += static_cast<acc_t>(gc[i + j]) * static_cast<acc_t>(x[i + j]);
            }
          }
          for (int64_t j = 0; i + j < len; ++j) {
            lanes[j] += static_cast<acc_t>(gc[i + j]) * static_cast<acc_t>(x[i + j]);
          }
          acc_t s = 0;
          for (int64_t j = 0; j < kLanes; ++j) s += lanes[j];
          partial[c * K + k] = s;

          if (scalar_t* gx = gxp[k]) {
            gx += base;
            const acc_t wk = w[k];
            for (int64_t e = 0; e < len; ++e) gx[e] = static_cast<scalar_t>(wk * static_cast<acc_t>(gc[e]));
          }
        }
      }
    });

    acc_t* gw = grad_w.mutable_data_ptr<acc_t>();
    for (int64_t k = 0; k < K; ++k) {
      acc_t s = 0;
      for (int64_t c = 0; c < num_chunks; ++c) s += partial[c * K + k];
      gw[k] = s;
    }
  });
  return {grad_xs, grad_w};
}

TORCH_LIBRARY_IMPL(fastdarts, CPU, m) {
  m.impl("mixed_sum", &mixed_sum_cpu);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cpu);
}

}  // namespace fastdarts
