// The whole server as one object: metrics exposer, gRPC (Generation, grpc.health.v1,
// reflection), the engine behind them, and the drain sequence. main() adds signal handling;
// tests run it in-process on loopback ports.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "engine/runtime/engine.h"
#include "server/config.h"
#include "server/generation_service.h"
#include "server/metrics.h"

namespace sals {

// Makes the engine; the default is Engine::Create (tests wrap the backend to inject faults).
using EngineFactory = std::function<absl::StatusOr<std::unique_ptr<Engine>>(
    const EngineConfig& config, std::shared_ptr<EngineObserver> observer)>;

// The gRPC service name whose health is the server's (as is the whole server's, "").
inline constexpr char kGenerationServiceName[] = "sals.v1.Generation";

class SalsServer {
 public:
  explicit SalsServer(ServerConfig config, EngineFactory engine_factory = nullptr);
  ~SalsServer();

  // Listen() then Load().
  absl::Status Start();
  // Binds the metrics and gRPC ports; health answers NOT_SERVING, Generate UNAVAILABLE.
  absl::Status Listen();
  // Loads the model, warms it up, then reports SERVING. Errors name what failed. Should the
  // engine fail later (a backend error), health turns NOT_SERVING for good and it is logged.
  absl::Status Load();
  // Health NOT_SERVING, no new requests, in-flight streams get up to `grace` to finish; then the
  // rest are cancelled and everything stops. Returns how many requests were cut.
  int Drain(absl::Duration grace);

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_->port(); }
  Engine* engine() { return engine_.get(); }
  ServerMetrics& metrics() { return *metrics_; }
  const ServerConfig& config() const { return config_; }

 private:
  class EngineWatch;
  // Health of the server and of kGenerationServiceName.
  void SetServing(bool serving);

  ServerConfig config_;
  EngineFactory engine_factory_;
  std::shared_ptr<ServerMetrics> metrics_;
  std::shared_ptr<EngineWatch> watch_;  // the engine's observer: metrics, failures
  std::atomic<bool> engine_failed_{false};
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Engine> engine_;
  int grpc_port_ = 0;
  bool drained_ = false;
};

// One info-level event in the server's log (server/log.h).
void ServerLog(const std::string& message);

}  // namespace sals
