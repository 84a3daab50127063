// CUDA kernels of fastdarts::mixed_sum and fastdarts::mixed_sum_backward.
//
//   forward : y = sum_k w[k] * xs[k]                  (accumulated in fp32, fp64 for fp64)
//   backward: grad_xs[k] = w[k] * grad, grad_w[k] = <grad, xs[k]>   (one pass over grad)
//
// The K candidates are passed by value in a fixed-size pointer struct (kMaxPtrs per launch,
// no torch.stack copy and no host-to-device pointer table); larger K is processed in chunks
// of kMaxPtrs. Bytes moved: forward (K + 1) * numel * sizeof(T) (+ 2 * numel * 4 per extra
// chunk when K > kMaxPtrs); backward (1 + K + #needed grad_xs) * numel * sizeof(T).
//
// Determinism: the weight gradient is reduced per block (fixed-order tree) into a
// [num_blocks, K] buffer, then summed over blocks in index order by a second kernel; the
// grid size depends on numel only, so the result is bit-identical run to run.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastdarts.h"

namespace fastdarts {
namespace {

constexpr int kThreads = 256;
// Grid cap of the grid-stride loops: 4 waves of 256-thread blocks on a 132-SM H100 is
// ~1k blocks; the cap also bounds the [num_blocks, K] partial-sum buffer.
constexpr int64_t kMaxBlocks = 1024;

template <typename T>
struct PtrPack {
  T* p[kMaxPtrs];
};

inline int num_blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>(kMaxBlocks, std::max<int64_t>(1, (n + kThreads - 1) / kThreads)));
}

// acc (first chunk: 0, else acc_in[i]) += sum_k w[k] * xs[k][i]; the last chunk stores the
// result cast to scalar_t into out, earlier chunks store the fp32/fp64 sum into acc_out.
template <typename scalar_t, typename acc_t>
__global__ void mixed_sum_fwd_kernel(PtrPack<const scalar_t> xs,  // nk candidate pointers
                                     int nk,                        // candidates in this chunk
                                     const acc_t* __restrict__ w,   // weights of this chunk
                                     const acc_t* acc_in,           // running sum or nullptr
                                     acc_t* acc_out,                // running sum (if !out)
                                     scalar_t* out,                 // final output or nullptr
                                     int64_t n) {
  acc_t wk[kMaxPtrs];
#pragma unroll
  for (int k = 0; k < kMaxPtrs; ++k) wk[k] = k < nk ? w[k] : acc_t(0);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    acc_t a = acc_in != nullptr ? acc_in[i] : acc_t(0);
#pragma unroll
    for (int k = 0; k < kMaxPtrs; ++k) {
      if (k < nk) a += wk[k] * static_cast<acc_t>(xs.p[k][i]);
    }
    if (out != nullptr) {
      out[i] = static_cast<scalar_t>(a);
    } else {
      acc_out[i] = a;
    }
  }
}

// One pass over grad for nk candidates: gx[k][i] = w[k] * grad[i] (if gx.p[k]) and the
// block's partial sums of grad[i] * xs[k][i] into partial[blockIdx.x * K + k0 + k].
template <typename scalar_t, typename acc_t>
__global__ void mixed_sum_bwd_kernel(const scalar_t* __restrict__ grad,  // [n]
                                     PtrPack<const scalar_t> xs,         // nk candidate pointers
                                     PtrPack<scalar_t> gx,               // grad_xs pointers or nullptr
                                     int nk,                             // candidates in this chunk
                                     const acc_t* __restrict__ w,        // weights of this chunk
                                     acc_t* __restrict__ partial,        // [gridDim.x, K]
                                     int K, int k0, int64_t n) {
  __shared__ acc_t smem[kMaxPtrs][kThreads];
  acc_t wk[kMaxPtrs];
  acc_t dot[kMaxPtrs];
#pragma unroll
  for (int k = 0; k < kMaxPtrs; ++k) {
    wk[k] = k < nk ? w[k] : acc_t(0);
    dot[k] = acc_t(0);
  }
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const acc_t g = static_cast<acc_t>(grad[i]);
#pragma unroll
    for (int k = 0; k < kMaxPtrs; ++k) {
      if (k < nk) {
        dot[k] += g * static_cast<acc_t>(xs.p[k][i]);
        if (gx.p[k] != nullptr) gx.p[k][i] = static_cast<scalar_t>(wk[k] * g);
      }
    }
  }
  // Fixed-order tree reduction over the block (deterministic for a fixed blockDim).
#pragma unroll
  for (int k = 0; k < kMaxPtrs; ++k) smem[k][threadIdx.x] = dot[k];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
#pragma unroll
      for (int k = 0; k < kMaxPtrs; ++k) smem[k][threadIdx.x] += smem[k][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x < nk) partial[static_cast<int64_t>(blockIdx.x) * K + k0 + threadIdx.x] = smem[threadIdx.x][0];
}

