#include "server/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"

namespace sals {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;
using prometheus::Registry;

// vLLM's buckets (vllm/v1/metrics/loggers.py).
const Histogram::BucketBoundaries kTtftBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,   0.75,
    1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160., 640.0, 2560.0};
const Histogram::BucketBoundaries kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                 0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                                 7.5,  10.0,  20.0, 40.0,  80.0};
const Histogram::BucketBoundaries kRequestBuckets = {
    0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
    30.0, 40.0, 50.0, 60.0, 120., 240.0, 480.0, 960.0, 1920.0, 7680.0};
const Histogram::BucketBoundaries kIterationBuckets = {1,   8,    16,   32,   64,   128,  256,
                                                       512, 1024, 2048, 4096, 8192, 16384};

// 1, 2, 5, 10, 20, 50, ... up to `max` (vLLM's build_1_2_5_buckets).
Histogram::BucketBoundaries OneTwoFive(int max) {
  Histogram::BucketBoundaries b;
  for (double scale = 1;; scale *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m * scale > max) return b;
      b.push_back(m * scale);
    }
  }
}

prometheus::Gauge& NewGauge(Registry& r, const std::string& name, const std::string& help,
                            const std::map<std::string, std::string>& labels = {}) {
  return BuildGauge().Name(name).Help(help).Register(r).Add(labels);
}
prometheus::Counter& NewCounter(Registry& r, const std::string& name, const std::string& help) {
  return BuildCounter().Name(name).Help(help).Register(r).Add({});
}
Histogram& NewHistogram(Registry& r, const std::string& name, const std::string& help,
                        const Histogram::BucketBoundaries& buckets) {
  return BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}

}  // namespace

ServerMetrics::ServerMetrics(int max_model_len)
    : registry_(std::make_shared<Registry>()),
      running_(NewGauge(*registry_, "sals:num_requests_running", "Requests being computed.")),
      waiting_(NewGauge(*registry_, "sals:num_requests_waiting", "Requests waiting to run.")),
      kv_usage_(NewGauge(*registry_, "sals:kv_cache_usage_perc",
                         "Fraction of KV pool blocks in use (1 = full).")),
      kv_bytes_total_(NewGauge(*registry_, "sals:kv_cache_bytes_total", "KV pool size, bytes.")),
      kv_bytes_used_(NewGauge(*registry_, "sals:kv_cache_bytes_used", "KV pool bytes in use.")),
      kv_bytes_per_token_actual_(NewGauge(*registry_, "sals:kv_cache_bytes_per_token",
                                          "KV bytes per cached token, all layers.",
                                          {{"kind", "actual"}})),
      kv_bytes_per_token_dense_(NewGauge(*registry_, "sals:kv_cache_bytes_per_token",
                                         "KV bytes per cached token, all layers.",
                                         {{"kind", "dense_fp16"}})),
      fit_4k_(NewGauge(*registry_, "sals:kv_cache_contexts_fit",
                       "Further contexts of this many tokens the free KV pool still holds.",
                       {{"context", "4096"}})),
      fit_32k_(NewGauge(*registry_, "sals:kv_cache_contexts_fit",
                        "Further contexts of this many tokens the free KV pool still holds.",
                        {{"context", "32768"}})),
      fit_128k_(NewGauge(*registry_, "sals:kv_cache_contexts_fit",
                         "Further contexts of this many tokens the free KV pool still holds.",
                         {{"context", "131072"}})),
      preemptions_(NewCounter(*registry_, "sals:num_preemptions_total", "Recompute preemptions.")),
      prompt_tokens_(NewCounter(*registry_, "sals:prompt_tokens_total",
                                "Prompt tokens of finished requests.")),
      generation_tokens_(
          NewCounter(*registry_, "sals:generation_tokens_total", "Generation tokens produced.")),
      prefix_queries_(NewCounter(*registry_, "sals:prefix_cache_queries_total",
                                 "Prompt tokens looked up in the prefix cache.")),
      prefix_hits_(NewCounter(*registry_, "sals:prefix_cache_hits_total",
                              "Prompt tokens served from the prefix cache.")),
      success_(BuildCounter()
                   .Name("sals:request_success_total")
                   .Help("Finished requests by finish reason.")
                   .Register(*registry_)),
      rejected_(BuildCounter()
                    .Name("sals:request_rejected_total")
                    .Help("Requests refused before running, by gRPC status code.")
                    .Register(*registry_)),
      ttft_(NewHistogram(*registry_, "sals:time_to_first_token_seconds",
                         "Time to first token, seconds.", kTtftBuckets)),
      itl_(NewHistogram(*registry_, "sals:inter_token_latency_seconds",
                        "Time between consecutive output tokens, seconds.", kItlBuckets)),
      e2e_(NewHistogram(*registry_, "sals:e2e_request_latency_seconds",
                        "Arrival to completion, seconds.", kRequestBuckets)),
      queue_(NewHistogram(*registry_, "sals:request_queue_time_seconds",
                          "Time waiting before first scheduled, seconds.", kRequestBuckets)),
      prefill_(NewHistogram(*registry_, "sals:request_prefill_time_seconds",
                            "First scheduled to first token, seconds.", kRequestBuckets)),
      decode_(NewHistogram(*registry_, "sals:request_decode_time_seconds",
                           "First token to completion, seconds.", kRequestBuckets)),
      prompt_len_(NewHistogram(*registry_, "sals:request_prompt_tokens", "Prompt length, tokens.",
                               OneTwoFive(max_model_len))),
      generation_len_(NewHistogram(*registry_, "sals:request_generation_tokens",
                                   "Generated length, tokens.", OneTwoFive(max_model_len))),
      iteration_tokens_(NewHistogram(*registry_, "sals:iteration_tokens_total",
                                     "Tokens computed per engine step.", kIterationBuckets)),
      sals_attended_(NewCounter(*registry_, "sals:sals_attended_tokens_total",
                                "Cached tokens SALS decode steps attended, summed over sparse "
                                "layers and sequences.")),
      sals_cached_(NewCounter(*registry_, "sals:sals_cached_tokens_total",
                              "Cached tokens those steps could have attended (the selection "
                              "fraction is attended / cached).")),
      gpu_used_(NewGauge(*registry_, "sals:gpu_memory_used_bytes",
                         "Accelerator memory in use (0 on the CPU backend).")),
      gpu_total_(NewGauge(*registry_, "sals:gpu_memory_total_bytes",
                          "Accelerator memory in all (0 on the CPU backend).")) {
  for (const char* reason : {"stop", "length", "abort"})
    success_.Add({{"finished_reason", reason}});
}

