#include "engine/model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/engine/model/test_files.h"

namespace sals {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

// Verbatim from the Hugging Face hub (meta-llama/Llama-2-7b-hf).
constexpr char kLlama2[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

// mistralai/Mistral-7B-v0.1.
constexpr char kMistral[] = R"({
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

// meta-llama/Llama-3.1-8B-Instruct.
constexpr char kLlama31[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 128256
})";

// Llama-3.2-1B as transformers 5 writes it: rope_parameters, dtype, explicit head_dim, tied.
constexpr char kLlama32Transformers5[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 128000,
  "dtype": "bfloat16",
  "eos_token_id": 128001,
  "head_dim": 64,
  "hidden_size": 2048,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rope_type": "llama3"
  },
  "tie_word_embeddings": true,
  "transformers_version": "5.0.0",
  "vocab_size": 128256
})";

constexpr char kSource[] = "/models/x/config.json";

TEST(ConfigTest, ParsesLlama2) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(kLlama2, kSource);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 11008);
  EXPECT_EQ(c->num_layers, 32);
  EXPECT_EQ(c->num_heads, 32);
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(c->max_position_embeddings, 4096);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->sliding_window.has_value());
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2));
  EXPECT_EQ(c->torch_dtype, "float16");
  EXPECT_EQ(c->q_width(), 4096);
  EXPECT_EQ(c->kv_width(), 4096);
  EXPECT_EQ(c->group_size(), 1);
}

TEST(ConfigTest, ParsesMistral) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(kMistral, kSource);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "MistralForCausalLM");
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->kv_width(), 1024);
  EXPECT_EQ(c->group_size(), 4);
  EXPECT_EQ(c->intermediate_size, 14336);
  EXPECT_EQ(c->max_position_embeddings, 32768);
  EXPECT_EQ(c->sliding_window, 4096);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
}

TEST(ConfigTest, ParsesLlama31WithLlama3Scaling) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(kLlama31, kSource);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(128001, 128008, 128009));
}

TEST(ConfigTest, ParsesTransformers5RopeParametersAndDtype) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(kLlama32Transformers5, kSource);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->q_width(), 2048);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(128001));
  EXPECT_EQ(c->torch_dtype, "bfloat16");
}

// Applies `edit` to a parsed copy of `base` and parses the result.
template <typename Edit>
absl::StatusOr<ModelConfig> ParseEdited(const char* base, Edit edit) {
  json j = json::parse(base);
  edit(j);
  return ParseModelConfig(j.dump(), kSource);
}

TEST(ConfigTest, DefaultsForOptionalKeys) {
  absl::StatusOr<ModelConfig> c = ParseEdited(kLlama2, [](json& j) {
    for (const char* key : {"num_key_value_heads", "rope_scaling", "rope_theta", "rms_norm_eps",
                            "tie_word_embeddings", "bos_token_id", "eos_token_id", "torch_dtype",
                            "max_position_embeddings"}) {
      j.erase(key);
    }
    j["head_dim"] = nullptr;
    j["sliding_window"] = nullptr;
  });
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kNone);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);  // LlamaConfig's default
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->sliding_window.has_value());
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->torch_dtype, "");
}

// sliding_window as transformers reads it: MistralConfig's default (4096) for an absent key, none
// for null; LlamaConfig has no window at all.
TEST(ConfigTest, SlidingWindowFollowsTransformers) {
  auto window_of = [](const char* base, auto edit) {
    absl::StatusOr<ModelConfig> c = ParseEdited(base, edit);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->sliding_window : std::optional<int>(-1);
  };
  EXPECT_EQ(window_of(kMistral, [](json& j) { j.erase("sliding_window"); }), 4096);
  EXPECT_EQ(window_of(kMistral, [](json& j) { j["sliding_window"] = nullptr; }), std::nullopt);
  EXPECT_EQ(window_of(kMistral, [](json& j) { j["sliding_window"] = 2048; }), 2048);
  EXPECT_EQ(window_of(kLlama2, [](json& j) { j["sliding_window"] = 2048; }), std::nullopt);
  // Mistral's window is still checked.
  for (json bad : {json("4096"), json(0)}) {
    EXPECT_FALSE(ParseEdited(kMistral, [&](json& j) { j["sliding_window"] = bad; }).ok()) << bad;
  }
}

