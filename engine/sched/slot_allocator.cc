#include "engine/sched/slot_allocator.h"

namespace sals {

SlotAllocator::SlotAllocator(int32_t num_slots) : num_slots_(num_slots) {
  free_.reserve(num_slots);
  for (int32_t s = num_slots - 1; s >= 0; --s) free_.push_back(s);
}

std::optional<int32_t> SlotAllocator::Allocate() {
  if (free_.empty()) return std::nullopt;
  const int32_t slot = free_.back();
  free_.pop_back();
  return slot;
}

void SlotAllocator::Free(int32_t slot) { free_.push_back(slot); }

}  // namespace sals
