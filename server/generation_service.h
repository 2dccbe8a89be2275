// gRPC adaptation of the engine: one reactor per Generate stream (one write in flight, never
// blocking in a callback; cancel or deadline aborts the sequence), unary Abort and GetModelInfo.
// Generate and Abort take their requests as raw bytes and parse them here: for a request protobuf
// rejects (a string field that is not UTF-8) gRPC itself answers UNIMPLEMENTED with no message;
// here it gets INVALID_ARGUMENT saying why.
#pragma once

#include <atomic>

#include "engine/runtime/engine.h"
#include "sals/v1/generate.grpc.pb.h"
#include "server/metrics.h"

namespace sals {

class GenerationService final
    : public v1::Generation::WithRawCallbackMethod_Generate<
          v1::Generation::WithRawCallbackMethod_Abort<v1::Generation::CallbackService>> {
 public:
  GenerationService(int default_max_tokens, ServerMetrics* metrics)
      : default_max_tokens_(default_max_tokens), metrics_(metrics) {}

  // Until set (model loaded and warmed up), calls answer UNAVAILABLE.
  void SetEngine(Engine* engine) { engine_.store(engine); }

  // Streams sals.v1.GenerateResponse messages for one sals.v1.GenerateRequest.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  // sals.v1.AbortRequest in, sals.v1.AbortResponse out.
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::GetModelInfoResponse* response) override;

 private:
  std::atomic<Engine*> engine_{nullptr};
  int default_max_tokens_;
  ServerMetrics* metrics_;
};

}  // namespace sals
