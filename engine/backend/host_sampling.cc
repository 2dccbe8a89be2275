#include "engine/backend/host_sampling.h"

#include "absl/strings/str_cat.h"

namespace sals {

absl::Status ValidateSampleRows(const ForwardBatch& batch,
                                std::span<const RowSampling* const> rows) {
  if (rows.size() != batch.seqs.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ForwardSample: ", rows.size(), " sampling rows for ", batch.seqs.size(), " sequences"));
  }
  return absl::OkStatus();
}

void SampleOnHost(const ForwardBatch& batch, std::span<const RowSampling* const> rows,
                  int vocab_size, ForwardOutput* out, std::vector<SampleResult>* results) {
  results->assign(batch.seqs.size(), SampleResult{});
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    if (rows[i] == nullptr) continue;
    const SequenceSlice& seq = batch.seqs[i];
    const int64_t row = out->row_begin[i] + (seq.all_logits ? seq.num_tokens - 1 : 0);
    (*results)[i] =
        SampleRow(std::span<float>(out->logits.data() + row * vocab_size, vocab_size), *rows[i]);
  }
}

}  // namespace sals
