// The whole server as one object: metrics exposer, gRPC (Generation, grpc.health.v1,
// reflection), the engine behind them, and the drain sequence. main() adds signal handling;
// tests run it in-process on loopback ports.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "absl/status/status.h"
#include "engine/runtime/engine.h"
#include "server/config.h"
#include "server/generation_service.h"
#include "server/metrics.h"

namespace sals {

class SalsServer {
 public:
  explicit SalsServer(ServerConfig config);
  ~SalsServer();

  // Listen() then Load().
  absl::Status Start();
  // Binds the metrics and gRPC ports; health answers NOT_SERVING, Generate UNAVAILABLE.
  absl::Status Listen();
  // Loads the model, warms it up, then reports SERVING. Errors name what failed.
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
  ServerConfig config_;
  std::shared_ptr<ServerMetrics> metrics_;
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Engine> engine_;
  int grpc_port_ = 0;
  bool drained_ = false;
};

// One log line on stderr with a timestamp.
void ServerLog(const std::string& message);

}  // namespace sals
