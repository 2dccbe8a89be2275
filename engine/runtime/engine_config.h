// Everything the engine needs to start: model, backend, KV pool, default attention policy and
// scheduling limits. The server fills it from YAML + flags (server/config.h); tools and tests
// fill it directly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/sals/policy.h"

namespace sals {

struct EngineConfig {
  // Model: an HF directory, or a named synthetic shape with random weights (no tokenizer).
  std::string model_path;
  std::string synthetic_model;
  uint64_t synthetic_seed = 0;
  // SALS calibration file; empty = <model_path>/sals_calibration.safetensors.
  std::string calibration_file;

  std::string backend = "cpu";  // "cpu" or "cuda"
  // CPU backend: OpenMP threads per step; 0 = OpenMP's default (every core, or OMP_NUM_THREADS).
  // Fewer than the cores avoids spinning threads fighting other processes for busy cores.
  int cpu_threads = 0;
  // CUDA backend: weights and activations in "f16" or "bf16" (bf16-trained models whose
  // activations overflow fp16 need bf16; fp16 is the more accurate where it fits).
  std::string cuda_dtype = "f16";

  // KV pool: format preset ("dense", "sals-25", "sals-12.5"), then overrides.
  std::string kv_format = "sals-25";
  // Element type of the stored keys, as vLLM's kv_cache_dtype: "auto" (the format's), "fp16",
  // "fp8"/"fp8_e4m3" (dense K/V and latent keys); dense_dtype / latent_dtype override one side.
  std::string kv_dtype = "auto";
  std::string dense_dtype = "auto";
  std::string latent_dtype = "auto";
  int block_size = 16;
  double kv_memory_gib = 0.25;  // pool size, used when num_blocks is 0
  int num_blocks = 0;
  std::optional<int> value_bits;        // 2, 4 or 16
  std::optional<int> value_group_size;  // divides num_kv_heads * head_dim
  std::optional<int> sink_tokens;
  std::optional<int> recent_tokens;
  std::optional<std::vector<int>> dense_layers;  // default: first two and last

  // The attention policy of requests that name none.
  SalsPolicy default_policy;

  // Scheduling.
  int max_num_seqs = 64;              // running sequences at once
  int max_num_batched_tokens = 2048;  // tokens per step (prefill chunks + decodes)
  // Prefill tokens per step apart from the decodes, which are planned first; 0 = what
  // max_num_batched_tokens leaves (SchedulerConfig).
  int max_prefill_tokens = 0;
  int max_prefill_chunk = 0;         // tokens of one prompt per step at most; 0 = no cap
  int max_num_partial_prefills = 0;  // prompts prefilling at once at most; 0 = no cap
  int max_waiting_requests = 1024;   // queued beyond this: RESOURCE_EXHAUSTED
  int max_model_len = 0;             // prompt + max_tokens; 0 = the model's limit
  bool enable_prefix_caching = true;
  uint64_t seed = 0;  // seeds requests that bring no seed
};

}  // namespace sals
