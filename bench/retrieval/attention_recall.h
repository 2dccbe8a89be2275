// Top-k recall of the true attention mass for the benchmark's SALS configurations: a dense run
// of the CPU reference over a case's prompt followed by its expected answer records the pre-RoPE
// queries and keys (engine/sals/dense_capture.h), and engine/sals/recall.h measures, at the
// positions whose queries produce the answer tokens, the share of each head's softmax mass that
// falls on the tokens the policy would select (sinks, recent window, top-k by latent score),
// over the format's sparse layers.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sals/basis.h"
#include "engine/sals/dense_capture.h"
#include "engine/sals/policy.h"
#include "engine/sals/recall.h"
#include "tools/common/hf_model.h"

namespace sals {

struct RecallTarget {
  SalsPolicy policy;        // sinks, recent window, top-k / budget, score dims as requests use
  int rank = 0;             // the stored latent rank (policy.rank, when set, is ignored here)
  std::vector<int> layers;  // the sparse layers
};

class AttentionRecallMeter {
 public:
  // Loads the model (CPU reference) and, per rank, its basis from `calibration_file`; sequences
  // of up to `max_len` tokens.
  static absl::StatusOr<std::unique_ptr<AttentionRecallMeter>> Create(
      const std::string& model_dir, const std::string& calibration_file, std::span<const int> ranks,
      int max_len);

  // One dense run over `tokens`, then the recall of each target at positions start.. (the end).
  absl::StatusOr<std::vector<RecallStats>> Measure(std::span<const int32_t> tokens, int64_t start,
                                                   std::span<const RecallTarget> targets);

 private:
  AttentionRecallMeter() = default;

  HfModel model_;
  std::map<int, SalsBasis> bases_;  // by rank
  std::unique_ptr<QueryKeyRecorder> recorder_;
  std::unique_ptr<DenseCapture> capture_;
};

}  // namespace sals
