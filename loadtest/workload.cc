#include "loadtest/workload.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace sals::loadtest {
namespace {

std::vector<uint32_t> RandomIds(int count, uint32_t vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<uint32_t> id(0, vocab - 1);
  std::vector<uint32_t> ids(count);
  for (uint32_t& v : ids) v = id(rng);
  return ids;
}

}  // namespace

int LengthRange::Sample(std::mt19937_64& rng) const {
  if (min == max) return min;
  return std::uniform_int_distribution<int>(min, max)(rng);
}

absl::StatusOr<LengthRange> ParseLengthRange(absl::string_view spec, absl::string_view what,
                                             int least) {
  const std::vector<absl::string_view> parts = absl::StrSplit(spec, ':');
  LengthRange r;
  const bool ok = parts.size() <= 2 && absl::SimpleAtoi(parts.front(), &r.min) &&
                  absl::SimpleAtoi(parts.back(), &r.max);
  if (!ok || r.min < least || r.max < r.min) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", what, "='", spec, "': expected N or MIN:MAX with ", least, " <= MIN <= MAX"));
  }
  return r;
}

absl::StatusOr<Workload> Workload::Synthetic(LengthRange prompt, LengthRange output,
                                             int shared_prefix, const ModelLimits& limits,
                                             uint64_t seed) {
  if (limits.vocab_size == 0) return absl::InvalidArgumentError("the model has no vocabulary");
  if (shared_prefix < 0 || shared_prefix > prompt.min) {
    return absl::InvalidArgumentError(absl::StrCat("--shared_prefix_len=", shared_prefix,
                                                   " must be within [0, the shortest prompt ",
                                                   prompt.min, "]"));
  }
  if (limits.max_context > 0 &&
      static_cast<int64_t>(prompt.max) + output.max > static_cast<int64_t>(limits.max_context)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the longest prompt (", prompt.max, ") plus the longest output (", output.max,
                     ") exceeds the server's context limit of ", limits.max_context, " tokens"));
  }
  Workload w;
  w.rng_.seed(seed);
  w.prompt_len_ = prompt;
  w.output_len_ = output;
  w.vocab_ = limits.vocab_size;
  w.shared_prefix_ = RandomIds(shared_prefix, w.vocab_, w.rng_);
  return w;
}

absl::StatusOr<Workload> Workload::FromJsonl(const std::string& path,
                                             std::optional<LengthRange> output,
                                             const ModelLimits& limits, uint64_t seed) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the dataset ", path));
  Workload w;
  w.rng_.seed(seed);
  w.path_ = path;
  w.vocab_ = limits.vocab_size;
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": ", why));
    };
    const nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!row.is_object()) return bad("not a JSON object");
    WorkItem item;
    int prompt_tokens = -1;  // unknown for text
    if (row.contains("prompt") && row["prompt"].is_string()) {
      item.prompt_text = row["prompt"].get<std::string>();
      if (item.prompt_text.empty()) return bad("empty prompt");
    } else if (row.contains("prompt_token_ids") && row["prompt_token_ids"].is_array()) {
      for (const auto& id : row["prompt_token_ids"]) {
        if (!id.is_number_unsigned() || id.get<uint64_t>() >= limits.vocab_size) {
          return bad(absl::StrCat("prompt_token_ids must be integers below the vocabulary size ",
                                  limits.vocab_size));
        }
        item.prompt_ids.push_back(id.get<uint32_t>());
      }
      prompt_tokens = static_cast<int>(item.prompt_ids.size());
    } else if (row.contains("prompt_tokens") && row["prompt_tokens"].is_number_unsigned()) {
      prompt_tokens = row["prompt_tokens"].get<int>();
      item.prompt_ids = RandomIds(prompt_tokens, limits.vocab_size, w.rng_);
    } else {
      return bad("needs \"prompt\" (string), \"prompt_token_ids\" (array) or \"prompt_tokens\"");
    }
    if (prompt_tokens == 0) return bad("empty prompt");
    if (output) {
      item.max_tokens = output->Sample(w.rng_);
    } else if (row.contains("output_tokens") && row["output_tokens"].is_number_unsigned() &&
               row["output_tokens"].get<int>() > 0) {
      item.max_tokens = row["output_tokens"].get<int>();
    } else {
      return bad("needs a positive \"output_tokens\" (or give --output_len)");
    }
    if (limits.max_context > 0 && prompt_tokens >= 0 &&
        static_cast<int64_t>(prompt_tokens) + item.max_tokens > limits.max_context) {
      ++w.skipped_;
      continue;
    }
    w.items_.push_back(std::move(item));
  }
  if (w.items_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no usable request (", w.skipped_, " too long for the context)"));
  }
  std::shuffle(w.items_.begin(), w.items_.end(), w.rng_);
  return w;
}

WorkItem Workload::Next() {
  if (!items_.empty()) {
    WorkItem item = items_[next_item_];
    next_item_ = (next_item_ + 1) % items_.size();
    return item;
  }
  WorkItem item;
  const int length = prompt_len_.Sample(rng_);
  item.prompt_ids = shared_prefix_;
  const std::vector<uint32_t> rest =
      RandomIds(length - static_cast<int>(shared_prefix_.size()), vocab_, rng_);
  item.prompt_ids.insert(item.prompt_ids.end(), rest.begin(), rest.end());
  item.max_tokens = output_len_.Sample(rng_);
  return item;
}

std::optional<int64_t> Workload::MaxRequestTokens() const {
  if (items_.empty()) return int64_t{prompt_len_.max} + output_len_.max;
  int64_t most = 0;
  for (const WorkItem& item : items_) {
    if (!item.prompt_text.empty()) return std::nullopt;
    most = std::max<int64_t>(most, static_cast<int64_t>(item.prompt_ids.size()) + item.max_tokens);
  }
  return most;
}

std::string Workload::Describe() const {
  const auto range = [](const LengthRange& r) {
    return r.min == r.max ? absl::StrCat(r.min) : absl::StrCat(r.min, "..", r.max);
  };
  if (!items_.empty()) {
    return absl::StrCat("dataset ", path_, " (", items_.size(), " requests, ", skipped_,
                        " skipped as too long)");
  }
  return absl::StrCat("synthetic: prompt ", range(prompt_len_), " tokens (shared prefix ",
                      shared_prefix_.size(), "), output ", range(output_len_), " tokens");
}

}  // namespace sals::loadtest