// grad_w[k] = sum_b partial[b, k], summed in block order (deterministic).
template <typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ grad_w, int num_blocks,
                                    int K) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  acc_t s = acc_t(0);
  for (int b = 0; b < num_blocks; ++b) s += partial[static_cast<int64_t>(b) * K + k];
  grad_w[k] = s;
}

}  // namespace

at::Tensor mixed_sum_cuda(at::TensorList xs_in, const at::Tensor& weights) {
  check_mixed_sum_args(xs_in, weights, "fastdarts::mixed_sum");
  TORCH_CHECK(xs_in[0].is_cuda(), "fastdarts::mixed_sum (CUDA): xs must be CUDA tensors");
  const c10::cuda::CUDAGuard guard(xs_in[0].device());
  const auto xs = same_storage_order(xs_in);
  at::Tensor out = at::empty_like(xs[0]);
  const int64_t n = out.numel();
  const int K = static_cast<int>(xs.size());
  if (n == 0) return out;
  const auto acc_type = acc_dtype(out.scalar_type());
  const at::Tensor w = weights.to(acc_type).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int blocks = num_blocks_for(n);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fastdarts::mixed_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Running sum between chunks when K > kMaxPtrs: in the output itself when it is already
    // the accumulation type, else an fp32 workspace (keeps fp32 accumulation for 16-bit types).
    at::Tensor ws;
    acc_t* acc = nullptr;
    if (K > kMaxPtrs) {
      if (std::is_same<scalar_t, acc_t>::value) {
        acc = reinterpret_cast<acc_t*>(out.mutable_data_ptr<scalar_t>());
      } else {
        ws = at::empty({n}, out.options().dtype(acc_type));
        acc = ws.mutable_data_ptr<acc_t>();
      }
    }
    const acc_t* wp = w.const_data_ptr<acc_t>();
    for (int k0 = 0; k0 < K; k0 += kMaxPtrs) {
      const int nk = std::min(kMaxPtrs, K - k0);
      PtrPack<const scalar_t> pack{};
      for (int k = 0; k < nk; ++k) pack.p[k] = xs[k0 + k].const_data_ptr<scalar_t>();
      const bool first = k0 == 0, last = k0 + nk >= K;
      mixed_sum_fwd_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          pack, nk, wp + k0, first ? nullptr : acc, last ? nullptr : acc,
          last ? out.mutable_data_ptr<scalar_t>() : nullptr, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cuda(const at::Tensor& grad_in,
                                                                        at::TensorList xs_in,
                                                                        const at::Tensor& weights,
                                                                        c10::List<bool> needs_input_grad) {
  check_mixed_sum_backward_args(grad_in, xs_in, weights, needs_input_grad, "fastdarts::mixed_sum_backward");
  TORCH_CHECK(grad_in.is_cuda(), "fastdarts::mixed_sum_backward (CUDA): grad must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const int K = static_cast<int>(xs_in.size());
  std::vector<at::Tensor> all;
  all.reserve(K + 1);
  all.push_back(grad_in);
  for (const auto& x : xs_in) all.push_back(x);
  all = same_storage_order(all);
  const at::Tensor& grad = all[0];

  std::vector<at::Tensor> grad_xs(K);
  for (int k = 0; k < K; ++k) {
    grad_xs[k] = needs_input_grad.get(k) ? at::empty_like(grad) : at::empty({0}, grad.options());
  }
  const auto acc_type = acc_dtype(grad.scalar_type());
  at::Tensor grad_w = at::empty({K}, grad.options().dtype(acc_type));
  const int64_t n = grad.numel();
  if (n == 0) {
    grad_w.zero_();
    return {grad_xs, grad_w};
  }
  const at::Tensor w = weights.to(acc_type).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int blocks = num_blocks_for(n);
  at::Tensor partial = at::empty({blocks, K}, grad.options().dtype(acc_type));

  const auto dtype = grad.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastdarts::mixed_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* wp = w.const_data_ptr<acc_t>();
    acc_t* pp = partial.mutable_data_ptr<acc_t>();
    for (int k0 = 0; k0 < K; k0 += kMaxPtrs) {
      const int nk = std::min(kMaxPtrs, K - k0);
      PtrPack<const scalar_t> xpack{};
      PtrPack<scalar_t> gpack{};
      for (int k = 0; k < nk; ++k) {
        xpack.p[k] = all[1 + k0 + k].const_data_ptr<scalar_t>();
        gpack.p[k] = needs_input_grad.get(k0 + k) ? grad_xs[k0 + k].mutable_data_ptr<scalar_t>() : nullptr;
      }
      mixed_sum_bwd_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), xpack, gpack, nk, wp + k0, pp, K, k0, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    sum_partials_kernel<acc_t><<<(K + 127) / 128, 128, 0, stream>>>(pp, grad_w.mutable_data_ptr<acc_t>(), blocks, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_xs, grad_w};
}

TORCH_LIBRARY_IMPL(fastdarts, CUDA, m) {
  m.impl("mixed_sum", &mixed_sum_cuda);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cuda);
}

}  // namespace fastdarts
