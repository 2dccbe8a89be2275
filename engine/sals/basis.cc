#include "engine/sals/basis.h"

#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/model/safetensors.h"

namespace sals {
namespace {

// A file calibrated for another model fails here, with both shapes named, rather than on the
// first tensor whose shape happens to differ.
absl::Status CheckCalibrationModel(const SafetensorsFile& file, const ModelConfig& config) {
  const auto& meta = file.metadata();
  const auto width = meta.find("kv_width");
  const auto layers = meta.find("num_layers");
  if (width == meta.end() || layers == meta.end()) return absl::OkStatus();
  const std::string want_width = absl::StrCat(config.kv_width());
  const std::string want_layers = absl::StrCat(config.num_layers);
  if (width->second == want_width && layers->second == want_layers) return absl::OkStatus();
  const auto model = meta.find("model");
  return absl::InvalidArgumentError(absl::StrCat(
      file.path().string(), ": calibrated for a model with kv_width ", width->second, " and ",
      layers->second, " layers (", model == meta.end() ? "unknown" : model->second,
      "), but this model (", config.architecture, ") has kv_width ", want_width, " and ",
      want_layers, " layers; run sals-calibrate for this model"));
}

}  // namespace

absl::StatusOr<std::vector<int>> LoadLayerRanks(const std::filesystem::path& file,
                                                const ModelConfig& config) {
  auto st = SafetensorsFile::Open(file);
  if (!st.ok()) return st.status();
  if (absl::Status s = CheckCalibrationModel(**st, config); !s.ok()) return s;
  const auto it = (*st)->metadata().find("layer_ranks");
  std::vector<int> ranks;
  if (it == (*st)->metadata().end()) return ranks;
  for (absl::string_view item : absl::StrSplit(it->second, ',')) {
    int r = 0;
    if (!absl::SimpleAtoi(item, &r) || r < 0 || r > config.kv_width()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.string(), ": bad 'layer_ranks' metadata '", it->second, "'"));
    }
    ranks.push_back(r);
  }
  if (static_cast<int>(ranks.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(file.string(), ": 'layer_ranks' has ",
                                                   ranks.size(), " ranks for ", config.num_layers,
                                                   " layers"));
  }
  return ranks;
}

absl::StatusOr<SalsBasis> LoadSalsBasis(const std::filesystem::path& file,
                                        const ModelConfig& config, int rank) {
  const int width = config.kv_width();
  if (rank < 1 || rank > width) {
    return absl::InvalidArgumentError(absl::StrCat("rank must be in [1, ", width, "], got ", rank));
  }
  auto st = SafetensorsFile::Open(file);
  if (!st.ok()) return st.status();
  if (absl::Status s = CheckCalibrationModel(**st, config); !s.ok()) return s;
  // The smallest stored rank that covers the request, judged on layer 0.
  int stored = 0;
  for (const auto& [name, view] : (*st)->tensors()) {
    const std::string prefix = "layers.0.rank";
    if (name.rfind(prefix, 0) != 0 || !name.ends_with(".basis") || view.shape.size() != 2) continue;
    const int r = static_cast<int>(view.shape[1]);
    if (r >= rank && (stored == 0 || r < stored)) stored = r;
  }
  if (stored == 0) {
    return absl::NotFoundError(absl::StrCat(file.string(), ": no basis of rank >= ", rank,
                                            " for layer 0 (run sals-calibrate with that rank)"));
  }
  SalsBasis basis;
  basis.width = width;
  basis.rank = rank;
  basis.layers.resize(config.num_layers);
  for (int l = 0; l < config.num_layers; ++l) {
    const std::string name = absl::StrCat("layers.", l, ".rank", stored, ".basis");
    const TensorView* t = (*st)->Find(name);
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat(file.string(), ": tensor '", name, "' missing"));
    }
    if (t->dtype != DType::kF32 || t->shape != std::vector<int64_t>{width, stored}) {
      return absl::InvalidArgumentError(absl::StrCat(file.string(), ": tensor '", name,
                                                     "' must be F32 [", width, ", ", stored,
                                                     "] for this model"));
    }
    const auto* src = reinterpret_cast<const float*>(t->data);
    std::vector<float>& dst = basis.layers[l];
    dst.resize(static_cast<size_t>(width) * rank);
    for (int i = 0; i < width; ++i) {
      std::memcpy(dst.data() + static_cast<size_t>(i) * rank, src + static_cast<size_t>(i) * stored,
                  rank * sizeof(float));
    }
  }
  return basis;
}

SalsBasis IdentityBasis(const ModelConfig& config) {
  SalsBasis basis;
  basis.width = basis.rank = config.kv_width();
  basis.layers.assign(config.num_layers,
                      std::vector<float>(static_cast<size_t>(basis.width) * basis.rank, 0.0f));
  for (auto& u : basis.layers) {
    for (int i = 0; i < basis.width; ++i) u[static_cast<size_t>(i) * basis.rank + i] = 1.0f;
  }
  return basis;
}

}  // namespace sals
