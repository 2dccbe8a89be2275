#include "engine/backend/cuda/cuda_weights.h"

#include <initializer_list>
#include <span>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sals::cuda {
namespace {

// Reads tensors (converted to the compute dtype) back to back into one device buffer: fused
// q|k|v and gate|up come out of this. `staging` is the reused host side of the uploads.
absl::Status Upload(const WeightSource& src, DType dtype,
                    std::initializer_list<std::pair<std::string, std::vector<int64_t>>> parts,
                    std::vector<uint16_t>* staging, Buffer16* dst) {
  size_t total = 0;
  for (const auto& [name, shape] : parts) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    total += static_cast<size_t>(n);
  }
  staging->resize(total);
  size_t at = 0;
  for (const auto& [name, shape] : parts) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    auto bytes = std::as_writable_bytes(std::span<uint16_t>(staging->data() + at, n));
    if (absl::Status s = src.Read(name, shape, dtype, bytes); !s.ok()) return s;
    at += static_cast<size_t>(n);
  }
  auto buffer = Buffer16::Allocate(total);
  if (!buffer.ok()) return buffer.status();
  *dst = std::move(*buffer);
  return dst->CopyFrom(std::span<const uint16_t>(staging->data(), total));
}

}  // namespace

absl::StatusOr<ModelWeights> UploadWeights(const ModelConfig& c, const WeightSource& src,
                                           DType dtype) {
  const int64_t h = c.hidden_size, qw = c.q_width(), kvw = c.kv_width(),
                inter = c.intermediate_size;
  if (absl::Status s = ValidateLlamaWeights(c, src); !s.ok()) return s;
  ModelWeights w;
  std::vector<uint16_t> staging;
  auto upload = [&](std::initializer_list<std::pair<std::string, std::vector<int64_t>>> parts,
                    Buffer16* dst) { return Upload(src, dtype, parts, &staging, dst); };
  absl::Status s = upload({{"model.embed_tokens.weight", {c.vocab_size, h}}}, &w.embed);
  if (s.ok()) s = upload({{"model.norm.weight", {h}}}, &w.final_norm);
  if (s.ok() && !c.tie_word_embeddings) {
    s = upload({{"lm_head.weight", {c.vocab_size, h}}}, &w.lm_head);
  }
  w.layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers && s.ok(); ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights& lw = w.layers[l];
    s = upload({{p + "input_layernorm.weight", {h}}}, &lw.input_norm);
    if (s.ok()) {
      s = upload({{p + "self_attn.q_proj.weight", {qw, h}},
                  {p + "self_attn.k_proj.weight", {kvw, h}},
                  {p + "self_attn.v_proj.weight", {kvw, h}}},
                 &lw.wqkv);
    }
    if (s.ok()) s = upload({{p + "self_attn.o_proj.weight", {h, qw}}}, &lw.wo);
    if (s.ok()) s = upload({{p + "post_attention_layernorm.weight", {h}}}, &lw.post_norm);
    if (s.ok()) {
      s = upload({{p + "mlp.gate_proj.weight", {inter, h}}, {p + "mlp.up_proj.weight", {inter, h}}},
                 &lw.w_gate_up);
    }
    if (s.ok()) s = upload({{p + "mlp.down_proj.weight", {h, inter}}}, &lw.w_down);
  }
  if (!s.ok()) return s;

  const std::vector<double> inv_freq = RopeInverseFrequencies(c);
  std::vector<float> inv_freq_f(inv_freq.begin(), inv_freq.end());
  auto d_inv_freq = kernels::DeviceBuffer<float>::Allocate(inv_freq_f.size());
  if (!d_inv_freq.ok()) return d_inv_freq.status();
  w.inv_freq = std::move(*d_inv_freq);
  if (absl::Status st = w.inv_freq.CopyFrom(inv_freq_f); !st.ok()) return st;
  return w;
}

}  // namespace sals::cuda
