// The attention configurations the retrieval benchmark compares: a KV pool preset (one engine per
// preset) and, for SALS presets, the per-request selection policy. Spelled
// "PRESET[:key=value]...": "dense", "sals-25", "sals-12.5:topk=1/4", "sals-12.5:budget=256".
// Keys: topk (fraction of the context, "0.25" or "1/4"), budget (exactly this many middle tokens:
// the top-k fraction is dropped), score_dims, rank (latent dims used), sinks, recent.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sals/policy.h"

namespace sals {

struct BenchConfig {
  std::string name;       // as given
  std::string kv_format;  // "dense", "sals-25" or "sals-12.5"
  SalsPolicy policy;      // requests' policy (SALS presets only)

  bool is_sals() const { return kv_format != "dense"; }
};

// What the runner compares by default: dense, both SALS presets at their defaults, and SALS-12.5%
// at a wider and a narrower top-k and a fixed budget.
inline constexpr char kDefaultBenchConfigs[] =
    "dense,sals-25,sals-12.5,sals-12.5:topk=1/4,sals-12.5:topk=1/16,sals-12.5:budget=256";

// Errors name the spec and the bad part.
absl::StatusOr<BenchConfig> ParseBenchConfig(std::string_view spec);
absl::StatusOr<std::vector<BenchConfig>> ParseBenchConfigs(const std::vector<std::string>& specs);

}  // namespace sals
