// A RequestSink for tests: gathers one request's chunks and waits for its completion.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/runtime/request.h"

namespace sals::testing {

class CollectingSink : public RequestSink {
 public:
  void OnChunk(TokenChunk chunk) override {
    std::unique_lock<std::mutex> lock(mu_);
    tokens_.insert(tokens_.end(), chunk.token_ids.begin(), chunk.token_ids.end());
    text_ += chunk.text;
    ++chunks_;
    while (hold_at_ > 0 && tokens_.size() >= hold_at_) {
      held_ = true;
      cv_.notify_all();
      cv_.wait(lock);
    }
  }
  // Once `tokens` tokens are in, OnChunk blocks the engine's step thread until Release() or a
  // later HoldAfter with more tokens (which lets it run on to that token and hold again), so a
  // test can act between two steps however fast the machine runs them.
  void HoldAfter(size_t tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    hold_at_ = tokens;
    held_ = false;
    cv_.notify_all();
  }
  // Whether the hold was reached within `timeout`.
  bool WaitHeld(std::chrono::seconds timeout = std::chrono::seconds(120)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return held_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_at_ = 0;
    cv_.notify_all();
  }
  void OnComplete(const Completion& completion) override {
    std::lock_guard<std::mutex> lock(mu_);
    completion_ = completion;
    ++completions_;
    cv_.notify_all();
  }
  // The completion, or nullopt after `timeout`.
  std::optional<Completion> Wait(std::chrono::seconds timeout = std::chrono::seconds(120)) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return completion_.has_value(); });
    return completion_;
  }
  std::vector<int32_t> tokens() {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }
  std::string text() {
    std::lock_guard<std::mutex> lock(mu_);
    return text_;
  }
  int completions() {
    std::lock_guard<std::mutex> lock(mu_);
    return completions_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> tokens_;
  std::string text_;
  int chunks_ = 0;
  int completions_ = 0;
  std::optional<Completion> completion_;
  size_t hold_at_ = 0;  // 0: never hold
  bool held_ = false;
};

}  // namespace sals::testing
