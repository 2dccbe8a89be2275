#include "loadtest/run_plan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace sals::loadtest {

std::string RunPlan::Label() const {
  std::string label;
  if (mode == Mode::kConcurrency) {
    label = absl::StrCat("concurrency ", concurrency, fill_pool ? " (pool)" : "");
  } else {
    label = std::isinf(request_rate) ? "rate inf" : absl::StrCat("rate ", request_rate, "/s");
    if (burstiness != 1.0 && !std::isinf(request_rate)) {
      absl::StrAppend(&label, " gamma ", burstiness);
    }
    if (max_concurrency > 0) absl::StrAppend(&label, " max ", max_concurrency);
  }
  if (background_streams > 0) absl::StrAppend(&label, " + ", background_streams, " background");
  return label;
}

absl::StatusOr<int> PoolConcurrency(int64_t num_blocks, int block_size, int max_batch,
                                    int64_t request_tokens) {
  if (num_blocks < 1 || block_size < 1 || max_batch < 1 || request_tokens < 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("--concurrency pool: the server reports ", num_blocks, " KV blocks of ",
                     block_size, " tokens and ", max_batch,
                     " running sequences at most; requests of ", request_tokens, " tokens"));
  }
  const int64_t blocks_per_request = (request_tokens + block_size - 1) / block_size;
  const int64_t fit = std::min<int64_t>(num_blocks / blocks_per_request, max_batch);
  if (fit < 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--concurrency pool: not one request of ", request_tokens, " tokens (", blocks_per_request,
        " blocks) fits the server's pool of ", num_blocks, " blocks"));
  }
  return static_cast<int>(fit);
}

}  // namespace sals::loadtest
