// Byte-level BPE from a Hugging Face tokenizer.json (Llama-3, GPT-2 layouts).
//
// Follows the `tokenizers` pipeline: added tokens split out of the text first (leftmost-longest,
// with single_word / lstrip / rstrip / normalized); pre-tokenizer Split(regex) and/or
// ByteLevel(add_prefix_space, use_regex) (regexes run on PCRE2 with UTF + UCP, JIT); BPE merges
// by rank (ignore_merges honoured) with a word cache; TemplateProcessing post-processor for BOS;
// ByteLevel decoder with from_utf8_lossy. Anything else in the file (normalizers, other models,
// pre-tokenizers, decoders or post-processors) is rejected at load with an error naming the key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json_fwd.hpp"

namespace sals {

class BpeTokenizer final : public Tokenizer {
 public:
  // Reads and parses `json_file`; errors name the file (and the offending key).
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Load(const std::filesystem::path& json_file);
  // Builds from a parsed tokenizer.json; `source` names it in error messages.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromJson(const nlohmann::json& json,
                                                                std::string_view source);
  // Whether a parsed tokenizer.json is a byte-level BPE (model BPE, ByteLevel decoder), i.e. one
  // this class is meant for (SentencePiece conversions use Metaspace/ByteFallback instead).
  static bool IsByteLevelBpe(const nlohmann::json& json);

  ~BpeTokenizer() override;

  // Overrides BOS / EOS (from the HF config files). BOS defaults to the post-processor's first
  // special token; EOS to none.
  void SetSpecialIds(int32_t bos_id, std::vector<int32_t> eos_ids);

  // add_bos applies the post-processor (TemplateProcessing "single"), as HF's
  // add_special_tokens=True does; without a template it adds nothing.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  // Stops merging once more than max_tokens ids are out (the pre-tokenizer's scan goes on).
  std::vector<int32_t> EncodeAtMost(std::string_view text, bool add_bos,
                                    size_t max_tokens) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const override;

  int vocab_size() const override;
  int32_t bos_id() const override;
  std::vector<int32_t> eos_ids() const override;
  bool IsSpecial(int32_t id) const override;
  std::string IdToPiece(int32_t id) const override;
  int32_t PieceToId(std::string_view piece) const override;

 private:
  struct Impl;
  explicit BpeTokenizer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace sals
