// Parsing of a Hugging Face config.json into ModelConfig.
#include "engine/model/config.h"

#include <cstdint>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "engine/common/absl_compat.h"
#include "nlohmann/json.hpp"

namespace sals {
namespace {

using json = nlohmann::json;

constexpr absl::string_view kArchitectures[] = {"LlamaForCausalLM", "MistralForCausalLM"};

// Reads typed keys of one JSON object; every error names the file and the key's full path
// ("rope_scaling.factor"). Absent and null keys both count as missing, as in transformers.
class KeyReader {
 public:
  KeyReader(const json& obj, absl::string_view source, absl::string_view prefix)
      : obj_(obj), source_(source), prefix_(prefix) {}

  std::string Path(absl::string_view key) const {
    return prefix_.empty() ? std::string(key) : absl::StrCat(prefix_, ".", key);
  }

  absl::Status Error(absl::string_view key, absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": key '", Path(key), "' ", message));
  }

  const json* Find(absl::string_view key) const {
    auto it = obj_.find(std::string(key));
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::Status Missing(absl::string_view key) const {
    return Error(key, "is required but missing");
  }

  absl::Status WrongType(absl::string_view key, const json& value, absl::string_view want) const {
    return Error(key, absl::StrCat("must be ", want, ", got ", value.type_name(), " ",
                                   value.dump().substr(0, 40)));
  }

  // Leaves *out untouched when the key is missing and !required.
  absl::Status Int(absl::string_view key, bool required, int* out) const {
    const json* v = Find(key);
    if (v == nullptr) return required ? Missing(key) : absl::OkStatus();
    if (!v->is_number_integer()) return WrongType(key, *v, "an integer");
    if (v->is_number_unsigned()) {
      const uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
        return Error(key, absl::StrCat("is out of range: ", u));
      }
      *out = static_cast<int>(u);
      return absl::OkStatus();
    }
    const int64_t i = v->get<int64_t>();
    if (i < std::numeric_limits<int>::min() || i > std::numeric_limits<int>::max()) {
      return Error(key, absl::StrCat("is out of range: ", i));
    }
    *out = static_cast<int>(i);
    return absl::OkStatus();
  }

  absl::Status PositiveInt(absl::string_view key, bool required, int* out) const {
    if (!required && Find(key) == nullptr) return absl::OkStatus();
    if (absl::Status s = Int(key, required, out); !s.ok()) return s;
    if (*out <= 0) return Error(key, absl::StrCat("must be positive, got ", *out));
    return absl::OkStatus();
  }

  absl::Status Number(absl::string_view key, bool required, double* out) const {
    const json* v = Find(key);
    if (v == nullptr) return required ? Missing(key) : absl::OkStatus();
    if (!v->is_number()) return WrongType(key, *v, "a number");
    *out = v->get<double>();
    return absl::OkStatus();
  }

  absl::Status PositiveNumber(absl::string_view key, bool required, double* out) const {
    if (!required && Find(key) == nullptr) return absl::OkStatus();
    if (absl::Status s = Number(key, required, out); !s.ok()) return s;
    if (!(*out > 0.0)) return Error(key, absl::StrCat("must be positive, got ", *out));
    return absl::OkStatus();
  }

  absl::Status Bool(absl::string_view key, bool* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return WrongType(key, *v, "a boolean");
    *out = v->get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(absl::string_view key, std::string* out) const {
    const json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_string()) return WrongType(key, *v, "a string");
    *out = v->get<std::string>();
    return absl::OkStatus();
  }

 private:
  const json& obj_;
  absl::string_view source_;
  std::string prefix_;
};

#define SALS_RETURN_IF_ERROR(expr)                     \
  do {                                                 \
    if (absl::Status _s = (expr); !_s.ok()) return _s; \
  } while (0)

absl::Status ParseArchitecture(const KeyReader& r, ModelConfig* c) {
  const json* v = r.Find("architectures");
  if (v == nullptr) return r.Missing("architectures");
  if (!v->is_array() || v->empty() || !(*v)[0].is_string()) {
    return r.WrongType("architectures", *v, "a non-empty list of strings");
  }
  c->architecture = (*v)[0].get<std::string>();
  for (absl::string_view known : kArchitectures) {
    if (c->architecture == known) return absl::OkStatus();
  }
  return r.Error("architectures",
                 absl::StrCat("names unsupported architecture '", c->architecture,
                              "' (supported: ", absl::StrJoin(kArchitectures, ", "), ")"));
}

