// RoPE inverse frequencies, with Llama 3's frequency-dependent scaling.
#include <cmath>
#include <numbers>
#include <vector>

#include "engine/model/config.h"

namespace sals {

std::vector<double> RopeInverseFrequencies(const ModelConfig& config) {
  const int half = config.head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = 1.0 / std::pow(config.rope_theta, 2.0 * i / config.head_dim);
  }
  if (config.rope_scaling.type != RopeScalingType::kLlama3) return inv_freq;

  // transformers' _compute_llama3_parameters: long wavelengths are slowed down by `factor`, short
  // ones kept, and the band in between interpolated smoothly.
  const RopeScaling& s = config.rope_scaling;
  const double original = s.original_max_position_embeddings;
  const double low_freq_wavelen = original / s.low_freq_factor;
  const double high_freq_wavelen = original / s.high_freq_factor;
  for (double& f : inv_freq) {
    const double wavelen = 2.0 * std::numbers::pi / f;
    if (wavelen > low_freq_wavelen) {
      f /= s.factor;
    } else if (wavelen >= high_freq_wavelen) {
      const double smooth =
          (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      f = (1.0 - smooth) * f / s.factor + smooth * f;
    }
  }
  return inv_freq;
}

}  // namespace sals
