// Architecture description of a Llama-family decoder (Llama-2/3, Mistral; MHA and GQA),
// parsed from a Hugging Face config.json.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sals {

enum class RopeScalingType { kNone, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  // llama3 scaling parameters (HF "rope_scaling": {"rope_type": "llama3", ...}).
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM" or "MistralForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // config "head_dim" when present, else hidden_size / num_heads
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  std::optional<int> sliding_window;  // Mistral v0.1; null/absent = full attention
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  std::string torch_dtype;  // informational ("float32", "float16", "bfloat16")

  int q_width() const { return num_heads * head_dim; }
  int kv_width() const { return num_kv_heads * head_dim; }  // joint key width D
  int group_size() const { return num_heads / num_kv_heads; }
};

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source);

// Reads <model_dir>/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& model_dir);

// Inverse frequencies of RoPE for each pair of dims (head_dim / 2 values), llama3 scaling applied.
std::vector<double> RopeInverseFrequencies(const ModelConfig& config);

}  // namespace sals
