#include "bench/retrieval/attention_recall.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace sals {
namespace {
constexpr int kCaptureChunk = 512;  // prefill chunk of the dense run (exact either way)
}  // namespace

absl::StatusOr<std::unique_ptr<AttentionRecallMeter>> AttentionRecallMeter::Create(
    const std::string& model_dir, const std::string& calibration_file, std::span<const int> ranks,
    int max_len) {
  std::unique_ptr<AttentionRecallMeter> m(new AttentionRecallMeter());
  auto model = LoadHfModel(model_dir);
  if (!model.ok()) return model.status();
  m->model_ = std::move(*model);
  const std::filesystem::path file = calibration_file.empty()
                                         ? std::filesystem::path(model_dir) / kCalibrationFileName
                                         : std::filesystem::path(calibration_file);
  for (int rank : ranks) {
    auto basis = LoadSalsBasis(file, m->model_.config, rank);
    if (!basis.ok()) return basis.status();
    m->bases_.emplace(rank, std::move(*basis));
  }
  // The observer writes into whichever recorder is current: a fresh one per sequence.
  AttentionRecallMeter* self = m.get();
  auto capture = DenseCapture::Create(m->model_.config, *m->model_.weights, max_len, kCaptureChunk,
                                      [self](int layer, std::span<const float> rows, int64_t n) {
                                        self->recorder_->Observe(layer, rows, n);
                                      });
  if (!capture.ok()) return capture.status();
  m->capture_ = std::move(*capture);
  return m;
}

absl::StatusOr<std::vector<RecallStats>> AttentionRecallMeter::Measure(
    std::span<const int32_t> tokens, int64_t start, std::span<const RecallTarget> targets) {
  recorder_ = std::make_unique<QueryKeyRecorder>(model_.config);
  if (absl::Status s = capture_->Run(tokens); !s.ok()) return s;
  std::vector<RecallStats> stats;
  for (const RecallTarget& t : targets) {
    auto basis = bases_.find(t.rank);
    if (basis == bases_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("no basis loaded for rank ", t.rank));
    }
    RecallOptions options;
    options.policy = t.policy;
    // MeasureRecall scores with the basis's rank; a smaller rank only changes the default
    // scoring dims, as the backend resolves them.
    if (options.policy.score_dims == 0 && options.policy.rank > 0) {
      options.policy.score_dims = std::max(1, options.policy.rank / 2);
    }
    options.policy.rank = 0;
    options.start = start;
    options.layers = t.layers;
    auto report = MeasureRecall(model_.config, basis->second, *recorder_, options);
    if (!report.ok()) return report.status();
    stats.push_back(report->overall);
  }
  recorder_.reset();
  return stats;
}

}  // namespace sals
