// A Hugging Face model directory as the tools use it: config, weights and tokenizer.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/tokenizer/tokenizer.h"

namespace sals {

struct HfModel {
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
  std::unique_ptr<Tokenizer> tokenizer;
};

absl::StatusOr<HfModel> LoadHfModel(const std::filesystem::path& dir);

// The whole content of a text file; errors name the file (missing, a directory, unreadable).
absl::StatusOr<std::string> ReadTextFile(const std::filesystem::path& path);

}  // namespace sals
