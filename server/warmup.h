// One short generation through a freshly created engine, so the first client request does not
// pay for first-touch costs (page faults in the pool, thread start-up, CUDA graph capture).
#pragma once

#include "absl/status/status.h"
#include "engine/runtime/engine.h"

namespace sals {

absl::Status WarmUp(Engine& engine);

}  // namespace sals
