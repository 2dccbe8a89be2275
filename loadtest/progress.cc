#include "loadtest/progress.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_format.h"

namespace sals::loadtest {

ProgressLine::ProgressLine(const LiveCounters* live, bool enabled)
    : live_(live), enabled_(enabled && isatty(STDERR_FILENO) == 1) {
  if (enabled_) thread_ = std::thread([this] { Loop(); });
}

ProgressLine::~ProgressLine() {
  if (!enabled_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    quit_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ProgressLine::Begin(const std::string& phase) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  phase_ = phase;
  active_ = true;
  begin_ = std::chrono::steady_clock::now();  // the first line follows a second later
}

void ProgressLine::End() {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (!active_) return;
  active_ = false;
  std::fprintf(stderr, "\r%s\r", std::string(last_width_, ' ').c_str());
  std::fflush(stderr);
  last_width_ = 0;
}

void ProgressLine::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!quit_) {
    wake_.wait_for(lock, std::chrono::seconds(1));
    if (active_ && !quit_) PrintLocked();
  }
}

void ProgressLine::PrintLocked() {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin_).count();
  const int64_t tokens = live_->output_tokens.load();
  const std::string line = absl::StrFormat(
      "[%s] %.0f s  sent %d  done %d  in flight %d  failed %d  out %d tok (%.0f tok/s)", phase_,
      elapsed, live_->sent.load(), live_->done.load(), live_->in_flight.load(),
      live_->failed.load(), tokens, elapsed >= 1 ? tokens / elapsed : 0.0);
  const size_t pad = last_width_ > line.size() ? last_width_ - line.size() : 0;
  std::fprintf(stderr, "\r%s%s", line.c_str(), std::string(pad, ' ').c_str());
  std::fflush(stderr);
  last_width_ = line.size();
}

}  // namespace sals::loadtest
