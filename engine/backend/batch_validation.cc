#include "engine/backend/batch_validation.h"

#include "absl/strings/str_cat.h"

namespace sals {

absl::Status ValidateForwardBatch(const ForwardBatch& batch, const ModelConfig& config,
                                  const KvPoolConfig& pool) {
  int64_t total = 0;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const SequenceSlice& seq = batch.seqs[s];
    if (seq.num_tokens <= 0 || seq.context_len < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", s, ": num_tokens ", seq.num_tokens, ", context_len ", seq.context_len));
    }
    const int64_t needed_blocks =
        (static_cast<int64_t>(seq.context_len) + seq.num_tokens + pool.block_size - 1) /
        pool.block_size;
    if (static_cast<int64_t>(seq.block_table.size()) < needed_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block table has ",
                                                     seq.block_table.size(), " blocks, needs ",
                                                     needed_blocks));
    }
    for (int64_t b = 0; b < needed_blocks; ++b) {
      const int32_t block = seq.block_table[b];
      if (block < 0 || block >= pool.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block id ", block,
                                                       " outside the pool of ", pool.num_blocks));
      }
    }
    if (pool.format.sals) {
      if (seq.exact_slot < 0 || seq.exact_slot >= pool.max_sequences) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": exact_slot ",
                                                       seq.exact_slot, " outside [0, ",
                                                       pool.max_sequences, ")"));
      }
      if (absl::Status st = ValidateSalsPolicy(seq.policy, *pool.format.sals); !st.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": ", st.message()));
      }
    }
    total += seq.num_tokens;
  }
  if (total != static_cast<int64_t>(batch.tokens.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch has ", batch.tokens.size(), " tokens, sequences claim ", total));
  }
  for (size_t i = 0; i < batch.tokens.size(); ++i) {
    if (batch.tokens[i] < 0 || batch.tokens[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", batch.tokens[i], " outside the vocabulary of ", config.vocab_size));
    }
  }
  return absl::OkStatus();
}

int32_t AssignLogitRows(const ForwardBatch& batch, std::vector<int32_t>* row_begin) {
  row_begin->resize(batch.seqs.size());
  int32_t rows = 0;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    (*row_begin)[s] = rows;
    rows += batch.seqs[s].all_logits ? batch.seqs[s].num_tokens : 1;
  }
  return rows;
}

}  // namespace sals
