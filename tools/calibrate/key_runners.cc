#include "tools/calibrate/key_runners.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda_loader.h"
#include "engine/sals/dense_capture.h"
#include "tools/calibrate/calibration_steps.h"

namespace sals {
namespace {

constexpr int kBlockSize = 16;

class CpuKeyRunner : public KeyRunner {
 public:
  CpuKeyRunner(const std::vector<std::vector<int32_t>>* seqs, std::unique_ptr<DenseCapture> capture)
      : seqs_(seqs), capture_(std::move(capture)) {}

  absl::StatusOr<int64_t> RunUnit(int64_t next) override {
    if (absl::Status s = capture_->Run((*seqs_)[next]); !s.ok()) return s;
    return next + 1;
  }
  absl::Status Flush(KeyCovariance*) override { return absl::OkStatus(); }

 private:
  const std::vector<std::vector<int32_t>>* seqs_;
  std::unique_ptr<DenseCapture> capture_;
};

class CudaKeyRunner : public KeyRunner {
 public:
  CudaKeyRunner(const std::vector<std::vector<int32_t>>* seqs, std::vector<CalibrationStep> steps,
                std::unique_ptr<CudaBackend> backend, TokensDone tokens_done)
      : seqs_(seqs),
        steps_(std::move(steps)),
        backend_(std::move(backend)),
        tokens_done_(std::move(tokens_done)) {}

  absl::StatusOr<int64_t> RunUnit(int64_t next) override {
    if (next_step_ >= steps_.size() || steps_[next_step_].slices.front().seq != next) {
      return absl::InternalError(
          absl::StrCat("CUDA key runner: asked for sequence ", next, " out of its planned order"));
    }
    std::vector<int32_t> ids;
    for (; next_step_ < steps_.size(); ++next_step_) {
      const CalibrationStep& step = steps_[next_step_];
      ForwardBatch batch;
      const std::vector<std::vector<int32_t>> tables = StepBlockTables(step, kBlockSize);
      int64_t tokens = 0;
      for (size_t i = 0; i < step.slices.size(); ++i) {
        const StepSlice& slice = step.slices[i];
        const std::vector<int32_t>& seq = (*seqs_)[slice.seq];
        batch.tokens.insert(batch.tokens.end(), seq.begin() + slice.begin,
                            seq.begin() + slice.begin + slice.len);
        SequenceSlice& s = batch.seqs.emplace_back();
        s.num_tokens = slice.len;
        s.context_len = slice.begin;
        s.block_table = tables[i];
        tokens += slice.len;
      }
      if (absl::Status s = backend_->ForwardGreedy(batch, &ids); !s.ok()) return s;
      tokens_done_(tokens);
      if (step.sequences_done >= 0) {
        ++next_step_;
        return step.sequences_done;
      }
    }
    return absl::InternalError("CUDA key runner: the plan ends inside a sequence");
  }

  absl::Status Flush(KeyCovariance* covariance) override {
    absl::StatusOr<KeyCovarianceSums> sums = backend_->TakeKeyCovariance();
    if (!sums.ok()) return sums.status();
    for (int l = 0; l < covariance->num_layers(); ++l) {
      if (absl::Status s = covariance->AddSums(l, sums->layers[l], sums->tokens); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

 private:
  const std::vector<std::vector<int32_t>>* seqs_;
  std::vector<CalibrationStep> steps_;
  size_t next_step_ = 0;
  std::unique_ptr<CudaBackend> backend_;
  TokensDone tokens_done_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KeyRunner>> CreateCpuKeyRunner(
    const ModelConfig& config, const WeightSource& weights,
    const std::vector<std::vector<int32_t>>* seqs, int seq_len, int chunk,
    KeyCovariance* covariance, TokensDone tokens_done) {
  auto capture = DenseCapture::Create(
      config, weights, seq_len, chunk,
      [covariance, tokens_done = std::move(tokens_done), last = config.num_layers - 1](
          int layer, std::span<const float> rows, int64_t tokens) {
        covariance->AddProjections(layer, rows, tokens);
        if (layer == last) tokens_done(tokens);
      });
  if (!capture.ok()) return capture.status();
  return std::make_unique<CpuKeyRunner>(seqs, std::move(*capture));
}

absl::StatusOr<std::unique_ptr<KeyRunner>> CreateCudaKeyRunner(
    const ModelConfig& config, const WeightSource& weights,
    const std::vector<std::vector<int32_t>>* seqs, int64_t first, int step_tokens, DType dtype,
    TokensDone tokens_done) {
  std::vector<int64_t> lengths;
  for (const auto& s : *seqs) lengths.push_back(static_cast<int64_t>(s.size()));
  std::vector<CalibrationStep> steps = PlanCalibrationSteps(lengths, first, step_tokens);
  KvPoolConfig pool;
  pool.block_size = kBlockSize;
  pool.num_blocks = std::max(1, BlocksNeeded(steps, kBlockSize));
  CudaBackendOptions options;
  options.dtype = dtype;
  options.cuda_graphs = false;
  options.key_covariance = true;
  auto backend = LoadCudaBackend(config, weights, pool, options);
  if (!backend.ok()) return backend.status();
  return std::make_unique<CudaKeyRunner>(seqs, std::move(steps), std::move(*backend),
                                         std::move(tokens_done));
}

}  // namespace sals
