// IncrementalDetokenizer: vLLM's prefix/read-offset streaming decode (see tokenizer.h).
#include <algorithm>
#include <span>
#include <string>
#include <string_view>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace sals {
namespace {

// Prompt ids decoded ahead of the first generated id (vLLM's
// INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET): enough for SentencePiece's leading-space rule.
constexpr size_t kInitialContext = 5;
// How much further back the first window may start to begin on a whole character (a character
// spans at most 4 byte tokens).
constexpr int kMaxExtraContext = 8;

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer,
                                               std::span<const int32_t> prompt_ids,
                                               bool skip_special)
    : tokenizer_(tokenizer),
      skip_special_(skip_special),
      ids_(prompt_ids.begin(), prompt_ids.end()),
      prompt_size_(prompt_ids.size()) {
  read_offset_ = ids_.size();
  StartWindow(read_offset_ > kInitialContext ? read_offset_ - kInitialContext : 0);
}

void IncrementalDetokenizer::StartWindow(size_t prefix_offset) {
  const std::span<const int32_t> ids(ids_);
  prefix_offset_ = prefix_offset;
  prefix_text_ =
      tokenizer_.Decode(ids.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_);
  // A window that starts inside a character split over byte tokens decodes to a leading U+FFFD,
  // and HF's ByteFallback decoder then spoils the whole byte run, later bytes included: start
  // the window at the character instead.
  for (int i = 0; i < kMaxExtraContext && prefix_offset_ > 0 &&
                  std::string_view(prefix_text_).starts_with(kReplacementChar);
       ++i) {
    --prefix_offset_;
    prefix_text_ = tokenizer_.Decode(ids.subspan(prefix_offset_, read_offset_ - prefix_offset_),
                                     skip_special_);
  }
}

std::string IncrementalDetokenizer::Append(int32_t id) {
  ids_.push_back(id);
  return Advance(/*force=*/false);
}

std::string IncrementalDetokenizer::Flush() { return Advance(/*force=*/true); }

std::string IncrementalDetokenizer::Advance(bool force) {
  if (read_offset_ == ids_.size()) return "";
  const std::span<const int32_t> ids(ids_);
  std::string new_text = tokenizer_.Decode(ids.subspan(prefix_offset_), skip_special_);
  // Hold back while nothing new shows (e.g. a skipped special token) or while the text ends in
  // U+FFFD: the next ids may complete that character.
  if (!force && (new_text.size() <= prefix_text_.size() || EndsWithReplacementChar(new_text))) {
    return "";
  }
  size_t start = prefix_text_.size();
  if (new_text.compare(0, prefix_text_.size(), prefix_text_) != 0) {
    // The window's old text decodes differently now. Prompt text (a prompt that ends inside a
    // character the first ids complete) was never streamed: emit from where the two differ, so
    // the completed character comes out whole. Streamed text cannot be taken back (HF's
    // ByteFallback rewriting a byte run): emit past its length.
    if (read_offset_ <= prompt_size_) {
      start = 0;
      while (start < prefix_text_.size() && start < new_text.size() &&
             prefix_text_[start] == new_text[start]) {
        ++start;
      }
    }
    start = std::min(start, new_text.size());
    while (start > 0 && start < new_text.size() && IsContinuationByte(new_text[start])) {
      --start;  // back to the start of the character
    }
  }
  std::string delta = new_text.substr(start);
  const size_t next_prefix = read_offset_;
  read_offset_ = ids_.size();
  StartWindow(next_prefix);
  return delta;
}

}  // namespace sals
