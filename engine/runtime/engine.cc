#include "engine/runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <iterator>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/runtime/stop_strings.h"

namespace sals {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
  }
  return "?";
}

namespace {

// A policy valid for the storage and supported by the engine's backend; errors are prefixed
// "attention: ". Per-KV-head selection exists in the CPU reference only.
absl::Status CheckPolicy(const SalsPolicy& policy, const SalsStorage& storage,
                         const std::string& backend) {
  if (absl::Status s = ValidateSalsPolicy(policy, storage); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("attention: ", s.message()));
  }
  if (backend == "cuda" && policy.selection == SalsSelection::kPerKvHead) {
    return absl::UnimplementedError(
        "attention: selection per_kv_head is not implemented by the CUDA backend (the CPU "
        "reference has it); use selection shared");
  }
  return absl::OkStatus();
}

}  // namespace

struct Engine::Request {
  Request(GenerationRequest r, std::shared_ptr<RequestSink> s, uint64_t seq_id,
          const Tokenizer* tokenizer, const SalsPolicy& policy, uint64_t fallback_seed)
      : req(std::move(r)),
        sink(std::move(s)),
        seq(std::make_unique<Sequence>(seq_id, req.prompt, req.max_tokens, policy)),
        sampler(req.sampling, fallback_seed ^ seq_id),
        stops(req.stop),
        arrival(absl::Now()) {
    if (tokenizer != nullptr) detok.emplace(*tokenizer, req.prompt, /*skip_special=*/true);
  }

  GenerationRequest req;
  std::shared_ptr<RequestSink> sink;
  std::unique_ptr<Sequence> seq;
  SequenceSampler sampler;
  std::optional<IncrementalDetokenizer> detok;
  StopStringMatcher stops;
  absl::Time arrival;
  std::optional<absl::Time> first_scheduled, first_token, last_token;
  bool was_running = false;
  int32_t preemptions = 0;
  bool done = false;
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineConfig& config,
                                                       std::shared_ptr<EngineObserver> observer) {
  if (config.max_num_batched_tokens < 1 || config.max_waiting_requests < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler.max_num_batched_tokens and scheduler.max_waiting_requests must be positive, "
        "got ",
        config.max_num_batched_tokens, " and ", config.max_waiting_requests));
  }
  auto model = LoadModel(config);
  if (!model.ok()) return model.status();
  return Create(config, std::move(observer), std::move(*model));
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineConfig& config,
                                                       std::shared_ptr<EngineObserver> observer,
                                                       LoadedModel loaded) {
  if (config.max_num_batched_tokens < 1 || config.max_waiting_requests < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler.max_num_batched_tokens and scheduler.max_waiting_requests must be positive, "
        "got ",
        config.max_num_batched_tokens, " and ", config.max_waiting_requests));
  }
  auto* model = &loaded;
  if (config.max_model_len < 0 || config.max_model_len > model->config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler.max_model_len must be in [0, ",
                                                   model->config.max_position_embeddings, "], got ",
                                                   config.max_model_len));
  }
  if (model->pool.format.sals) {
    if (absl::Status s =
            CheckPolicy(config.default_policy, *model->pool.format.sals, config.backend);
        !s.ok()) {
      return s;
    }
  }
  SchedulerConfig sc;
  sc.max_num_seqs = config.max_num_seqs;
  sc.max_num_batched_tokens = config.max_num_batched_tokens;
  sc.max_prefill_tokens = config.max_prefill_tokens;
  sc.max_prefill_chunk = config.max_prefill_chunk;
  sc.max_num_partial_prefills = config.max_num_partial_prefills;
  sc.block_size = model->pool.block_size;
  sc.num_blocks = model->pool.num_blocks;
  sc.max_sequences = model->pool.max_sequences;
  sc.enable_prefix_caching = config.enable_prefix_caching;
  if (model->pool.format.sals) {
    // The recent window's exact copies live in the sequence's slot, not in shared blocks: a
    // cached prefix must leave at least that many tokens to recompute.
    sc.prefix_cache_recompute_tokens = std::max(1, model->pool.format.sals->recent_tokens);
  }
  auto scheduler = Scheduler::Create(sc);
  if (!scheduler.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler: ", scheduler.status().message()));
  }
  std::unique_ptr<Engine> engine(new Engine(config, std::move(loaded), std::move(observer)));
  engine->scheduler_ = std::move(*scheduler);
  engine->loop_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

