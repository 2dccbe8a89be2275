// Releases requests to the server: at the times an arrival process draws (optionally capped at a
// number in flight), or keeping a fixed number in flight; until a request count and/or a duration
// is reached, then waits for the requests still in flight. One scheduler thread (the caller's);
// the streams run on gRPC's callback threads.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loadtest/run_plan.h"
#include "loadtest/stream_call.h"
#include "loadtest/workload.h"
#include "sals/v1/generate.grpc.pb.h"

namespace sals::loadtest {

// Fields every request shares.
struct RequestTemplate {
  v1::SamplingParams sampling;  // max_tokens is set per request
  v1::AttentionPolicy attention;
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

class Runner {
 public:
  // Requests go round-robin over `channels` (separate HTTP/2 connections). `stop` (may be null)
  // ends sending early when it turns true; requests in flight still finish. `background` (may
  // be null) gives the streams of RunPlan::background_streams.
  Runner(std::vector<std::shared_ptr<grpc::Channel>> channels, RequestTemplate request_template,
         Workload* workload, LiveCounters* live, const std::atomic<bool>* stop,
         Workload* background = nullptr);

  RunResult Run(const RunPlan& plan);
  // `count` requests, `concurrency` at a time, marked as warm-up.
  RunResult WarmUp(int64_t count, int concurrency);

 private:
  RunResult Drive(const RunPlan& plan, bool warmup);
  v1::GenerateRequest MakeRequest(WorkItem item) const;

  std::vector<std::unique_ptr<v1::Generation::Stub>> stubs_;
  RequestTemplate template_;
  Workload* workload_;
  Workload* background_;
  LiveCounters* live_;
  const std::atomic<bool>* stop_;
  size_t next_stub_ = 0;
};

}  // namespace sals::loadtest
