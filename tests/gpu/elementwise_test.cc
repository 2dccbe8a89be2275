// Device tests of the row-wise kernels against the fp32 CPU reference (cpu_ops.h) or plain loops.
#include "sals/kernels/elementwise.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "engine/backend/cpu/cpu_ops.h"
#include "sals/kernels/paged_kv.h"
#include "tests/gpu/test_util.h"

namespace sals::kernels::gpu_test {
namespace {

class ActivationTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { RequireDevice(); }
  DType dtype() const { return GetParam(); }
};

TEST_P(ActivationTest, EmbeddingGatherCopiesRowsAndZeroesBadIds) {
  auto rng = FreshRng();
  const int64_t vocab = 1001;
  for (int hidden : {1, 3, 8, 4096, 4100}) {
    for (int num_tokens : {1, 17, 300}) {
      SCOPED_TRACE(::testing::Message() << "hidden=" << hidden << " tokens=" << num_tokens);
      const Tensor16 table = RandomTensor(rng, dtype(), vocab * hidden, -2.0f, 2.0f);
      std::uniform_int_distribution<int32_t> id(0, vocab - 1);
      std::vector<int32_t> tokens(num_tokens);
      for (int32_t& t : tokens) t = id(rng);
      tokens[0] = static_cast<int32_t>(vocab - 1);
      if (num_tokens > 2) {
        tokens[1] = -1;
        tokens[2] = static_cast<int32_t>(vocab);
      }
      auto d_table = ToDevice(table.bits);
      auto d_tokens = ToDevice(tokens);
      auto d_out = PoisonedBuffer16(static_cast<size_t>(num_tokens) * hidden);
      SALS_ASSERT_OK(EmbeddingGather(dtype(), d_table.get(), vocab, hidden, d_tokens.get(),
                                     num_tokens, d_out.get(), nullptr));
      const std::vector<uint16_t> out = ToHost(d_out);
      for (int t = 0; t < num_tokens; ++t) {
        const bool valid = tokens[t] >= 0 && tokens[t] < vocab;
        for (int i = 0; i < hidden; ++i) {
          const uint16_t want = valid ? table.bits[static_cast<size_t>(tokens[t]) * hidden + i] : 0;
          ASSERT_EQ(out[static_cast<size_t>(t) * hidden + i], want)
              << "token " << t << " dim " << i;
        }
      }
    }
  }
}

TEST_P(ActivationTest, RmsNormMatchesReference) {
  auto rng = FreshRng();
  for (int n : {1, 7, 64, 4096, 5000}) {
    for (int rows : {1, 3, 67}) {
      for (bool in_place : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "n=" << n << " rows=" << rows << " in_place=" << in_place);
        const Tensor16 x = RandomTensor(rng, dtype(), static_cast<size_t>(rows) * n, -3.0f, 3.0f);
        const Tensor16 w = RandomTensor(rng, dtype(), n, 0.5f, 1.5f);
        std::vector<float> want(x.values.size());
        cpu::RmsNorm(x.values.data(), w.values.data(), rows, n, 1e-5f, want.data());
        auto d_x = ToDevice(x.bits);
        auto d_w = ToDevice(w.bits);
        auto d_y = PoisonedBuffer16(x.bits.size());
        uint16_t* y = in_place ? d_x.get() : d_y.get();
        SALS_ASSERT_OK(RmsNorm(dtype(), d_x.get(), d_w.get(), rows, n, 1e-5f, y, nullptr));
        const std::vector<float> got = DecodeAll(dtype(), ToHost(in_place ? d_x : d_y));
        ExpectClose(got, want, 1e-6f, Eps(dtype()), "RmsNorm");
      }
    }
  }
}

