// On-device token sampling over rows of fp32 logits: repetition/frequency/presence penalties,
// greedy argmax, temperature, top-k, top-p, min-p, one draw per row, and raw logprobs.
//
// The semantics are those of the engine's host sampler (engine/sampling/sampler.h, after vLLM),
// including its tie rules and the order in which a draw walks the survivors (ascending id). The
// kernels compute every weight bit for bit as the host does (the same exp polynomial, no fused
// multiply-adds), so for the same uniform draw they keep the same tokens and pick the same one;
// they can differ only where a cut or a draw falls within rounding of a boundary, because masses
// are summed here in exact 64-bit fixed point (weights relative to the max, times 2^42) and on the
// host in double. Fixed point also makes every result independent of thread scheduling: a seeded
// request samples the same tokens on every run.
#pragma once

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace sals::kernels {

inline constexpr int kMaxSampleLogprobs = 20;  // as vLLM's default max_logprobs
// Fixed-point sums hold vocab x 2^42 below 2^63.
inline constexpr int kMaxSampleVocab = 1 << 21;

// One row to sample. Plain data; an array of them lives on the device.
struct SampleRowParams {
  int32_t row = 0;           // which row of `logits`
  float temperature = 0.0f;  // 0: greedy (argmax of the penalized logits, lowest id on ties)
  int32_t top_k = 0;         // <= 0 or >= vocab: off
  float top_p = 1.0f;        // (0, 1]; 1: off
  // log(min_p) as the host computes it (so both sides compare the same float); -inf: off.
  float log_min_p = -INFINITY;
  float repetition_penalty = 1.0f;  // applied to every penalty entry of the row
  float frequency_penalty = 0.0f;   // applied to entries with output_count > 0
  float presence_penalty = 0.0f;    // likewise
  double uniform = 0.0;             // the row's draw in [0, 1) (unused when greedy)
  int32_t num_logprobs = -1;        // -1: none; else the chosen token's + the top N (N <= 20)
  int32_t penalty_begin = 0;        // this row's entries in `penalties`
  int32_t penalty_count = 0;
};

// A token the row's penalties touch: each distinct token of prompt + output once, with its count
// in the output (0 for a prompt-only token). Ids outside [0, vocab) are ignored.
struct PenaltyEntry {
  int32_t token = 0;
  int32_t output_count = 0;
};

struct SampleRowResult {
  int32_t token = 0;
  // Raw logprob (log-softmax of the logits before penalties and temperature) of `token`; 0 when
  // num_logprobs < 0.
  float logprob = 0.0f;
  int32_t num_top = 0;  // min(num_logprobs, vocab), 0 when num_logprobs < 0
  // The num_top most likely tokens under the raw distribution, descending, ties by ascending id.
  int32_t top_tokens[kMaxSampleLogprobs] = {};
  float top_logprobs[kMaxSampleLogprobs] = {};
};

// Device scratch SampleRows needs.
size_t SampleRowsWorkspaceBytes(int64_t num_rows, int64_t num_penalties);

// Samples one token per entry of `params` (device array of num_rows). `logits` (rows x vocab,
// device) is modified in place: the penalties are applied to the sampled rows. `penalties`
// (device, num_penalties entries) must hold distinct tokens within a row. Results go to `results`
// (device, num_rows). Enqueued on `stream`; returns argument and launch errors only.
absl::Status SampleRows(float* logits, int vocab, const SampleRowParams* params, int64_t num_rows,
                        const PenaltyEntry* penalties, int64_t num_penalties, void* workspace,
                        size_t workspace_bytes, SampleRowResult* results, cudaStream_t stream);

}  // namespace sals::kernels
