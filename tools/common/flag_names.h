// Command-line spelling shared by the tools: flags are declared with '_' (absl) and may be given
// with '-' as well.
#pragma once

namespace sals {

// Rewrites "--max-tokens[=...]" to "--max_tokens[=...]" in place, up to a bare "--"; values and
// positional arguments are left alone. Call before absl::ParseCommandLine.
void NormalizeFlagNames(int argc, char** argv);

}  // namespace sals