// Keys that change the math: accepted at the values we implement, refused otherwise.
TEST(ConfigTest, BiasesAndActivationsWeDoNotImplementAreRefused) {
  absl::StatusOr<ModelConfig> ok = ParseEdited(kLlama2, [](json& j) {
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
    j["hidden_act"] = "silu";
  });
  EXPECT_TRUE(ok.ok()) << ok.status();
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    absl::StatusOr<ModelConfig> c = ParseEdited(kLlama2, [&](json& j) { j[key] = true; });
    ASSERT_FALSE(c.ok()) << key;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(key));
  }
  absl::StatusOr<ModelConfig> gelu =
      ParseEdited(kMistral, [](json& j) { j["hidden_act"] = "gelu_pytorch_tanh"; });
  ASSERT_FALSE(gelu.ok());
  EXPECT_THAT(std::string(gelu.status().message()), HasSubstr("gelu_pytorch_tanh"));
}

// Every key transformers writes into a Llama or Mistral config.json (the fixtures' configs are
// transformers 5's to_dict of LlamaConfig and MistralConfig) is classified: implemented (a
// non-default value changes the parsed config), refused (a value we do not implement fails naming
// the key), or irrelevant to the math (any value parses to the same config). A key transformers
// adds later fails here until it is classified.
TEST(ConfigTest, EveryTransformersKeyIsImplementedRefusedOrIrrelevant) {
  enum Kind { kImplemented, kRefused, kIrrelevant };
  struct Key {
    Kind kind;
    json value;            // implemented: a value the config must reflect; refused: one we refuse
    json other = nullptr;  // implemented: the value to use where `value` is the fixture's own
  };
  const std::map<std::string, Key> keys = {
      {"vocab_size", {kImplemented, 1001, 1002}},
      {"hidden_size", {kImplemented, 128, 192}},
      {"intermediate_size", {kImplemented, 173, 174}},
      {"num_hidden_layers", {kImplemented, 2, 5}},
      {"num_attention_heads", {kImplemented, 2}},
      {"num_key_value_heads", {kImplemented, 1, 2}},
      {"head_dim", {kImplemented, 32, 48}},
      {"max_position_embeddings", {kImplemented, 1024, 1025}},
      {"rms_norm_eps", {kImplemented, 1e-3, 1e-4}},
      {"rope_theta", {kImplemented, 5e5, 2e4}},
      {"rope_scaling",
       {kImplemented,
        {{"rope_type", "llama3"},
         {"factor", 8.0},
         {"low_freq_factor", 1.0},
         {"high_freq_factor", 4.0},
         {"original_max_position_embeddings", 1024}},
        {{"rope_type", "llama3"},
         {"factor", 16.0},
         {"low_freq_factor", 1.0},
         {"high_freq_factor", 4.0},
         {"original_max_position_embeddings", 1024}}}},
      {"tie_word_embeddings", {kImplemented, true, false}},
      {"bos_token_id", {kImplemented, 7, 9}},
      {"eos_token_id", {kImplemented, 8, 10}},
      {"sliding_window", {kImplemented, 512, 256}},  // Mistral; LlamaConfig has no window
      {"hidden_act", {kRefused, "gelu"}},
      {"attention_bias", {kRefused, true}},
      {"mlp_bias", {kRefused, true}},
      {"initializer_range", {kIrrelevant, 0.5}},  // training only
      {"use_cache", {kIrrelevant, false}},        // a generate() switch
      {"pad_token_id", {kIrrelevant, 3}},         // batching in transformers, not the model
      {"attention_dropout", {kIrrelevant, 0.1}},  // off at inference
      {"pretraining_tp", {kIrrelevant, 2}},       // the same products, sliced
      {"dtype", {kIrrelevant, "float16"}},        // informational: the weights carry theirs
      {"model_type", {kIrrelevant, "llama"}},
      {"transformers_version", {kIrrelevant, "9.9.9"}},
  };
  auto summary = [](const ModelConfig& c) {
    return json{c.architecture,
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
                c.rms_norm_eps,
                c.rope_theta,
                static_cast<int>(c.rope_scaling.type),
                c.rope_scaling.factor,
                c.rope_scaling.low_freq_factor,
                c.rope_scaling.high_freq_factor,
                c.rope_scaling.original_max_position_embeddings,
                c.max_position_embeddings,
                c.tie_word_embeddings,
                c.sliding_window.value_or(-1),
                c.bos_token_id,
                c.eos_token_ids}
        .dump();
  };
  for (const char* fixture : {"llama2-mha", "llama31-bpe", "mistral-gqa"}) {
    SCOPED_TRACE(fixture);
    std::ifstream in(std::filesystem::path(SALS_FIXTURES_DIR) / fixture / "config.json");
    const json base = json::parse(in);
    const absl::StatusOr<ModelConfig> parsed = ParseModelConfig(base.dump(), kSource);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    const bool mistral = parsed->architecture == "MistralForCausalLM";
    for (const auto& [name, value] : base.items()) {
      if (name == "architectures") continue;  // the one key that picks the model class
      auto it = keys.find(name);
      ASSERT_NE(it, keys.end()) << "config key '" << name << "' is not classified";
      json edited = base;
      edited[name] = it->second.value == base[name] ? it->second.other : it->second.value;
      if (name == "num_attention_heads") edited["num_key_value_heads"] = 1;
      const absl::StatusOr<ModelConfig> c = ParseModelConfig(edited.dump(), kSource);
      switch (it->second.kind) {
        case kImplemented:
          ASSERT_TRUE(c.ok()) << name << ": " << c.status();
          if (name != "sliding_window" || mistral) {
            EXPECT_NE(summary(*c), summary(*parsed)) << name << " changed nothing";
          } else {
            EXPECT_EQ(summary(*c), summary(*parsed)) << "Llama has no sliding window";
          }
          break;
        case kRefused:
          ASSERT_FALSE(c.ok()) << name;
          EXPECT_THAT(std::string(c.status().message()), HasSubstr(name));
          break;
        case kIrrelevant:
          ASSERT_TRUE(c.ok()) << name << ": " << c.status();
          EXPECT_EQ(summary(*c), summary(*parsed)) << name;
          break;
      }
    }
  }
}

