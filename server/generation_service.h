// gRPC adaptation of the engine: one reactor per Generate stream (one write in flight, never
// blocking in a callback; cancel or deadline aborts the sequence), unary Abort and GetModelInfo.
// Every method takes its request as raw bytes and parses it here: for a request protobuf rejects
// (a string field that is not UTF-8) gRPC itself answers UNIMPLEMENTED with no message; here it
// gets INVALID_ARGUMENT saying why. Text prompts are tokenized on a pool of threads, not on
// gRPC's. Request ids live in the caller's namespace (authenticated name, else its connection):
// Abort reaches only the caller's own requests.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"
#include "sals/v1/generate.grpc.pb.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/work_pool.h"

namespace sals {

struct GenerationServiceOptions {
  int default_max_tokens = 256;
  int tokenizer_threads = 2;
  int max_streams_per_client = 0;  // 0 = no limit
  // Set: calls must carry "authorization: Bearer TOKEN" of one of its clients.
  std::shared_ptr<const TokenAuthenticator> auth;
};

class GenerationService final : public v1::Generation::WithRawCallbackMethod_Generate<
                                    v1::Generation::WithRawCallbackMethod_Abort<
                                        v1::Generation::WithRawCallbackMethod_GetModelInfo<
                                            v1::Generation::CallbackService>>> {
 public:
  GenerationService(GenerationServiceOptions options, ServerMetrics* metrics);
  ~GenerationService() override;

  // Until set (model loaded and warmed up), calls answer UNAVAILABLE.
  void SetEngine(Engine* engine) { engine_.store(engine); }
  // Stops the tokenizer threads (queued work is dropped; its calls are cancelled by then).
  void Shutdown();

  // Streams sals.v1.GenerateResponse messages for one sals.v1.GenerateRequest.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  // sals.v1.AbortRequest in, sals.v1.AbortResponse out.
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  // sals.v1.GetModelInfoRequest in, sals.v1.GetModelInfoResponse out.
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

  // Who a call is: the authenticated client's name ("client:NAME"), else its connection
  // ("peer:ipv4:10.0.0.7:41234"); Unauthenticated when auth is on and the call has no valid
  // token. `limit_key` (optional) gets what per-client limits count by: the name, else the
  // peer's address without the port.
  absl::StatusOr<std::string> Identify(const grpc::CallbackServerContext& context,
                                       std::string* limit_key) const;
  // Per-client streams in flight: false when `key` has max_streams_per_client already.
  bool AcquireStream(const std::string& key);
  void ReleaseStream(const std::string& key);

  const GenerationServiceOptions& options() const { return options_; }
  WorkPool& tokenizer_pool() { return tokenizer_pool_; }

 private:
  std::atomic<Engine*> engine_{nullptr};
  GenerationServiceOptions options_;
  ServerMetrics* metrics_;
  WorkPool tokenizer_pool_;
  std::mutex streams_mu_;
  std::map<std::string, int> streams_;  // per-client streams in flight
};

}  // namespace sals
