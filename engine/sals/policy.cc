#include "engine/sals/policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/common/absl_compat.h"

namespace sals {

std::string_view SalsSelectionName(SalsSelection selection) {
  return selection == SalsSelection::kPerKvHead ? "per_kv_head" : "shared";
}

absl::StatusOr<SalsSelection> ParseSalsSelection(std::string_view name) {
  for (SalsSelection s : {SalsSelection::kShared, SalsSelection::kPerKvHead}) {
    if (name == SalsSelectionName(s)) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("selection must be shared or per_kv_head, got '", ToAbsl(name), "'"));
}

SalsPolicy SalsPolicy::Resolved(const SalsStorage& storage) const {
  SalsPolicy p = *this;
  if (p.rank == 0) p.rank = storage.rank;
  if (p.score_dims == 0) p.score_dims = std::max(1, p.rank / 2);
  return p;
}

absl::Status ValidateSalsPolicy(const SalsPolicy& policy, const SalsStorage& storage) {
  if (policy.rank < 0 || policy.rank > storage.rank) {
    return absl::InvalidArgumentError(absl::StrCat("rank must be in [0, ", storage.rank,
                                                   "] (the stored rank), got ", policy.rank));
  }
  const int rank = policy.rank == 0 ? storage.rank : policy.rank;
  if (policy.score_dims < 0 || policy.score_dims > rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("score_dims must be in [0, ", rank, "], got ", policy.score_dims));
  }
  if (!(policy.topk_fraction >= 0.0 && policy.topk_fraction <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("topk_fraction must be in [0, 1], got ", policy.topk_fraction));
  }
  if (policy.token_budget < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_budget must be >= 0, got ", policy.token_budget));
  }
  if (!policy.select_all && policy.topk_fraction == 0.0 && policy.token_budget == 0) {
    return absl::InvalidArgumentError("topk_fraction or token_budget must be positive");
  }
  if (policy.sink_tokens < 0 || policy.sink_tokens > storage.sink_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sink_tokens must be in [0, ", storage.sink_tokens, "], got ", policy.sink_tokens));
  }
  if (policy.selection != SalsSelection::kShared && policy.selection != SalsSelection::kPerKvHead) {
    return absl::InvalidArgumentError(absl::StrCat("selection must be shared or per_kv_head, got ",
                                                   static_cast<int>(policy.selection)));
  }
  if (policy.recent_tokens < 1 || policy.recent_tokens > storage.recent_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "recent_tokens must be in [1, ", storage.recent_tokens, "], got ", policy.recent_tokens));
  }
  return absl::OkStatus();
}

SelectionPlan PlanSelection(const SalsPolicy& resolved, int64_t pos) {
  const int64_t context = pos + 1;
  SelectionPlan plan;
  plan.sink_end = std::min<int64_t>(resolved.sink_tokens, context);
  plan.recent_begin = std::max(plan.sink_end, context - resolved.recent_tokens);
  const int64_t middle = plan.recent_begin - plan.sink_end;
  if (resolved.select_all) {
    plan.topk = middle;
    return plan;
  }
  int64_t k = resolved.topk_fraction > 0.0
                  ? static_cast<int64_t>(std::ceil(resolved.topk_fraction * context))
                  : middle;
  if (resolved.token_budget > 0) k = std::min<int64_t>(k, resolved.token_budget);
  plan.topk = std::clamp<int64_t>(k, 0, middle);
  return plan;
}

}  // namespace sals
