// A Backend for tests that passes everything to a real one until a chosen ForwardSample call,
// which (and every later one) fails the way a device fault would.
#pragma once

#include <atomic>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "engine/backend/backend.h"

namespace sals::testing {

class FailingBackend : public Backend {
 public:
  // Calls are counted from 1; `fail_at` 0 never fails.
  FailingBackend(std::unique_ptr<Backend> inner, int fail_at)
      : inner_(std::move(inner)), fail_at_(fail_at) {}
  const ModelConfig& config() const override { return inner_->config(); }
  const KvPoolConfig& kv_pool() const override { return inner_->kv_pool(); }
  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* out) override {
    return inner_->Forward(batch, out);
  }
  absl::Status ForwardSample(const ForwardBatch& batch, std::span<const RowSampling* const> rows,
                             std::vector<SampleResult>* results, ForwardOutput* out) override {
    if (fail_at_ > 0 && ++calls_ >= fail_at_) {
      return absl::InternalError("injected device fault (an illegal memory access)");
    }
    return inner_->ForwardSample(batch, rows, results, out);
  }
  void FailNow() { fail_at_ = 1; }

 private:
  std::unique_ptr<Backend> inner_;
  std::atomic<int> fail_at_;
  std::atomic<int> calls_{0};
};

}  // namespace sals::testing
