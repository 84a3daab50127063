// CUDA kernels of fastdarts::pc_shuffle_cat and fastdarts::pc_shuffle_cat_backward
// (the PC-DARTS partial-channel edge output); see csrc/cpu/partial_channel.cpp for the
// reference formula. With Cg = C / k:
//   out[:, j*k + g] = ya[:, j]                      for g == 0
//   out[:, j*k + g] = pool(x[:, g*Cg + j])          for g >= 1 (pool = identity or 2x2 max)
// One gather kernel writes `out` directly (no cat, pooled temporary or shuffle copy); the
// backward gathers too (every output element written exactly once, no atomics), so it is
// deterministic. Max pooling follows PyTorch's max_pool2d rule: first maximum in row-major
// window order wins, a NaN wins over everything (the last NaN if several).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "fastdarts.h"

namespace fastdarts {
namespace {

constexpr int kThreads = 256;
// Grid-stride loops with at most this many blocks (a few waves on an H100's 132 SMs).
constexpr int64_t kMaxBlocks = 4096;

inline int num_blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>(kMaxBlocks, std::max<int64_t>(1, (n + kThreads - 1) / kThreads)));
}

struct PcDims {
  int64_t C, H, W, Cg, Ho, Wo, k;
};

// Row-major index (0..3) of the max_pool2d winner of the 2x2 window at src (row stride W).
template <typename scalar_t>
__device__ __forceinline__ int window_argmax(const scalar_t* src, int64_t W) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t v[4] = {static_cast<acc_t>(src[0]), static_cast<acc_t>(src[1]), static_cast<acc_t>(src[W]),
                      static_cast<acc_t>(src[W + 1])};
  acc_t best = v[0];
  int arg = 0;
  // v[0] > -inf or NaN always wins the first comparison of PyTorch's loop, unless it is
  // -inf, in which case PyTorch also keeps index 0; so starting from v[0] is equivalent.
#pragma unroll
  for (int i = 1; i < 4; ++i) {
    if (v[i] > best || isnan(v[i])) {
      best = v[i];
      arg = i;
    }
  }
  return arg;
}

// One thread per output element (n, co, h, w) of the [N, C, Ho, Wo] output.
template <typename scalar_t>
__global__ void pc_shuffle_cat_fwd_kernel(const scalar_t* __restrict__ x,   // [N, C, H, W]
                                          const scalar_t* __restrict__ ya,  // [N, Cg, Ho, Wo]
                                          scalar_t* __restrict__ out,       // [N, C, Ho, Wo]
                                          PcDims d, int stride, int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t w = i % d.Wo;
    const int64_t h = (i / d.Wo) % d.Ho;
    const int64_t co = (i / (d.Wo * d.Ho)) % d.C;
    const int64_t n = i / (d.Wo * d.Ho * d.C);
    const int64_t j = co / d.k, g = co % d.k;
    if (g == 0) {
      out[i] = ya[((n * d.Cg + j) * d.Ho + h) * d.Wo + w];
      continue;
    }
    const scalar_t* plane = x + (n * d.C + g * d.Cg + j) * d.H * d.W;
    if (stride == 1) {
      out[i] = plane[h * d.W + w];
    } else {
      const scalar_t* src = plane + (2 * h) * d.W + 2 * w;
      const int a = window_argmax(src, d.W);
      out[i] = src[(a >> 1) * d.W + (a & 1)];
    }
  }
}

