// Shared by the decode and prefill attention kernels: the one place where run-time shapes become
// template parameters, argument checks, and the tensor-core primitives.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "device_utils.cuh"
#include "sals/kernels/attention.h"

namespace sals::kernels::internal {

inline constexpr float kLog2e = 1.4426950408889634f;

// Calls f.template operator()<T, kHeadDim, kGroup>() for the activation type, head dim and GQA
// group; every other value is refused here, loudly, and nowhere else.
template <typename F>
absl::Status DispatchAttention(const char* what, DType dtype, int head_dim, int group, F&& f) {
  return DispatchActivation(dtype, what, [&]<typename T>(T) -> absl::Status {
    auto with_head_dim = [&]<int kHeadDim>() -> absl::Status {
      switch (group) {
        case 1:
          return f.template operator()<T, kHeadDim, 1>();
        case 2:
          return f.template operator()<T, kHeadDim, 2>();
        case 4:
          return f.template operator()<T, kHeadDim, 4>();
        case 8:
          return f.template operator()<T, kHeadDim, 8>();
      }
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": unsupported GQA group ", group, " (have 1, 2, 4, 8)"));
    };
    switch (head_dim) {
      case 12:
        return with_head_dim.template operator()<12>();
      case 16:
        return with_head_dim.template operator()<16>();
      case 32:
        return with_head_dim.template operator()<32>();
      case 64:
        return with_head_dim.template operator()<64>();
      case 128:
        return with_head_dim.template operator()<128>();
    }
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": unsupported head_dim ", head_dim, " (have 12, 16, 32, 64, 128)"));
  });
}

inline absl::Status ValidateAttention(const char* what, const PagedKvCache& cache, int batch,
                                      int num_heads) {
  if (cache.k == nullptr || cache.v == nullptr || cache.block_tables == nullptr ||
      cache.kv_lens == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null cache pointer"));
  }
  if (batch < 0 || batch > 65535 || cache.num_kv_heads <= 0 || cache.num_kv_heads > 65535 ||
      num_heads <= 0 || num_heads % cache.num_kv_heads != 0 || cache.block_size <= 0 ||
      cache.block_size > 65536 || cache.block_table_stride < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": bad shape batch=", batch, " heads=", num_heads, "/", cache.num_kv_heads,
        " block_size=", cache.block_size, " block_table_stride=", cache.block_table_stride));
  }
  return absl::OkStatus();
}

__device__ __forceinline__ uint32_t PackHalf2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// D += A B, m16n8k16, f16 inputs, f32 accumulators (PTX ISA fragment layouts).
__device__ __forceinline__ void MmaF16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <bool kTrans>
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const __half* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  }
}

// Asynchronous global->shared copy of kBytes (4, 8 or 16); zero-fills instead when !valid.
template <int kBytes>
__device__ __forceinline__ void CpAsync(void* smem, const void* gmem, bool valid) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(addr), "l"(gmem),
               "n"(kBytes), "r"(valid ? kBytes : 0));
}

__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

}  // namespace sals::kernels::internal
