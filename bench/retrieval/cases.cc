#include "bench/retrieval/cases.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace sals {

absl::StatusOr<RetrievalCase> ParseRetrievalCase(std::string_view line) {
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("not a JSON object");
  }
  RetrievalCase c;
  auto string_field = [&](const char* key, std::string* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a string"));
    }
    *out = it->get<std::string>();
    return absl::OkStatus();
  };
  if (absl::Status s = string_field("task", &c.task); !s.ok()) return s;
  if (absl::Status s = string_field("prompt", &c.prompt); !s.ok()) return s;
  if (c.task.empty() || c.prompt.empty()) {
    return absl::InvalidArgumentError("\"task\" and \"prompt\" must not be empty");
  }
  auto length = j.find("length");
  if (length == j.end() || !length->is_number_integer() || length->get<int64_t>() < 1) {
    return absl::InvalidArgumentError("\"length\" must be a positive integer");
  }
  c.length = length->get<int64_t>();
  auto seed = j.find("seed");
  if (seed == j.end() || !seed->is_number_unsigned()) {
    return absl::InvalidArgumentError("\"seed\" must be a non-negative integer");
  }
  c.seed = seed->get<uint64_t>();
  auto string_list = [&](const nlohmann::json& v, std::vector<std::string>* out) -> bool {
    if (!v.is_array() || v.empty()) return false;
    for (const nlohmann::json& e : v) {
      if (!e.is_string()) return false;
      out->push_back(e.get<std::string>());
    }
    return true;
  };
  auto answer = j.find("answer");
  if (answer != j.end() && answer->is_string()) {
    c.answer = answer->get<std::string>();
    c.items.push_back(c.answer);
  } else if (answer != j.end() && string_list(*answer, &c.items)) {
    c.answer = absl::StrJoin(c.items, ", ");
  } else {
    return absl::InvalidArgumentError("\"answer\" must be a string or a non-empty list of them");
  }
  if (auto items = j.find("items"); items != j.end()) {
    c.items.clear();
    if (!string_list(*items, &c.items)) {
      return absl::InvalidArgumentError("\"items\" must be a non-empty list of strings");
    }
  }
  for (std::string& item : c.items) {
    item = std::string(absl::StripAsciiWhitespace(item));
    if (item.empty()) return absl::InvalidArgumentError("an answer item is empty");
  }
  return c;
}

absl::StatusOr<std::vector<RetrievalCase>> ReadRetrievalCases(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in.is_open()) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::vector<RetrievalCase> cases;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    auto c = ParseRetrievalCase(line);
    if (!c.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path.string(), ":", number, ": ", c.status().message()));
    }
    cases.push_back(std::move(*c));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path.string(), ": read error"));
  if (cases.empty()) return absl::InvalidArgumentError(absl::StrCat(path.string(), ": no cases"));
  return cases;
}

}  // namespace sals
