// The step's metadata on the device (laid out by the host plan, step_plan.h) seen through the
// kernels' cache structs: which block tables and lengths a launch over the sequences of device
// order [first_seq, ...) reads.
#pragma once

#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

#include "engine/backend/cuda/step_plan.h"
#include "engine/model/config.h"
#include "sals/kernels/paged_kv.h"
#include "sals/kernels/sals_kv.h"

namespace sals::cuda {

class StepViews {
 public:
  // `meta`: the device copy of the plan's metadata; `plan` must outlive the views.
  StepViews(const uint8_t* meta, const StepPlan& plan, const ModelConfig& config, int block_size)
      : meta_(meta), plan_(plan), config_(config), block_size_(block_size) {}

  // An array of the metadata, on the device.
  template <typename T>
  const T* at(size_t offset) const {
    return reinterpret_cast<const T*>(meta_ + offset);
  }

  // The paged fp16 pools k and v (a dense layer's) with the step's block tables and lengths.
  kernels::PagedKvCache Paged(const __half* k, const __half* v, int first_seq) const {
    return PagedView(k, v, plan_.meta.tables, plan_.table_stride, plan_.meta.kv_lens, block_size_,
                     first_seq);
  }

  // A SALS layer's storage with the step's block tables, cached lengths and exact slots.
  kernels::SalsKvCache Sals(const kernels::SalsKvCache& storage, int first_seq) const {
    kernels::SalsKvCache cache = storage;
    cache.block_tables =
        at<int32_t>(plan_.meta.tables) + static_cast<int64_t>(first_seq) * plan_.table_stride;
    cache.block_table_stride = plan_.table_stride;
    cache.kv_lens = at<int32_t>(plan_.meta.cached) + first_seq;
    cache.exact_slots = at<int32_t>(plan_.meta.exact_slots) + first_seq;
    cache.exact_valid_from = at<int32_t>(plan_.meta.exact_valid) + first_seq;
    return cache;
  }

  // The scratch pool k, v (materialized SALS rows plus new tokens) with its own tables.
  kernels::PagedKvCache Scratch(const __half* k, const __half* v, int first_seq) const {
    return PagedView(k, v, plan_.meta.scratch_tables, plan_.scratch_stride, plan_.meta.scratch_lens,
                     kScratchBlock, first_seq);
  }

 private:
  kernels::PagedKvCache PagedView(const __half* k, const __half* v, size_t tables, int64_t stride,
                                  size_t lens, int block_size, int first_seq) const {
    kernels::PagedKvCache cache;
    cache.k = k;
    cache.v = v;
    cache.block_tables = at<int32_t>(tables) + static_cast<int64_t>(first_seq) * stride;
    cache.block_table_stride = stride;
    cache.kv_lens = at<int32_t>(lens) + first_seq;
    cache.block_size = block_size;
    cache.num_kv_heads = config_.num_kv_heads;
    cache.head_dim = config_.head_dim;
    return cache;
  }

  const uint8_t* meta_;
  const StepPlan& plan_;
  const ModelConfig& config_;
  int block_size_;
};

}  // namespace sals::cuda
