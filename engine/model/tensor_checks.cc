#include "engine/model/tensor_checks.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/common/absl_compat.h"

namespace sals {

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status CheckTensorRequest(absl::string_view name, absl::string_view where,
                                std::span<const int64_t> actual, absl::string_view dtype_name,
                                std::optional<DType> dtype, std::span<const int64_t> expected,
                                std::optional<DType> dst_type, size_t dst_bytes) {
  if (!std::equal(actual.begin(), actual.end(), expected.begin(), expected.end())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in ", where, " has shape ",
                                                   ShapeString(actual), ", expected ",
                                                   ShapeString(expected)));
  }
  if (!dtype.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in ", where, " has dtype ",
                                                   dtype_name,
                                                   "; weights must be F32, F16 or BF16"));
  }
  if (dst_type.has_value()) {
    size_t elements = 1;
    for (int64_t d : expected) elements *= static_cast<size_t>(d);
    const size_t want = elements * DTypeSize(*dst_type);
    if (dst_bytes != want) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' in ", where, ": destination holds ", dst_bytes, " bytes, but ",
          ShapeString(expected), " in ", ToAbsl(DTypeName(*dst_type)), " needs ", want));
    }
  }
  return absl::OkStatus();
}

}  // namespace sals