TEST_P(ActivationTest, AddRmsNormUpdatesResidualAndNormalizes) {
  auto rng = FreshRng();
  for (int n : {1, 7, 64, 4096, 5000}) {
    for (int rows : {1, 3, 67}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " rows=" << rows);
      const size_t size = static_cast<size_t>(rows) * n;
      const Tensor16 x = RandomTensor(rng, dtype(), size, -3.0f, 3.0f);
      const Tensor16 res = RandomTensor(rng, dtype(), size, -3.0f, 3.0f);
      const Tensor16 w = RandomTensor(rng, dtype(), n, 0.5f, 1.5f);
      std::vector<uint16_t> want_res(size);
      std::vector<float> want_res_values(size);
      for (size_t i = 0; i < size; ++i) {
        want_res[i] = Encode(dtype(), x.values[i] + res.values[i]);
        want_res_values[i] = Decode(dtype(), want_res[i]);
      }
      std::vector<float> want(size);
      cpu::RmsNorm(want_res_values.data(), w.values.data(), rows, n, 1e-6f, want.data());
      auto d_x = ToDevice(x.bits);
      auto d_res = ToDevice(res.bits);
      auto d_w = ToDevice(w.bits);
      // y aliases x, the way a layer normalizes its sublayer output in place.
      SALS_ASSERT_OK(AddRmsNorm(dtype(), d_res.get(), d_x.get(), d_w.get(), rows, n, 1e-6f,
                                d_x.get(), nullptr));
      EXPECT_EQ(ToHost(d_res), want_res);
      ExpectClose(DecodeAll(dtype(), ToHost(d_x)), want, 1e-6f, Eps(dtype()), "AddRmsNorm");
    }
  }
}

TEST_P(ActivationTest, RopeRotatesQAndKAtTheirPositions) {
  auto rng = FreshRng();
  struct Case {
    int tokens, heads, kv_heads, head_dim;
    double theta;
  };
  for (const Case& c : {Case{1, 4, 4, 12, 1e4}, Case{5, 8, 2, 16, 1e4}, Case{33, 32, 8, 128, 5e5},
                        Case{7, 6, 2, 64, 1e4}, Case{3, 2, 1, 32, 1e6}}) {
    SCOPED_TRACE(::testing::Message() << "tokens=" << c.tokens << " heads=" << c.heads << "/"
                                      << c.kv_heads << " head_dim=" << c.head_dim);
    const int width = (c.heads + 2 * c.kv_heads) * c.head_dim;
    const int stride = width + 5;  // rows of a wider buffer: the padding must stay untouched
    const Tensor16 qkv = RandomTensor(rng, dtype(), static_cast<size_t>(c.tokens) * stride, -2, 2);
    std::vector<int32_t> positions(c.tokens);
    std::uniform_int_distribution<int32_t> pos_dist(0, 40000);
    for (int32_t& p : positions) p = pos_dist(rng);
    positions[0] = c.tokens > 1 ? 0 : 40000;
    std::vector<double> inv_freq(c.head_dim / 2);
    std::vector<float> inv_freq_f(inv_freq.size());
    for (size_t i = 0; i < inv_freq.size(); ++i) {
      inv_freq[i] = std::pow(c.theta, -2.0 * static_cast<double>(i) / c.head_dim);
      inv_freq_f[i] = static_cast<float>(inv_freq[i]);
    }
    std::vector<float> want = qkv.values;
    std::vector<float> tol(want.size(), 0.0f);
    for (int t = 0; t < c.tokens; ++t) {
      float* row = want.data() + static_cast<size_t>(t) * stride;
      cpu::ApplyRope(row, c.heads + c.kv_heads, c.head_dim, inv_freq, positions[t]);
      // Output rounding, plus the fp32 angle's error (about angle * 2^-23, see elementwise.h)
      // times the pair's magnitude.
      const int half = c.head_dim / 2;
      for (int h = 0; h < c.heads + c.kv_heads; ++h) {
        for (int i = 0; i < half; ++i) {
          const size_t a = static_cast<size_t>(t) * stride + h * c.head_dim + i;
          const float mag = std::fabs(qkv.values[a]) + std::fabs(qkv.values[a + half]);
          const float angle_err = static_cast<float>(positions[t] * inv_freq[i]) * 3e-7f + 1e-6f;
          tol[a] = Eps(dtype()) * std::fabs(want[a]) + angle_err * mag + 1e-6f;
          tol[a + half] = Eps(dtype()) * std::fabs(want[a + half]) + angle_err * mag + 1e-6f;
        }
      }
    }
    auto d_qkv = ToDevice(qkv.bits);
    auto d_pos = ToDevice(positions);
    auto d_inv = ToDevice(inv_freq_f);
    SALS_ASSERT_OK(ApplyRopeQk(dtype(), d_qkv.get(), c.tokens, stride, c.heads, c.kv_heads,
                               c.head_dim, d_pos.get(), d_inv.get(), nullptr));
    const std::vector<uint16_t> got_bits = ToHost(d_qkv);
    size_t bad = 0;
    for (size_t i = 0; i < got_bits.size(); ++i) {
      if (tol[i] == 0.0f) {
        if (got_bits[i] != qkv.bits[i]) ++bad;  // v and padding: untouched
      } else if (!(std::fabs(Decode(dtype(), got_bits[i]) - want[i]) <= tol[i])) {
        ++bad;
      }
    }
    EXPECT_EQ(bad, 0u);
  }
}

