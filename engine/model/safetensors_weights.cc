// WeightSource over model.safetensors or the shards of model.safetensors.index.json.
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/absl_compat.h"
#include "engine/model/safetensors.h"
#include "engine/model/tensor_checks.h"
#include "engine/model/weight_source.h"
#include "nlohmann/json.hpp"

namespace sals {
namespace {

using json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

class SafetensorsWeights : public WeightSource {
 public:
  // `where` names the file(s) in "not found" messages: the single file or the index.
  explicit SafetensorsWeights(std::string where) : where_(std::move(where)) {}

  bool Has(std::string_view name) const override { return tensors_.contains(name); }

  absl::Status Read(std::string_view name, std::span<const int64_t> shape, DType dst_type,
                    std::span<std::byte> dst) const override {
    absl::StatusOr<Entry> e = Lookup(name, shape, dst_type, dst.size());
    if (!e.ok()) return e.status();
    ConvertDType(*e->tensor->dtype, e->tensor->data, dst_type, dst.data(),
                 e->tensor->nbytes / DTypeSize(*e->tensor->dtype));
    return absl::OkStatus();
  }

  absl::Status Check(std::string_view name, std::span<const int64_t> shape) const override {
    return Lookup(name, shape, std::nullopt, 0).status();
  }

  // Takes ownership of an opened file.
  const SafetensorsFile* Add(std::unique_ptr<SafetensorsFile> file) {
    files_.push_back(std::move(file));
    return files_.back().get();
  }

  void Map(const std::string& name, const SafetensorsFile* file, const TensorView* tensor) {
    tensors_[name] = Entry{file, tensor};
  }

 private:
  struct Entry {
    const SafetensorsFile* file = nullptr;
    const TensorView* tensor = nullptr;
  };

  absl::StatusOr<Entry> Lookup(std::string_view name, std::span<const int64_t> shape,
                               std::optional<DType> dst_type, size_t dst_bytes) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      return absl::NotFoundError(absl::StrCat("tensor '", ToAbsl(name), "' not found in ", where_));
    }
    const TensorView& t = *it->second.tensor;
    absl::Status s = CheckTensorRequest(ToAbsl(name), it->second.file->path().string(), t.shape,
                                        t.dtype_name, t.dtype, shape, dst_type, dst_bytes);
    if (!s.ok()) return s;
    return it->second;
  }

  std::string where_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry, std::less<>> tensors_;
};

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSingle(const std::filesystem::path& path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  auto weights = std::make_unique<SafetensorsWeights>(path.string());
  const SafetensorsFile* f = weights->Add(*std::move(file));
  for (const auto& [name, tensor] : f->tensors()) weights->Map(name, f, &tensor);
  return weights;
}

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSharded(const std::filesystem::path& dir,
                                                          const std::filesystem::path& index) {
  const std::string where = index.string();
  std::ifstream in(index, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", where));
  std::ostringstream text;
  text << in.rdbuf();
  json root;
  try {
    root = json::parse(text.str());
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": invalid JSON: ", e.what()));
  }
  if (!root.is_object() || !root.contains("weight_map") || !root["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": key 'weight_map' must be an object of tensor name -> shard file"));
  }

  auto weights = std::make_unique<SafetensorsWeights>(where);
  std::map<std::string, const SafetensorsFile*> shards;  // each shard mapped once
  for (const auto& [name, shard] : root["weight_map"].items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": weight_map entry of '", name, "' must be a file name"));
    }
    const std::string shard_name = shard.get<std::string>();
    auto it = shards.find(shard_name);
    if (it == shards.end()) {
      const std::filesystem::path shard_path = dir / shard_name;
      absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
      if (!file.ok()) {
        return absl::Status(file.status().code(),
                            absl::StrCat(where, ": shard '", shard_name, "' (listed for tensor '",
                                         name, "'): ", file.status().message()));
      }
      it = shards.emplace(shard_name, weights->Add(*std::move(file))).first;
    }
    const TensorView* tensor = it->second->Find(name);
    if (tensor == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(where, " lists tensor '", name, "' in ",
                                                     it->second->path().string(),
                                                     ", which does not contain it"));
    }
    weights->Map(name, it->second, tensor);
  }
  return weights;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsWeights(
    const std::filesystem::path& model_dir) {
  std::error_code ec;
  if (std::filesystem::exists(model_dir / kIndexFile, ec)) {
    return OpenSharded(model_dir, model_dir / kIndexFile);
  }
  if (std::filesystem::exists(model_dir / kSingleFile, ec)) {
    return OpenSingle(model_dir / kSingleFile);
  }
  return absl::NotFoundError(
      absl::StrCat("no ", kSingleFile, " or ", kIndexFile, " in ", model_dir.string()));
}

}  // namespace sals
