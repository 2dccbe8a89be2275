#include "loadtest/run_plan.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace sals::loadtest {

std::string RunPlan::Label() const {
  std::string label;
  if (mode == Mode::kConcurrency) {
    label = absl::StrCat("concurrency ", concurrency);
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

}  // namespace sals::loadtest