void ServerMetrics::SetEngineInfo(const EngineInfo& info) {
  info_ = info;
  kv_bytes_total_.Set(static_cast<double>(info.kv_bytes.per_block) * info.pool.num_blocks);
  kv_bytes_per_token_actual_.Set(static_cast<double>(info.kv_bytes.per_token));
  kv_bytes_per_token_dense_.Set(static_cast<double>(info.kv_bytes.dense_fp16_per_token));
  BlockUsage empty;
  empty.num_blocks = empty.free = info.pool.num_blocks;
  StepStats stats;
  stats.blocks = empty;
  OnStep(stats);
}

absl::Status ServerMetrics::StartExposer(const std::string& address, int threads,
                                         int request_timeout_ms) {
  try {
    // civetweb's options; its default request timeout is 30 s, with 2 workers.
    exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports", address, "num_threads", std::to_string(threads),
                                 "request_timeout_ms", std::to_string(request_timeout_ms)});
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics exposer cannot listen on ", address, ": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  return absl::OkStatus();
}

int ServerMetrics::port() const {
  if (exposer_ == nullptr) return 0;
  const std::vector<int> ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

void ServerMetrics::OnStep(const StepStats& stats) {
  running_.Set(stats.running);
  waiting_.Set(stats.waiting);
  const BlockUsage& b = stats.blocks;
  kv_usage_.Set(b.num_blocks > 0 ? static_cast<double>(b.used) / b.num_blocks : 0.0);
  kv_bytes_used_.Set(static_cast<double>(b.used) * info_.kv_bytes.per_block);
  // What the blocks nobody holds (free or only cached) would still take in.
  const int64_t free_blocks = b.free + b.evictable;
  fit_4k_.Set(static_cast<double>(info_.kv_bytes.ContextsInBlocks(4096, free_blocks)));
  fit_32k_.Set(static_cast<double>(info_.kv_bytes.ContextsInBlocks(32768, free_blocks)));
  fit_128k_.Set(static_cast<double>(info_.kv_bytes.ContextsInBlocks(131072, free_blocks)));
  if (stats.preempted > 0) preemptions_.Increment(stats.preempted);
  if (const int tokens = stats.prefill_tokens + stats.decode_tokens; tokens > 0) {
    iteration_tokens_.Observe(tokens);
  }
  if (b.queried_tokens > last_queried_) prefix_queries_.Increment(b.queried_tokens - last_queried_);
  if (b.hit_tokens > last_hits_) prefix_hits_.Increment(b.hit_tokens - last_hits_);
  last_queried_ = b.queried_tokens;
  if (stats.sals_attended_tokens > 0) sals_attended_.Increment(stats.sals_attended_tokens);
  if (stats.sals_cached_tokens > 0) sals_cached_.Increment(stats.sals_cached_tokens);
  if (stats.device_memory) {
    gpu_used_.Set(static_cast<double>(stats.device_memory->used_bytes));
    gpu_total_.Set(static_cast<double>(stats.device_memory->total_bytes));
  }
  last_hits_ = b.hit_tokens;
}

void ServerMetrics::OnTokens(int32_t count, double gap_ms) {
  generation_tokens_.Increment(count);
  if (gap_ms > 0) itl_.Observe(gap_ms / 1000.0);
}

void ServerMetrics::OnRequestFinished(const Completion& c, double prefill_ms, double decode_ms) {
  success_.Add({{"finished_reason", std::string(FinishReasonName(c.reason))}}).Increment();
  if (c.completion_tokens > 0) ttft_.Observe(c.ttft_ms / 1000.0);
  e2e_.Observe(c.total_ms / 1000.0);
  queue_.Observe(c.queue_ms / 1000.0);
  prefill_.Observe(prefill_ms / 1000.0);
  decode_.Observe(decode_ms / 1000.0);
  prompt_tokens_.Increment(c.prompt_tokens);
  prompt_len_.Observe(c.prompt_tokens);
  generation_len_.Observe(c.completion_tokens);
}

void ServerMetrics::OnRejected(const std::string& code) {
  rejected_.Add({{"code", code}}).Increment();
}

}  // namespace sals
