// Device tests of the SALS storage writers against the CPU reference: latent keys against
// U^T k_pre in double, value codes/scales/zeros bit-exact against sals::QuantizeValues, and
// the exact-store copies; skipped tokens and untouched slots keep their poison.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "engine/kv/value_quant.h"
#include "sals/kernels/sals_kv.h"
#include "tests/gpu/test_util.h"

namespace sals::kernels::gpu_test {
namespace {

struct WriteCase {
  DType dtype;
  int num_kv_heads;
  int head_dim;
  int rank;
  int bits;
  int group_size;
};

std::string CaseName(const WriteCase& c) {
  return std::string(DTypeName(c.dtype)) + "_kv" + std::to_string(c.num_kv_heads) + "_d" +
         std::to_string(c.head_dim) + "_r" + std::to_string(c.rank) + "_b" +
         std::to_string(c.bits) + "_g" + std::to_string(c.group_size);
}

class SalsWriteTest : public ::testing::TestWithParam<WriteCase> {
 protected:
  void SetUp() override { RequireDevice(); }
};

// Writes num_tokens tokens (the tiled projection above kFewTokens = 8, the decode-sized one up to
// it) and checks every output against the reference.
void CheckWrite(const WriteCase& p, int num_tokens) {
  SCOPED_TRACE(::testing::Message() << num_tokens << " tokens");
  auto rng = FreshRng();
  const int width = p.num_kv_heads * p.head_dim;
  const int64_t basis_stride = p.rank + 8;  // a basis wider than the stored rank
  const int num_slots = 83;
  const int sequences = 5;
  const int sinks = 4;
  const int recent = 8;
  const int64_t row_stride = 3 * width + 5;  // odd: rows of a fused qkv buffer

  SalsKvCache host_shape;
  host_shape.num_kv_heads = p.num_kv_heads;
  host_shape.head_dim = p.head_dim;
  host_shape.rank = p.rank;
  host_shape.value_bits = p.bits;
  host_shape.value_group_size = p.group_size;
  host_shape.sink_tokens = sinks;
  host_shape.recent_tokens = recent;
  const int64_t code_bytes = host_shape.code_bytes();
  const int groups = host_shape.groups();

  // Distinct slots in random order, a few tokens skipped; exact rows likewise.
  std::vector<int64_t> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(num_tokens);
  std::vector<int64_t> exact_rows(sequences * (sinks + recent));
  std::iota(exact_rows.begin(), exact_rows.end(), 0);
  std::shuffle(exact_rows.begin(), exact_rows.end(), rng);
  exact_rows.resize(num_tokens);
  for (int t : {0, 17, 44}) {
    if (t < num_tokens) slots[t] = -1;
  }
  for (int t : {3, 17}) {
    if (t < num_tokens) exact_rows[t] = -1;
  }

  const Tensor16 basis = RandomTensor(rng, DType::kF16, width * basis_stride, -0.5f, 0.5f);
  const Tensor16 k_pre = RandomTensor(rng, p.dtype, num_tokens * row_stride, -2.0f, 2.0f);
  const Tensor16 k_post = RandomTensor(rng, p.dtype, num_tokens * row_stride, -2.0f, 2.0f);
  const Tensor16 v = RandomTensor(rng, p.dtype, num_tokens * row_stride, -2.0f, 2.0f);

  auto d_basis = ToDevice(basis.bits);
  auto d_k_pre = ToDevice(k_pre.bits);
  auto d_k_post = ToDevice(k_post.bits);
  auto d_v = ToDevice(v.bits);
  auto d_slots = ToDevice(slots);
  auto d_exact_rows = ToDevice(exact_rows);
  auto d_latent = PoisonedBuffer16(static_cast<size_t>(num_slots) * p.rank);
  const size_t code_total = static_cast<size_t>(num_slots) * code_bytes;
  auto d_codes = ValueOrDie(DeviceBuffer<uint8_t>::Allocate(code_total));
  SALS_CUDA_CHECK(cudaMemset(d_codes.get(), 0xa5, code_total));
  auto d_scale_zero = PoisonedBuffer16(std::max<size_t>(1, size_t{2} * num_slots * groups));
  const size_t exact_total = static_cast<size_t>(sequences) * (sinks + recent) * width;
  auto d_exact_k = PoisonedBuffer16(exact_total);
  auto d_exact_v = PoisonedBuffer16(exact_total);

  SalsKvCache cache = host_shape;
  cache.latent = reinterpret_cast<__half*>(d_latent.get());
  cache.value_codes = d_codes.get();
  cache.value_scale_zero = reinterpret_cast<__half2*>(d_scale_zero.get());
  cache.exact_k = reinterpret_cast<__half*>(d_exact_k.get());
  cache.exact_v = reinterpret_cast<__half*>(d_exact_v.get());
  cache.basis = reinterpret_cast<const __half*>(d_basis.get());
  cache.basis_stride = basis_stride;
  cache.block_size = 16;

  SALS_ASSERT_OK(SalsWriteLatentValues(p.dtype, cache, d_k_pre.get(), d_v.get(), row_stride,
                                       num_tokens, d_slots.get(), nullptr));
  SALS_ASSERT_OK(SalsWriteExact(p.dtype, cache, d_k_post.get(), d_v.get(), row_stride, num_tokens,
                                d_exact_rows.get(), nullptr));

  // Latent keys: U^T k_pre in double; the device sums in fp32 and rounds once to fp16.
  const std::vector<uint16_t> latent = ToHost(d_latent);
  std::vector<bool> written(num_slots, false);
  for (int t = 0; t < num_tokens; ++t) {
    if (slots[t] < 0) continue;
    written[slots[t]] = true;
    for (int j = 0; j < p.rank; ++j) {
      double want = 0.0;
      double magnitude = 0.0;
      for (int i = 0; i < width; ++i) {
        const double term = static_cast<double>(basis.values[i * basis_stride + j]) *
                            k_pre.values[t * row_stride + i];
        want += term;
        magnitude += std::fabs(term);
      }
      const float got = Decode(DType::kF16, latent[slots[t] * p.rank + j]);
      ASSERT_NEAR(got, want, 0x1p-11 * std::fabs(want) + 2e-5 * magnitude + 1e-7)
          << "token " << t << " dim " << j;
    }
  }
  for (int s = 0; s < num_slots; ++s) {
    if (written[s]) continue;
    for (int j = 0; j < p.rank; ++j) ASSERT_EQ(latent[s * p.rank + j], 0xffff) << "slot " << s;
  }

  // Values: bit-exact against the reference quantizer fed the fp16-rounded values.
  const std::vector<uint8_t> codes = ToHost(d_codes);
  const std::vector<uint16_t> scale_zero = ToHost(d_scale_zero);
  const ValueQuantSpec spec{p.bits, p.group_size};
  for (int t = 0; t < num_tokens; ++t) {
    if (slots[t] < 0) continue;
    std::vector<float> row(width);
    for (int i = 0; i < width; ++i) {
      row[i] = Decode(DType::kF16, Encode(DType::kF16, v.values[t * row_stride + i]));
    }
    const int64_t slot = slots[t];
    if (p.bits == 16) {
      for (int i = 0; i < width; ++i) {
        uint16_t got = 0;
        std::memcpy(&got, codes.data() + slot * code_bytes + 2 * i, 2);
        ASSERT_EQ(got, Encode(DType::kF16, row[i])) << "token " << t << " value " << i;
      }
      continue;
    }
    std::vector<uint8_t> want_codes(code_bytes);
    std::vector<uint16_t> want_scales(groups);
    std::vector<uint16_t> want_zeros(groups);
    QuantizeValues(row.data(), width, spec, want_codes.data(), want_scales.data(),
                   want_zeros.data());
    for (int64_t i = 0; i < code_bytes; ++i) {
      ASSERT_EQ(codes[slot * code_bytes + i], want_codes[i]) << "token " << t << " byte " << i;
    }
    for (int g = 0; g < groups; ++g) {
      ASSERT_EQ(scale_zero[2 * (slot * groups + g)], want_scales[g]) << "token " << t;
      ASSERT_EQ(scale_zero[2 * (slot * groups + g) + 1], want_zeros[g]) << "token " << t;
    }
  }
  for (int s = 0; s < num_slots; ++s) {
    if (written[s]) continue;
    for (int64_t i = 0; i < code_bytes; ++i) ASSERT_EQ(codes[s * code_bytes + i], 0xa5);
  }

  // Exact store: k_post and v rounded to fp16, rows named by exact_rows only.
  const std::vector<uint16_t> exact_k = ToHost(d_exact_k);
  const std::vector<uint16_t> exact_v = ToHost(d_exact_v);
  std::vector<int> row_token(sequences * (sinks + recent), -1);
  for (int t = 0; t < num_tokens; ++t) {
    if (exact_rows[t] >= 0) row_token[exact_rows[t]] = t;
  }
  for (size_t r = 0; r < row_token.size(); ++r) {
    for (int i = 0; i < width; ++i) {
      const int t = row_token[r];
      const uint16_t want_k =
          t < 0 ? 0xffff : Encode(DType::kF16, k_post.values[t * row_stride + i]);
      const uint16_t want_v = t < 0 ? 0xffff : Encode(DType::kF16, v.values[t * row_stride + i]);
      ASSERT_EQ(exact_k[r * width + i], want_k) << "row " << r << " dim " << i;
      ASSERT_EQ(exact_v[r * width + i], want_v) << "row " << r << " dim " << i;
    }
  }
}

TEST_P(SalsWriteTest, MatchesReference) {
  for (int num_tokens : {45, 8, 3, 1}) CheckWrite(GetParam(), num_tokens);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SalsWriteTest,
                         ::testing::Values(WriteCase{DType::kF16, 4, 128, 128, 4, 32},
                                           WriteCase{DType::kBF16, 8, 128, 128, 2, 32},
                                           WriteCase{DType::kF16, 2, 64, 32, 16, 32},
                                           WriteCase{DType::kBF16, 1, 64, 8, 4, 64},
                                           WriteCase{DType::kF16, 3, 64, 48, 2, 16},
                                           WriteCase{DType::kBF16, 1, 128, 16, 2, 128}),
                         [](const auto& info) { return CaseName(info.param); });

TEST(SalsWriteValidation, RefusesBadShapes) {
  SalsKvCache cache;
  EXPECT_FALSE(ValidateSalsKvCache(cache).ok());
  cache.num_kv_heads = 2;
  cache.head_dim = 64;
  cache.block_size = 16;
  cache.rank = 12;  // not a multiple of 8
  cache.basis_stride = 16;
  EXPECT_FALSE(ValidateSalsKvCache(cache).ok());
}

}  // namespace
}  // namespace sals::kernels::gpu_test
