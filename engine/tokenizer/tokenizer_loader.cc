// LoadTokenizer: picks the tokenizer file of a HF model directory and its BOS / EOS ids.
#include <algorithm>
#include <cstdint>
#include <exception>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace sals {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// The parsed file, std::nullopt when it does not exist, InvalidArgument when it is not JSON.
absl::StatusOr<std::optional<json>> ReadJsonIfExists(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::optional<json>();
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat("cannot read ", file.string()));
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(file.string(), ": not valid JSON"));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(file.string(), ": not a JSON object"));
  }
  return std::optional<json>(std::move(j));
}

// tokenizer_config's "bos_token"/"eos_token": a string or an AddedToken object {"content": ..}.
absl::StatusOr<std::optional<std::string>> TokenText(const json& config, const char* key,
                                                     const fs::path& file) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return std::optional<std::string>((*it)["content"].get<std::string>());
  }
  return absl::InvalidArgumentError(
      absl::StrCat(file.string(), ": ", key, ": must be a string or {\"content\": string}"));
}

// config.json's "bos_token_id"/"eos_token_id": an integer, a list of them, or null.
absl::Status AppendIds(const json& config, const char* key, const fs::path& file,
                       std::vector<int32_t>* ids) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return absl::OkStatus();
  const auto add = [&](const json& v) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      return false;
    }
    const auto id = v.get<int32_t>();
    if (std::find(ids->begin(), ids->end(), id) == ids->end()) ids->push_back(id);
    return true;
  };
  bool ok = true;
  if (it->is_array()) {
    for (const json& v : *it) ok = ok && add(v);
  } else {
    ok = add(*it);
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.string(), ": ", key, ": must be a non-negative integer or a list of them"));
  }
  return absl::OkStatus();
}

struct SpecialIds {
  int32_t bos = -1;
  std::vector<int32_t> eos;
  bool add_bos = true;
};

// BOS: tokenizer_config's bos_token, else config.json's bos_token_id, else the tokenizer's own.
// EOS: the union of config.json's and generation_config.json's eos_token_id (Llama-3.1 lists
// several) and tokenizer_config's eos_token, else the tokenizer's own.
absl::StatusOr<SpecialIds> ReadSpecialIds(const fs::path& dir, const Tokenizer& tokenizer) {
  SpecialIds out;
  const fs::path tokenizer_config_file = dir / "tokenizer_config.json";
  const fs::path config_file = dir / "config.json";
  const fs::path generation_file = dir / "generation_config.json";
  absl::StatusOr<std::optional<json>> tokenizer_config = ReadJsonIfExists(tokenizer_config_file);
  if (!tokenizer_config.ok()) return tokenizer_config.status();
  absl::StatusOr<std::optional<json>> config = ReadJsonIfExists(config_file);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::optional<json>> generation = ReadJsonIfExists(generation_file);
  if (!generation.ok()) return generation.status();

  std::optional<std::string> eos_text;
  if (tokenizer_config->has_value()) {
    const json& tc = **tokenizer_config;
    absl::StatusOr<std::optional<std::string>> bos_text =
        TokenText(tc, "bos_token", tokenizer_config_file);
    if (!bos_text.ok()) return bos_text.status();
    if (bos_text->has_value()) out.bos = tokenizer.PieceToId(**bos_text);
    absl::StatusOr<std::optional<std::string>> eos =
        TokenText(tc, "eos_token", tokenizer_config_file);
    if (!eos.ok()) return eos.status();
    eos_text = *eos;
    if (auto it = tc.find("add_bos_token"); it != tc.end() && !it->is_null()) {
      if (!it->is_boolean()) {
        return absl::InvalidArgumentError(
            absl::StrCat(tokenizer_config_file.string(), ": add_bos_token: must be a boolean"));
      }
      out.add_bos = it->get<bool>();
    }
  }
  if (config->has_value()) {
    if (out.bos < 0) {
      std::vector<int32_t> bos;
      absl::Status s = AppendIds(**config, "bos_token_id", config_file, &bos);
      if (!s.ok()) return s;
      if (!bos.empty()) out.bos = bos.front();
    }
    absl::Status s = AppendIds(**config, "eos_token_id", config_file, &out.eos);
    if (!s.ok()) return s;
  }
  if (generation->has_value()) {
    absl::Status s = AppendIds(**generation, "eos_token_id", generation_file, &out.eos);
    if (!s.ok()) return s;
  }
  if (eos_text.has_value()) {
    const int32_t id = tokenizer.PieceToId(*eos_text);
    if (id >= 0 && std::find(out.eos.begin(), out.eos.end(), id) == out.eos.end()) {
      out.eos.push_back(id);
    }
  }
  if (out.bos < 0) out.bos = tokenizer.bos_id();
  if (out.eos.empty()) out.eos = tokenizer.eos_ids();
  return out;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerImpl(const fs::path& model_dir) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model directory ", model_dir.string(), " does not exist"));
  }
  const fs::path json_file = model_dir / "tokenizer.json";
  const fs::path model_file = model_dir / "tokenizer.model";
  const bool has_model = fs::is_regular_file(model_file, ec);

  std::unique_ptr<BpeTokenizer> bpe;
  absl::StatusOr<std::optional<json>> parsed = ReadJsonIfExists(json_file);
  if (!parsed.ok()) return parsed.status();
  if (parsed->has_value()) {
    // HF also writes a tokenizer.json for SentencePiece models (Metaspace + ByteFallback);
    // tokenizer.model is the authority for those, so only byte-level BPE is taken from JSON.
    if (BpeTokenizer::IsByteLevelBpe(**parsed)) {
      absl::StatusOr<std::unique_ptr<BpeTokenizer>> loaded =
          BpeTokenizer::FromJson(**parsed, json_file.string());
      if (!loaded.ok()) return loaded.status();
      bpe = *std::move(loaded);
    } else if (!has_model) {
      return absl::UnimplementedError(
          absl::StrCat(json_file.string(),
                       ": not a byte-level BPE (model.type BPE with a ByteLevel decoder), "
                       "and there is no tokenizer.model next to it"));
    }
  }

  if (bpe != nullptr) {
    absl::StatusOr<SpecialIds> ids = ReadSpecialIds(model_dir, *bpe);
    if (!ids.ok()) return ids.status();
    bpe->SetSpecialIds(ids->bos, std::move(ids->eos));
    return std::unique_ptr<Tokenizer>(std::move(bpe));
  }
  if (!has_model) {
    return absl::NotFoundError(
        absl::StrCat("no tokenizer.json or tokenizer.model in ", model_dir.string()));
  }
  absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> sp =
      SentencePieceTokenizer::Load(model_file);
  if (!sp.ok()) return sp.status();
  absl::StatusOr<SpecialIds> ids = ReadSpecialIds(model_dir, **sp);
  if (!ids.ok()) return ids.status();
  (*sp)->SetSpecialIds(ids->bos, std::move(ids->eos), ids->add_bos);
  return std::unique_ptr<Tokenizer>(*std::move(sp));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const fs::path& model_dir) {
  try {
    return LoadTokenizerImpl(model_dir);
  } catch (const std::exception& e) {  // e.g. bad_alloc, or a JSON type error not checked above
    return absl::InternalError(
        absl::StrCat("loading the tokenizer of ", model_dir.string(), ": ", e.what()));
  }
}

}  // namespace sals
