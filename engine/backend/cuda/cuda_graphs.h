// The CUDA graphs of pure-decode steps, one per key (step_plan.h's GraphKey: everything the
// launches depend on besides the metadata and the buffers).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "engine/backend/cuda/cuda_resources.h"

namespace sals::cuda {

class GraphCache {
 public:
  // Replays the graph of `key`. At first sight of a key, runs `enqueue` eagerly (which also loads
  // every kernel it uses and lets cuBLAS set up for the stream), then captures the same launches
  // for the next steps; a full cache is emptied first.
  absl::Status Run(const std::vector<int64_t>& key, cudaStream_t stream,
                   absl::FunctionRef<absl::Status()> enqueue);

  // Drops every graph: they hold pointers to buffers that moved.
  void Clear() { graphs_.clear(); }

 private:
  std::map<std::vector<int64_t>, GraphExec> graphs_;
};

}  // namespace sals::cuda