Engine::Engine(const EngineConfig& config, LoadedModel model,
               std::shared_ptr<EngineObserver> observer)
    : config_(config), model_(std::move(model)), observer_(std::move(observer)) {
  info_.model = model_.name;
  info_.config = model_.config;
  info_.pool = model_.pool;
  info_.kv_bytes = model_.kv_bytes;
  info_.max_model_len =
      config.max_model_len > 0 ? config.max_model_len : model_.config.max_position_embeddings;
  info_.max_num_seqs = config.max_num_seqs;
  info_.default_policy = config.default_policy;
  info_.backend = config.backend;
  if (const Tokenizer* tok = model_.tokenizer.get(); tok != nullptr) {
    for (int32_t id = 0; id < tok->vocab_size(); ++id) {
      const int32_t bytes = static_cast<int32_t>(
          std::max(tok->Decode({&id, 1}, false).size(), tok->IdToPiece(id).size()));
      info_.max_token_bytes = std::max(info_.max_token_bytes, bytes);
    }
  }
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (loop_.joinable()) loop_.join();
  // Whatever is left never finishes: tell each sink.
  for (auto& r : inbox_) requests_.emplace(r->seq->id, std::move(r));
  inbox_.clear();
  for (auto& [id, r] : requests_) {
    if (!r->done) Complete(*r, FinishReason::kAbort, "engine shut down");
  }
}

absl::Status Engine::Validate(const GenerationRequest& request) const {
  const int vocab = model_.config.vocab_size;
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt must not be empty");
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    if (request.prompt[i] < 0 || request.prompt[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt token id ", request.prompt[i], " at index ", i,
                       " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  if (request.stop.size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop: ", request.stop.size(), " strings, at most ", kMaxStopStrings));
  }
  for (size_t i = 0; i < request.stop.size(); ++i) {
    if (request.stop[i].size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stop: string ", i, " has ",
                                                     request.stop[i].size(), " bytes, at most ",
                                                     kMaxStopStringBytes));
    }
  }
  if (request.stop_token_ids.size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stop_token_ids: ", request.stop_token_ids.size(), " ids, at most ", kMaxStopTokenIds));
  }
  for (int32_t id : request.stop_token_ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop_token_ids: ", id, " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be at least 1, got ", request.max_tokens));
  }
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  if (total > info_.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", request.prompt.size(), " tokens) + max_tokens (", request.max_tokens,
        ") exceeds the context limit of ", info_.max_model_len, " tokens"));
  }
  const int64_t blocks = (total + model_.pool.block_size - 1) / model_.pool.block_size;
  if (blocks > model_.pool.num_blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt + max_tokens needs ", blocks, " KV blocks, the pool has ",
                     model_.pool.num_blocks, " (", total, " tokens at most ",
                     static_cast<int64_t>(model_.pool.num_blocks) * model_.pool.block_size, ")"));
  }
  if (absl::Status s = ValidateSamplingParams(request.sampling); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: ", s.message()));
  }
  const char* chunk_key = nullptr;
  const int32_t max_chunk = MaxPrefillChunk(scheduler_->config(), &chunk_key);
  if (request.reproducible && model_.pool.format.sals &&
      static_cast<int64_t>(request.prompt.size()) > max_chunk) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reproducible: the prompt (", request.prompt.size(),
        " tokens) must fit one prefill chunk (scheduler.", chunk_key, " = ", max_chunk, ")"));
  }
  if (request.policy && model_.pool.format.sals) {
    if (absl::Status s = CheckPolicy(*request.policy, *model_.pool.format.sals, config_.backend);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::Submit(GenerationRequest request, std::shared_ptr<RequestSink> sink) {
  if (absl::Status s = Validate(request); !s.ok()) return s;
  const SalsPolicy policy = request.policy.value_or(config_.default_policy);
  std::lock_guard<std::mutex> lock(mu_);
  if (!failure_.ok()) {
    return absl::UnavailableError(
        absl::StrCat("the engine failed (", failure_.message(), "); retry on another server"));
  }
  if (!admitting_) return absl::UnavailableError("the server is shutting down");
  if (request.id.empty()) request.id = absl::StrCat("req-", next_id_);
  if (live_ids_.contains(request.id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("a request with id '", request.id, "' is already running"));
  }
  if (num_waiting_ >= config_.max_waiting_requests) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue is full (", config_.max_waiting_requests, " requests); retry later"));
  }
  const std::string id = request.id;
  auto r = std::make_unique<Request>(std::move(request), std::move(sink), next_id_++,
                                     model_.tokenizer.get(), policy, config_.seed);
  r->seq->reproducible = r->req.reproducible && model_.pool.format.sals.has_value();
  live_ids_[id] = r->seq->id;
  inbox_.push_back(std::move(r));
  ++num_waiting_;
  cv_.notify_one();
  return absl::OkStatus();
}

bool Engine::Abort(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!live_ids_.contains(id)) return false;
  aborts_.push_back(id);
  cv_.notify_one();
  return true;
}

