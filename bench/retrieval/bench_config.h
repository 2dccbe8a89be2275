// The attention configurations the retrieval benchmark compares: a KV pool preset (one engine per
// preset) and, for SALS presets, the per-request selection policy. Spelled
// "PRESET[:key=value]...": "dense", "sals-25", "sals-12.5:topk=1/4", "sals-12.5:budget=256".
// Keys: topk (fraction of the context, "0.25" or "1/4"), budget (exactly this many middle tokens:
// the top-k fraction is dropped), score_dims, rank (latent dims used), selection (shared or
// per_kv_head: "sals-25:selection=per_kv_head"), sinks, recent; and the bare
// word "hit" (any preset, "dense:hit" too): each prompt is prefilled once to fill the prefix cache
// and scored on its second run, which takes the cached prefix (on SALS pools attended through
// latents and quantized values; docs/SALS.md). Without it every prompt is prefilled whole.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sals/policy.h"

namespace sals {

// "sals-25", "sals-12.5" and their "-fp8" variants; not "dense" nor "dense-fp8".
inline bool IsSalsPreset(std::string_view kv_format) { return kv_format.starts_with("sals-"); }

struct BenchConfig {
  std::string name;         // as given
  std::string kv_format;    // "dense", "sals-25" or "sals-12.5", each optionally with "-fp8"
  SalsPolicy policy;        // requests' policy (SALS presets only)
  bool prefix_hit = false;  // scored on a prefix-cache hit ("hit")

  bool is_sals() const { return IsSalsPreset(kv_format); }
};

// What the runner compares by default: dense, both SALS presets at their defaults, and SALS-12.5%
// at a wider and a narrower top-k and a fixed budget.
inline constexpr char kDefaultBenchConfigs[] =
    "dense,sals-25,sals-12.5,sals-12.5:topk=1/4,sals-12.5:topk=1/16,sals-12.5:budget=256";

// Errors name the spec and the bad part.
absl::StatusOr<BenchConfig> ParseBenchConfig(std::string_view spec);
absl::StatusOr<std::vector<BenchConfig>> ParseBenchConfigs(const std::vector<std::string>& specs);

}  // namespace sals
