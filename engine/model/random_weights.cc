// Synthetic weights: deterministic normal values generated on each Read, never held in memory.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <numbers>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/common/absl_compat.h"
#include "engine/model/tensor_checks.h"
#include "engine/model/weight_source.h"

namespace sals {
namespace {

// FNV-1a: a hash that is the same on every platform (std::hash is not).
uint64_t HashName(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return h;
}

// splitmix64's output function: a counter-based generator, so any element range of a tensor can
// be generated on its own (threads, chunks) with identical results.
inline uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// ln(x) for x in (0, 1], ~1e-6 absolute error. Branch-free (unlike std::log) so the generation
// loop vectorizes; the exact values only need to be deterministic, not correctly rounded.
inline float FastLog(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint32_t big = static_cast<uint32_t>((b & 0x7fffffu) > 0x3504f3u);  // mantissa > sqrt 2
  const float e = static_cast<float>(static_cast<int32_t>((b >> 23) + big) - 127);
  const float m = std::bit_cast<float>((b & 0x7fffffu) | (0x3f800000u - (big << 23)));
  const float f = m - 1.0f;  // in [-0.29, 0.42)
  const float s = f / (2.0f + f), s2 = s * s;
  const float p = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  return 2.0f * s * p + e * 0.69314718f;
}

// Taylor series of sin and cos, < 5e-7 absolute error on [-pi/2, pi/2] (Horner form).
inline float SinTaylor(float x) {
  const float x2 = x * x;
  float p = -1.0f / 39916800;
  p = p * x2 + 1.0f / 362880;
  p = p * x2 - 1.0f / 5040;
  p = p * x2 + 1.0f / 120;
  p = p * x2 - 1.0f / 6;
  return x + x * x2 * p;
}

inline float CosTaylor(float x) {
  const float x2 = x * x;
  float p = 1.0f / 479001600;
  p = p * x2 - 1.0f / 3628800;
  p = p * x2 + 1.0f / 40320;
  p = p * x2 - 1.0f / 720;
  p = p * x2 + 1.0f / 24;
  p = p * x2 - 0.5f;
  return 1.0f + x2 * p;
}

// Box-Muller for the pair of elements [2j, 2j + 1] of a tensor, for j in [first_pair, last_pair).
void GeneratePairs(uint64_t key, uint64_t first_pair, uint64_t last_pair, float mean, float std,
                   float* out) {
  for (uint64_t j = first_pair; j < last_pair; ++j) {
    const uint64_t r = Mix(key + (j + 1) * 0x9e3779b97f4a7c15ull);
    const float u1 = (static_cast<float>(static_cast<uint32_t>(r >> 40)) + 1.0f) * 0x1p-24f;
    const float u2 = static_cast<float>(static_cast<uint32_t>(r & 0xffffffu)) * 0x1p-24f;
    const float radius = std::sqrt(-2.0f * FastLog(u1)) * std;
    // The angle is 2*pi*u2 - pi (a shift a symmetric law does not notice), built from its half
    // angle in [-pi/2, pi/2) where the series converge fast.
    const float half = (u2 - 0.5f) * std::numbers::pi_v<float>;
    const float sh = SinTaylor(half), ch = CosTaylor(half);
    const uint64_t i = 2 * (j - first_pair);
    out[i] = mean + radius * (ch * ch - sh * sh);
    out[i + 1] = mean + radius * (2.0f * sh * ch);
  }
}

struct TensorInit {
  std::vector<int64_t> shape;
  float mean = 0.0f;
  float std = 1.0f;
};

class RandomWeights : public WeightSource {
 public:
  RandomWeights(const ModelConfig& config, uint64_t seed)
      : seed_(seed), where_(absl::StrCat("random weights (seed ", seed, ")")) {
    const double layers2 = 2.0 * config.num_layers;
    for (WeightSpec& spec : LlamaWeightSpecs(config)) {
      TensorInit init{std::move(spec.shape)};
      const std::string& n = spec.name;
      const double fan_in = static_cast<double>(init.shape.back());
      if (n.ends_with("norm.weight")) {
        init.mean = 1.0f;
        init.std = 0.02f;
      } else if (n == "model.embed_tokens.weight") {
        init.std = 1.0f;
      } else if (n.ends_with("o_proj.weight") || n.ends_with("down_proj.weight")) {
        // Residual branches: their sum over all layers stays O(1).
        init.std = static_cast<float>(1.0 / std::sqrt(fan_in * layers2));
      } else {
        init.std = static_cast<float>(1.0 / std::sqrt(fan_in));
      }
      tensors_.emplace(spec.name, std::move(init));
    }
  }

  bool Has(std::string_view name) const override { return tensors_.contains(name); }

  absl::Status Check(std::string_view name, std::span<const int64_t> shape) const override {
    return Lookup(name, shape, std::nullopt, 0).status();
  }

  absl::Status Read(std::string_view name, std::span<const int64_t> shape, DType dst_type,
                    std::span<std::byte> dst) const override {
    absl::StatusOr<const TensorInit*> init = Lookup(name, shape, dst_type, dst.size());
    if (!init.ok()) return init.status();
    const uint64_t elements = dst.size() / DTypeSize(dst_type);
    const uint64_t key = Mix(HashName(name) ^ seed_);
    // Large tensors are split over threads; results do not depend on the split.
    const uint64_t chunks = (elements + kChunk - 1) / kChunk;
    const unsigned threads = static_cast<unsigned>(std::min<uint64_t>(
        {std::max(1u, std::thread::hardware_concurrency()), 16, chunks / 64 + 1}));
    auto work = [&](unsigned t) {
      std::vector<float> buf(kChunk);
      for (uint64_t c = t; c < chunks; c += threads) {
        const uint64_t begin = c * kChunk, n = std::min<uint64_t>(kChunk, elements - begin);
        GeneratePairs(key, begin / 2, (begin + n + 1) / 2, (*init)->mean, (*init)->std, buf.data());
        ConvertDType(DType::kF32, buf.data(), dst_type, dst.data() + begin * DTypeSize(dst_type),
                     n);
      }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work, t);
    work(0);
    for (std::thread& th : pool) th.join();
    return absl::OkStatus();
  }

 private:
  static constexpr uint64_t kChunk = 1 << 14;  // even, so chunks start on a pair boundary

  absl::StatusOr<const TensorInit*> Lookup(std::string_view name, std::span<const int64_t> shape,
                                           std::optional<DType> dst_type, size_t dst_bytes) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      return absl::NotFoundError(absl::StrCat("tensor '", ToAbsl(name), "' not found in ", where_));
    }
    absl::Status s = CheckTensorRequest(ToAbsl(name), where_, it->second.shape, "F32", DType::kF32,
                                        shape, dst_type, dst_bytes);
    if (!s.ok()) return s;
    return &it->second;
  }

  uint64_t seed_;
  std::string where_;
  std::map<std::string, TensorInit, std::less<>> tensors_;
};

}  // namespace

std::unique_ptr<WeightSource> MakeRandomWeights(const ModelConfig& config, uint64_t seed) {
  return std::make_unique<RandomWeights>(config, seed);
}

}  // namespace sals
