// The kernels' own plans of a step, made by kernels/'s planners (which query the device) over the
// host plan (step_plan.h): the dense decode split, per SALS group the fused decode kernels' plan
// or the fallback's, and the device workspaces they need.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_kv_arena.h"
#include "engine/backend/cuda/step_plan.h"
#include "engine/model/config.h"
#include "sals/kernels/attention.h"
#include "sals/kernels/dtype.h"
#include "sals/kernels/sals_decode.h"

namespace sals::cuda {

struct SalsGroupKernels {
  // As launched: the fast path rebuilds a policy of the whole stored rank from the padded one
  // (zero basis columns), which it names.
  kernels::SalsSelectionPolicy policy;
  kernels::SalsSelectionPolicy stage_policy;  // fallback: stages 1-3 (they only score)
  // SalsDecodeAttention's plan; the fallback's stages 1-3 follow it too.
  kernels::SalsDecodePlan plan;
  kernels::DecodeAttentionPlan dense;  // fallback: dense attention over the scratch rows
};

struct StepKernels {
  kernels::DecodeAttentionPlan decode;   // dense layers' decode slices
  std::vector<SalsGroupKernels> groups;  // the plan's SALS groups, in order
  size_t decode_workspace = 0;           // bytes, for every DecodeAttention of the step
  size_t sals_workspace = 0;             // bytes, for every SALS group's decode stages
};

class StepKernelPlanner {
 public:
  StepKernelPlanner(const ModelConfig& config, const KvPoolConfig& pool, const KvArena& arena,
                    kernels::DType dtype)
      : config_(config), pool_(pool), arena_(arena), dtype_(dtype) {}

  // Refuses head shapes the dense attention kernels do not take (`meta`: any non-null device
  // pointer), so that an unsupported model fails at load rather than at its first step.
  absl::Status CheckShapes(const uint8_t* meta) const;

  // PlanStep's SalsFastPath: plans `group` of `plan` (metadata at `meta` on the device), appending
  // to out->groups; true when SalsDecodeAttention's kernels take the shape, else the fallback.
  absl::StatusOr<bool> PlanSalsGroup(const StepPlan& plan, const SalsGroupPlan& group,
                                     const uint8_t* meta, StepKernels* out) const;

  // After PlanStep: the dense decode split, the fallback groups' dense plans and the workspaces.
  absl::Status Finish(const StepPlan& plan, const uint8_t* meta, StepKernels* out) const;

 private:
  const ModelConfig& config_;
  const KvPoolConfig& pool_;
  const KvArena& arena_;
  const kernels::DType dtype_;
};

// The kernels' launch parameters a captured graph bakes in (GraphKey's kernel_fields).
std::vector<int64_t> KernelKey(const StepKernels& kernels);

}  // namespace sals::cuda
