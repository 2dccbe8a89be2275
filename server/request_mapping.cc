#include "server/request_mapping.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sals {
namespace {

absl::Status ApplyAttention(const v1::AttentionPolicy& a, const EngineInfo& info,
                            GenerationRequest* out) {
  if (!v1::AttentionPolicy::Preset_IsValid(a.preset())) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention.preset: unknown value ", static_cast<int>(a.preset())));
  }
  const bool has_override =
      a.has_topk_fraction() || a.has_token_budget() || a.has_sink_tokens() || a.has_recent_tokens();
  if (a.preset() == v1::AttentionPolicy::PRESET_UNSPECIFIED && !has_override) {
    return absl::OkStatus();
  }
  const auto& sals = info.pool.format.sals;
  if (!sals) {
    if (a.preset() == v1::AttentionPolicy::PRESET_DENSE && !has_override) return absl::OkStatus();
    return absl::InvalidArgumentError(
        "attention: this server's KV pool is dense; SALS policies need a SALS pool "
        "(kv_cache.format)");
  }
  SalsPolicy p = info.default_policy;
  const int width = info.config.kv_width();
  switch (a.preset()) {
    case v1::AttentionPolicy::PRESET_DENSE:
      p.select_all = true;
      break;
    case v1::AttentionPolicy::PRESET_SALS_25:
      p = SalsPolicy{};
      p.rank = width / 4;
      break;
    case v1::AttentionPolicy::PRESET_SALS_12_5:
      p = SalsPolicy{};
      p.rank = width / 8;
      break;
    default:
      break;
  }
  // A preset keeps the server's selection scope (attention.selection): not a request field.
  p.selection = info.default_policy.selection;
  if ((a.preset() == v1::AttentionPolicy::PRESET_SALS_25 ||
       a.preset() == v1::AttentionPolicy::PRESET_SALS_12_5) &&
      p.rank > sals->rank) {
    return absl::InvalidArgumentError(absl::StrCat("attention.preset: needs latent rank ", p.rank,
                                                   ", the KV pool stores rank ", sals->rank));
  }
  // A preset's sink/recent windows never exceed what the pool keeps exact.
  p.sink_tokens = std::min(p.sink_tokens, sals->sink_tokens);
  p.recent_tokens = std::min(p.recent_tokens, sals->recent_tokens);
  if (a.has_topk_fraction()) p.topk_fraction = a.topk_fraction();
  if (a.has_token_budget()) {
    p.token_budget = static_cast<int>(std::min<uint32_t>(a.token_budget(), 1u << 30));
    if (!a.has_topk_fraction()) p.topk_fraction = 0.0;  // a budget alone sets k
  }
  // Windows beyond what the pool keeps exact are refused (by ValidateSalsPolicy); say so with the
  // value sent rather than a clamped one.
  if (a.has_sink_tokens()) {
    if (a.sink_tokens() > static_cast<uint32_t>(sals->sink_tokens)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "attention.sink_tokens: ", a.sink_tokens(),
          " exceeds the sink tokens the KV pool keeps exact (", sals->sink_tokens, ")"));
    }
    p.sink_tokens = static_cast<int>(a.sink_tokens());
  }
  if (a.has_recent_tokens()) {
    if (a.recent_tokens() > static_cast<uint32_t>(sals->recent_tokens)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "attention.recent_tokens: ", a.recent_tokens(),
          " exceeds the recent tokens the KV pool keeps exact (", sals->recent_tokens, ")"));
    }
    p.recent_tokens = static_cast<int>(a.recent_tokens());
  }
  out->policy = p;
  return absl::OkStatus();
}

}  // namespace

int64_t MaxTextBytes(const EngineInfo& info) {
  return static_cast<int64_t>(info.max_model_len) * std::max(1, info.max_token_bytes);
}

