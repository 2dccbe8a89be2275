// A live progress line on stderr, rewritten in place ("\r") once a second from its own thread:
// the run, elapsed time, requests sent / done / in flight / failed, tokens received and their
// rate. Silent when stderr is not a terminal or when disabled.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "loadtest/run_plan.h"

namespace sals::loadtest {

class ProgressLine {
 public:
  // `enabled` false (--quiet) or a stderr that is no terminal: prints nothing.
  ProgressLine(const LiveCounters* live, bool enabled);
  ~ProgressLine();

  // Starts a new line for the named phase ("warm-up", "rate 4/s (2/5)").
  void Begin(const std::string& phase);
  // Clears the line (before other output).
  void End();

 private:
  void Loop();
  void PrintLocked();

  const LiveCounters* live_;
  const bool enabled_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::string phase_;
  bool active_ = false;
  bool quit_ = false;
  std::chrono::steady_clock::time_point begin_;
  size_t last_width_ = 0;
  std::thread thread_;
};

}  // namespace sals::loadtest
