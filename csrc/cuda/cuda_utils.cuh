// Small device helpers shared by the CUDA kernels of fastdarts (header-only, nvcc only).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastdarts {

// V consecutive elements, aligned so that one load / store instruction moves them all.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Elements per 16-byte vector (4 fp32, 8 fp16 / bf16, 2 fp64).
template <typename T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));
}

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace fastdarts
