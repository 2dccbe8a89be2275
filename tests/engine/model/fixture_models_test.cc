// The checked-in fixture models (tools/fixtures) load and validate. A missing fixture directory
// fails loudly rather than skipping, so a broken checkout cannot pass silently.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "engine/model/config.h"
#include "engine/model/safetensors.h"
#include "engine/model/weight_source.h"

namespace sals {
namespace {

struct Fixture {
  std::string name;
  std::string architecture;
  std::string dtype;    // config's dtype
  std::string weights;  // the file holding embed_tokens, relative to the directory
  bool tied;
  RopeScalingType rope;
};

void PrintTo(const Fixture& f, std::ostream* os) { *os << f.name; }

class FixtureModelTest : public ::testing::TestWithParam<Fixture> {};

TEST_P(FixtureModelTest, LoadsConfigAndValidatesWeights) {
  const Fixture& f = GetParam();
  const std::filesystem::path dir = std::filesystem::path(SALS_FIXTURES_DIR) / f.name;
  ASSERT_TRUE(std::filesystem::is_directory(dir))
      << "fixture model directory " << dir << " is missing; regenerate it (tools/fixtures)";

  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, f.architecture);
  EXPECT_EQ(config->torch_dtype, f.dtype);
  EXPECT_EQ(config->tie_word_embeddings, f.tied);
  EXPECT_EQ(config->rope_scaling.type, f.rope);

  absl::StatusOr<std::unique_ptr<WeightSource>> weights = OpenSafetensorsWeights(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  absl::Status valid = ValidateLlamaWeights(*config, **weights);
  EXPECT_TRUE(valid.ok()) << valid;
  EXPECT_EQ((*weights)->Has("lm_head.weight"), !f.tied);

  // Stored in the flavour's dtype, read back as finite fp32.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir / f.weights);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* embed = (*file)->Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  const char* expected_dtype = f.dtype == "float32" ? "F32" : f.dtype == "float16" ? "F16" : "BF16";
  EXPECT_EQ(embed->dtype_name, expected_dtype);
  std::vector<float> values(static_cast<size_t>(config->vocab_size) * config->hidden_size);
  ASSERT_TRUE((*weights)
                  ->ReadF32("model.embed_tokens.weight",
                            std::vector<int64_t>{config->vocab_size, config->hidden_size}, values)
                  .ok());
  double sum_sq = 0;
  for (float v : values) {
    ASSERT_TRUE(std::isfinite(v));
    sum_sq += static_cast<double>(v) * v;
  }
  EXPECT_GT(sum_sq, 0.0);

  // The reference outputs hold I32 token ids next to F32 logits.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> ref =
      SafetensorsFile::Open(dir / "reference.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_FALSE((*ref)->tensors().empty());
}

INSTANTIATE_TEST_SUITE_P(
    Flavours, FixtureModelTest,
    ::testing::Values(Fixture{"llama2-mha", "LlamaForCausalLM", "float32", "model.safetensors",
                              false, RopeScalingType::kNone},
                      Fixture{"mistral-gqa", "MistralForCausalLM", "bfloat16",
                              "model-00001-of-00003.safetensors", false, RopeScalingType::kNone},
                      Fixture{"llama31-bpe", "LlamaForCausalLM", "float16", "model.safetensors",
                              true, RopeScalingType::kLlama3}),
    [](const ::testing::TestParamInfo<Fixture>& info) {
      std::string name = info.param.name;
      for (char& c : name) {
        if (c == '-') c = '_';
      }
      return name;
    });

}  // namespace
}  // namespace sals
