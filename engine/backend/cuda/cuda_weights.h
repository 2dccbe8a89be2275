// The model's weights on the device: read from a WeightSource, converted to the compute dtype
// (f16 or bf16) and uploaded once; q|k|v and gate|up fused into one matrix each. Also the RoPE
// frequencies, the other per-model constant the kernels read.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cuda/cuda_resources.h"
#include "engine/common/dtype.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "sals/kernels/cuda_utils.h"

namespace sals::cuda {

struct LayerWeights {
  Buffer16 input_norm, wqkv, wo, post_norm, w_gate_up, w_down;
};

struct ModelWeights {
  Buffer16 embed, final_norm, lm_head;  // lm_head: empty with tied word embeddings
  std::vector<LayerWeights> layers;
  kernels::DeviceBuffer<float> inv_freq;  // RoPE: head_dim / 2 inverse frequencies, fp32

  // The LM head's matrix, [vocab x hidden].
  const uint16_t* head(const ModelConfig& config) const {
    return config.tie_word_embeddings ? embed.get() : lm_head.get();
  }
};

// Validates the source's Llama tensors and uploads them in `dtype` (kF16 or kBF16).
absl::StatusOr<ModelWeights> UploadWeights(const ModelConfig& config, const WeightSource& source,
                                           DType dtype);

}  // namespace sals::cuda