// One RoPE description: a "rope_scaling" object, or transformers 5's "rope_parameters" (which
// also carries rope_theta and may omit the type for plain RoPE).
absl::Status ParseRope(const KeyReader& parent, absl::string_view key, bool type_required,
                       absl::string_view source, ModelConfig* c) {
  const json& obj = *parent.Find(key);
  if (!obj.is_object()) return parent.WrongType(key, obj, "an object or null");
  const KeyReader r(obj, source, key);
  SALS_RETURN_IF_ERROR(r.PositiveNumber("rope_theta", false, &c->rope_theta));
  std::string type;
  absl::string_view type_key = "rope_type";
  if (r.Find("rope_type") == nullptr && r.Find("type") != nullptr) type_key = "type";
  SALS_RETURN_IF_ERROR(r.String(type_key, &type));
  if (type.empty()) {
    if (type_required) return r.Missing("rope_type");
    type = "default";
  }
  if (type == "default") {
    c->rope_scaling = RopeScaling{};
    return absl::OkStatus();
  }
  if (type != "llama3") {
    return r.Error(type_key, absl::StrCat("names unsupported RoPE type '", type,
                                          "' (supported: default, llama3)"));
  }
  RopeScaling& s = c->rope_scaling;
  s.type = RopeScalingType::kLlama3;
  SALS_RETURN_IF_ERROR(r.PositiveNumber("factor", true, &s.factor));
  SALS_RETURN_IF_ERROR(r.PositiveNumber("low_freq_factor", true, &s.low_freq_factor));
  SALS_RETURN_IF_ERROR(r.PositiveNumber("high_freq_factor", true, &s.high_freq_factor));
  SALS_RETURN_IF_ERROR(
      r.PositiveInt("original_max_position_embeddings", true, &s.original_max_position_embeddings));
  // The smooth interpolation divides by (high - low).
  if (!(s.high_freq_factor > s.low_freq_factor)) {
    return r.Error("high_freq_factor",
                   absl::StrCat("(", s.high_freq_factor, ") must exceed low_freq_factor (",
                                s.low_freq_factor, ")"));
  }
  return absl::OkStatus();
}

absl::Status ParseTokenIds(const KeyReader& r, ModelConfig* c) {
  SALS_RETURN_IF_ERROR(r.Int("bos_token_id", false, &c->bos_token_id));
  c->eos_token_ids.clear();
  const json* eos = r.Find("eos_token_id");
  if (eos == nullptr) return absl::OkStatus();
  if (eos->is_number_integer()) {
    int id = 0;
    SALS_RETURN_IF_ERROR(r.Int("eos_token_id", true, &id));
    c->eos_token_ids.push_back(id);
    return absl::OkStatus();
  }
  if (!eos->is_array()) {
    return r.WrongType("eos_token_id", *eos, "an integer or a list of integers");
  }
  for (const json& v : *eos) {
    if (!v.is_number_integer() || v.get<int64_t>() < std::numeric_limits<int>::min() ||
        v.get<int64_t>() > std::numeric_limits<int>::max()) {
      return r.WrongType("eos_token_id", *eos, "an integer or a list of integers");
    }
    c->eos_token_ids.push_back(v.get<int>());
  }
  return absl::OkStatus();
}

