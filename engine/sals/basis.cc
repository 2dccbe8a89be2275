#include "engine/sals/basis.h"

#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/model/safetensors.h"

namespace sals {

absl::StatusOr<SalsBasis> LoadSalsBasis(const std::filesystem::path& file,
                                        const ModelConfig& config, int rank) {
  const int width = config.kv_width();
  if (rank < 1 || rank > width) {
    return absl::InvalidArgumentError(absl::StrCat("rank must be in [1, ", width, "], got ", rank));
  }
  auto st = SafetensorsFile::Open(file);
  if (!st.ok()) return st.status();
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
