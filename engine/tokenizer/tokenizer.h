// One interface over SentencePiece (tokenizer.model: Llama-2, Mistral) and byte-level BPE
// (tokenizer.json: Llama-3).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sals {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`; with add_bos the model's BOS id comes first (as HF's default
  // add_special_tokens=True does for Llama models). Special-token strings in `text`
  // (e.g. "<|eot_id|>") map to their ids for tokenizer.json models.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos) const = 0;

  // Text of `ids`, as HF's decode(ids, skip_special_tokens=skip_special) gives it.
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special) const = 0;

  virtual int vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual std::vector<int32_t> eos_ids() const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  // The raw vocabulary piece of `id` (e.g. "▁the", "Ġthe", "<0x0A>"), "" when out of range.
  virtual std::string IdToPiece(int32_t id) const = 0;
};

// Loads tokenizer.json when present (byte-level BPE), else tokenizer.model (SentencePiece);
// special tokens and BOS/EOS come from tokenizer_config.json / config.json where present.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& model_dir);

// Turns a stream of token ids into text deltas that never split a UTF-8 character and
// concatenate to exactly Decode(all ids) (the vLLM prefix/read-offset method).
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tokenizer, std::span<const int32_t> prompt_ids,
                         bool skip_special);
  // Appends one generated id and returns the new text it completes (possibly "").
  std::string Append(int32_t id);
  // Text still held back at the end of the stream (an incomplete UTF-8 tail as U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
};

}  // namespace sals
