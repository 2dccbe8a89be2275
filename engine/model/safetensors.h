// Memory-mapped reading and plain writing of the safetensors format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/common/dtype.h"

namespace sals {

struct TensorView {
  std::string name;
  std::string dtype_name;      // as written in the header ("F32", "F16", "BF16", "I32", ...)
  std::optional<DType> dtype;  // set when the dtype is one we compute with
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
};

// One .safetensors file, mapped read-only for the object's lifetime.
class SafetensorsFile {
 public:
  // Validates the header (JSON, offsets inside the file, sizes matching dtype x shape).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorView* Find(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;  // dtype x shape bytes, little endian
  // When set, written instead of DTypeName(dtype) for non-float tensors ("I32", "I64", "U8", ...);
  // the data size is checked against that dtype's item size.
  std::string dtype_name = {};
};

// Writes a safetensors file (tensors sorted by name, 8-byte aligned header). The file is written
// next to `path` and renamed into place, so readers never see a partial file.
absl::Status WriteSafetensors(const std::filesystem::path& path,
                              std::span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace sals
