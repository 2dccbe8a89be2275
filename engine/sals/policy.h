// The SALS selection policy of one request: which cached tokens a decode step attends to.
// The pool's storage (engine/kv/kv_format.h) bounds it: a request may use a prefix of the stored
// latent rank and at most the stored sink/recent windows.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kv/kv_format.h"

namespace sals {

// Whose top-k a decode step selects. kShared (the paper): one list per layer, scored with the
// query heads of every GQA group summed and projected by the whole basis U, attended by every
// head. kPerKvHead (beyond the paper): one list per KV head g, scored with U_g^T q_g, where U_g
// are g's rows of U (its head_dim columns of the joint key width) and q_g the sum of g's query
// heads: a projection into the same latent space the cached keys live in, so the latents are
// read once and scored num_kv_heads times; g's query heads attend only g's list.
enum class SalsSelection { kShared, kPerKvHead };

// "shared" / "per_kv_head" (the config's spelling).
std::string_view SalsSelectionName(SalsSelection selection);
absl::StatusOr<SalsSelection> ParseSalsSelection(std::string_view name);

struct SalsPolicy {
  bool select_all = false;       // attend every cached token (no top-k): "dense over SALS storage"
  int rank = 0;                  // latent dims used for reconstruction; 0 = all stored
  int score_dims = 0;            // latent dims used for scoring; 0 = rank / 2
  double topk_fraction = 0.125;  // selected middle tokens as a fraction of the context
  int token_budget = 0;          // > 0: at most this many selected middle tokens
  int sink_tokens = 16;          // first tokens, always attended
  int recent_tokens = 64;        // last tokens (the new one included), always attended
  SalsSelection selection = SalsSelection::kShared;  // one top-k per layer or per KV head

  // The policy with defaults resolved against the storage (rank, score_dims).
  SalsPolicy Resolved(const SalsStorage& storage) const;
};

// Checks ranges and the storage bounds; messages name the field.
absl::Status ValidateSalsPolicy(const SalsPolicy& policy, const SalsStorage& storage);

// Positions a decode step at position `pos` (the new token; context = pos + 1 tokens) attends
// to, in three ranges: sinks [0, sink_end), middle candidates [sink_end, recent_begin) of which
// `topk` are selected, recent [recent_begin, pos].
struct SelectionPlan {
  int64_t sink_end = 0;
  int64_t recent_begin = 0;
  int64_t topk = 0;
};
SelectionPlan PlanSelection(const SalsPolicy& resolved, int64_t pos);

}  // namespace sals
