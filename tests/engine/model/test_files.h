// Temporary directories and raw file writing for the engine/model tests.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tests/common/temp_dir.h"

namespace sals::testing {

inline void WriteFile(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A safetensors file from a header text and data bytes; `claimed_header_size` overrides the
// 8-byte length prefix (to test lying headers).
inline std::string RawSafetensors(std::string_view header, std::string_view data,
                                  std::optional<uint64_t> claimed_header_size = std::nullopt) {
  const uint64_t n = claimed_header_size.value_or(header.size());
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out.append(header);
  out.append(data);
  return out;
}

template <typename T>
std::span<const std::byte> Bytes(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

}  // namespace sals::testing