TEST(ConfigTest, ExplicitHeadDimOverridesHiddenOverHeads) {
  absl::StatusOr<ModelConfig> c = ParseEdited(kMistral, [](json& j) { j["head_dim"] = 96; });
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 96);
  EXPECT_EQ(c->q_width(), 32 * 96);
}

TEST(ConfigTest, DefaultRopeTypeMeansNoScaling) {
  for (const char* key : {"rope_type", "type"}) {
    absl::StatusOr<ModelConfig> c = ParseEdited(kLlama31, [&](json& j) {
      j["rope_scaling"] = {{key, "default"}};
    });
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kNone);
  }
  absl::StatusOr<ModelConfig> c = ParseEdited(kLlama31, [](json& j) {
    j.erase("rope_scaling");
    j.erase("rope_theta");
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1234.5}};
  });
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kNone);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1234.5);
}

TEST(ConfigTest, LegacyTypeKeyForLlama3Scaling) {
  absl::StatusOr<ModelConfig> c = ParseEdited(kLlama31, [](json& j) {
    j["rope_scaling"].erase("rope_type");
    j["rope_scaling"]["type"] = "llama3";
  });
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeScalingType::kLlama3);
}

TEST(ConfigTest, BadJson) {
  for (const char* text : {"", "{", "{\"vocab_size\": 1,}", "not json", "[1, 2"}) {
    absl::StatusOr<ModelConfig> c = ParseModelConfig(text, kSource);
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), AllOf(HasSubstr(kSource), HasSubstr("invalid JSON")));
  }
  absl::StatusOr<ModelConfig> c = ParseModelConfig("[1, 2]", kSource);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), AllOf(HasSubstr(kSource), HasSubstr("JSON object")));
}

