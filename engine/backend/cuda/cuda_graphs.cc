#include "engine/backend/cuda/cuda_graphs.h"

#include <cstddef>
#include <utility>

namespace sals::cuda {
namespace {

constexpr size_t kMaxCachedGraphs = 128;

}  // namespace

absl::Status GraphCache::Run(const std::vector<int64_t>& key, cudaStream_t stream,
                             absl::FunctionRef<absl::Status()> enqueue) {
  if (auto it = graphs_.find(key); it != graphs_.end()) return it->second.Launch(stream);
  if (absl::Status s = enqueue(); !s.ok()) return s;
  if (graphs_.size() >= kMaxCachedGraphs) graphs_.clear();
  SALS_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const absl::Status enqueued = enqueue();
  cudaGraph_t raw = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &raw);
  const Graph graph(raw);
  if (!enqueued.ok()) return enqueued;
  SALS_CUDA_RETURN_IF_ERROR(ended);
  auto exec = GraphExec::Instantiate(graph);
  if (!exec.ok()) return exec.status();
  graphs_.emplace(key, std::move(*exec));
  return absl::OkStatus();
}

}  // namespace sals::cuda
