#include "tools/calibrate/calibration_data.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "tools/common/hf_model.h"

namespace sals {
namespace {

constexpr char kFormats[] = "text, jsonl or tokens";

bool Blank(absl::string_view s) {
  return s.find_first_not_of(" \t\r\n") == absl::string_view::npos;
}

absl::Status ReadJsonl(const std::string& name, const std::string& content,
                       std::vector<std::string>* texts) {
  int64_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(content, '\n')) {
    ++line_no;
    if (Blank(line)) continue;
    const std::string where = absl::StrCat(name, ":", line_no, ": ");
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return absl::InvalidArgumentError(where + "not valid JSON");
    if (!j.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "expected an object with a \"text\" string, got a ", j.type_name()));
    }
    const auto it = j.find("text");
    if (it == j.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "no \"text\" field",
          j.contains("tokens") ? " (pre-tokenized data is a .u32 file: --data_format tokens)"
                               : ""));
    }
    if (!it->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"text\" is a ", it->type_name(), ", not a string"));
    }
    texts->push_back(it->get<std::string>());
  }
  return absl::OkStatus();
}

absl::Status ReadTokens(const std::string& name, const std::string& content,
                        std::vector<int32_t>* tokens) {
  if (content.size() % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", content.size(),
                                                   " bytes, not a whole number of little-endian "
                                                   "uint32 token ids"));
  }
  tokens->reserve(content.size() / 4);
  for (size_t i = 0; i < content.size(); i += 4) {
    const auto byte = [&](size_t k) {
      return static_cast<uint32_t>(static_cast<uint8_t>(content[i + k]));
    };
    const uint32_t id = byte(0) | byte(1) << 8 | byte(2) << 16 | byte(3) << 24;
    // Ids past int32 are kept negative here and refused by CheckTokenIds with their position.
    tokens->push_back(static_cast<int32_t>(id));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DataFormat> ParseDataFormat(const std::string& name) {
  if (name == "text") return DataFormat::kText;
  if (name == "jsonl") return DataFormat::kJsonl;
  if (name == "tokens") return DataFormat::kTokens;
  return absl::InvalidArgumentError(
      absl::StrCat("--data_format: '", name, "' is not one of ", kFormats));
}

absl::StatusOr<DataFormat> InferDataFormat(const std::filesystem::path& file) {
  const std::string ext = absl::AsciiStrToLower(file.extension().string());
  if (ext == ".txt" || ext == ".text" || ext == ".md") return DataFormat::kText;
  if (ext == ".jsonl") return DataFormat::kJsonl;
  if (ext == ".u32") return DataFormat::kTokens;
  return absl::InvalidArgumentError(absl::StrCat(
      file.string(), ": cannot tell the data format from the extension '", ext,
      "' (.txt/.text/.md: text, .jsonl: JSON lines, .u32: token ids); pass --data_format ",
      kFormats));
}

absl::StatusOr<CalibrationFile> ReadCalibrationFile(const std::filesystem::path& path,
                                                    DataFormat format) {
  auto content = ReadTextFile(path);
  if (!content.ok()) return content.status();
  CalibrationFile file;
  file.path = path.string();
  file.format = format;
  switch (format) {
    case DataFormat::kText:
      file.texts.push_back(std::move(*content));
      break;
    case DataFormat::kJsonl:
      if (absl::Status s = ReadJsonl(file.path, *content, &file.texts); !s.ok()) return s;
      break;
    case DataFormat::kTokens:
      if (absl::Status s = ReadTokens(file.path, *content, &file.tokens); !s.ok()) return s;
      if (file.tokens.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(file.path, ": no token ids"));
      }
      return file;
  }
  if (std::all_of(file.texts.begin(), file.texts.end(),
                  [](const std::string& t) { return Blank(t); })) {
    return absl::InvalidArgumentError(absl::StrCat(file.path, ": no text in calibration file"));
  }
  return file;
}

absl::Status CheckTokenIds(const CalibrationFile& file, int vocab_size) {
  for (size_t i = 0; i < file.tokens.size(); ++i) {
    const int32_t id = file.tokens[i];
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path, ": token ", i, " (byte offset ", 4 * i, ") is ", static_cast<uint32_t>(id),
          ", outside the model's vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

std::vector<std::vector<int32_t>> CutSequences(const std::vector<int32_t>& stream, int32_t bos,
                                               int seq_len, int64_t max_tokens) {
  std::vector<std::vector<int32_t>> seqs;
  const int prefix = bos >= 0 ? 1 : 0;
  int64_t total = 0;
  for (size_t begin = 0; begin < stream.size();) {
    int64_t len = std::min<int64_t>(seq_len, prefix + stream.size() - begin);
    if (max_tokens > 0) len = std::min(len, max_tokens - total);
    if (len <= prefix) break;
    std::vector<int32_t>& seq = seqs.emplace_back();
    if (prefix) seq.push_back(bos);
    seq.insert(seq.end(), stream.begin() + begin, stream.begin() + begin + (len - prefix));
    begin += len - prefix;
    total += len;
  }
  return seqs;
}

std::string SequencesFingerprint(const std::vector<std::vector<int32_t>>& seqs) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto mix = [&h](uint64_t v) {
    for (int b = 0; b < 8; ++b) {
      h ^= (v >> (8 * b)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  mix(seqs.size());
  for (const auto& s : seqs) {
    mix(s.size());
    for (int32_t t : s) mix(static_cast<uint32_t>(t));
  }
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

}  // namespace sals
