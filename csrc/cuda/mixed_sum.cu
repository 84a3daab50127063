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
// Bandwidth-bound by construction:
//  * the kernels are templated on NK, the candidates of one launch (1..8), so every load of a
//    thread is unconditional and issued before any of its stores (register arrays, then stores):
//    1 + NK loads in flight per thread instead of one;
//  * when every pointer of a launch is 16-byte aligned, each thread moves 16-byte vectors
//    (4 fp32 / 8 bf16 / 8 fp16 / 2 fp64), with a scalar tail for numel % V; otherwise the same
//    kernel runs with V = 1;
//  * the grid is sized from the SM count and the kernel's occupancy (one resident wave of a
//    grid-stride loop), not a fixed 1024 blocks;
//  * the output layout is the inputs': grad is brought into xs' storage order (one copy of grad
//    when it is non-dense, never copies of the K inputs).
//
// Determinism: each block reduces its dot products with a fixed-order warp-shuffle tree into
// partial[block, k]; a second kernel sums the rows of each column in a fixed order (strided
// per-thread sums, then the same shuffle tree). The grid depends only on numel, the SM count and
// the compiled kernel's occupancy, so on one GPU model and build grad_w is bit-identical from
// run to run and across processes; no atomics.
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
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/cuda_utils.cuh"
#include "fastdarts.h"

namespace fastdarts {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <typename T>
struct PtrPack {
  T* p[kMaxPtrs];
};

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  // Fixed shuffle pattern: lane 0 ends with ((l0 + l16) + (l8 + l24)) + ..., the same every run.
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sums v[k] over the block for k < NK; the result is valid in thread 0. Fixed order.
template <typename acc_t, int NK>
__device__ __forceinline__ void block_sum(acc_t (&v)[NK]) {
  __shared__ acc_t smem[kWarps][NK];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < NK; ++k) {
    const acc_t s = warp_sum(v[k]);
    if (lane == 0) smem[warp][k] = s;
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < NK; ++k) v[k] = warp_sum(lane < kWarps ? smem[lane][k] : acc_t(0));
  }
}

// Blocks of `kernel` that fit on the device at once (SM count x occupancy), cached per
// (kernel, device): two cudaDevice/Occupancy queries on the first launch, a map lookup after.
template <typename Kernel>
int resident_blocks(Kernel kernel, int device) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> cache;
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto hit = cache.find(key);
  if (hit != cache.end()) return hit->second;
  int sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  const int blocks = std::max(1, sms * std::max(1, per_sm));
  cache.emplace(key, blocks);
  return blocks;
}

inline int grid_for(int64_t work_items, int resident) {
  const int64_t needed = std::max<int64_t>(1, (work_items + kThreads - 1) / kThreads);
  return static_cast<int>(std::min<int64_t>(needed, resident));
}

// Forward over NK candidates, V elements per work item:
//   a = (first chunk ? 0 : acc_in[i]) + sum_k w[k] * xs[k][i]   (in candidate order)
// The last chunk stores a cast to scalar_t into out, earlier chunks store a into acc_out.
template <typename scalar_t, typename acc_t, int NK, int V>
__global__ void __launch_bounds__(kThreads)
    mixed_sum_fwd_kernel(PtrPack<const scalar_t> xs, const acc_t* __restrict__ w, const acc_t* acc_in,
                         acc_t* acc_out, scalar_t* out, int64_t n) {
  using VecT = Vec<scalar_t, V>;
  using VecA = Vec<acc_t, V>;
  acc_t wk[NK];
#pragma unroll
  for (int k = 0; k < NK; ++k) wk[k] = w[k];
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t nvec = n / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < nvec; i += step) {
    // all loads of this work item first
    VecT xv[NK];
#pragma unroll
    for (int k = 0; k < NK; ++k) xv[k] = reinterpret_cast<const VecT*>(xs.p[k])[i];
    VecA a;
    if (acc_in != nullptr) {
      a = reinterpret_cast<const VecA*>(acc_in)[i];
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) a.v[j] = acc_t(0);
    }
#pragma unroll
    for (int k = 0; k < NK; ++k) {
#pragma unroll
      for (int j = 0; j < V; ++j) a.v[j] += wk[k] * static_cast<acc_t>(xv[k].v[j]);
    }
    if (out != nullptr) {
      VecT o;
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = static_cast<scalar_t>(a.v[j]);
      reinterpret_cast<VecT*>(out)[i] = o;
    } else {
      reinterpret_cast<VecA*>(acc_out)[i] = a;
    }
  }
  // scalar tail (n % V elements; none when V == 1)
  for (int64_t i = nvec * V + static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += step) {
    acc_t x[NK];
#pragma unroll
    for (int k = 0; k < NK; ++k) x[k] = static_cast<acc_t>(xs.p[k][i]);
    acc_t a = acc_in != nullptr ? acc_in[i] : acc_t(0);
#pragma unroll
    for (int k = 0; k < NK; ++k) a += wk[k] * x[k];
    if (out != nullptr) {
      out[i] = static_cast<scalar_t>(a);
    } else {
      acc_out[i] = a;
    }
  }
}

