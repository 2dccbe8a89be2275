// One Generate stream driven by gRPC's callback API (no thread of its own): it timestamps every
// chunk with steady_clock, counts the tokens it carries, keeps the server's usage from the final
// message, and hands a RequestRecord to its owner when the stream ends.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>

#include "loadtest/request_record.h"
#include "sals/v1/generate.grpc.pb.h"

namespace sals::loadtest {

class StreamCall final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  using DoneCallback = std::function<void(RequestRecord)>;
  using FirstTokenCallback = std::function<void()>;

  // Starts the call at once; `done` runs on a gRPC thread when the stream has ended, after which
  // the object deletes itself. `first_token` (may be empty) runs on a gRPC thread when the first
  // token arrives.
  static void Start(v1::Generation::Stub* stub, v1::GenerateRequest request,
                    std::chrono::milliseconds timeout, Clock::time_point run_start, bool warmup,
                    DoneCallback done, FirstTokenCallback first_token = {});

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  StreamCall(v1::GenerateRequest request, DoneCallback done);

  grpc::ClientContext context_;
  v1::GenerateRequest request_;
  v1::GenerateResponse response_;
  DoneCallback done_;
  FirstTokenCallback first_token_;
  Clock::time_point sent_;
  Clock::time_point last_chunk_;
  RequestRecord record_;
};

}  // namespace sals::loadtest