void Engine::StopAdmitting() {
  std::lock_guard<std::mutex> lock(mu_);
  admitting_ = false;
}

int32_t Engine::num_live() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int32_t>(live_ids_.size());
}

absl::Status Engine::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

void Engine::Loop() {
  for (;;) {
    std::deque<std::unique_ptr<Request>> incoming;
    std::vector<uint64_t> aborted;
    absl::Status failure;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stop_ || !inbox_.empty() || !aborts_.empty() || scheduler_->has_unfinished();
      });
      if (stop_) return;
      // The inbox moves into the scheduler's waiting queue: num_waiting_ counted it already.
      incoming.swap(inbox_);
      failure = failure_;
      for (const std::string& id : aborts_) {
        if (auto it = live_ids_.find(id); it != live_ids_.end()) aborted.push_back(it->second);
      }
      aborts_.clear();
    }
    for (auto& r : incoming) {
      Request& req = *r;
      requests_.emplace(req.seq->id, std::move(r));
      if (!failure.ok()) {
        // Submitted just before the backend failed: never started, so safe to retry elsewhere.
        Complete(req, FinishReason::kAbort, "engine failed",
                 absl::UnavailableError(absl::StrCat("the engine failed (", failure.message(),
                                                     "); retry on another server")));
        continue;
      }
      if (absl::Status s = scheduler_->Add(req.seq.get()); !s.ok()) {
        Complete(req, FinishReason::kAbort, std::string(s.message()));
      }
    }
    for (uint64_t seq_id : aborted) {
      auto it = requests_.find(seq_id);
      if (it == requests_.end() || it->second->done) continue;
      // Frees its blocks and slot now, before the next step is planned.
      scheduler_->Abort(seq_id).IgnoreError();
      Complete(*it->second, FinishReason::kAbort, "aborted");
    }
    for (auto it = requests_.begin(); it != requests_.end();) {
      auto next = std::next(it);
      if (it->second->done) requests_.erase(it);
      it = next;
    }
    if (scheduler_->has_unfinished()) {
      Step();
    } else if (!aborted.empty()) {
      PublishStats(StepStats{});
    }
    const int32_t waiting = scheduler_->stats().num_waiting;
    std::lock_guard<std::mutex> lock(mu_);
    num_waiting_ = waiting + static_cast<int64_t>(inbox_.size());
  }
}

