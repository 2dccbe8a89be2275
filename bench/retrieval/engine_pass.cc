#include "bench/retrieval/engine_pass.h"

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace sals {
namespace {

// Shared by the feeding thread and the engine's step thread (through the sinks).
struct PassState {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<PassResult> results;
  std::vector<bool> started;  // first token seen (or completed without one)
  int num_started = 0;
  int num_completed = 0;
};

class PassSink : public RequestSink {
 public:
  PassSink(PassState* state, int index) : state_(state), index_(index) {}
  void OnChunk(TokenChunk chunk) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    PassResult& r = state_->results[index_];
    r.tokens.insert(r.tokens.end(), chunk.token_ids.begin(), chunk.token_ids.end());
    r.text += chunk.text;
    MarkStarted();
  }
  void OnComplete(const Completion& completion) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->results[index_].completion = completion;
    MarkStarted();
    ++state_->num_completed;
    state_->cv.notify_all();
  }

 private:
  void MarkStarted() {
    if (state_->started[index_]) return;
    state_->started[index_] = true;
    ++state_->num_started;
    state_->cv.notify_all();
  }
  PassState* state_;
  int index_;
};

}  // namespace

void ConfigureForPass(int64_t max_prompt_tokens, int64_t max_total_tokens, int max_in_flight,
                      EngineConfig* config, bool prefix_hits) {
  config->max_num_seqs = max_in_flight;
  // One prompt whole plus a decode token for every other running sequence.
  config->max_num_batched_tokens = static_cast<int>(max_prompt_tokens) + max_in_flight;
  const int64_t blocks_per_seq = (max_total_tokens + config->block_size - 1) / config->block_size;
  config->num_blocks = static_cast<int>(blocks_per_seq * (max_in_flight + (prefix_hits ? 1 : 0)));
  config->max_waiting_requests = std::max(config->max_waiting_requests, max_in_flight + 1);
  config->enable_prefix_caching = prefix_hits;
}

std::vector<PassRequest> PrefixHitRequests(std::span<const PassRequest> requests) {
  std::vector<PassRequest> out;
  for (const PassRequest& r : requests) {
    PassRequest fill = r;
    fill.max_tokens = 1;
    fill.reproducible = true;
    out.push_back(std::move(fill));
    out.push_back(r);
    out.back().reproducible = false;
  }
  return out;
}

absl::StatusOr<std::vector<PassResult>> RunPass(Engine& engine,
                                                std::span<const PassRequest> requests,
                                                const PassOptions& options) {
  const int n = static_cast<int>(requests.size());
  const int max_in_flight = std::max(1, options.max_in_flight);
  // The sinks point into `state`: it outlives every call into them, as every submitted request
  // completes before this returns (after a refused Submit too).
  auto state = std::make_unique<PassState>();
  state->results.resize(n);
  state->started.assign(n, false);
  int reported = 0;
  // Waits for `until`, reporting completions as they come (outside the lock).
  auto wait_reporting = [&](std::unique_lock<std::mutex>& lock, auto until) {
    while (true) {
      state->cv.wait(lock, [&] { return until() || reported < state->num_completed; });
      while (reported < state->num_completed) {
        const int done = ++reported;
        if (!options.progress) continue;
        lock.unlock();
        options.progress(done, n);
        lock.lock();
      }
      if (until()) return;
    }
  };
  absl::Status error;
  int submitted = 0;
  for (; submitted < n; ++submitted) {
    {
      std::unique_lock<std::mutex> lock(state->mu);
      // The previous request has been prefilled, and there is room.
      auto ready = [&] {
        return state->num_started >= submitted && submitted - state->num_completed < max_in_flight;
      };
      wait_reporting(lock, ready);
    }
    const PassRequest& pr = requests[submitted];
    GenerationRequest req;
    req.id = absl::StrCat("retrieval-", submitted);
    req.prompt = pr.prompt;
    req.max_tokens = pr.max_tokens;
    req.sampling.temperature = 0.0f;
    req.policy = pr.policy;
    req.reproducible = pr.reproducible;
    error = engine.Submit(std::move(req), std::make_shared<PassSink>(state.get(), submitted));
    if (!error.ok()) {
      error =
          absl::Status(error.code(), absl::StrCat("request ", submitted, ": ", error.message()));
      break;
    }
  }
  std::unique_lock<std::mutex> lock(state->mu);
  wait_reporting(lock, [&] { return state->num_completed == submitted; });
  if (!error.ok()) return error;
  for (int i = 0; i < n; ++i) {
    const Completion& c = state->results[i].completion;
    if (c.reason == FinishReason::kAbort) {
      return absl::InternalError(absl::StrCat("request ", i, " aborted: ", c.stop_reason));
    }
  }
  return std::move(state->results);
}

}  // namespace sals
