// Reading .safetensors files: map the file, validate the header, expose tensors as views.
#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "engine/model/safetensors_dtypes.h"
#include "nlohmann/json.hpp"

namespace sals {
namespace {

using json = nlohmann::json;

// The reference implementation refuses larger headers; so do we, before parsing them.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

// Closes the descriptor on every path; the mapping outlives it.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::Status Invalid(const std::filesystem::path& path, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", message));
}

absl::Status InvalidTensor(const std::filesystem::path& path, absl::string_view name,
                           absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(path.string(), ": tensor '", name, "': ", message));
}

// A JSON array of non-negative integers.
bool ReadUintArray(const json& v, std::vector<uint64_t>* out) {
  if (!v.is_array()) return false;
  out->clear();
  for (const json& e : v) {
    if (!e.is_number_unsigned()) return false;
    out->push_back(e.get<uint64_t>());
  }
  return true;
}

absl::StatusOr<TensorView> ParseTensor(const std::filesystem::path& path, const std::string& name,
                                       const json& entry, const std::byte* data,
                                       uint64_t data_size) {
  if (!entry.is_object()) {
    return InvalidTensor(path, name,
                         absl::StrCat("entry must be an object, got ", entry.type_name()));
  }
  TensorView t;
  t.name = name;
  auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) {
    return InvalidTensor(path, name, "'dtype' must be a string");
  }
  t.dtype_name = dtype->get<std::string>();
  t.dtype = SafetensorsFloatDType(t.dtype_name);

  std::vector<uint64_t> dims;
  auto shape = entry.find("shape");
  if (shape == entry.end() || !ReadUintArray(*shape, &dims)) {
    return InvalidTensor(path, name, "'shape' must be a list of non-negative integers");
  }
  uint64_t elements = 1;
  for (uint64_t d : dims) {
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        (d != 0 && elements > std::numeric_limits<uint64_t>::max() / d)) {
      return InvalidTensor(path, name, "shape overflows 64 bits");
    }
    elements *= d;
    t.shape.push_back(static_cast<int64_t>(d));
  }

  std::vector<uint64_t> offsets;
  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !ReadUintArray(*offsets_it, &offsets) || offsets.size() != 2) {
    return InvalidTensor(path, name, "'data_offsets' must be two non-negative integers");
  }
  const uint64_t begin = offsets[0], end = offsets[1];
  if (end < begin) {
    return InvalidTensor(
        path, name, absl::StrCat("data_offsets [", begin, ", ", end, "] end before they begin"));
  }
  if (end > data_size) {
    return InvalidTensor(path, name,
                         absl::StrCat("data_offsets [", begin, ", ", end,
                                      "] run past the data region (", data_size, " bytes)"));
  }
  // Sizes are checked for every dtype we know the width of; unknown ones stay raw bytes.
  if (std::optional<size_t> item = SafetensorsItemSize(t.dtype_name); item.has_value()) {
    if (elements > std::numeric_limits<uint64_t>::max() / *item ||
        elements * *item != end - begin) {
      return InvalidTensor(
          path, name,
          absl::StrCat("holds ", end - begin, " bytes but ", t.dtype_name, " [",
                       absl::StrJoin(t.shape, ", "), "] needs ", elements, " x ", *item));
    }
  }
  t.data = data + begin;
  t.nbytes = static_cast<size_t>(end - begin);
  return t;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  FileDescriptor fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path.string()));
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot stat ", path.string()));
  }
  if (!S_ISREG(st.st_mode)) return Invalid(path, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return Invalid(path, absl::StrCat("file is ", file_size,
                                      " bytes, too short for the 8-byte header length"));
  }

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  void* map = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (map == MAP_FAILED) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot map ", path.string()));
  }
  file->map_ = map;
  file->map_size_ = file_size;
  const auto* bytes = static_cast<const std::byte*>(map);

  uint64_t header_size = 0;  // little endian, whatever the host
  for (int i = 7; i >= 0; --i) header_size = header_size << 8 | static_cast<uint8_t>(bytes[i]);
  if (header_size > file_size - 8) {
    return Invalid(path, absl::StrCat("header length ", header_size, " runs past the end of the ",
                                      file_size, "-byte file"));
  }
  if (header_size > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_size, " exceeds the ",
                                      kMaxHeaderBytes, "-byte limit"));
  }

  json header;
  try {
    const char* text = reinterpret_cast<const char*>(bytes + 8);
    header = json::parse(text, text + header_size);
  } catch (const json::exception& e) {
    return Invalid(path, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return Invalid(path, absl::StrCat("header must be a JSON object, got ", header.type_name()));
  }

  const std::byte* data = bytes + 8 + header_size;
  const uint64_t data_size = file_size - 8 - header_size;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return Invalid(path, "__metadata__ must be an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return Invalid(path, absl::StrCat("__metadata__ value of '", key, "' must be a string"));
        }
        file->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    absl::StatusOr<TensorView> t = ParseTensor(path, name, entry, data, data_size);
    if (!t.ok()) return t.status();
    file->tensors_.emplace(name, *std::move(t));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace sals
