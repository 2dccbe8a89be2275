// Hooks through which the server turns engine activity into metrics; the engine knows no
// metrics library. Calls come from the step thread and must be cheap.
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "engine/backend/backend.h"
#include "engine/runtime/request.h"
#include "engine/sched/block_manager.h"

namespace sals {

struct StepStats {
  int32_t running = 0;
  int32_t waiting = 0;
  int32_t prefill_tokens = 0;
  int32_t decode_tokens = 0;
  int32_t preempted = 0;
  double step_ms = 0.0;
  BlockUsage blocks;
  int64_t sals_attended_tokens = 0;  // see ForwardOutput
  int64_t sals_cached_tokens = 0;
  std::optional<DeviceMemory> device_memory;
};

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const StepStats& stats) = 0;
  // `gap_ms`: time since the request's previous tokens (inter-token latency), 0 for the first.
  virtual void OnTokens(int32_t count, double gap_ms) = 0;
  virtual void OnRequestFinished(const Completion& completion, double prefill_ms,
                                 double decode_ms) = 0;
  // The backend failed and the engine stopped serving (Engine::failure()); called once.
  virtual void OnEngineFailed(const absl::Status& /*status*/) {}
};

}  // namespace sals
