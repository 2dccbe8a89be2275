#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "engine/model/safetensors.h"
#include "engine/model/weight_source.h"
#include "tests/engine/model/test_files.h"

namespace sals {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

ModelConfig Gqa() {
  ModelConfig c;
  c.architecture = "MistralForCausalLM";
  c.vocab_size = 100;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 3;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 16;  // q width 128 != hidden
  return c;
}

const WeightSpec* FindSpec(const std::vector<WeightSpec>& specs, const std::string& name) {
  for (const WeightSpec& s : specs) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

TEST(LlamaWeightSpecsTest, NamesAndShapes) {
  const ModelConfig c = Gqa();
  const std::vector<WeightSpec> specs = LlamaWeightSpecs(c);
  ASSERT_EQ(specs.size(), 1u + 9u * 3u + 1u + 1u);
  std::set<std::string> names;
  for (const WeightSpec& s : specs) names.insert(s.name);
  EXPECT_EQ(names.size(), specs.size());

  auto shape = [&](const std::string& name) {
    const WeightSpec* s = FindSpec(specs, name);
    EXPECT_NE(s, nullptr) << name;
    return s == nullptr ? std::vector<int64_t>{} : s->shape;
  };
  EXPECT_THAT(shape("model.embed_tokens.weight"), ElementsAre(100, 64));
  EXPECT_THAT(shape("model.layers.2.input_layernorm.weight"), ElementsAre(64));
  EXPECT_THAT(shape("model.layers.2.self_attn.q_proj.weight"), ElementsAre(128, 64));
  EXPECT_THAT(shape("model.layers.2.self_attn.k_proj.weight"), ElementsAre(32, 64));
  EXPECT_THAT(shape("model.layers.2.self_attn.v_proj.weight"), ElementsAre(32, 64));
  EXPECT_THAT(shape("model.layers.2.self_attn.o_proj.weight"), ElementsAre(64, 128));
  EXPECT_THAT(shape("model.layers.2.post_attention_layernorm.weight"), ElementsAre(64));
  EXPECT_THAT(shape("model.layers.2.mlp.gate_proj.weight"), ElementsAre(96, 64));
  EXPECT_THAT(shape("model.layers.2.mlp.up_proj.weight"), ElementsAre(96, 64));
  EXPECT_THAT(shape("model.layers.2.mlp.down_proj.weight"), ElementsAre(64, 96));
  EXPECT_THAT(shape("model.norm.weight"), ElementsAre(64));
  EXPECT_THAT(shape("lm_head.weight"), ElementsAre(100, 64));
  EXPECT_EQ(FindSpec(specs, "model.layers.3.input_layernorm.weight"), nullptr);
  EXPECT_EQ(FindSpec(specs, "model.layers.0.self_attn.q_proj.bias"), nullptr);
}

TEST(LlamaWeightSpecsTest, TiedEmbeddingsHaveNoLmHead) {
  ModelConfig c = Gqa();
  c.tie_word_embeddings = true;
  const std::vector<WeightSpec> specs = LlamaWeightSpecs(c);
  EXPECT_EQ(specs.size(), 1u + 9u * 3u + 1u);
  EXPECT_EQ(FindSpec(specs, "lm_head.weight"), nullptr);
  EXPECT_NE(FindSpec(specs, "model.embed_tokens.weight"), nullptr);
}

TEST(ValidateLlamaWeightsTest, RandomWeightsAreValid) {
  const ModelConfig c = Gqa();
  EXPECT_TRUE(ValidateLlamaWeights(c, *MakeRandomWeights(c, 0)).ok());
  // Weights made for another shape are not.
  ModelConfig other = c;
  other.intermediate_size = 80;
  absl::Status s = ValidateLlamaWeights(other, *MakeRandomWeights(c, 0));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("model.layers.0.mlp.gate_proj.weight"));
}

// Writes every spec'd tensor of `c` (fp16 zeros), with `skip` left out and `reshape` given a
// wrong shape, into dir/model.safetensors.
void WriteModel(const ModelConfig& c, const std::filesystem::path& dir, const std::string& skip,
                const std::string& reshape) {
  std::vector<std::vector<uint16_t>> storage;
  std::vector<TensorToWrite> tensors;
  const std::vector<WeightSpec> specs = LlamaWeightSpecs(c);
  storage.reserve(specs.size());
  for (const WeightSpec& s : specs) {
    if (s.name == skip) continue;
    std::vector<int64_t> shape = s.shape;
    if (s.name == reshape) shape.back() += 1;
    size_t n = 1;
    for (int64_t d : shape) n *= d;
    storage.emplace_back(n);
    tensors.push_back({s.name, DType::kF16, shape, sals::testing::Bytes(storage.back())});
  }
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", tensors).ok());
}

TEST(ValidateLlamaWeightsTest, ReportsMissingAndMisshapenTensorsWithTheFile) {
  const ModelConfig c = Gqa();
  sals::testing::TempDir dir;
  const std::string file = (dir / "model.safetensors").string();

  WriteModel(c, dir.path(), "", "");
  auto w = OpenSafetensorsWeights(dir.path());
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(ValidateLlamaWeights(c, **w).ok());

  WriteModel(c, dir.path(), "model.layers.1.self_attn.v_proj.weight", "");
  w = OpenSafetensorsWeights(dir.path());
  ASSERT_TRUE(w.ok()) << w.status();
  absl::Status s = ValidateLlamaWeights(c, **w);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("'model.layers.1.self_attn.v_proj.weight'"), HasSubstr(file)));

  WriteModel(c, dir.path(), "", "model.layers.2.mlp.down_proj.weight");
  w = OpenSafetensorsWeights(dir.path());
  ASSERT_TRUE(w.ok()) << w.status();
  s = ValidateLlamaWeights(c, **w);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'model.layers.2.mlp.down_proj.weight'"),
                                 HasSubstr(file), HasSubstr("[64, 97]"), HasSubstr("[64, 96]")));

  // A tied config accepts a file without lm_head; an untied one does not.
  WriteModel(c, dir.path(), "lm_head.weight", "");
  w = OpenSafetensorsWeights(dir.path());
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(ValidateLlamaWeights(c, **w).code(), absl::StatusCode::kNotFound);
  ModelConfig tied = c;
  tied.tie_word_embeddings = true;
  EXPECT_TRUE(ValidateLlamaWeights(tied, **w).ok());
}

