// Writing .safetensors files (calibration outputs, test fixtures).
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <fstream>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "engine/model/safetensors.h"
#include "engine/model/safetensors_dtypes.h"
#include "nlohmann/json.hpp"

namespace sals {
namespace {

using json = nlohmann::json;

absl::Status Invalid(const std::filesystem::path& path, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", message));
}

}  // namespace

absl::Status WriteSafetensors(const std::filesystem::path& path,
                              std::span<const TensorToWrite> tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> order;
  for (const TensorToWrite& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const TensorToWrite& t = *order[i];
    if (t.name.empty() || t.name == "__metadata__") {
      return Invalid(path, absl::StrCat("invalid tensor name '", t.name, "'"));
    }
    if (i > 0 && order[i - 1]->name == t.name) {
      return Invalid(path, absl::StrCat("tensor '", t.name, "' is given twice"));
    }
    const std::string dtype_name =
        t.dtype_name.empty() ? std::string(DTypeName(t.dtype)) : t.dtype_name;
    const std::optional<size_t> item = SafetensorsItemSize(dtype_name);
    if (!item.has_value()) {
      return Invalid(path, absl::StrCat("tensor '", t.name, "': unknown dtype '", dtype_name, "'"));
    }
    uint64_t elements = 1;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return Invalid(path, absl::StrCat("tensor '", t.name, "': negative dimension in shape [",
                                          absl::StrJoin(t.shape, ", "), "]"));
      }
      elements *= static_cast<uint64_t>(d);
    }
    if (elements * *item != t.data.size()) {
      return Invalid(
          path,
          absl::StrCat("tensor '", t.name, "': ", t.data.size(), " bytes given but ", dtype_name,
                       " [", absl::StrJoin(t.shape, ", "), "] needs ", elements * *item));
    }
    header[t.name] = {{"dtype", dtype_name},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }

  // Pad with spaces (valid trailing JSON whitespace) so the data region starts 8-byte aligned.
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {  // names or metadata that are not valid UTF-8
    return Invalid(path, absl::StrCat("cannot encode the header: ", e.what()));
  }
  text.resize((text.size() + 7) / 8 * 8, ' ');
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));

  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", tmp.string()));
    out.write(reinterpret_cast<const char*>(length), sizeof(length));
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const TensorToWrite* t : order) {
      out.write(reinterpret_cast<const char*>(t->data.data()),
                static_cast<std::streamsize>(t->data.size()));
    }
    out.close();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      return absl::DataLossError(absl::StrCat("error writing ", tmp.string()));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp.string(), " to ", path.string(), ": ", why));
  }
  return absl::OkStatus();
}

}  // namespace sals
