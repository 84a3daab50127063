// CPU kernels of fastdarts::pc_shuffle_cat and fastdarts::pc_shuffle_cat_backward
// (the PC-DARTS partial-channel edge output).
//
// Reference (PyTorch), with Cg = C / k:
//   xb = x[:, Cg:];  if stride == 2: xb = max_pool2d(xb, 2, 2)
//   y  = cat([ya, xb], 1).view(N, k, Cg, Ho, Wo).transpose(1, 2).reshape(N, C, Ho, Wo)
// so out[:, j*k + g] = ya[:, j] for g == 0 and out[:, j*k + g] = pool(x[:, g*Cg + j]) for
// g >= 1. One gather pass writes `out` directly: no cat, no pooled temporary, no shuffle copy.
//
// Max pooling follows PyTorch's max_pool2d tie rule: the first maximum in row-major window
// order wins, and a NaN wins over everything (the last NaN if several).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "fastdarts.h"

namespace fastdarts {
namespace {

// Index (0..3, row-major) of the max_pool2d winner of the 2x2 window whose top-left corner
// is r0[0]; r1 is the row below.
template <typename scalar_t>
inline int window_argmax(const scalar_t* r0, const scalar_t* r1) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t v[4] = {static_cast<acc_t>(r0[0]), static_cast<acc_t>(r0[1]), static_cast<acc_t>(r1[0]),
                      static_cast<acc_t>(r1[1])};
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  int arg = 0;
  for (int i = 0; i < 4; ++i) {
    if (v[i] > best || std::isnan(v[i])) {
      best = v[i];
      arg = i;
    }
  }
  return arg;
}

}  // namespace

at::Tensor pc_shuffle_cat_cpu(const at::Tensor& x_in, const at::Tensor& ya_in, int64_t k, int64_t stride) {
  const PcShape s = check_pc_args(x_in, k, stride, "fastdarts::pc_shuffle_cat");
  check_pc_ya(x_in, ya_in, s, "fastdarts::pc_shuffle_cat");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor ya = ya_in.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options());
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastdarts::pc_shuffle_cat_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yap = ya.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t plane_in = s.H * s.W, plane_out = s.Ho * s.Wo;
    // One task = one output channel plane.
    at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / s.C, co = p % s.C;
        const int64_t j = co / k, g = co % k;
        scalar_t* dst = op + p * plane_out;
        if (g == 0) {
          std::memcpy(dst, yap + (n * s.Cg + j) * plane_out, plane_out * sizeof(scalar_t));
          continue;
        }
        const scalar_t* src = xp + (n * s.C + g * s.Cg + j) * plane_in;
        if (stride == 1) {
          std::memcpy(dst, src, plane_out * sizeof(scalar_t));
          continue;
        }
        for (int64_t h = 0; h < s.Ho; ++h) {
          const scalar_t* r0 = src + (2 * h) * s.W;
          const scalar_t* r1 = r0 + s.W;
          for (int64_t w = 0; w < s.Wo; ++w) {
            const int a = window_argmax(r0 + 2 * w, r1 + 2 * w);
            dst[h * s.Wo + w] = (a < 2 ? r0 : r1)[2 * w + (a & 1)];
          }
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pc_shuffle_cat_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                               int64_t k, int64_t stride) {
  const PcShape s = check_pc_args(x_in, k, stride, "fastdarts::pc_shuffle_cat_backward");
  check_pc_grad(x_in, grad_in, s, "fastdarts::pc_shuffle_cat_backward");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_x = at::empty({s.N, s.C, s.H, s.W}, x.options());
  at::Tensor grad_ya = at::empty({s.N, s.Cg, s.Ho, s.Wo}, x.options());

  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastdarts::pc_shuffle_cat_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* gyap = grad_ya.mutable_data_ptr<scalar_t>();
    const int64_t plane_in = s.H * s.W, plane_out = s.Ho * s.Wo;
    const scalar_t zero = static_cast<scalar_t>(0);

    // grad_ya[:, j] = grad[:, j*k]
    at::parallel_for(0, s.N * s.Cg, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / s.Cg, j = p % s.Cg;
        if (plane_out > 0) {
          std::memcpy(gyap + p * plane_out, gp + (n * s.C + j * k) * plane_out, plane_out * sizeof(scalar_t));
        }
      }
    });

    // grad_x: zero for channels [0, Cg); bypass channel c = g*Cg + j receives grad[:, j*k + g]
    // (stride 1) or that gradient routed to each window's argmax (stride 2).
    at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / s.C, c = p % s.C;
        scalar_t* dst = gxp + p * plane_in;
        if (c < s.Cg) {
          std::fill(dst, dst + plane_in, zero);
          continue;
        }
        const int64_t g = c / s.Cg, j = c % s.Cg;
        const scalar_t* gsrc = gp + (n * s.C + j * k + g) * plane_out;
        if (stride == 1) {
          std::memcpy(dst, gsrc, plane_in * sizeof(scalar_t));
          continue;
        }
        const scalar_t* src = xp + p * plane_in;
        for (int64_t h = 0; h < s.Ho; ++h) {
          const scalar_t* r0 = src + (2 * h) * s.W;
          const scalar_t* r1 = r0 + s.W;
          scalar_t* d0 = dst + (2 * h) * s.W;
          scalar_t* d1 = d0 + s.W;
          for (int64_t w = 0; w < s.Wo; ++w) {
            const int a = window_argmax(r0 + 2 * w, r1 + 2 * w);
            const scalar_t gv = gsrc[h * s.Wo + w];
            d0[2 * w] = a == 0 ? gv : zero;
            d0[2 * w + 1] = a == 1 ? gv : zero;
            d1[2 * w] = a == 2 ? gv : zero;
            d1[2 * w + 1] = a == 3 ? gv : zero;
          }
          if (s.W & 1) {  // odd width: the last column is never pooled
            d0[s.W - 1] = zero;
            d1[s.W - 1] = zero;
          }
        }
        if (s.H & 1) std::fill(dst + (s.H - 1) * s.W, dst + plane_in, zero);  // odd height: last row
      }
    });
  });
  return {grad_x, grad_ya};
}

TORCH_LIBRARY_IMPL(fastdarts, CPU, m) {
  m.impl("pc_shuffle_cat", &pc_shuffle_cat_cpu);
  m.impl("pc_shuffle_cat_backward", &pc_shuffle_cat_backward_cpu);
}

}  // namespace fastdarts
