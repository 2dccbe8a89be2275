#include "bench/retrieval/bench_config.h"

#include <set>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/common/absl_compat.h"

namespace sals {
namespace {

const std::set<std::string> kBenchPresets = {"dense",     "sals-25",     "sals-12.5",
                                             "dense-fp8", "sals-25-fp8", "sals-12.5-fp8"};

// "0.25" or "1/4".
bool ParseFraction(absl::string_view text, double* out) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '/');
  if (parts.size() == 1) return absl::SimpleAtod(text, out);
  double num = 0.0, den = 0.0;
  if (parts.size() != 2 || !absl::SimpleAtod(parts[0], &num) || !absl::SimpleAtod(parts[1], &den) ||
      den == 0.0) {
    return false;
  }
  *out = num / den;
  return true;
}

}  // namespace

absl::StatusOr<BenchConfig> ParseBenchConfig(std::string_view spec_view) {
  const absl::string_view spec = ToAbsl(spec_view);
  std::vector<absl::string_view> parts = absl::StrSplit(spec, ':');
  BenchConfig c;
  c.name = std::string(spec);
  c.kv_format = std::string(parts[0]);
  if (!kBenchPresets.contains(c.kv_format)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config '", spec, "': unknown preset '", c.kv_format,
        "' (known: dense, sals-25, sals-12.5, dense-fp8, sals-25-fp8, sals-12.5-fp8)"));
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    if (parts[i] == "hit") {
      c.prefix_hit = true;
      continue;
    }
    if (!c.is_sals()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config '", spec, "': dense takes no policy keys (only 'hit')"));
    }
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(parts[i], '=');
    const absl::string_view key = kv.first, value = kv.second;
    bool ok = false;
    if (key == "topk") {
      ok = ParseFraction(value, &c.policy.topk_fraction);
    } else if (key == "budget") {
      ok = absl::SimpleAtoi(value, &c.policy.token_budget);
      c.policy.topk_fraction = 0.0;  // a fixed number of middle tokens, whatever the context
    } else if (key == "score_dims") {
      ok = absl::SimpleAtoi(value, &c.policy.score_dims);
    } else if (key == "rank") {
      ok = absl::SimpleAtoi(value, &c.policy.rank);
    } else if (key == "selection") {
      absl::StatusOr<SalsSelection> selection =
          ParseSalsSelection(std::string_view(value.data(), value.size()));
      ok = selection.ok();
      if (ok) c.policy.selection = *selection;
    } else if (key == "sinks") {
      ok = absl::SimpleAtoi(value, &c.policy.sink_tokens);
    } else if (key == "recent") {
      ok = absl::SimpleAtoi(value, &c.policy.recent_tokens);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("config '", spec, "': unknown key '", key,
                       "' (known: topk, budget, score_dims, rank, selection, sinks, recent, hit)"));
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("config '", spec, "': bad value '", value, "' for ", key));
    }
  }
  return c;
}

absl::StatusOr<std::vector<BenchConfig>> ParseBenchConfigs(const std::vector<std::string>& specs) {
  std::vector<BenchConfig> configs;
  std::set<std::string> names;
  for (const std::string& spec : specs) {
    auto c = ParseBenchConfig(spec);
    if (!c.ok()) return c.status();
    if (!names.insert(c->name).second) {
      return absl::InvalidArgumentError(absl::StrCat("config '", spec, "' given twice"));
    }
    configs.push_back(std::move(*c));
  }
  if (configs.empty()) return absl::InvalidArgumentError("no configuration given");
  return configs;
}

}  // namespace sals
