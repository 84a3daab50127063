// CUDA kernels of fastdarts::pc_shuffle_cat and fastdarts::pc_shuffle_cat_backward
// (the PC-DARTS partial-channel edge output); see csrc/cpu/partial_channel.cpp for the
// reference formula. With Cg = C / k:
//   out[:, j*k + g] = ya[:, j]                      for g == 0
//   out[:, j*k + g] = pool(x[:, g*Cg + j])          for g >= 1 (pool = identity or 2x2 max)
// Every output channel plane is a function of one input plane, so the kernels work per
// (n, c) plane: each block covers a range of whole planes (several small planes per block, or
// several blocks per large plane), and the plane's source is found once per thread with two
// 32-bit divisions (n, c from the plane index; j, g from c). Then:
//  * stride 1: a plane copy, with 16-byte vectors when every plane starts 16-byte aligned
//    (aligned bases and a plane size that is a multiple of the vector width), scalars otherwise;
//  * stride 2: one thread per 2x2 window; the forward writes the window's max, the backward
//    writes all four grad_x cells of its window (the gradient at the argmax, zeros elsewhere,
//    and zeros for the unpooled last row / column of odd H / W).
// Every output element is written exactly once (no atomics), so the backward is deterministic.
// Max pooling follows PyTorch's max_pool2d rule: first maximum in row-major window order wins, a
// NaN wins over everything (the last NaN if several).
//
// Layout: the kernels walk NCHW. A channels_last x (or ya / grad) is copied to NCHW-contiguous
// first and the results are NCHW-contiguous (the fake kernels in fastdarts/_ext.py say the same).
// In a channels_last network that costs one copy of x per edge; walking NHWC directly would need a
// different plane decomposition (C is the innermost dimension) and is not implemented.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "cuda/cuda_utils.cuh"
#include "fastdarts.h"

namespace fastdarts {
namespace {

constexpr int kThreads = 256;

struct PcDims {
  uint32_t C, Cg, k;  // channels, channels through the op (C / k), shuffle groups
  uint32_t H, W;      // input plane
  uint32_t Ho, Wo;    // output plane
};

// How a 1-D grid covers `planes` planes of `items` work items each: ppb planes per block when a
// plane has fewer items than a block has threads, else bpp blocks per plane.
struct PlaneMap {
  uint32_t planes, items, ppb, bpp;
};

PlaneMap make_plane_map(int64_t planes, int64_t items) {
  TORCH_CHECK(planes < (int64_t{1} << 31) && items < (int64_t{1} << 31),
              "fastdarts::pc_shuffle_cat (CUDA): N*C and the plane size must be below 2^31");
  PlaneMap m{static_cast<uint32_t>(planes), static_cast<uint32_t>(std::max<int64_t>(items, 1)), 1, 1};
  if (m.items <= static_cast<uint32_t>(kThreads)) {
    m.ppb = kThreads / m.items;
  } else {
    m.bpp = (m.items + kThreads - 1) / kThreads;
  }
  return m;
}

int64_t blocks_for(const PlaneMap& m) {
  const int64_t blocks = m.ppb > 1 ? (static_cast<int64_t>(m.planes) + m.ppb - 1) / m.ppb
                                   : static_cast<int64_t>(m.planes) * m.bpp;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "fastdarts::pc_shuffle_cat (CUDA): grid too large (", blocks,
              " blocks)");
  return std::max<int64_t>(blocks, 1);
}

// This thread's plane p and item q within it; false when the thread has no work.
__device__ __forceinline__ bool plane_item(const PlaneMap& m, uint32_t& p, uint32_t& q) {
  if (m.ppb > 1) {
    const uint32_t local = threadIdx.x / m.items;
    p = blockIdx.x * m.ppb + local;
    q = threadIdx.x - local * m.items;
    return local < m.ppb && p < m.planes;
  }
  p = blockIdx.x / m.bpp;
  q = (blockIdx.x - p * m.bpp) * kThreads + threadIdx.x;
  return q < m.items;
}

// Row-major index (0..3) of the max_pool2d winner of a 2x2 window's values v_in.
template <typename scalar_t>
__device__ __forceinline__ int window_argmax(const scalar_t v_in[4]) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t best = static_cast<acc_t>(v_in[0]);
  int arg = 0;
  // v[0] > -inf or NaN always wins the first comparison of PyTorch's loop, unless it is
  // -inf, in which case PyTorch also keeps index 0; so starting from v[0] is equivalent.
#pragma unroll
  for (int i = 1; i < 4; ++i) {
    const acc_t v = static_cast<acc_t>(v_in[i]);
    if (v > best || isnan(v)) {
      best = v;
      arg = i;
    }
  }
  return arg;
}

