// Hands out the SALS exact slots (per-sequence storage for sink and recent tokens): slot 0 first,
// then the most recently freed one.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace sals {

class SlotAllocator {
 public:
  explicit SlotAllocator(int32_t num_slots);

  std::optional<int32_t> Allocate();
  void Free(int32_t slot);  // `slot` must be allocated
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_slots() const { return num_slots_; }

 private:
  int32_t num_slots_;
  std::vector<int32_t> free_;  // a stack
};

}  // namespace sals
