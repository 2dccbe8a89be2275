// gRPC adaptation of the engine: one reactor per Generate stream (one write in flight, never
// blocking in a callback; cancel or deadline aborts the sequence), unary Abort and GetModelInfo.
#pragma once

#include <atomic>

#include "engine/runtime/engine.h"
#include "sals/v1/generate.grpc.pb.h"
#include "server/metrics.h"

namespace sals {

class GenerationService final : public v1::Generation::CallbackService {
 public:
  GenerationService(int default_max_tokens, ServerMetrics* metrics)
      : default_max_tokens_(default_max_tokens), metrics_(metrics) {}

  // Until set (model loaded and warmed up), calls answer UNAVAILABLE.
  void SetEngine(Engine* engine) { engine_.store(engine); }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const v1::AbortRequest* request,
                                  v1::AbortResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::GetModelInfoResponse* response) override;

 private:
  std::atomic<Engine*> engine_{nullptr};
  int default_max_tokens_;
  ServerMetrics* metrics_;
};

}  // namespace sals
