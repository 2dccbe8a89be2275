// Device test of WriteKvCacheFp8 against the CPU reference (engine/kv/fp8_quant.h): codes and
// scales bit for bit, for f16 and bf16 sources, GQA and MHA head counts, rows of very different
// magnitude (subnormal codes, scales near fp16's ends), padding slots and slots left untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "engine/kv/fp8_quant.h"
#include "sals/kernels/paged_kv.h"
#include "tests/gpu/test_util.h"

namespace sals::kernels::gpu_test {
namespace {

struct Shape {
  DType dtype;
  int num_kv_heads;
  int head_dim;
};

TEST(KvFp8WriteTest, MatchesTheCpuReferenceBitForBit) {
  RequireDevice();
  std::mt19937_64 rng = FreshRng();
  for (const Shape& s :
       {Shape{DType::kF16, 8, 128}, Shape{DType::kBF16, 8, 128}, Shape{DType::kF16, 2, 64},
        Shape{DType::kBF16, 32, 128}, Shape{DType::kF16, 1, 40}}) {
    SCOPED_TRACE(testing::Message()
                 << DTypeName(s.dtype) << " heads " << s.num_kv_heads << " x " << s.head_dim);
    const int tokens = 37, slots_total = 64;
    const int row = s.num_kv_heads * s.head_dim;
    const int stride = row + 24;  // as inside a fused qkv buffer
    Tensor16 k = RandomTensor(rng, s.dtype, static_cast<size_t>(tokens) * stride, -1, 1);
    Tensor16 v = RandomTensor(rng, s.dtype, static_cast<size_t>(tokens) * stride, -1, 1);
    // Rows of different magnitude: per token and head, times 2^-12 .. 2^12; one all-zero row.
    std::uniform_int_distribution<int> exp(-12, 12);
    for (int t = 0; t < tokens; ++t) {
      for (int h = 0; h < s.num_kv_heads; ++h) {
        const float mk = std::ldexp(1.0f, exp(rng)), mv = std::ldexp(1.0f, exp(rng));
        for (int i = 0; i < s.head_dim; ++i) {
          const size_t at = static_cast<size_t>(t) * stride + h * s.head_dim + i;
          const float kx = (t == 3 && h == 0) ? 0.0f : k.values[at] * mk;
          k.bits[at] = Encode(s.dtype, kx);
          k.values[at] = Decode(s.dtype, k.bits[at]);
          v.bits[at] = Encode(s.dtype, v.values[at] * mv);
          v.values[at] = Decode(s.dtype, v.bits[at]);
        }
      }
    }
    std::vector<int64_t> slots(tokens);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    for (int64_t& slot : slots) slot += 5;  // slots 0-4 are never written
    slots[7] = -1;                          // padding

    const size_t codes = static_cast<size_t>(slots_total) * row;
    const size_t scales = static_cast<size_t>(slots_total) * s.num_kv_heads;
    auto k_codes = ValueOrDie(DeviceBuffer<uint8_t>::Allocate(codes));
    auto v_codes = ValueOrDie(DeviceBuffer<uint8_t>::Allocate(codes));
    SALS_CUDA_CHECK(cudaMemset(k_codes.get(), 0xaa, codes));
    SALS_CUDA_CHECK(cudaMemset(v_codes.get(), 0xaa, codes));
    DeviceBuffer<uint16_t> k_scales = PoisonedBuffer16(scales);
    DeviceBuffer<uint16_t> v_scales = PoisonedBuffer16(scales);
    auto k_dev = ToDevice(k.bits), v_dev = ToDevice(v.bits);
    auto slots_dev = ToDevice(slots);
    PagedKvCacheFp8Pools pools;
    pools.k_codes = k_codes.get();
    pools.v_codes = v_codes.get();
    pools.k_scales = reinterpret_cast<__half*>(k_scales.get());
    pools.v_scales = reinterpret_cast<__half*>(v_scales.get());
    SALS_ASSERT_OK(WriteKvCacheFp8(s.dtype, k_dev.get(), v_dev.get(), stride, tokens,
                                   s.num_kv_heads, s.head_dim, slots_dev.get(), pools, nullptr));
    const std::vector<uint8_t> kc = ToHost(k_codes), vc = ToHost(v_codes);
    const std::vector<uint16_t> ks = ToHost(k_scales), vs = ToHost(v_scales);

    std::vector<uint8_t> want(s.head_dim);
    int mismatches = 0;
    for (int t = 0; t < tokens; ++t) {
      if (slots[t] < 0) continue;
      for (int h = 0; h < s.num_kv_heads; ++h) {
        const size_t src = static_cast<size_t>(t) * stride + h * s.head_dim;
        const size_t dst_row = static_cast<size_t>(slots[t]) * s.num_kv_heads + h;
        for (int side = 0; side < 2; ++side) {
          const std::vector<float>& x = side == 0 ? k.values : v.values;
          const uint16_t scale = QuantizeFp8Row(x.data() + src, s.head_dim, want.data());
          const std::vector<uint8_t>& got = side == 0 ? kc : vc;
          const std::vector<uint16_t>& got_scale = side == 0 ? ks : vs;
          if (got_scale[dst_row] != scale ||
              !std::equal(want.begin(), want.end(), got.begin() + dst_row * s.head_dim)) {
            if (++mismatches <= 5) {
              ADD_FAILURE() << (side == 0 ? "K" : "V") << " token " << t << " head " << h
                            << ": scale " << got_scale[dst_row] << " want " << scale;
            }
          }
        }
      }
    }
    EXPECT_EQ(mismatches, 0);
    // Untouched slots (0-4, and the padding token's none) keep their poison.
    for (size_t i = 0; i < static_cast<size_t>(5) * row; ++i) ASSERT_EQ(kc[i], 0xaa) << i;
    for (size_t i = 0; i < static_cast<size_t>(5) * s.num_kv_heads; ++i) {
      ASSERT_EQ(vs[i], 0xffff) << i;
    }
  }
}

TEST(KvFp8WriteTest, RefusesBadShapesByName) {
  RequireDevice();
  PagedKvCacheFp8Pools pools;
  const absl::Status st =
      WriteKvCacheFp8(DType::kF16, nullptr, nullptr, 64 * 33, 1, 33, 64, nullptr, pools, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("WriteKvCacheFp8"), std::string::npos) << st;
}

}  // namespace
}  // namespace sals::kernels::gpu_test