// One thread per element of grad_x [N, C, H, W] (gather; each written exactly once).
template <typename scalar_t>
__global__ void pc_shuffle_cat_bwd_x_kernel(const scalar_t* __restrict__ grad,  // [N, C, Ho, Wo]
                                            const scalar_t* __restrict__ x,     // [N, C, H, W]
                                            scalar_t* __restrict__ grad_x,      // [N, C, H, W]
                                            PcDims d, int stride, int64_t total) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t iw = i % d.W;
    const int64_t ih = (i / d.W) % d.H;
    const int64_t c = (i / (d.W * d.H)) % d.C;
    const int64_t n = i / (d.W * d.H * d.C);
    scalar_t v = static_cast<scalar_t>(0);
    if (c >= d.Cg) {
      const int64_t g = c / d.Cg, j = c % d.Cg;
      const scalar_t* gplane = grad + (n * d.C + j * d.k + g) * d.Ho * d.Wo;
      if (stride == 1) {
        v = gplane[ih * d.Wo + iw];
      } else {
        const int64_t h = ih >> 1, w = iw >> 1;
        if (h < d.Ho && w < d.Wo) {  // odd H / W: the last row / column is never pooled
          const scalar_t* src = x + ((n * d.C + c) * d.H + 2 * h) * d.W + 2 * w;
          const int a = window_argmax(src, d.W);
          if (a == static_cast<int>(((ih & 1) << 1) | (iw & 1))) v = gplane[h * d.Wo + w];
        }
      }
    }
    grad_x[i] = v;
  }
}

// grad_ya[:, j] = grad[:, j*k]; one thread per element of grad_ya [N, Cg, Ho, Wo].
template <typename scalar_t>
__global__ void pc_shuffle_cat_bwd_ya_kernel(const scalar_t* __restrict__ grad,  // [N, C, Ho, Wo]
                                             scalar_t* __restrict__ grad_ya,     // [N, Cg, Ho, Wo]
                                             PcDims d, int64_t total) {
  const int64_t plane = d.Ho * d.Wo;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t p = i % plane;
    const int64_t j = (i / plane) % d.Cg;
    const int64_t n = i / (plane * d.Cg);
    grad_ya[i] = grad[(n * d.C + j * d.k) * plane + p];
  }
}

}  // namespace

at::Tensor pc_shuffle_cat_cuda(const at::Tensor& x_in, const at::Tensor& ya_in, int64_t k, int64_t stride) {
  const PcShape s = check_pc_args(x_in, k, stride, "fastdarts::pc_shuffle_cat");
  check_pc_ya(x_in, ya_in, s, "fastdarts::pc_shuffle_cat");
  TORCH_CHECK(x_in.is_cuda(), "fastdarts::pc_shuffle_cat (CUDA): x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor ya = ya_in.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const PcDims d{s.C, s.H, s.W, s.Cg, s.Ho, s.Wo, k};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastdarts::pc_shuffle_cat_cuda", [&] {
    pc_shuffle_cat_fwd_kernel<scalar_t><<<num_blocks_for(total), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), ya.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), d,
        static_cast<int>(stride), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pc_shuffle_cat_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                int64_t k, int64_t stride) {
  const PcShape s = check_pc_args(x_in, k, stride, "fastdarts::pc_shuffle_cat_backward");
  check_pc_grad(x_in, grad_in, s, "fastdarts::pc_shuffle_cat_backward");
  TORCH_CHECK(x_in.is_cuda(), "fastdarts::pc_shuffle_cat_backward (CUDA): x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_x = at::empty({s.N, s.C, s.H, s.W}, x.options());
  at::Tensor grad_ya = at::empty({s.N, s.Cg, s.Ho, s.Wo}, x.options());
  const PcDims d{s.C, s.H, s.W, s.Cg, s.Ho, s.Wo, k};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastdarts::pc_shuffle_cat_backward_cuda", [&] {
    const int64_t nx = grad_x.numel(), nya = grad_ya.numel();
    if (nx > 0) {
      pc_shuffle_cat_bwd_x_kernel<scalar_t><<<num_blocks_for(nx), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), d,
          static_cast<int>(stride), nx);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (nya > 0) {
      pc_shuffle_cat_bwd_ya_kernel<scalar_t><<<num_blocks_for(nya), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), grad_ya.mutable_data_ptr<scalar_t>(), d, nya);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_ya};
}

TORCH_LIBRARY_IMPL(fastdarts, CUDA, m) {
  m.impl("pc_shuffle_cat", &pc_shuffle_cat_cuda);
  m.impl("pc_shuffle_cat_backward", &pc_shuffle_cat_backward_cuda);
}

}  // namespace fastdarts
