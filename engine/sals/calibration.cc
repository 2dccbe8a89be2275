#include "engine/sals/calibration.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/safetensors.h"
#include "engine/sals/rank_allocation.h"

namespace sals {
namespace {

using RowMajorF32 = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Raw bytes of a tensor to write, owned here until the file is written.
struct OwnedTensor {
  std::string name;
  std::string dtype_name;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

template <typename T>
OwnedTensor Owned(std::string name, std::string dtype_name, std::vector<int64_t> shape,
                  std::span<const T> values) {
  OwnedTensor t{std::move(name), std::move(dtype_name), std::move(shape), {}};
  t.bytes.resize(values.size_bytes());
  std::memcpy(t.bytes.data(), values.data(), values.size_bytes());
  return t;
}

}  // namespace

double LayerSpectrum::Energy(int rank) const { return CapturedEnergy(eigenvalues, rank); }

KeyCovariance::KeyCovariance(const ModelConfig& config)
    : config_(config),
      width_(config.kv_width()),
      covariance_(config.num_layers, std::vector<double>(static_cast<size_t>(width_) * width_)),
      tokens_(config.num_layers, 0) {}

void KeyCovariance::AddProjections(int layer, std::span<const float> qkv_pre_rope, int64_t tokens) {
  const int64_t stride = config_.q_width() + 2 * int64_t{width_};
  AddRows(layer, qkv_pre_rope.data() + config_.q_width(), stride, tokens);
}

void KeyCovariance::AddKeys(int layer, std::span<const float> keys, int64_t tokens) {
  AddRows(layer, keys.data(), width_, tokens);
}

void KeyCovariance::AddRows(int layer, const float* rows, int64_t stride, int64_t tokens) {
  if (tokens == 0) return;
  // Column j of k is token j's key; C += k k^T on the lower triangle (the solver reads only it).
  const Eigen::Map<const Eigen::MatrixXf, 0, Eigen::OuterStride<>> k(rows, width_, tokens,
                                                                     Eigen::OuterStride<>(stride));
  Eigen::Map<Eigen::MatrixXd> c(covariance_[layer].data(), width_, width_);
  c.selfadjointView<Eigen::Lower>().rankUpdate(k.cast<double>());
  tokens_[layer] += tokens;
}

absl::Status KeyCovariance::AddSums(int layer, std::span<const double> sums, int64_t tokens) {
  if (layer < 0 || layer >= num_layers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " outside [0, ", num_layers(), ")"));
  }
  const size_t size = static_cast<size_t>(width_) * width_;
  if (sums.size() != size || tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, ": key sums of ", sums.size(),
                                                   " values over ", tokens, " tokens; expected ",
                                                   width_, " x ", width_, " over tokens >= 0"));
  }
  const Eigen::Map<const Eigen::MatrixXd> add(sums.data(), width_, width_);
  Eigen::Map<Eigen::MatrixXd> c(covariance_[layer].data(), width_, width_);
  c.triangularView<Eigen::Lower>() += add;
  tokens_[layer] += tokens;
  return absl::OkStatus();
}

absl::StatusOr<KeySpectra> KeyCovariance::Decompose() const {
  KeySpectra out;
  out.model = config_.architecture;
  out.width = width_;
  out.tokens = tokens_.empty() ? 0 : tokens_[0];
  for (int l = 0; l < config_.num_layers; ++l) {
    if (tokens_[l] == 0 || tokens_[l] != out.tokens) {
      return absl::FailedPreconditionError(absl::StrCat("layer ", l, " saw ", tokens_[l],
                                                        " keys, layer 0 saw ", out.tokens,
                                                        " (every layer needs the same keys)"));
    }
    const Eigen::Map<const Eigen::MatrixXd> c(covariance_[l].data(), width_, width_);
    const Eigen::MatrixXd lower = c.triangularView<Eigen::Lower>();
    const double trace = lower.trace();
    if (!lower.allFinite() || !(trace > 0.0)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", l, ": the keys carry no usable energy (covariance trace ", trace, ")"));
    }
    const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(lower);
    if (solver.info() != Eigen::Success) {
      return absl::InternalError(absl::StrCat("layer ", l, ": eigen-decomposition failed"));
    }
    // The solver sorts ascending; we store descending.
    LayerSpectrum s;
    s.eigenvalues.resize(width_);
    s.eigenvectors.resize(static_cast<size_t>(width_) * width_);
    for (int j = 0; j < width_; ++j) {
      const int src = width_ - 1 - j;
      s.eigenvalues[j] = std::max(0.0, solver.eigenvalues()[src]);
      const auto v = solver.eigenvectors().col(src);
      int largest = 0;
      for (int i = 1; i < width_; ++i) {
        if (std::abs(v[i]) > std::abs(v[largest])) largest = i;
      }
      const double sign = v[largest] < 0.0 ? -1.0 : 1.0;
      for (int i = 0; i < width_; ++i) {
        s.eigenvectors[static_cast<size_t>(i) * width_ + j] = sign * v[i];
      }
    }
    out.layers.push_back(std::move(s));
  }
  return out;
}

