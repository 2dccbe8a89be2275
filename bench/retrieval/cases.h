// The retrieval benchmark's cases: one JSON object per line of a JSONL file, as make_cases.py
// writes them (tools/train/tasks.py's cases): {"task", "length", "seed", "prompt", "answer",
// "items"}. "answer" is the continuation the model should produce (" 71432"); "items" the values
// that must appear in it (several for multi-value tasks). Without "items", a string answer is its
// own single item and a list answer gives the items (joined by ", " as the answer). Other keys
// are ignored.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sals {

struct RetrievalCase {
  std::string task;
  int64_t length = 0;  // the nominal prompt length the case was made for (tokens)
  uint64_t seed = 0;
  std::string prompt;
  std::string answer;              // the expected continuation, as given
  std::vector<std::string> items;  // values to find, whitespace stripped, not empty
};

// One line; errors name the missing or mistyped key.
absl::StatusOr<RetrievalCase> ParseRetrievalCase(std::string_view line);

// Every non-blank line of `path`; errors name the file and line. An empty file is an error.
absl::StatusOr<std::vector<RetrievalCase>> ReadRetrievalCases(const std::filesystem::path& path);

}  // namespace sals
