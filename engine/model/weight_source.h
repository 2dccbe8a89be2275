// Where model weights come from: HF safetensors (single or sharded) or random (synthetic).
// Backends pull each tensor in the element type they compute with.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/common/dtype.h"
#include "engine/model/config.h"

namespace sals {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool Has(std::string_view name) const = 0;
  // Checks that `name` exists with exactly `shape` and a float dtype, then converts it into `dst`
  // (dst.size() bytes must equal product(shape) * DTypeSize(dst_type)). Errors name the file and
  // the tensor.
  virtual absl::Status Read(std::string_view name, std::span<const int64_t> shape, DType dst_type,
                            std::span<std::byte> dst) const = 0;

  // The checks of Read (present, exactly `shape`, float dtype) without converting any data.
  // The default reads the tensor into scratch memory; sources that know shapes override it.
  virtual absl::Status Check(std::string_view name, std::span<const int64_t> shape) const;

  absl::Status ReadF32(std::string_view name, std::span<const int64_t> shape,
                       std::span<float> dst) const {
    return Read(name, shape, DType::kF32, std::as_writable_bytes(dst));
  }
};

// model.safetensors, or the shards listed in model.safetensors.index.json.
absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsWeights(
    const std::filesystem::path& model_dir);

// Deterministic random weights for a config, generated on each Read (nothing is held in memory):
// norm weights 1 + 0.02 * N(0, 1), embeddings N(0, 1), projections normal with std 1/sqrt(fan_in)
// (o_proj and down_proj 1/sqrt(2 * num_layers * fan_in), so the residual stream stays O(1)).
// Each tensor depends only on (name, seed): the same seed gives the same weights everywhere.
std::unique_ptr<WeightSource> MakeRandomWeights(const ModelConfig& config, uint64_t seed);

// Named shapes for synthetic models: "tiny", "llama-2-7b", "llama-3.1-8b".
absl::StatusOr<ModelConfig> SyntheticModelConfig(std::string_view name);

// The tensors a Llama-family model needs: names (HF naming) and shapes.
struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<WeightSpec> LlamaWeightSpecs(const ModelConfig& config);

// Every tensor of LlamaWeightSpecs present with the right shape and a float dtype; the first
// problem found is returned, naming the tensor and the file.
absl::Status ValidateLlamaWeights(const ModelConfig& config, const WeightSource& source);

}  // namespace sals