TEST_P(ActivationTest, SiluMulMatchesReference) {
  auto rng = FreshRng();
  for (int inter : {1, 11, 64, 14336}) {
    for (int rows : {1, 9, 130}) {
      SCOPED_TRACE(::testing::Message() << "inter=" << inter << " rows=" << rows);
      const Tensor16 gu = RandomTensor(rng, dtype(), static_cast<size_t>(rows) * 2 * inter, -8, 8);
      std::vector<float> want(static_cast<size_t>(rows) * inter);
      for (int r = 0; r < rows; ++r) {
        const float* g = gu.values.data() + static_cast<size_t>(r) * 2 * inter;
        cpu::SiluMul(g, g + inter, inter, want.data() + static_cast<size_t>(r) * inter);
      }
      auto d_gu = ToDevice(gu.bits);
      auto d_out = PoisonedBuffer16(want.size());
      SALS_ASSERT_OK(SiluMul(dtype(), d_gu.get(), rows, inter, d_out.get(), nullptr));
      ExpectClose(DecodeAll(dtype(), ToHost(d_out)), want, 1e-6f, Eps(dtype()), "SiluMul");
    }
  }
}

TEST_P(ActivationTest, WriteKvCacheScattersRowsIntoSlots) {
  auto rng = FreshRng();
  struct Case {
    int tokens, heads, kv_heads, head_dim, block_size, num_blocks;
  };
  for (const Case& c : {Case{1, 4, 1, 12, 16, 3}, Case{37, 32, 8, 128, 16, 40},
                        Case{20, 8, 8, 64, 7, 9}, Case{5, 4, 2, 16, 1, 11}}) {
    SCOPED_TRACE(::testing::Message() << "tokens=" << c.tokens << " kv_heads=" << c.kv_heads
                                      << " head_dim=" << c.head_dim << " bs=" << c.block_size);
    const int row = c.kv_heads * c.head_dim;
    const int stride = (c.heads + 2 * c.kv_heads) * c.head_dim;
    const size_t pool_rows = static_cast<size_t>(c.num_blocks) * c.block_size;
    const Tensor16 qkv = RandomTensor(rng, dtype(), static_cast<size_t>(c.tokens) * stride, -4, 4);
    // The pool starts as random f16 values: slots not written must keep them.
    const Tensor16 k_pool = RandomTensor(rng, DType::kF16, pool_rows * row, -1, 1);
    const Tensor16 v_pool = RandomTensor(rng, DType::kF16, pool_rows * row, -1, 1);
    std::vector<int64_t> all_slots(pool_rows);
    std::iota(all_slots.begin(), all_slots.end(), 0);
    std::shuffle(all_slots.begin(), all_slots.end(), rng);
    std::vector<int64_t> slots(all_slots.begin(), all_slots.begin() + c.tokens);
    if (c.tokens > 3) slots[2] = -1;  // padding token
    std::vector<uint16_t> want_k = k_pool.bits;
    std::vector<uint16_t> want_v = v_pool.bits;
    for (int t = 0; t < c.tokens; ++t) {
      if (slots[t] < 0) continue;
      for (int i = 0; i < row; ++i) {
        const size_t src = static_cast<size_t>(t) * stride + c.heads * c.head_dim + i;
        want_k[slots[t] * row + i] = Encode(DType::kF16, qkv.values[src]);
        want_v[slots[t] * row + i] = Encode(DType::kF16, qkv.values[src + row]);
      }
    }
    auto d_qkv = ToDevice(qkv.bits);
    auto d_k = ToDevice(k_pool.bits);
    auto d_v = ToDevice(v_pool.bits);
    auto d_slots = ToDevice(slots);
    const uint16_t* k_src = d_qkv.get() + c.heads * c.head_dim;
    SALS_ASSERT_OK(WriteKvCache(dtype(), k_src, k_src + row, stride, c.tokens, c.kv_heads,
                                c.head_dim, d_slots.get(), reinterpret_cast<__half*>(d_k.get()),
                                reinterpret_cast<__half*>(d_v.get()), nullptr));
    EXPECT_EQ(ToHost(d_k), want_k);
    EXPECT_EQ(ToHost(d_v), want_v);
  }
}