absl::Status Engine::RestoreSinks(const StepPlan& plan) {
  if (!model_.pool.format.sals || model_.pool.format.sals->sink_tokens == 0) {
    return absl::OkStatus();
  }
  ForwardBatch restore;
  for (const ScheduledSequence& s : plan.seqs) {
    const Sequence& seq = *s.seq;
    // Just admitted with a cached prefix: its slot has no exact sink tokens yet.
    if (seq.num_prefix_cached_tokens == 0 || s.context_len != seq.num_prefix_cached_tokens) {
      continue;
    }
    SequenceSlice slice;
    slice.num_tokens = std::min(model_.pool.format.sals->sink_tokens, s.context_len);
    slice.block_table = seq.block_table;
    slice.exact_slot = seq.exact_slot;
    slice.policy = seq.policy;
    restore.tokens.insert(restore.tokens.end(), seq.token_ids.begin(),
                          seq.token_ids.begin() + slice.num_tokens);
    restore.seqs.push_back(std::move(slice));
  }
  if (restore.seqs.empty()) return absl::OkStatus();
  ForwardOutput discard;
  return model_.backend->Forward(restore, &discard);
}

void Engine::Step() {
  const absl::Time start = absl::Now();
  const StepPlan plan = scheduler_->Schedule();
  if (plan.num_preempted > 0) {
    for (auto& [id, r] : requests_) {
      if (r->was_running && r->seq->status == SequenceStatus::kWaiting) {
        r->was_running = false;
        ++r->preemptions;
      }
    }
  }
  if (plan.seqs.empty()) {
    // Nothing fits this instant (blocks held by finishing work); don't spin.
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return;
  }
  for (const ScheduledSequence& s : plan.seqs) {
    Request& r = *requests_.at(s.seq->id);
    if (!r.first_scheduled) r.first_scheduled = start;
    r.was_running = true;
  }
  if (absl::Status s = RestoreSinks(plan); !s.ok()) return FailAll(s);
  BuildForwardBatch(plan, &batch_);
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    batch_.seqs[i].exact_valid_from = plan.seqs[i].seq->num_prefix_cached_tokens;
  }
  // Each sampled sequence's draw as data (its RNG advances here), executed by the backend: on
  // the device for the CUDA backend, so that no logits leave it.
  sampling_rows_.resize(plan.seqs.size());
  std::vector<const RowSampling*> rows(plan.seqs.size(), nullptr);
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const ScheduledSequence& s = plan.seqs[i];
    if (!s.sample) continue;
    Request& r = *requests_.at(s.seq->id);
    sampling_rows_[i] = r.sampler.Prepare(
        std::span<const int32_t>(s.seq->token_ids).subspan(0, s.seq->num_prompt_tokens),
        s.seq->output_tokens());
    rows[i] = &sampling_rows_[i];
  }
  std::vector<SampleResult> results;
  if (absl::Status s = model_.backend->ForwardSample(batch_, rows, &results, &output_); !s.ok()) {
    return FailAll(s);
  }

  std::vector<int32_t> sampled(plan.seqs.size(), -1);
  StepStats stats;
  stats.prefill_tokens = plan.num_prefill_tokens;
  stats.decode_tokens = plan.num_batched_tokens - plan.num_prefill_tokens;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    if (plan.seqs[i].sample) sampled[i] = results[i].token;
  }
  if (absl::Status s = scheduler_->Postprocess(plan, sampled); !s.ok()) return FailAll(s);
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    if (plan.seqs[i].sample) HandleToken(*requests_.at(plan.seqs[i].seq->id), results[i]);
  }
  stats.preempted = plan.num_preempted;
  stats.sals_attended_tokens = output_.sals_attended_tokens;
  stats.sals_cached_tokens = output_.sals_cached_tokens;
  stats.step_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  PublishStats(stats);
}

void Engine::PublishStats(StepStats stats) {
  if (!observer_) return;
  const SchedulerStats sched = scheduler_->stats();
  stats.running = sched.num_running;
  stats.waiting = sched.num_waiting;
  stats.blocks = sched.blocks;
  stats.device_memory = model_.backend->device_memory();
  observer_->OnStep(stats);
}

