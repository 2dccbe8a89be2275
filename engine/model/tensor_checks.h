// The checks every WeightSource::Read makes before converting (internal to engine/model).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/common/dtype.h"

namespace sals {

// "[4096, 128]"
std::string ShapeString(std::span<const int64_t> shape);

// Checks a found tensor against a request: its shape equals `expected`, its dtype is a float one
// (dtype set), and, when dst_bytes is given, the destination holds exactly the converted tensor.
// `where` names the file(s) in messages.
absl::Status CheckTensorRequest(absl::string_view name, absl::string_view where,
                                std::span<const int64_t> actual, absl::string_view dtype_name,
                                std::optional<DType> dtype, std::span<const int64_t> expected,
                                std::optional<DType> dst_type, size_t dst_bytes);

}  // namespace sals