absl::StatusOr<GenerationRequest> ToGenerationRequest(const v1::GenerateRequest& request,
                                                      const Engine& engine,
                                                      int default_max_tokens) {
  GenerationRequest r;
  r.id = request.request_id();
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText:
      if (engine.tokenizer() == nullptr) {
        return absl::InvalidArgumentError(
            "text: this model has no tokenizer (synthetic weights); send token_ids");
      }
      if (request.text().empty()) return absl::InvalidArgumentError("text must not be empty");
      if (const int64_t limit = MaxTextBytes(engine.info());
          static_cast<int64_t>(request.text().size()) > limit) {
        // Refused unread: tokenizing megabytes would only find it too long.
        return absl::InvalidArgumentError(
            absl::StrCat("text: ", request.text().size(), " bytes, at most ", limit,
                         " (the context of ", engine.info().max_model_len, " tokens of at most ",
                         engine.info().max_token_bytes, " bytes each)"));
      }
      {
        // Tokenizing stops once the text is past the context limit (for tokenizers that can).
        const size_t limit = static_cast<size_t>(engine.info().max_model_len);
        r.prompt = engine.tokenizer()->EncodeAtMost(request.text(), /*add_bos=*/true, limit);
        if (r.prompt.size() > limit) {
          return absl::InvalidArgumentError(absl::StrCat("text: more than ", limit,
                                                         " tokens, the context limit (",
                                                         request.text().size(), " bytes)"));
        }
      }
      break;
    case v1::GenerateRequest::kTokenIds: {
      const int vocab = engine.info().config.vocab_size;
      const auto& ids = request.token_ids().ids();
      for (int i = 0; i < ids.size(); ++i) {
        // Checked here, where the value sent is still whole (as int32 it would be clamped).
        if (ids[i] >= static_cast<uint32_t>(vocab)) {
          return absl::InvalidArgumentError(absl::StrCat("token_ids: id ", ids[i], " at index ", i,
                                                         " is outside the vocabulary [0, ", vocab,
                                                         ")"));
        }
        r.prompt.push_back(static_cast<int32_t>(ids[i]));
      }
      if (r.prompt.empty()) return absl::InvalidArgumentError("token_ids must not be empty");
      break;
    }
    default:
      return absl::InvalidArgumentError("prompt: set text or token_ids");
  }
  const v1::SamplingParams& s = request.sampling();
  if (s.has_max_tokens() && s.max_tokens() == 0) {
    return absl::InvalidArgumentError("sampling.max_tokens must be at least 1");
  }
  if (s.has_max_tokens() && s.max_tokens() > static_cast<uint32_t>(engine.info().max_model_len)) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.max_tokens: ", s.max_tokens(),
                                                   " exceeds the context limit of ",
                                                   engine.info().max_model_len, " tokens"));
  }
  r.max_tokens = s.has_max_tokens() ? static_cast<int32_t>(s.max_tokens()) : default_max_tokens;
  if (s.has_temperature()) r.sampling.temperature = s.temperature();
  if (s.has_top_k()) r.sampling.top_k = s.top_k();
  if (s.has_top_p()) r.sampling.top_p = s.top_p();
  if (s.has_min_p()) r.sampling.min_p = s.min_p();
  if (s.has_repetition_penalty()) r.sampling.repetition_penalty = s.repetition_penalty();
  if (s.has_frequency_penalty()) r.sampling.frequency_penalty = s.frequency_penalty();
  if (s.has_presence_penalty()) r.sampling.presence_penalty = s.presence_penalty();
  if (s.has_seed()) r.sampling.seed = s.seed();
  if (s.has_logprobs()) {
    if (s.logprobs() > static_cast<uint32_t>(kMaxLogprobs)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.logprobs: ", s.logprobs(), ", at most ", kMaxLogprobs));
    }
    r.sampling.logprobs = static_cast<int>(s.logprobs());
  }
  r.stop.assign(s.stop().begin(), s.stop().end());
  const int vocab = engine.info().config.vocab_size;
  for (uint32_t id : s.stop_token_ids()) {
    if (id >= static_cast<uint32_t>(vocab)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.stop_token_ids: ", id, " is outside the vocabulary [0, ", vocab, ")"));
    }
    r.stop_token_ids.push_back(static_cast<int32_t>(id));
  }
  r.ignore_eos = s.ignore_eos();
  r.reproducible = request.reproducible();
  if (absl::Status st = ApplyAttention(request.attention(), engine.info(), &r); !st.ok()) {
    return st;
  }
  return r;
}

