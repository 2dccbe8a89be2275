// sals-calibrate's progress report on stderr: tokens done of the total, tokens/s over this run
// and the estimated time left. On a terminal one line is rewritten in place (at most 4 times a
// second); otherwise (logs, a Kubernetes init container) a line is printed every 30 s.
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace sals {

// "[sals-calibrate] 1048576/2097152 tokens (50.0%), 41230 tokens/s, ETA 25s". `rate` is tokens
// per second (no ETA while it is 0).
std::string FormatProgress(int64_t done, int64_t total, double rate);

// "1h02m03s", "4m05s", "59s".
std::string ShortDuration(absl::Duration d);

class Progress {
 public:
  // `total` tokens in all, `already` of them done by an earlier run (a resumed checkpoint).
  Progress(int64_t total, int64_t already);

  // Tokens done so far (including `already`); prints when it is time to.
  void Update(int64_t done);
  // The last report, always printed (ends the terminal's line).
  void Finish(int64_t done);

  // Tokens per second since construction, counting only this run's tokens.
  double Rate(int64_t done) const;
  absl::Duration Elapsed() const { return absl::Now() - start_; }

 private:
  void Print(int64_t done, bool last);

  int64_t total_;
  int64_t already_;
  bool terminal_;
  absl::Time start_;
  absl::Time last_print_;
};

}  // namespace sals
