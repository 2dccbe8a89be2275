// What each request asks for: its prompt (token ids or text) and how many tokens it generates.
// Either synthetic (random token ids of a fixed or uniformly drawn length) or replayed from a
// JSONL dataset file.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sals::loadtest {

// A length in tokens: fixed ("128") or uniform over an inclusive range ("64:256").
struct LengthRange {
  int min = 0;
  int max = 0;
  int Sample(std::mt19937_64& rng) const;
  double mean() const { return (min + max) / 2.0; }
};

// `what` names the flag in messages. Lengths must be >= `least`.
absl::StatusOr<LengthRange> ParseLengthRange(absl::string_view spec, absl::string_view what,
                                             int least);

// One request's payload.
struct WorkItem {
  std::vector<uint32_t> prompt_ids;  // used when `prompt_text` is empty
  std::string prompt_text;           // tokenized by the server
  int max_tokens = 0;
};

// What the server accepts, from GetModelInfo.
struct ModelLimits {
  uint32_t vocab_size = 0;
  uint32_t max_context = 0;  // prompt + max_tokens
};

class Workload {
 public:
  // Random token ids in [0, vocab); the first `shared_prefix` ids are the same in every prompt
  // (a prefix-cache workload), the rest differ.
  static absl::StatusOr<Workload> Synthetic(LengthRange prompt, LengthRange output,
                                            int shared_prefix, const ModelLimits& limits,
                                            uint64_t seed);

  // One JSON object per line with a prompt: "prompt" (text), "prompt_token_ids" (array) or
  // "prompt_tokens" (a length: random ids of it); and "output_tokens" (optional when `output` is
  // given, which then wins). Lines that cannot fit the model's context are skipped and counted.
  // Items are served in an order shuffled with `seed`, cycling when the dataset is exhausted.
  static absl::StatusOr<Workload> FromJsonl(const std::string& path,
                                            std::optional<LengthRange> output,
                                            const ModelLimits& limits, uint64_t seed);

  // The next request's payload.
  WorkItem Next();

  // The most tokens one request can hold in the KV cache (its prompt plus its output); nullopt
  // where a prompt is text (its length is the server's tokenizer's to say).
  std::optional<int64_t> MaxRequestTokens() const;

  int skipped() const { return skipped_; }
  size_t dataset_size() const { return items_.size(); }
  std::string Describe() const;

 private:
  Workload() = default;

  std::mt19937_64 rng_;
  // Synthetic.
  LengthRange prompt_len_, output_len_;
  std::vector<uint32_t> shared_prefix_;
  uint32_t vocab_ = 0;
  // Dataset.
  std::string path_;
  std::vector<WorkItem> items_;
  size_t next_item_ = 0;
  int skipped_ = 0;
};

}  // namespace sals::loadtest
