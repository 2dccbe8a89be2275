// Named model shapes for running without a checkpoint (benchmarks, tests).
#include <string_view>

#include "absl/strings/str_cat.h"
#include "engine/common/absl_compat.h"
#include "engine/model/weight_source.h"

namespace sals {
namespace {

ModelConfig Tiny() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 512;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 4096;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float32";
  return c;
}

ModelConfig Llama2_7B() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 32000;
  c.hidden_size = 4096;
  c.intermediate_size = 11008;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 32;
  c.head_dim = 128;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 4096;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float16";
  return c;
}

ModelConfig Llama31_8B() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 128256;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = {.type = RopeScalingType::kLlama3,
                    .factor = 8.0,
                    .low_freq_factor = 1.0,
                    .high_freq_factor = 4.0,
                    .original_max_position_embeddings = 8192};
  c.max_position_embeddings = 131072;
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001, 128008, 128009};
  c.torch_dtype = "bfloat16";
  return c;
}

}  // namespace

absl::StatusOr<ModelConfig> SyntheticModelConfig(std::string_view name) {
  if (name == "tiny") return Tiny();
  if (name == "llama-2-7b") return Llama2_7B();
  if (name == "llama-3.1-8b") return Llama31_8B();
  return absl::InvalidArgumentError(absl::StrCat("unknown synthetic model '", ToAbsl(name),
                                                 "' (known: tiny, llama-2-7b, llama-3.1-8b)"));
}

}  // namespace sals
