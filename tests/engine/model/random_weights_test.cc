#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "engine/model/weight_source.h"

namespace sals {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

ModelConfig Tiny() {
  absl::StatusOr<ModelConfig> c = SyntheticModelConfig("tiny");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

std::vector<float> Read(const WeightSource& w, const std::string& name,
                        std::vector<int64_t> shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> out(n);
  absl::Status s = w.ReadF32(name, shape, out);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

struct Stats {
  double mean = 0, std = 0;
};
Stats Moments(const std::vector<float>& v) {
  double sum = 0, sq = 0;
  for (float x : v) sum += x;
  const double mean = sum / v.size();
  for (float x : v) sq += (x - mean) * (x - mean);
  return {mean, std::sqrt(sq / v.size())};
}

TEST(RandomWeightsTest, DeterministicPerNameAndSeed) {
  const ModelConfig c = Tiny();
  auto w1 = MakeRandomWeights(c, 7);
  auto w2 = MakeRandomWeights(c, 7);
  const std::vector<int64_t> q = {c.q_width(), c.hidden_size};
  // Read order does not matter: w2 reads other tensors first.
  Read(*w2, "model.layers.1.self_attn.k_proj.weight", {c.kv_width(), c.hidden_size});
  Read(*w2, "model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  const std::vector<float> a = Read(*w1, "model.layers.0.self_attn.q_proj.weight", q);
  EXPECT_EQ(a, Read(*w2, "model.layers.0.self_attn.q_proj.weight", q));
  EXPECT_EQ(a, Read(*w1, "model.layers.0.self_attn.q_proj.weight", q));
  EXPECT_NE(a, Read(*w1, "model.layers.1.self_attn.q_proj.weight", q));
  EXPECT_NE(a, Read(*MakeRandomWeights(c, 8), "model.layers.0.self_attn.q_proj.weight", q));
}

// Element i depends only on (name, seed, i): a larger tensor of the same name (generated in
// chunks over several threads) starts with exactly the smaller one's values, odd sizes included.
TEST(RandomWeightsTest, ValuesDoNotDependOnShapeOrThreading) {
  ModelConfig small = Tiny();
  small.vocab_size = 3;
  small.hidden_size = 5;  // odd element counts (head_dim stays as set)
  ModelConfig big = small;
  big.vocab_size = 600001;  // 3M values: several chunks and threads
  const std::vector<float> a =
      Read(*MakeRandomWeights(small, 3), "model.embed_tokens.weight", {3, 5});
  const std::vector<float> b =
      Read(*MakeRandomWeights(big, 3), "model.embed_tokens.weight", {600001, 5});
  ASSERT_EQ(b.size(), 3000005u);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin()));
  EXPECT_EQ(b, Read(*MakeRandomWeights(big, 3), "model.embed_tokens.weight", {600001, 5}));
  const Stats s = Moments(b);
  EXPECT_NEAR(s.mean, 0.0, 0.003);
  EXPECT_NEAR(s.std, 1.0, 0.003);
}

TEST(RandomWeightsTest, RoughStatistics) {
  ModelConfig c = Tiny();
  c.hidden_size = 512;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.intermediate_size = 1024;
  c.num_layers = 4;
  auto w = MakeRandomWeights(c, 1);
  const int64_t h = c.hidden_size;
  struct Case {
    std::string name;
    std::vector<int64_t> shape;
    double mean, std;
  };
  const Case cases[] = {
      {"model.embed_tokens.weight", {c.vocab_size, h}, 0.0, 1.0},
      {"model.layers.0.input_layernorm.weight", {h}, 1.0, 0.02},
      {"model.layers.3.post_attention_layernorm.weight", {h}, 1.0, 0.02},
      {"model.norm.weight", {h}, 1.0, 0.02},
      {"model.layers.0.self_attn.q_proj.weight", {c.q_width(), h}, 0.0, 1.0 / std::sqrt(h)},
      {"model.layers.1.self_attn.k_proj.weight", {c.kv_width(), h}, 0.0, 1.0 / std::sqrt(h)},
      {"model.layers.2.self_attn.v_proj.weight", {c.kv_width(), h}, 0.0, 1.0 / std::sqrt(h)},
      {"model.layers.0.self_attn.o_proj.weight",
       {h, c.q_width()},
       0.0,
       1.0 / std::sqrt(c.q_width() * 2.0 * c.num_layers)},
      {"model.layers.0.mlp.gate_proj.weight", {c.intermediate_size, h}, 0.0, 1.0 / std::sqrt(h)},
      {"model.layers.0.mlp.up_proj.weight", {c.intermediate_size, h}, 0.0, 1.0 / std::sqrt(h)},
      {"model.layers.0.mlp.down_proj.weight",
       {h, c.intermediate_size},
       0.0,
       1.0 / std::sqrt(c.intermediate_size * 2.0 * c.num_layers)},
      {"lm_head.weight", {c.vocab_size, h}, 0.0, 1.0 / std::sqrt(h)},
  };
  for (const Case& k : cases) {
    const std::vector<float> v = Read(*w, k.name, k.shape);
    const Stats s = Moments(v);
    // Loose bounds: ~5 standard errors for the smallest (512-value) tensors.
    const double se = k.std / std::sqrt(static_cast<double>(v.size()));
    EXPECT_NEAR(s.mean, k.mean, 5 * se + 1e-6) << k.name;
    EXPECT_NEAR(s.std, k.std, 0.1 * k.std) << k.name;
    float max_abs_dev = 0;
    for (float x : v) max_abs_dev = std::max(max_abs_dev, std::abs(x - static_cast<float>(k.mean)));
    EXPECT_LT(max_abs_dev, 7 * k.std) << k.name;  // Box-Muller from 24-bit uniforms: < 5.8 std
  }
}

TEST(RandomWeightsTest, HalfPrecisionReadsRoundTheF32Values) {
  const ModelConfig c = Tiny();
  auto w = MakeRandomWeights(c, 5);
  const std::vector<int64_t> shape = {c.intermediate_size, c.hidden_size};
  const std::vector<float> f32 = Read(*w, "model.layers.0.mlp.up_proj.weight", shape);
  std::vector<uint16_t> half(f32.size());
  ASSERT_TRUE(w->Read("model.layers.0.mlp.up_proj.weight", shape, DType::kF16,
                      std::as_writable_bytes(std::span(half)))
                  .ok());
  for (size_t i = 0; i < f32.size(); ++i) ASSERT_EQ(half[i], F32ToF16(f32[i])) << i;
  ASSERT_TRUE(w->Read("model.layers.0.mlp.up_proj.weight", shape, DType::kBF16,
                      std::as_writable_bytes(std::span(half)))
                  .ok());
  for (size_t i = 0; i < f32.size(); ++i) ASSERT_EQ(half[i], F32ToBf16(f32[i])) << i;
}

TEST(RandomWeightsTest, ChecksNamesShapesAndSizes) {
  ModelConfig c = Tiny();
  c.tie_word_embeddings = true;
  auto w = MakeRandomWeights(c, 0);
  EXPECT_TRUE(w->Has("model.layers.1.mlp.down_proj.weight"));
  EXPECT_FALSE(w->Has("model.layers.2.mlp.down_proj.weight"));
  EXPECT_FALSE(w->Has("lm_head.weight"));  // tied
  std::vector<float> out(c.hidden_size);
  absl::Status s = w->ReadF32("lm_head.weight", std::vector<int64_t>{1, c.hidden_size}, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'lm_head.weight'"), HasSubstr("random weights")));
  std::vector<float> longer(c.hidden_size + 1);
  s = w->ReadF32("model.norm.weight", std::vector<int64_t>{c.hidden_size + 1}, longer);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("'model.norm.weight'"), HasSubstr("[128]"), HasSubstr("[129]")));
  s = w->ReadF32("model.norm.weight", std::vector<int64_t>{c.hidden_size},
                 std::span(out).first(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(w->Check("model.norm.weight", std::vector<int64_t>{c.hidden_size}).ok());
}

// Resident memory of this process, from /proc/self/statm (0 where unreadable).
int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size_pages = 0;
  int64_t resident_pages = 0;
  if (!(statm >> size_pages >> resident_pages)) return 0;
  return resident_pages * sysconf(_SC_PAGESIZE);
}

// An 8B-sized model is never materialized: creating it costs no memory (it would take 32 GB as
// fp32), and a tensor is generated only when read. (How fast is bench material, not a test's.)
TEST(RandomWeightsTest, LargeModelsAreGeneratedOnlyWhenRead) {
  absl::StatusOr<ModelConfig> c = SyntheticModelConfig("llama-3.1-8b");
  ASSERT_TRUE(c.ok());
  const int64_t before = ResidentBytes();
  ASSERT_GT(before, 0) << "cannot read /proc/self/statm";
  auto w = MakeRandomWeights(*c, 0);
  EXPECT_LT(ResidentBytes() - before, int64_t{64} << 20);
  const std::vector<int64_t> shape = {c->intermediate_size, c->hidden_size};
  std::vector<float> out(shape[0] * shape[1]);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(w->ReadF32("model.layers.31.mlp.gate_proj.weight", shape, out).ok());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("generated %zu values in %.3f s (%.0f M values/s)\n", out.size(), seconds,
              out.size() / seconds / 1e6);
  const Stats s = Moments(out);
  EXPECT_NEAR(s.std, 1.0 / std::sqrt(c->hidden_size), 1e-4);
}

}  // namespace
}  // namespace sals