absl::Status ParseFields(const json& root, absl::string_view source, ModelConfig* c) {
  const KeyReader r(root, source, "");
  SALS_RETURN_IF_ERROR(ParseArchitecture(r, c));
  SALS_RETURN_IF_ERROR(r.PositiveInt("vocab_size", true, &c->vocab_size));
  SALS_RETURN_IF_ERROR(r.PositiveInt("hidden_size", true, &c->hidden_size));
  SALS_RETURN_IF_ERROR(r.PositiveInt("intermediate_size", true, &c->intermediate_size));
  SALS_RETURN_IF_ERROR(r.PositiveInt("num_hidden_layers", true, &c->num_layers));
  SALS_RETURN_IF_ERROR(r.PositiveInt("num_attention_heads", true, &c->num_heads));
  c->num_kv_heads = c->num_heads;
  SALS_RETURN_IF_ERROR(r.PositiveInt("num_key_value_heads", false, &c->num_kv_heads));
  if (c->num_heads % c->num_kv_heads != 0) {
    return r.Error("num_key_value_heads",
                   absl::StrCat("(", c->num_kv_heads, ") must divide num_attention_heads (",
                                c->num_heads, ")"));
  }
  c->head_dim = 0;
  SALS_RETURN_IF_ERROR(r.PositiveInt("head_dim", false, &c->head_dim));
  if (c->head_dim == 0) {
    if (c->hidden_size % c->num_heads != 0) {
      return r.Error("head_dim", absl::StrCat("is absent and hidden_size (", c->hidden_size,
                                              ") is not divisible by num_attention_heads (",
                                              c->num_heads, ")"));
    }
    c->head_dim = c->hidden_size / c->num_heads;
  }
  if (c->head_dim % 2 != 0) {
    return r.Error("head_dim", absl::StrCat("(", c->head_dim, ") must be even for RoPE"));
  }

  // transformers' defaults for keys a config may leave out.
  c->rms_norm_eps = 1e-6;
  SALS_RETURN_IF_ERROR(r.PositiveNumber("rms_norm_eps", false, &c->rms_norm_eps));
  c->max_position_embeddings = c->architecture == "MistralForCausalLM" ? 4096 * 32 : 2048;
  SALS_RETURN_IF_ERROR(
      r.PositiveInt("max_position_embeddings", false, &c->max_position_embeddings));
  c->tie_word_embeddings = false;
  SALS_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c->tie_word_embeddings));
  // sliding_window as transformers reads it: MistralConfig defaults an absent key to 4096 (null
  // means full attention); LlamaConfig has no window, so Llama's attention ignores the key.
  c->sliding_window.reset();
  if (c->architecture == "MistralForCausalLM") {
    int window = 0;
    SALS_RETURN_IF_ERROR(r.PositiveInt("sliding_window", false, &window));
    if (!root.contains("sliding_window")) window = 4096;
    if (window > 0) c->sliding_window = window;
  }

  // Keys that change the math and that we do not implement: refused by name, never ignored.
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    bool on = false;
    SALS_RETURN_IF_ERROR(r.Bool(bias, &on));
    if (on) return r.Error(bias, "is true: bias terms on the projections are not implemented");
  }
  std::string act = "silu";
  SALS_RETURN_IF_ERROR(r.String("hidden_act", &act));
  if (act != "silu") {
    return r.Error("hidden_act",
                   absl::StrCat("names unsupported activation '", act, "' (supported: silu)"));
  }

  c->rope_theta = 10000.0;
  c->rope_scaling = RopeScaling{};
  SALS_RETURN_IF_ERROR(r.PositiveNumber("rope_theta", false, &c->rope_theta));
  // transformers 5 writes rope_parameters in place of rope_theta + rope_scaling.
  if (r.Find("rope_parameters") != nullptr) {
    SALS_RETURN_IF_ERROR(ParseRope(r, "rope_parameters", false, source, c));
  } else if (r.Find("rope_scaling") != nullptr) {
    SALS_RETURN_IF_ERROR(ParseRope(r, "rope_scaling", true, source, c));
  }

  SALS_RETURN_IF_ERROR(ParseTokenIds(r, c));
  c->torch_dtype.clear();
  SALS_RETURN_IF_ERROR(r.String("torch_dtype", &c->torch_dtype));
  if (c->torch_dtype.empty()) SALS_RETURN_IF_ERROR(r.String("dtype", &c->torch_dtype));
  return absl::OkStatus();
}

#undef SALS_RETURN_IF_ERROR

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(source), ": invalid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        ToAbsl(source), ": expected a JSON object at top level, got ", root.type_name()));
  }
  ModelConfig config;
  // The typed accessors above check types first, but get<> may still throw on surprises.
  try {
    if (absl::Status s = ParseFields(root, ToAbsl(source), &config); !s.ok()) return s;
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(source), ": ", e.what()));
  }
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path.string()));
  return ParseModelConfig(text.str(), path.string());
}

}  // namespace sals