absl::StatusOr<std::vector<int>> RanksFromFractions(int width, std::span<const double> fractions) {
  if (fractions.empty()) return absl::InvalidArgumentError("no rank fractions given");
  std::vector<int> ranks;
  for (double f : fractions) {
    if (!(f > 0.0 && f <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat("rank fractions must lie in (0, 1], got ", f));
    }
    ranks.push_back(std::max(1, static_cast<int>(std::lround(width * f))));
  }
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  return ranks;
}

absl::Status WriteCalibration(const std::filesystem::path& path, const KeySpectra& spectra,
                              std::span<const int> ranks, std::span<const int> layer_ranks) {
  const int d = spectra.width;
  for (int r : ranks) {
    if (r < 1 || r > d) {
      return absl::InvalidArgumentError(absl::StrCat("rank must be in [1, ", d, "], got ", r));
    }
  }
  if (!layer_ranks.empty()) {
    const int largest = ranks.empty() ? 0 : *std::max_element(ranks.begin(), ranks.end());
    if (layer_ranks.size() != spectra.layers.size()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ranks: ", layer_ranks.size(), " for ",
                                                     spectra.layers.size(), " layers"));
    }
    for (int r : layer_ranks) {
      if (r < 0 || r > largest) {
        return absl::InvalidArgumentError(absl::StrCat("layer ranks must be in [0, ", largest,
                                                       "] (the largest basis written), got ", r));
      }
    }
  }
  std::vector<OwnedTensor> owned;
  for (size_t l = 0; l < spectra.layers.size(); ++l) {
    const LayerSpectrum& s = spectra.layers[l];
    const std::string prefix = absl::StrCat("layers.", l, ".");
    owned.push_back(Owned<double>(prefix + "eigenvalues", "F64", {d}, s.eigenvalues));
    const Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>
        vectors(s.eigenvectors.data(), d, d);
    for (int r : ranks) {
      const RowMajorF32 basis = vectors.leftCols(r).cast<float>();
      const std::string name = absl::StrCat(prefix, "rank", r, ".");
      owned.push_back(Owned<float>(name + "basis", "F32", {d, r},
                                   std::span<const float>(basis.data(), basis.size())));
      const double energy = s.Energy(r);
      owned.push_back(Owned<double>(name + "energy", "F64", {1}, std::span(&energy, 1)));
    }
  }
  std::vector<TensorToWrite> tensors;
  for (const OwnedTensor& t : owned) {
    tensors.push_back(TensorToWrite{t.name, DType::kF32, t.shape, t.bytes, t.dtype_name});
  }
  std::map<std::string, std::string> metadata = {
      {"model", spectra.model},
      {"kv_width", absl::StrCat(d)},
      {"num_layers", absl::StrCat(spectra.layers.size())},
      {"ranks", absl::StrJoin(ranks, ",")},
      {"tokens", absl::StrCat(spectra.tokens)},
  };
  if (!layer_ranks.empty()) metadata["layer_ranks"] = absl::StrJoin(layer_ranks, ",");
  return WriteSafetensors(path, tensors, metadata);
}

}  // namespace sals
