// Shared behaviour of WeightSource implementations.
#include "engine/model/weight_source.h"

#include <vector>

namespace sals {

absl::Status WeightSource::Check(std::string_view name, std::span<const int64_t> shape) const {
  size_t elements = 1;
  for (int64_t d : shape) elements *= d < 0 ? 0 : static_cast<size_t>(d);
  std::vector<float> scratch(elements);
  return ReadF32(name, shape, scratch);
}

}  // namespace sals
