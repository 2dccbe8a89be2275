// Fixture access and temporary directories for the engine/tokenizer tests.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/common/temp_dir.h"

namespace sals::testing {

// The three fixture model directories (tools/fixtures/make_fixtures.py).
inline const std::vector<std::string>& TokenizerFlavours() {
  static const std::vector<std::string> flavours = {"llama2-mha", "mistral-gqa", "llama31-bpe"};
  return flavours;
}

inline std::filesystem::path FixtureDir(std::string_view flavour) {
  return std::filesystem::path(SALS_FIXTURES_DIR) / flavour;
}

inline std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

inline void WriteFile(const std::filesystem::path& path, std::string_view contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
}

// tokenizer_cases.json of a flavour; fails the test (and returns null) when missing.
inline nlohmann::json LoadCases(std::string_view flavour) {
  const std::filesystem::path file = FixtureDir(flavour) / "tokenizer_cases.json";
  EXPECT_TRUE(std::filesystem::exists(file))
      << file << " is missing; regenerate the fixtures (tools/fixtures)";
  return nlohmann::json::parse(ReadFile(file), nullptr, /*allow_exceptions=*/false);
}

inline std::vector<int32_t> Ids(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

}  // namespace sals::testing
