#include "tools/calibrate/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sals {

std::string ShortDuration(absl::Duration d) {
  const int64_t s = std::max<int64_t>(0, absl::ToInt64Seconds(d));
  if (s >= 3600) return absl::StrFormat("%dh%02dm%02ds", s / 3600, s / 60 % 60, s % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string FormatProgress(int64_t done, int64_t total, double rate) {
  std::string line = absl::StrFormat("[sals-calibrate] %d/%d tokens (%.1f%%), %.0f tokens/s", done,
                                     total, total > 0 ? 100.0 * done / total : 100.0, rate);
  if (rate > 0 && done < total) {
    absl::StrAppend(&line, ", ETA ", ShortDuration(absl::Seconds((total - done) / rate)));
  }
  return line;
}

Progress::Progress(int64_t total, int64_t already)
    : total_(total),
      already_(already),
      terminal_(isatty(STDERR_FILENO) == 1),
      start_(absl::Now()),
      last_print_(start_) {}

double Progress::Rate(int64_t done) const {
  return (done - already_) / std::max(1e-9, absl::ToDoubleSeconds(absl::Now() - start_));
}

void Progress::Update(int64_t done) {
  const absl::Duration every = terminal_ ? absl::Milliseconds(250) : absl::Seconds(30);
  if (absl::Now() - last_print_ < every) return;
  Print(done, /*last=*/false);
}

void Progress::Finish(int64_t done) { Print(done, /*last=*/true); }

void Progress::Print(int64_t done, bool last) {
  last_print_ = absl::Now();
  const std::string line = FormatProgress(done, total_, Rate(done));
  if (terminal_) {
    // \033[K clears what a longer earlier line left.
    std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), last ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace sals
