#include "server/warmup.h"

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>

#include "absl/strings/str_cat.h"

namespace sals {
namespace {

class WaitSink : public RequestSink {
 public:
  void OnChunk(TokenChunk) override {}
  void OnComplete(const Completion& c) override {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = c;
    cv_.notify_all();
  }
  std::optional<Completion> Wait(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return done_.has_value(); });
    return done_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Completion> done_;
};

}  // namespace

absl::Status WarmUp(Engine& engine) {
  GenerationRequest r;
  r.id = "warmup";
  const int vocab = engine.info().config.vocab_size;
  for (int i = 0; i < 8; ++i) r.prompt.push_back((i * 7919 + 1) % vocab);
  r.max_tokens = 4;
  r.sampling.temperature = 0.0f;
  r.ignore_eos = true;
  auto sink = std::make_shared<WaitSink>();
  if (absl::Status s = engine.Submit(std::move(r), sink); !s.ok()) return s;
  const std::optional<Completion> done = sink->Wait(std::chrono::seconds(600));
  if (!done) return absl::DeadlineExceededError("warm-up request did not finish in 600 s");
  if (done->reason != FinishReason::kLength) {
    return absl::InternalError(absl::StrCat("warm-up request ended: ", done->stop_reason));
  }
  return absl::OkStatus();
}

}  // namespace sals