void FillChunk(const TokenChunk& chunk, const Tokenizer* tokenizer, v1::GenerateChunk* out) {
  for (int32_t id : chunk.token_ids) out->add_token_ids(static_cast<uint32_t>(id));
  out->mutable_text()->append(chunk.text);
  for (const SampleResult& s : chunk.logprobs) {
    v1::Logprobs* lp = out->add_logprobs();
    lp->set_logprob(s.logprob);
    for (const TokenLogprob& t : s.top) {
      v1::TokenLogprob* top = lp->add_top();
      top->set_token_id(static_cast<uint32_t>(t.token));
      top->set_logprob(t.logprob);
      if (tokenizer != nullptr) top->set_text(tokenizer->Decode({&t.token, 1}, false));
    }
  }
}

void FillComplete(const Completion& c, v1::GenerateComplete* out) {
  switch (c.reason) {
    case FinishReason::kStop:
      out->set_finish_reason(v1::FINISH_REASON_STOP);
      break;
    case FinishReason::kLength:
      out->set_finish_reason(v1::FINISH_REASON_LENGTH);
      break;
    case FinishReason::kAbort:
      out->set_finish_reason(v1::FINISH_REASON_ABORT);
      break;
  }
  out->set_stop_reason(c.stop_reason);
  out->mutable_usage()->set_prompt_tokens(c.prompt_tokens);
  out->mutable_usage()->set_completion_tokens(c.completion_tokens);
  out->mutable_usage()->set_cached_prompt_tokens(c.cached_prompt_tokens);
  out->mutable_timings()->set_queue_ms(c.queue_ms);
  out->mutable_timings()->set_time_to_first_token_ms(c.ttft_ms);
  out->mutable_timings()->set_total_ms(c.total_ms);
  out->mutable_timings()->set_preemptions(c.preemptions);
}

void FillModelInfo(const EngineInfo& info, v1::GetModelInfoResponse* out) {
  const ModelConfig& m = info.config;
  out->set_model(info.model);
  out->set_architecture(m.architecture);
  out->set_vocab_size(m.vocab_size);
  out->set_num_layers(m.num_layers);
  out->set_num_heads(m.num_heads);
  out->set_num_kv_heads(m.num_kv_heads);
  out->set_head_dim(m.head_dim);
  out->set_max_context(info.max_model_len);
  out->set_max_batch(info.max_num_seqs);
  out->set_backend(info.backend);
  v1::KvCacheInfo* kv = out->mutable_kv_cache();
  const KvCacheFormat& f = info.pool.format;
  kv->set_format(f.sals ? "sals" : "dense");
  kv->set_block_size(info.pool.block_size);
  kv->set_num_blocks(info.pool.num_blocks);
  kv->set_pool_bytes(static_cast<uint64_t>(info.kv_bytes.per_block) * info.pool.num_blocks);
  if (f.sals) {
    kv->set_latent_rank(f.sals->rank);
    kv->set_value_bits(f.sals->values.bits);
    kv->set_value_group_size(f.sals->values.group_size);
    kv->set_sink_tokens(f.sals->sink_tokens);
    kv->set_recent_tokens(f.sals->recent_tokens);
  }
  for (int l = 0; l < m.num_layers; ++l) {
    if (f.IsDense(l)) kv->add_dense_layers(l);
  }
  kv->set_bytes_per_token(static_cast<double>(info.kv_bytes.per_token));
  kv->set_dense_fp16_bytes_per_token(static_cast<double>(info.kv_bytes.dense_fp16_per_token));
  kv->set_contexts_4k(info.kv_bytes.ContextsInBlocks(4096, info.pool.num_blocks));
  kv->set_contexts_32k(info.kv_bytes.ContextsInBlocks(32768, info.pool.num_blocks));
  kv->set_contexts_128k(info.kv_bytes.ContextsInBlocks(131072, info.pool.num_blocks));
  v1::AttentionPolicy* a = out->mutable_default_attention();
  a->set_topk_fraction(info.default_policy.topk_fraction);
  a->set_token_budget(info.default_policy.token_budget);
  a->set_sink_tokens(info.default_policy.sink_tokens);
  a->set_recent_tokens(info.default_policy.recent_tokens);
}

}  // namespace sals