void Engine::HandleToken(Request& r, const SampleResult& sample) {
  const absl::Time now = absl::Now();
  const int32_t token = sample.token;
  const double gap_ms = r.last_token ? absl::ToDoubleMilliseconds(now - *r.last_token) : 0.0;
  if (!r.first_token) r.first_token = now;
  r.last_token = now;

  TokenChunk chunk;
  chunk.token_ids.push_back(token);
  if (r.req.sampling.logprobs) chunk.logprobs.push_back(sample);
  const std::string text = r.detok ? r.detok->Append(token) : std::string();
  StopStringMatcher::Result matched = r.stops.Feed(text);
  chunk.text = std::move(matched.emit);

  const auto& eos = model_.config.eos_token_ids;
  std::optional<FinishReason> finish;
  std::string stop_reason;
  if (matched.matched) {
    finish = FinishReason::kStop;
    stop_reason = *matched.matched;
  } else if (!r.req.ignore_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) {
    finish = FinishReason::kStop;
    stop_reason = absl::StrCat("eos:", token);
  } else if (std::find(r.req.stop_token_ids.begin(), r.req.stop_token_ids.end(), token) !=
             r.req.stop_token_ids.end()) {
    finish = FinishReason::kStop;
    stop_reason = absl::StrCat("stop_token:", token);
  } else if (r.seq->status == SequenceStatus::kFinishedLength) {
    finish = FinishReason::kLength;
  }
  if (finish && !matched.matched) {
    // Nothing more will come: release text held back for stop strings or a UTF-8 tail.
    chunk.text += r.stops.Flush();
    if (r.detok) chunk.text += r.detok->Flush();
  }
  if (observer_) observer_->OnTokens(1, gap_ms);
  r.sink->OnChunk(std::move(chunk));
  if (!finish) return;
  if (!r.seq->is_finished()) scheduler_->Finish(r.seq->id).IgnoreError();
  Complete(r, *finish, std::move(stop_reason));
}

void Engine::Complete(Request& r, FinishReason reason, std::string stop_reason,
                      absl::Status error) {
  const absl::Time now = absl::Now();
  Completion c;
  c.reason = reason;
  c.error = std::move(error);
  c.stop_reason = std::move(stop_reason);
  c.prompt_tokens = r.seq->num_prompt_tokens;
  c.completion_tokens = r.seq->num_output_tokens();
  c.cached_prompt_tokens = r.seq->num_prefix_cached_tokens;
  c.queue_ms = r.first_scheduled ? absl::ToDoubleMilliseconds(*r.first_scheduled - r.arrival) : 0;
  c.ttft_ms = r.first_token ? absl::ToDoubleMilliseconds(*r.first_token - r.arrival) : 0;
  c.total_ms = absl::ToDoubleMilliseconds(now - r.arrival);
  c.preemptions = r.preemptions;
  r.done = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    live_ids_.erase(r.req.id);
  }
  if (observer_) {
    const double prefill_ms = r.first_token && r.first_scheduled
                                  ? absl::ToDoubleMilliseconds(*r.first_token - *r.first_scheduled)
                                  : 0.0;
    const double decode_ms = r.first_token ? absl::ToDoubleMilliseconds(now - *r.first_token) : 0.0;
    observer_->OnRequestFinished(c, prefill_ms, decode_ms);
  }
  r.sink->OnComplete(c);
}

void Engine::FailAll(const absl::Status& status) {
  // A backend failure leaves the cache (and a GPU context) in an unknown state: stop admitting,
  // end every request with the error, and tell the observer, which takes the server out of
  // service.
  const absl::Status failure(status.code(), absl::StrCat("backend error: ", status.message()));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_.ok()) failure_ = failure;
    admitting_ = false;
  }
  if (observer_) observer_->OnEngineFailed(failure);
  for (auto& [id, r] : requests_) {
    if (r->done) continue;
    if (!r->seq->is_finished()) scheduler_->Abort(id).IgnoreError();
    Complete(*r, FinishReason::kAbort, std::string(failure.message()),
             absl::InternalError(std::string(failure.message())));
  }
}

}  // namespace sals
