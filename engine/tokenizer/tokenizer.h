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

  // Encode, free to stop once more than `max_tokens` ids are out: a result of at most
  // max_tokens ids is Encode's, a longer one is a prefix of Encode's (a server refuses it
  // without encoding the rest). The default encodes everything.
  virtual std::vector<int32_t> EncodeAtMost(std::string_view text, bool add_bos,
                                            size_t /*max_tokens*/) const {
    return Encode(text, add_bos);
  }

  // Text of `ids`, as HF's decode(ids, skip_special_tokens=skip_special) gives it.
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special) const = 0;

  virtual int vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual std::vector<int32_t> eos_ids() const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  // The raw vocabulary piece of `id` (e.g. "▁the", "Ġthe", "<0x0A>"), "" when out of range.
  virtual std::string IdToPiece(int32_t id) const = 0;
  // The id of a raw vocabulary piece or special-token text (inverse of IdToPiece), -1 if none.
  virtual int32_t PieceToId(std::string_view /*piece*/) const { return -1; }
};

// Loads tokenizer.json when it is a byte-level BPE (Llama-3), else tokenizer.model
// (SentencePiece; HF also writes a Metaspace tokenizer.json next to it, which is ignored).
// BOS: tokenizer_config.json's bos_token, else config.json's bos_token_id, else the tokenizer's
// own. EOS: config.json's and generation_config.json's eos_token_id (int or list) plus
// tokenizer_config.json's eos_token. NotFound names the directory when it or both tokenizer
// files are missing; InvalidArgument names the malformed file (and key).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& model_dir);

// Turns a stream of generated token ids into text deltas (vLLM's detokenize_incrementally:
// decode a short window [prefix_offset, end) and emit what it adds over [prefix_offset,
// read_offset)). The window starts up to 5 ids back in the prompt, so the first generated id is
// decoded in context (a SentencePiece "▁Hello" after a prompt shows as " Hello", not "Hello").
//
// Contract, with P = prompt ids, G = generated ids, D = tokenizer.Decode(., skip_special):
//   * every returned string is valid UTF-8; a delta is held back while the window's text ends in
//     U+FFFD (a character still incomplete), so multi-byte characters split over byte tokens
//     come out whole;
//   * concat(Append(g) for g in G) + Flush() == D(P ++ G).substr(L), where L = D(P).size():
//     the text a user sees is the generated part of the decode of the whole sequence (with an
//     empty prompt, exactly D(G)). Only when P ends inside an incomplete character that G
//     completes is D(P) not a prefix of D(P ++ G); L is then their common prefix, cut back to a
//     character boundary, so the completed character is streamed whole.
//   * Known exception: SentencePiece models with skip_special=false use HF's ByteFallback
//     decoder, which turns a whole run of byte tokens into U+FFFDs when any byte of the run is
//     invalid UTF-8 (or P is cut inside the run); characters of that run already streamed
//     cannot be taken back, so there the stream can differ from D (it stays valid UTF-8).
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tokenizer, std::span<const int32_t> prompt_ids,
                         bool skip_special);
  // Appends one generated id and returns the new text it completes (possibly "").
  std::string Append(int32_t id);
  // Text still held back at the end of the stream (an incomplete UTF-8 tail as U+FFFD). Call
  // once, when the sequence finishes.
  std::string Flush();

 private:
  // Emits Decode(ids_[prefix_offset_:]) beyond prefix_text_ and moves the window on.
  std::string Advance(bool force);
  // Sets prefix_offset_ (moved back if that would start inside a character) and prefix_text_.
  void StartWindow(size_t prefix_offset);

  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // prompt ++ generated
  size_t prompt_size_ = 0;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
  std::string prefix_text_;  // Decode(ids_[prefix_offset_, read_offset_))
};

}  // namespace sals