// Backward over NK candidates, V elements per work item: gx[k][i] = w[k] * grad[i] where bit k
// of gx_mask is set, and the block's sums of grad[i] * xs[k][i] into partial[blockIdx.x * K + k0 + k].
template <typename scalar_t, typename acc_t, int NK, int V>
__global__ void __launch_bounds__(kThreads)
    mixed_sum_bwd_kernel(const scalar_t* __restrict__ grad, PtrPack<const scalar_t> xs, PtrPack<scalar_t> gx,
                         unsigned gx_mask, const acc_t* __restrict__ w, acc_t* __restrict__ partial, int K, int k0,
                         int64_t n) {
  using VecT = Vec<scalar_t, V>;
  acc_t wk[NK], dot[NK];
#pragma unroll
  for (int k = 0; k < NK; ++k) {
    wk[k] = w[k];
    dot[k] = acc_t(0);
  }
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t nvec = n / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < nvec; i += step) {
    // 1 + NK loads issued back to back, before any store of this work item
    const VecT gv = reinterpret_cast<const VecT*>(grad)[i];
    VecT xv[NK];
#pragma unroll
    for (int k = 0; k < NK; ++k) xv[k] = reinterpret_cast<const VecT*>(xs.p[k])[i];
    acc_t g[V];
#pragma unroll
    for (int j = 0; j < V; ++j) g[j] = static_cast<acc_t>(gv.v[j]);
#pragma unroll
    for (int k = 0; k < NK; ++k) {
#pragma unroll
      for (int j = 0; j < V; ++j) dot[k] += g[j] * static_cast<acc_t>(xv[k].v[j]);
    }
#pragma unroll
    for (int k = 0; k < NK; ++k) {
      if (gx_mask >> k & 1u) {  // uniform over the grid: no divergence
        VecT o;
#pragma unroll
        for (int j = 0; j < V; ++j) o.v[j] = static_cast<scalar_t>(wk[k] * g[j]);
        reinterpret_cast<VecT*>(gx.p[k])[i] = o;
      }
    }
  }
  for (int64_t i = nvec * V + static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += step) {
    const acc_t g = static_cast<acc_t>(grad[i]);
    acc_t x[NK];
#pragma unroll
    for (int k = 0; k < NK; ++k) x[k] = static_cast<acc_t>(xs.p[k][i]);
#pragma unroll
    for (int k = 0; k < NK; ++k) {
      dot[k] += g * x[k];
      if (gx_mask >> k & 1u) gx.p[k][i] = static_cast<scalar_t>(wk[k] * g);
    }
  }
  block_sum<acc_t, NK>(dot);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < NK; ++k) partial[static_cast<int64_t>(blockIdx.x) * K + k0 + k] = dot[k];
  }
}

// grad_w[k] = sum_b partial[b, k]: block k, thread t sums rows t, t + kThreads, ... in order,
// then the fixed shuffle tree (deterministic).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ grad_w, int rows, int K) {
  const int k = blockIdx.x;
  acc_t s[1] = {acc_t(0)};
  for (int b = threadIdx.x; b < rows; b += kThreads) s[0] += partial[static_cast<int64_t>(b) * K + k];
  block_sum<acc_t, 1>(s);
  if (threadIdx.x == 0) grad_w[k] = s[0];
}

