// Prometheus metrics of the server, named after vLLM's under the prefix "sals:". Implements the
// engine's observer hooks; the exposer serves them over HTTP on its own port.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/engine_observer.h"

namespace sals {

class ServerMetrics : public EngineObserver {
 public:
  // `max_model_len` shapes the token-count histograms' buckets.
  explicit ServerMetrics(int max_model_len);

  // Static facts of the loaded engine (pool size, bytes per token).
  void SetEngineInfo(const EngineInfo& info);
  // Serves /metrics on `address` (host:port) with `threads` HTTP workers; a connection that has
  // not sent its request within `request_timeout_ms` is dropped (so idle or half-open
  // connections can't hold every worker). Errors when the port can't be bound.
  absl::Status StartExposer(const std::string& address, int threads = 8,
                            int request_timeout_ms = 5000);
  // The exposer's port (the bound one when the address asked for port 0).
  int port() const;
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  void OnStep(const StepStats& stats) override;
  void OnTokens(int32_t count, double gap_ms) override;
  void OnRequestFinished(const Completion& completion, double prefill_ms,
                         double decode_ms) override;
  // Requests refused before reaching the engine, by gRPC status code name.
  void OnRejected(const std::string& code);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  EngineInfo info_;

  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& kv_usage_;
  prometheus::Gauge& kv_bytes_total_;
  prometheus::Gauge& kv_bytes_used_;
  prometheus::Gauge& kv_bytes_per_token_actual_;
  prometheus::Gauge& kv_bytes_per_token_dense_;
  prometheus::Gauge& fit_4k_;
  prometheus::Gauge& fit_32k_;
  prometheus::Gauge& fit_128k_;
  prometheus::Counter& preemptions_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Counter& prefix_queries_;
  prometheus::Counter& prefix_hits_;
  prometheus::Family<prometheus::Counter>& success_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& e2e_;
  prometheus::Histogram& queue_;
  prometheus::Histogram& prefill_;
  prometheus::Histogram& decode_;
  prometheus::Histogram& prompt_len_;
  prometheus::Histogram& generation_len_;
  prometheus::Histogram& iteration_tokens_;
  prometheus::Counter& sals_attended_;
  prometheus::Counter& sals_cached_;
  prometheus::Gauge& gpu_used_;
  prometheus::Gauge& gpu_total_;
  int64_t last_queried_ = 0;
  int64_t last_hits_ = 0;
};

}  // namespace sals
