// The engine: requests in, token streams out. One step-loop thread runs
// schedule -> forward -> sample -> postprocess; Submit and Abort may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/runtime/engine_config.h"
#include "engine/runtime/engine_observer.h"
#include "engine/runtime/model_setup.h"
#include "engine/runtime/request.h"
#include "engine/sched/scheduler.h"

namespace sals {

struct EngineInfo {
  std::string model;
  ModelConfig config;
  KvPoolConfig pool;
  KvBytes kv_bytes;
  int32_t max_model_len = 0;
  int32_t max_num_seqs = 0;
  SalsPolicy default_policy;
  std::string backend;
  // The most bytes one token's text has (0 without a tokenizer): a text of more than
  // max_model_len * max_token_bytes bytes cannot fit the context, so it is refused unread.
  int32_t max_token_bytes = 0;
};

class Engine {
 public:
  // Loads the model and starts the step loop. `observer` may be null.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineConfig& config,
                                                        std::shared_ptr<EngineObserver> observer);
  // The same over a model already loaded (LoadModel(config)), e.g. with a backend wrapped by the
  // caller.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineConfig& config,
                                                        std::shared_ptr<EngineObserver> observer,
                                                        LoadedModel model);
  // Aborts whatever is still in flight (each sink gets its OnComplete) and joins the loop.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Checks a request against the model, the pool and its own fields; messages name the field.
  absl::Status Validate(const GenerationRequest& request) const;
  // Bounds on what one request may ask the step thread to check per token.
  static constexpr size_t kMaxStopStrings = 64;
  static constexpr size_t kMaxStopStringBytes = 1024;
  static constexpr size_t kMaxStopTokenIds = 1024;

  // Queues a request; its output goes to `sink`. InvalidArgument (see Validate), AlreadyExists
  // (a live request has the id), ResourceExhausted (waiting queue full: at most
  // max_waiting_requests live requests are ever waiting, counted exactly at admission),
  // Unavailable (draining, or the engine failed).
  absl::Status Submit(GenerationRequest request, std::shared_ptr<RequestSink> sink);

  // Aborts a waiting or running request; its blocks are free after the current step. False when
  // no live request has the id.
  bool Abort(const std::string& id);

  // Stops admitting new requests (Submit answers Unavailable); running ones go on.
  void StopAdmitting();
  // Live requests (waiting or running).
  int32_t num_live() const;
  // OK while the engine works; the backend error after one. A backend error leaves the KV cache
  // (and on a GPU, often the device context) in an unknown state, so it does not recover: every
  // request in flight ends with an Internal error, later ones are refused as Unavailable (retry
  // on another server), and the observer hears of it once (OnEngineFailed).
  absl::Status failure() const;

  const EngineInfo& info() const { return info_; }
  const Tokenizer* tokenizer() const { return model_.tokenizer.get(); }

 private:
  struct Request;
  Engine(const EngineConfig& config, LoadedModel model, std::shared_ptr<EngineObserver> observer);

  void Loop();
  void Step();
  // Recomputes the exact sink tokens of sequences whose prefix came from the cache (SALS storage
  // keeps them per sequence, outside the shared blocks).
  absl::Status RestoreSinks(const StepPlan& plan);
  // Handles one sampled token: stop checks, text, emission, completion.
  void HandleToken(Request& r, const SampleResult& sample);
  void Complete(Request& r, FinishReason reason, std::string stop_reason,
                absl::Status error = absl::OkStatus());
  void FailAll(const absl::Status& status);
  // Tells the observer where the pool and queues stand (after every step, and after aborts).
  void PublishStats(StepStats stats);

  EngineConfig config_;
  LoadedModel model_;
  EngineInfo info_;
  std::shared_ptr<EngineObserver> observer_;
  std::unique_ptr<Scheduler> scheduler_;

  // Shared with Submit/Abort callers.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Request>> inbox_;
  std::vector<std::string> aborts_;
  // Request id -> sequence id, for queued and scheduled requests.
  absl::flat_hash_map<std::string, uint64_t> live_ids_;
  // Live requests not running: the inbox plus the scheduler's waiting queue. Set from the
  // scheduler after each step and raised as the inbox moves in, so it is never below the truth
  // and admission never overshoots max_waiting_requests.
  int64_t num_waiting_ = 0;
  absl::Status failure_;  // set once, by FailAll
  bool admitting_ = true;
  bool stop_ = false;
  uint64_t next_id_ = 1;

  // Step-thread state.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Request>> requests_;  // by sequence id
  ForwardBatch batch_;
  ForwardOutput output_;
  std::vector<RowSampling> sampling_rows_;  // this step's draws (reused across steps)
  std::thread loop_;
};

}  // namespace sals