// Calls f(std::integral_constant<int, NK>{}) for the runtime nk in 1..kMaxPtrs.
template <typename F>
void dispatch_nk(int nk, F&& f) {
  switch (nk) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: TORCH_INTERNAL_ASSERT(false, "candidates per launch must be 1..", kMaxPtrs, ", got ", nk);
  }
}
static_assert(kMaxPtrs == 8, "dispatch_nk enumerates 1..8");

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
  const int device = xs[0].get_device();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fastdarts::mixed_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = vec_width<scalar_t>();
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
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    // Vector path only when every pointer of every launch is aligned to its vector type.
    bool vec = aligned_to(op, sizeof(Vec<scalar_t, V>)) &&
               (acc == nullptr || aligned_to(acc, sizeof(Vec<acc_t, V>)));
    for (const auto& x : xs) vec = vec && aligned_to(x.const_data_ptr(), sizeof(Vec<scalar_t, V>));
    const acc_t* wp = w.const_data_ptr<acc_t>();
    for (int k0 = 0; k0 < K; k0 += kMaxPtrs) {
      const int nk = std::min(kMaxPtrs, K - k0);
      PtrPack<const scalar_t> pack{};
      for (int k = 0; k < nk; ++k) pack.p[k] = xs[k0 + k].const_data_ptr<scalar_t>();
      const bool first = k0 == 0, last = k0 + nk >= K;
      const acc_t* acc_in = first ? nullptr : acc;
      acc_t* acc_out = last ? nullptr : acc;
      scalar_t* out_p = last ? op : nullptr;
      dispatch_nk(nk, [&](auto nk_c) {
        constexpr int NK = decltype(nk_c)::value;
        if (vec) {
          auto kernel = mixed_sum_fwd_kernel<scalar_t, acc_t, NK, V>;
          kernel<<<grid_for(n / V, resident_blocks(kernel, device)), kThreads, 0, stream>>>(pack, wp + k0, acc_in,
                                                                                             acc_out, out_p, n);
        } else {
          auto kernel = mixed_sum_fwd_kernel<scalar_t, acc_t, NK, 1>;
          kernel<<<grid_for(n, resident_blocks(kernel, device)), kThreads, 0, stream>>>(pack, wp + k0, acc_in,
                                                                                         acc_out, out_p, n);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
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
  // Layout from the inputs: a non-dense grad costs one copy of grad, never copies of the K inputs.
  const auto xs = same_storage_order(xs_in);
  const at::Tensor grad = in_storage_order_of(grad_in, xs[0]);

  std::vector<at::Tensor> grad_xs(K);
  for (int k = 0; k < K; ++k) {
    grad_xs[k] = needs_input_grad.get(k) ? at::empty_like(xs[0]) : at::empty({0}, grad.options());
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
  const int device = grad.get_device();

  const auto dtype = grad.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastdarts::mixed_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = vec_width<scalar_t>();
    constexpr size_t kVecBytes = sizeof(Vec<scalar_t, V>);
    bool vec = aligned_to(grad.const_data_ptr(), kVecBytes);
    for (int k = 0; k < K; ++k) {
      vec = vec && aligned_to(xs[k].const_data_ptr(), kVecBytes);
      if (needs_input_grad.get(k)) vec = vec && aligned_to(grad_xs[k].const_data_ptr(), kVecBytes);
    }
    // One grid for every chunk (sized for the first chunk's kernel), so partial has one row per
    // block and every column is written.
    int blocks = 0;
    dispatch_nk(std::min(kMaxPtrs, K), [&](auto nk_c) {
      constexpr int NK = decltype(nk_c)::value;
      blocks = vec ? grid_for(n / V, resident_blocks(mixed_sum_bwd_kernel<scalar_t, acc_t, NK, V>, device))
                   : grid_for(n, resident_blocks(mixed_sum_bwd_kernel<scalar_t, acc_t, NK, 1>, device));
    });
    at::Tensor partial = at::empty({blocks, K}, grad.options().dtype(acc_type));
    const acc_t* wp = w.const_data_ptr<acc_t>();
    acc_t* pp = partial.mutable_data_ptr<acc_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    for (int k0 = 0; k0 < K; k0 += kMaxPtrs) {
      const int nk = std::min(kMaxPtrs, K - k0);
      PtrPack<const scalar_t> xpack{};
      PtrPack<scalar_t> gpack{};
      unsigned mask = 0;
      for (int k = 0; k < nk; ++k) {
        xpack.p[k] = xs[k0 + k].const_data_ptr<scalar_t>();
        if (needs_input_grad.get(k0 + k)) {
          gpack.p[k] = grad_xs[k0 + k].mutable_data_ptr<scalar_t>();
          mask |= 1u << k;
        }
      }
      dispatch_nk(nk, [&](auto nk_c) {
        constexpr int NK = decltype(nk_c)::value;
        if (vec) {
          mixed_sum_bwd_kernel<scalar_t, acc_t, NK, V>
              <<<blocks, kThreads, 0, stream>>>(gp, xpack, gpack, mask, wp + k0, pp, K, k0, n);
        } else {
          mixed_sum_bwd_kernel<scalar_t, acc_t, NK, 1>
              <<<blocks, kThreads, 0, stream>>>(gp, xpack, gpack, mask, wp + k0, pp, K, k0, n);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    sum_partials_kernel<acc_t><<<K, kThreads, 0, stream>>>(pp, grad_w.mutable_data_ptr<acc_t>(), blocks, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_xs, grad_w};
}

TORCH_LIBRARY_IMPL(fastdarts, CUDA, m) {
  m.impl("mixed_sum", &mixed_sum_cuda);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cuda);
}

}  // namespace fastdarts
