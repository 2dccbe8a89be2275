#include "tools/common/hf_model.h"

#include <fstream>
#include <iterator>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace sals {

absl::StatusOr<HfModel> LoadHfModel(const std::filesystem::path& dir) {
  HfModel m;
  auto config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  m.config = *config;
  auto weights = OpenSafetensorsWeights(dir);
  if (!weights.ok()) return weights.status();
  m.weights = std::move(*weights);
  auto tokenizer = LoadTokenizer(dir);
  if (!tokenizer.ok()) return tokenizer.status();
  m.tokenizer = std::move(*tokenizer);
  return m;
}

absl::StatusOr<std::string> ReadTextFile(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path.string(), std::filesystem::exists(path, ec)
                                                               ? ": not a regular file"
                                                               : ": no such file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {
    return absl::PermissionDeniedError(absl::StrCat("cannot open ", path.string()));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::DataLossError(absl::StrCat(path.string(), ": read error"));
  return text;
}

}  // namespace sals
