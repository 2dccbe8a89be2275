// The tensors of a Llama-family checkpoint (HF names and shapes), and checking a source has them.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/weight_source.h"

namespace sals {

std::vector<WeightSpec> LlamaWeightSpecs(const ModelConfig& c) {
  const int64_t hidden = c.hidden_size, vocab = c.vocab_size, inter = c.intermediate_size;
  const int64_t q = c.q_width(), kv = c.kv_width();
  std::vector<WeightSpec> specs;
  specs.reserve(3 + 9 * static_cast<size_t>(c.num_layers));
  specs.push_back({"model.embed_tokens.weight", {vocab, hidden}});
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    specs.push_back({p + "input_layernorm.weight", {hidden}});
    specs.push_back({p + "self_attn.q_proj.weight", {q, hidden}});
    specs.push_back({p + "self_attn.k_proj.weight", {kv, hidden}});
    specs.push_back({p + "self_attn.v_proj.weight", {kv, hidden}});
    specs.push_back({p + "self_attn.o_proj.weight", {hidden, q}});
    specs.push_back({p + "post_attention_layernorm.weight", {hidden}});
    specs.push_back({p + "mlp.gate_proj.weight", {inter, hidden}});
    specs.push_back({p + "mlp.up_proj.weight", {inter, hidden}});
    specs.push_back({p + "mlp.down_proj.weight", {hidden, inter}});
  }
  specs.push_back({"model.norm.weight", {hidden}});
  // Tied checkpoints reuse embed_tokens as the output projection.
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {vocab, hidden}});
  return specs;
}

absl::Status ValidateLlamaWeights(const ModelConfig& config, const WeightSource& source) {
  for (const WeightSpec& spec : LlamaWeightSpecs(config)) {
    if (absl::Status s = source.Check(spec.name, spec.shape); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace sals