template <typename scalar_t>
__device__ __forceinline__ void load_window(const scalar_t* src, uint32_t W, scalar_t v[4]) {
  v[0] = src[0];
  v[1] = src[1];
  v[2] = src[W];
  v[3] = src[W + 1];
}

// Source plane of output plane p = (n, co) of pc_shuffle_cat: ya plane (n, j) when g == 0 (*from_ya),
// else x plane (n, g*Cg + j).
__device__ __forceinline__ int64_t fwd_source_plane(const PcDims& d, uint32_t p, bool* from_ya) {
  const uint32_t n = p / d.C, co = p - n * d.C;
  const uint32_t j = co / d.k, g = co - j * d.k;
  *from_ya = g == 0;
  return g == 0 ? static_cast<int64_t>(n) * d.Cg + j : static_cast<int64_t>(n) * d.C + g * d.Cg + j;
}

// Stride 1 forward: plane copy of V-element vectors (V = 1: scalars).
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    pc_fwd_s1_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ ya, scalar_t* __restrict__ out,
                     PcDims d, PlaneMap m) {
  using VecT = Vec<scalar_t, V>;
  uint32_t p, q;
  if (!plane_item(m, p, q)) return;
  bool from_ya;
  const int64_t src_plane = fwd_source_plane(d, p, &from_ya);
  const int64_t plane = static_cast<int64_t>(d.H) * d.W;  // == Ho * Wo
  const scalar_t* src = (from_ya ? ya : x) + src_plane * plane;
  reinterpret_cast<VecT*>(out + static_cast<int64_t>(p) * plane)[q] = reinterpret_cast<const VecT*>(src)[q];
}

// Stride 2 forward: one thread per output element (= one 2x2 window, or one ya element).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pc_fwd_s2_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ ya, scalar_t* __restrict__ out,
                     PcDims d, PlaneMap m) {
  uint32_t p, q;
  if (!plane_item(m, p, q)) return;
  bool from_ya;
  const int64_t src_plane = fwd_source_plane(d, p, &from_ya);
  const int64_t plane_out = static_cast<int64_t>(d.Ho) * d.Wo;
  scalar_t* dst = out + static_cast<int64_t>(p) * plane_out;
  if (from_ya) {
    dst[q] = ya[src_plane * plane_out + q];
    return;
  }
  const uint32_t h = q / d.Wo, w = q - h * d.Wo;
  const scalar_t* src = x + src_plane * d.H * d.W + (2 * h) * d.W + 2 * w;
  scalar_t v[4];
  load_window(src, d.W, v);
  dst[q] = v[window_argmax(v)];
}

// grad_ya[:, j] = grad[:, j*k]: plane copy of V-element vectors. Plane p of grad_ya = (n, j).
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    pc_bwd_ya_kernel(const scalar_t* __restrict__ grad, scalar_t* __restrict__ grad_ya, PcDims d, PlaneMap m) {
  using VecT = Vec<scalar_t, V>;
  uint32_t p, q;
  if (!plane_item(m, p, q)) return;
  const uint32_t n = p / d.Cg, j = p - n * d.Cg;
  const int64_t plane = static_cast<int64_t>(d.Ho) * d.Wo;
  const scalar_t* src = grad + (static_cast<int64_t>(n) * d.C + static_cast<int64_t>(j) * d.k) * plane;
  reinterpret_cast<VecT*>(grad_ya + static_cast<int64_t>(p) * plane)[q] = reinterpret_cast<const VecT*>(src)[q];
}

