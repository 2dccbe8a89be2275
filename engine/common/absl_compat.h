// This build's Abseil has its own string_view type (ABSL_OPTION_USE_STD_STRING_VIEW 0), which
// absl::StrCat and friends take; our interfaces use std::string_view.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace sals {

inline absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }

}  // namespace sals
