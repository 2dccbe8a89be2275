#include "tools/calibrate/calibration_checkpoint.h"

#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/model/safetensors.h"

namespace sals {
namespace {

std::string SumsName(int layer) { return absl::StrCat("layers.", layer, ".sums"); }

std::map<std::string, std::string> ModelFacts(const ModelConfig& config) {
  return {{"model", config.architecture},
          {"kv_width", absl::StrCat(config.kv_width())},
          {"num_layers", absl::StrCat(config.num_layers)},
          {"vocab_size", absl::StrCat(config.vocab_size)}};
}

}  // namespace

std::filesystem::path CheckpointPath(const std::filesystem::path& output) {
  std::filesystem::path path = output;
  path += ".checkpoint";
  return path;
}

absl::Status WriteCheckpoint(const std::filesystem::path& path, const ModelConfig& config,
                             const KeyCovariance& covariance, const std::string& data_fingerprint,
                             int64_t sequences_done) {
  const int d = covariance.width();
  std::vector<TensorToWrite> tensors;
  for (int l = 0; l < covariance.num_layers(); ++l) {
    if (covariance.tokens(l) != covariance.tokens(0)) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint: layer ", l, " saw ",
                                                        covariance.tokens(l), " keys, layer 0 saw ",
                                                        covariance.tokens(0)));
    }
    tensors.push_back(
        TensorToWrite{SumsName(l), DType::kF32, {d, d}, std::as_bytes(covariance.sums(l)), "F64"});
  }
  std::map<std::string, std::string> metadata = ModelFacts(config);
  metadata["data"] = data_fingerprint;
  metadata["sequences_done"] = absl::StrCat(sequences_done);
  metadata["tokens"] = absl::StrCat(covariance.num_layers() > 0 ? covariance.tokens(0) : 0);
  return WriteSafetensors(path, tensors, metadata);
}

absl::StatusOr<int64_t> ReadCheckpoint(const std::filesystem::path& path, const ModelConfig& config,
                                       const std::string& data_fingerprint,
                                       KeyCovariance* covariance) {
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  const auto& meta = (*file)->metadata();
  const auto get = [&meta](const std::string& key) {
    const auto it = meta.find(key);
    return it == meta.end() ? std::string("(none)") : it->second;
  };
  for (const auto& [key, want] : ModelFacts(config)) {
    if (get(key) != want) {
      return absl::FailedPreconditionError(
          absl::StrCat(path.string(), ": checkpoint of another model (", key, " ", get(key),
                       ", this model's ", want, "); delete it to start over"));
    }
  }
  if (get("data") != data_fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        path.string(), ": checkpoint of other calibration data or another --seq_len/--max_tokens",
        " (data fingerprint ", get("data"), ", this run's ", data_fingerprint,
        "); rerun with the same data and flags, or delete it to start over"));
  }
  int64_t done = 0, tokens = 0;
  if (!absl::SimpleAtoi(get("sequences_done"), &done) || done < 0 ||
      !absl::SimpleAtoi(get("tokens"), &tokens) || tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": bad 'sequences_done' or ", "'tokens' metadata"));
  }
  const int d = config.kv_width();
  std::vector<double> sums(static_cast<size_t>(d) * d);
  for (int l = 0; l < config.num_layers; ++l) {
    const TensorView* t = (*file)->Find(SumsName(l));
    if (t == nullptr || t->dtype_name != "F64" || t->nbytes != sums.size() * sizeof(double)) {
      return absl::InvalidArgumentError(absl::StrCat(path.string(), ": tensor '", SumsName(l),
                                                     "' missing or not F64 [", d, ", ", d, "]"));
    }
    std::memcpy(sums.data(), t->data, t->nbytes);  // tensors need not be 8-byte aligned
    if (absl::Status s = covariance->AddSums(l, sums, tokens); !s.ok()) return s;
  }
  return done;
}

}  // namespace sals
