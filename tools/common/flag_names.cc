#include "tools/common/flag_names.h"

#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace sals {

void NormalizeFlagNames(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") break;
    if (!arg.starts_with("--")) continue;
    for (char* c = argv[i] + 2; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
}

absl::StatusOr<std::vector<int>> ParseIntListFlag(const char* flag,
                                                  const std::vector<std::string>& items) {
  std::vector<int> values;
  for (const std::string& item : items) {
    int v = 0;
    if (!absl::SimpleAtoi(item, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", item, "' is not a number"));
    }
    values.push_back(v);
  }
  return values;
}

}  // namespace sals