TEST_P(ActivationTest, RejectsF32Activations) {
  EXPECT_EQ(RmsNorm(DType::kF32, nullptr, nullptr, 1, 8, 1e-5f, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ActivationTest, ::testing::Values(DType::kF16, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

class ArgmaxTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { RequireDevice(); }
};

TEST_P(ArgmaxTest, FindsFirstLargestIgnoringNan) {
  const DType dtype = GetParam();
  auto rng = FreshRng();
  for (int vocab : {1, 7, 1000, 32000, 128256}) {
    for (int rows : {1, 5, 33}) {
      SCOPED_TRACE(::testing::Message() << "vocab=" << vocab << " rows=" << rows);
      std::uniform_real_distribution<float> dist(-20.0f, 20.0f);
      std::uniform_int_distribution<int> pick(0, vocab - 1);
      std::vector<float> values(static_cast<size_t>(rows) * vocab);
      for (float& v : values) v = dist(rng);
      for (int r = 0; r < rows; ++r) {
        float* row = values.data() + static_cast<size_t>(r) * vocab;
        if (r % 2 == 0) {  // a tie for the maximum: the first index wins
          const int a = pick(rng);
          const int b = pick(rng);
          row[a] = 30.0f;
          row[b] = 30.0f;
        }
        if (r % 3 == 1) row[pick(rng)] = std::numeric_limits<float>::quiet_NaN();
        if (r == rows - 1 && rows > 1) std::fill(row, row + vocab, -INFINITY);
      }
      std::vector<uint16_t> bits;
      if (dtype != DType::kF32) {
        bits.resize(values.size());
        for (size_t i = 0; i < values.size(); ++i) {
          bits[i] = Encode(dtype, values[i]);
          values[i] = Decode(dtype, bits[i]);
        }
      }
      std::vector<int32_t> want(rows);
      for (int r = 0; r < rows; ++r) {
        const float* row = values.data() + static_cast<size_t>(r) * vocab;
        int best = 0;
        for (int i = 0; i < vocab; ++i) {
          if (row[i] > row[best] || std::isnan(row[best])) best = i;
        }
        want[r] = best;
      }
      DeviceBuffer<float> d_f32;
      DeviceBuffer<uint16_t> d_16;
      const void* logits = nullptr;
      if (dtype == DType::kF32) {
        d_f32 = ToDevice(values);
        logits = d_f32.get();
      } else {
        d_16 = ToDevice(bits);
        logits = d_16.get();
      }
      auto d_out = ValueOrDie(DeviceBuffer<int32_t>::Allocate(rows));
      SALS_CUDA_CHECK(cudaMemset(d_out.get(), 0xff, d_out.bytes()));
      SALS_ASSERT_OK(ArgmaxRows(dtype, logits, rows, vocab, d_out.get(), nullptr));
      EXPECT_EQ(ToHost(d_out), want);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ArgmaxTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

}  // namespace
}  // namespace sals::kernels::gpu_test