struct ErrorCase {
  const char* name;
  std::function<void(json&)> edit;
  std::string key;  // the key the message must name
};

TEST(ConfigTest, ErrorsNameTheFileAndKey) {
  const std::vector<ErrorCase> cases = {
      {"missing vocab", [](json& j) { j.erase("vocab_size"); }, "'vocab_size'"},
      {"missing hidden", [](json& j) { j.erase("hidden_size"); }, "'hidden_size'"},
      {"missing inter", [](json& j) { j.erase("intermediate_size"); }, "'intermediate_size'"},
      {"missing layers", [](json& j) { j.erase("num_hidden_layers"); }, "'num_hidden_layers'"},
      {"missing heads", [](json& j) { j.erase("num_attention_heads"); }, "'num_attention_heads'"},
      {"null heads", [](json& j) { j["num_attention_heads"] = nullptr; }, "'num_attention_heads'"},
      {"missing arch", [](json& j) { j.erase("architectures"); }, "'architectures'"},
      {"string size", [](json& j) { j["hidden_size"] = "4096"; }, "'hidden_size'"},
      {"float size", [](json& j) { j["vocab_size"] = 32000.5; }, "'vocab_size'"},
      {"bool layers", [](json& j) { j["num_hidden_layers"] = true; }, "'num_hidden_layers'"},
      {"huge size", [](json& j) { j["vocab_size"] = 1ull << 40; }, "'vocab_size'"},
      {"zero size", [](json& j) { j["intermediate_size"] = 0; }, "'intermediate_size'"},
      {"negative", [](json& j) { j["num_hidden_layers"] = -2; }, "'num_hidden_layers'"},
      {"zero kv", [](json& j) { j["num_key_value_heads"] = 0; }, "'num_key_value_heads'"},
      {"kv not dividing", [](json& j) { j["num_key_value_heads"] = 5; }, "'num_key_value_heads'"},
      {"odd head_dim", [](json& j) { j["head_dim"] = 33; }, "'head_dim'"},
      {"odd derived head_dim", [](json& j) { j["hidden_size"] = 32 * 33; }, "'head_dim'"},
      {"indivisible hidden", [](json& j) { j["hidden_size"] = 4100; }, "'head_dim'"},
      {"head_dim string", [](json& j) { j["head_dim"] = "128"; }, "'head_dim'"},
      {"theta string", [](json& j) { j["rope_theta"] = "1e4"; }, "'rope_theta'"},
      {"theta zero", [](json& j) { j["rope_theta"] = 0; }, "'rope_theta'"},
      {"eps string", [](json& j) { j["rms_norm_eps"] = "1e-5"; }, "'rms_norm_eps'"},
      {"eps negative", [](json& j) { j["rms_norm_eps"] = -1e-5; }, "'rms_norm_eps'"},
      {"tie int", [](json& j) { j["tie_word_embeddings"] = 1; }, "'tie_word_embeddings'"},
      {"attention bias", [](json& j) { j["attention_bias"] = true; }, "'attention_bias'"},
      {"mlp bias", [](json& j) { j["mlp_bias"] = true; }, "'mlp_bias'"},
      {"bias string", [](json& j) { j["mlp_bias"] = "false"; }, "'mlp_bias'"},
      {"gelu", [](json& j) { j["hidden_act"] = "gelu"; }, "'hidden_act'"},
      {"act number", [](json& j) { j["hidden_act"] = 1; }, "'hidden_act'"},
      {"bos string", [](json& j) { j["bos_token_id"] = "<s>"; }, "'bos_token_id'"},
      {"eos strings", [](json& j) { j["eos_token_id"] = {"</s>"}; }, "'eos_token_id'"},
      {"eos object", [](json& j) { j["eos_token_id"] = json::object(); }, "'eos_token_id'"},
      {"dtype int", [](json& j) { j["torch_dtype"] = 16; }, "'torch_dtype'"},
      {"max pos string", [](json& j) { j["max_position_embeddings"] = "4k"; },
       "'max_position_embeddings'"},
      {"arch string", [](json& j) { j["architectures"] = "LlamaForCausalLM"; }, "'architectures'"},
      {"arch empty", [](json& j) { j["architectures"] = json::array(); }, "'architectures'"},
      {"rope_scaling list",
       [](json& j) {
         j["rope_scaling"] = {1, 2};
       },
       "'rope_scaling'"},
      {"rope_scaling no type",
       [](json& j) {
         j["rope_scaling"] = {{"factor", 2.0}};
       },
       "'rope_scaling.rope_type'"},
      {"llama3 missing factor",
       [](json& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"},
                              {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0},
                              {"original_max_position_embeddings", 8192}};
       },
       "'rope_scaling.factor'"},
      {"llama3 string factor",
       [](json& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"},
                              {"factor", "8"},
                              {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0},
                              {"original_max_position_embeddings", 8192}};
       },
       "'rope_scaling.factor'"},
      {"llama3 high <= low",
       [](json& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"},
                              {"factor", 8.0},
                              {"low_freq_factor", 4.0},
                              {"high_freq_factor", 4.0},
                              {"original_max_position_embeddings", 8192}};
       },
       "'rope_scaling.high_freq_factor'"},
      {"llama3 missing original",
       [](json& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"},
                              {"factor", 8.0},
                              {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0}};
       },
       "'rope_scaling.original_max_position_embeddings'"},
      {"rope_parameters theta",
       [](json& j) {
         j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", "x"}};
       },
       "'rope_parameters.rope_theta'"},
      {"rope_parameters number", [](json& j) { j["rope_parameters"] = 5; }, "'rope_parameters'"},
  };
  for (const ErrorCase& ec : cases) {
    absl::StatusOr<ModelConfig> c = ParseEdited(kLlama2, ec.edit);
    ASSERT_FALSE(c.ok()) << ec.name;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << ec.name;
    EXPECT_THAT(c.status().message(), AllOf(HasSubstr(kSource), HasSubstr(ec.key))) << ec.name;
  }
}