// Stride 1 grad_x: plane p = (n, c) is zero for c < Cg, else a copy of grad plane (n, j*k + g)
// with g = c / Cg, j = c % Cg; V-element vectors.
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    pc_bwd_x_s1_kernel(const scalar_t* __restrict__ grad, scalar_t* __restrict__ grad_x, PcDims d, PlaneMap m) {
  using VecT = Vec<scalar_t, V>;
  uint32_t p, q;
  if (!plane_item(m, p, q)) return;
  const uint32_t n = p / d.C, c = p - n * d.C;
  const int64_t plane = static_cast<int64_t>(d.H) * d.W;
  VecT v;
  if (c < d.Cg) {
#pragma unroll
    for (int i = 0; i < V; ++i) v.v[i] = static_cast<scalar_t>(0);
  } else {
    const uint32_t g = c / d.Cg, j = c - g * d.Cg;
    const scalar_t* src = grad + (static_cast<int64_t>(n) * d.C + static_cast<int64_t>(j) * d.k + g) * plane;
    v = reinterpret_cast<const VecT*>(src)[q];
  }
  reinterpret_cast<VecT*>(grad_x + static_cast<int64_t>(p) * plane)[q] = v;
}

// Stride 2 grad_x: one thread per 2x2 window (ceil(H/2) x ceil(W/2) per plane, the last ones
// partial for odd H / W), writing every existing cell of its window.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pc_bwd_x_s2_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                       scalar_t* __restrict__ grad_x, PcDims d, PlaneMap m, uint32_t win_w) {
  uint32_t p, q;
  if (!plane_item(m, p, q)) return;
  const uint32_t n = p / d.C, c = p - n * d.C;
  const uint32_t h = q / win_w, w = q - h * win_w;
  const int64_t plane = static_cast<int64_t>(d.H) * d.W;
  const int64_t off = static_cast<int64_t>(p) * plane + (2 * h) * d.W + 2 * w;
  const scalar_t zero = static_cast<scalar_t>(0);
  scalar_t out[4] = {zero, zero, zero, zero};
  if (c >= d.Cg && h < d.Ho && w < d.Wo) {  // a pooled window of a bypass channel
    const uint32_t g = c / d.Cg, j = c - g * d.Cg;
    const int64_t gplane = static_cast<int64_t>(n) * d.C + static_cast<int64_t>(j) * d.k + g;
    scalar_t v[4];
    load_window(x + off, d.W, v);
    out[window_argmax(v)] = grad[gplane * d.Ho * d.Wo + static_cast<int64_t>(h) * d.Wo + w];
  }
  scalar_t* dst = grad_x + off;
  const bool has_right = 2 * w + 1 < d.W, has_below = 2 * h + 1 < d.H;
  dst[0] = out[0];
  if (has_right) dst[1] = out[1];
  if (has_below) {
    dst[d.W] = out[2];
    if (has_right) dst[d.W + 1] = out[3];
  }
}

PcDims make_dims(const PcShape& s, int64_t k) {
  return PcDims{static_cast<uint32_t>(s.C), static_cast<uint32_t>(s.Cg), static_cast<uint32_t>(k),
                static_cast<uint32_t>(s.H), static_cast<uint32_t>(s.W), static_cast<uint32_t>(s.Ho),
                static_cast<uint32_t>(s.Wo)};
}

// Launches kernel<V> for plane copies of `plane` elements: 16-byte vectors when every plane of
// every tensor in `ptrs` starts 16-byte aligned, else scalars.
template <typename scalar_t, typename Launch>
void launch_plane_copy(int64_t planes, int64_t plane, std::initializer_list<const void*> ptrs, Launch&& launch) {
  constexpr int V = vec_width<scalar_t>();
  bool vec = plane % V == 0;
  for (const void* ptr : ptrs) vec = vec && aligned_to(ptr, sizeof(Vec<scalar_t, V>));
  if (vec) {
    launch(std::integral_constant<int, V>{}, make_plane_map(planes, plane / V));
  } else {
    launch(std::integral_constant<int, 1>{}, make_plane_map(planes, plane));
  }
}

