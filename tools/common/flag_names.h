// Command-line spelling shared by the tools: flags are declared with '_' (absl) and may be given
// with '-' as well.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sals {

// Rewrites "--max-tokens[=...]" to "--max_tokens[=...]" in place, up to a bare "--"; values and
// positional arguments are left alone. Call before absl::ParseCommandLine.
void NormalizeFlagNames(int argc, char** argv);

// The integers of a list flag (absl's std::vector<std::string>); errors name `flag`.
absl::StatusOr<std::vector<int>> ParseIntListFlag(const char* flag,
                                                  const std::vector<std::string>& items);

}  // namespace sals
