// The engine's per-row sampling data (engine/sampling/sampler.h) in and out of the sampling
// kernels' plain structs (kernels/include/sals/kernels/sampling.h). Header-only: the CUDA backend
// and the device tests share it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "engine/sampling/sampler.h"
#include "sals/kernels/sampling.h"

namespace sals {

// Appends `s`, sampling logits row `row`, to the kernel's parameter and penalty arrays.
inline void AppendSampleRow(const RowSampling& s, int32_t row,
                            std::vector<kernels::SampleRowParams>* params,
                            std::vector<kernels::PenaltyEntry>* penalties) {
  kernels::SampleRowParams p;
  p.row = row;
  p.temperature = s.temperature;
  p.top_k = s.top_k;
  p.top_p = s.top_p;
  // The same float expression as SelectCandidates', so both sides compare the same threshold.
  p.log_min_p = s.min_p > 0.0f ? std::log(s.min_p) : -std::numeric_limits<float>::infinity();
  p.repetition_penalty = s.repetition_penalty;
  p.frequency_penalty = s.frequency_penalty;
  p.presence_penalty = s.presence_penalty;
  p.uniform = s.uniform;
  p.num_logprobs =
      s.logprobs.has_value() ? std::clamp(*s.logprobs, 0, kernels::kMaxSampleLogprobs) : -1;
  p.penalty_begin = static_cast<int32_t>(penalties->size());
  p.penalty_count = static_cast<int32_t>(s.penalties.size());
  for (const PenaltyToken& t : s.penalties) {
    penalties->push_back(kernels::PenaltyEntry{t.token, t.output_count});
  }
  params->push_back(p);
}

inline SampleResult FromSampleRowResult(const kernels::SampleRowResult& r) {
  SampleResult out;
  out.token = r.token;
  out.logprob = r.logprob;
  for (int i = 0; i < r.num_top; ++i) {
    out.top.push_back(TokenLogprob{r.top_tokens[i], r.top_logprobs[i]});
  }
  return out;
}

}  // namespace sals