TEST(SyntheticModelConfigTest, KnownShapes) {
  absl::StatusOr<ModelConfig> tiny = SyntheticModelConfig("tiny");
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->vocab_size, 512);
  EXPECT_EQ(tiny->hidden_size, 128);
  EXPECT_EQ(tiny->num_layers, 2);
  EXPECT_EQ(tiny->num_heads, 4);
  EXPECT_EQ(tiny->num_kv_heads, 2);
  EXPECT_EQ(tiny->head_dim, 32);
  EXPECT_EQ(tiny->intermediate_size, 256);
  EXPECT_EQ(tiny->max_position_embeddings, 4096);

  absl::StatusOr<ModelConfig> l2 = SyntheticModelConfig("llama-2-7b");
  ASSERT_TRUE(l2.ok());
  EXPECT_EQ(l2->vocab_size, 32000);
  EXPECT_EQ(l2->intermediate_size, 11008);
  EXPECT_EQ(l2->num_kv_heads, 32);
  EXPECT_EQ(l2->head_dim, 128);
  EXPECT_EQ(l2->rope_scaling.type, RopeScalingType::kNone);
  EXPECT_DOUBLE_EQ(l2->rms_norm_eps, 1e-5);

  absl::StatusOr<ModelConfig> l3 = SyntheticModelConfig("llama-3.1-8b");
  ASSERT_TRUE(l3.ok());
  EXPECT_EQ(l3->vocab_size, 128256);
  EXPECT_EQ(l3->intermediate_size, 14336);
  EXPECT_EQ(l3->num_kv_heads, 8);
  EXPECT_DOUBLE_EQ(l3->rope_theta, 500000.0);
  EXPECT_EQ(l3->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(l3->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(l3->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(l3->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(l3->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(l3->max_position_embeddings, 131072);
  EXPECT_EQ(l3->bos_token_id, 128000);
  EXPECT_THAT(l3->eos_token_ids, ElementsAre(128001, 128008, 128009));

  for (const ModelConfig* c : {&*tiny, &*l2, &*l3}) {
    EXPECT_EQ(c->num_heads % c->num_kv_heads, 0);
    EXPECT_EQ(c->q_width(), c->hidden_size);
    EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  }
}

TEST(SyntheticModelConfigTest, UnknownNameListsKnownOnes) {
  absl::StatusOr<ModelConfig> c = SyntheticModelConfig("gpt-2");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), AllOf(HasSubstr("gpt-2"), HasSubstr("tiny"),
                                          HasSubstr("llama-2-7b"), HasSubstr("llama-3.1-8b")));
}

}  // namespace
}  // namespace sals