TEST(ConfigTest, RejectsOtherArchitectures) {
  absl::StatusOr<ModelConfig> c =
      ParseEdited(kLlama2, [](json& j) { j["architectures"] = {"Qwen2ForCausalLM"}; });
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              AllOf(HasSubstr(kSource), HasSubstr("'architectures'"), HasSubstr("Qwen2ForCausalLM"),
                    HasSubstr("LlamaForCausalLM")));
}

TEST(ConfigTest, RejectsOtherRopeTypesByName) {
  for (const char* type : {"linear", "dynamic", "yarn", "longrope"}) {
    absl::StatusOr<ModelConfig> c = ParseEdited(kLlama2, [&](json& j) {
      j["rope_scaling"] = {{"type", type}, {"factor", 2.0}};
    });
    ASSERT_FALSE(c.ok()) << type;
    EXPECT_THAT(c.status().message(),
                AllOf(HasSubstr(kSource), HasSubstr("rope_scaling.type"), HasSubstr(type)));
    c = ParseEdited(kLlama2, [&](json& j) {
      j["rope_parameters"] = {{"rope_type", type}, {"factor", 2.0}, {"rope_theta", 1e4}};
    });
    ASSERT_FALSE(c.ok()) << type;
    EXPECT_THAT(c.status().message(),
                AllOf(HasSubstr(kSource), HasSubstr("rope_parameters.rope_type"), HasSubstr(type)));
  }
}

TEST(ConfigTest, LoadModelConfigReadsTheDirectory) {
  sals::testing::TempDir dir;
  sals::testing::WriteFile(dir / "config.json", kMistral);
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "MistralForCausalLM");

  sals::testing::WriteFile(dir / "config.json", "{\"architectures\": [");
  c = LoadModelConfig(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr((dir / "config.json").string()));
}

TEST(ConfigTest, LoadModelConfigMissingFile) {
  sals::testing::TempDir dir;
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr((dir / "config.json").string()));
}

}  // namespace
}  // namespace sals