void check_dims_fit(const PcShape& s) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(s.C < kMax && s.H < kMax && s.W < kMax && s.H * s.W < kMax,
              "fastdarts::pc_shuffle_cat (CUDA): C, H, W and H*W must be below 2^31");
}

}  // namespace

at::Tensor pc_shuffle_cat_cuda(const at::Tensor& x_in, const at::Tensor& ya_in, int64_t k, int64_t stride) {
  const PcShape s = check_pc_args(x_in, k, stride, "fastdarts::pc_shuffle_cat");
  check_pc_ya(x_in, ya_in, s, "fastdarts::pc_shuffle_cat");
  TORCH_CHECK(x_in.is_cuda(), "fastdarts::pc_shuffle_cat (CUDA): x must be a CUDA tensor");
  check_dims_fit(s);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();  // channels_last: one copy (see the file comment)
  const at::Tensor ya = ya_in.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options());
  if (out.numel() == 0) return out;
  const PcDims d = make_dims(s, k);
  const int64_t planes = s.N * s.C;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastdarts::pc_shuffle_cat_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yap = ya.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (stride == 1) {
      launch_plane_copy<scalar_t>(planes, s.H * s.W, {xp, yap, op}, [&](auto v_c, PlaneMap m) {
        constexpr int V = decltype(v_c)::value;
        pc_fwd_s1_kernel<scalar_t, V><<<blocks_for(m), kThreads, 0, stream>>>(xp, yap, op, d, m);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    } else {
      const PlaneMap m = make_plane_map(planes, s.Ho * s.Wo);
      pc_fwd_s2_kernel<scalar_t><<<blocks_for(m), kThreads, 0, stream>>>(xp, yap, op, d, m);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pc_shuffle_cat_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                int64_t k, int64_t stride) {
  const PcShape s = check_pc_args(x_in, k, stride, "fastdarts::pc_shuffle_cat_backward");
  check_pc_grad(x_in, grad_in, s, "fastdarts::pc_shuffle_cat_backward");
  TORCH_CHECK(x_in.is_cuda(), "fastdarts::pc_shuffle_cat_backward (CUDA): x must be a CUDA tensor");
  check_dims_fit(s);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();  // channels_last: one copy (see the file comment)
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_x = at::empty({s.N, s.C, s.H, s.W}, x.options());
  at::Tensor grad_ya = at::empty({s.N, s.Cg, s.Ho, s.Wo}, x.options());
  const PcDims d = make_dims(s, k);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastdarts::pc_shuffle_cat_backward_cuda", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* gyap = grad_ya.mutable_data_ptr<scalar_t>();
    if (grad_x.numel() > 0) {
      if (stride == 1) {
        launch_plane_copy<scalar_t>(s.N * s.C, s.H * s.W, {gp, gxp}, [&](auto v_c, PlaneMap m) {
          constexpr int V = decltype(v_c)::value;
          pc_bwd_x_s1_kernel<scalar_t, V><<<blocks_for(m), kThreads, 0, stream>>>(gp, gxp, d, m);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      } else {
        const uint32_t win_h = static_cast<uint32_t>((s.H + 1) / 2), win_w = static_cast<uint32_t>((s.W + 1) / 2);
        const PlaneMap m = make_plane_map(s.N * s.C, static_cast<int64_t>(win_h) * win_w);
        pc_bwd_x_s2_kernel<scalar_t><<<blocks_for(m), kThreads, 0, stream>>>(gp, xp, gxp, d, m, win_w);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    if (grad_ya.numel() > 0) {
      launch_plane_copy<scalar_t>(s.N * s.Cg, s.Ho * s.Wo, {gp, gyap}, [&](auto v_c, PlaneMap m) {
        constexpr int V = decltype(v_c)::value;
        pc_bwd_ya_kernel<scalar_t, V><<<blocks_for(m), kThreads, 0, stream>>>(gp, gyap, d, m);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return {grad_x, grad_ya};
}

TORCH_LIBRARY_IMPL(fastdarts, CUDA, m) {
  m.impl("pc_shuffle_cat", &pc_shuffle_cat_cuda);
  m.impl("pc_shuffle_cat_backward", &pc_shuffle_cat_backward_cuda);
}

}  // namespace fastdarts
