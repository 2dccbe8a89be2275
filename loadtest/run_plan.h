// A run's load shape and what it produced: the load generator's shared vocabulary (no gRPC).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loadtest/request_record.h"

namespace sals::loadtest {

// One measured run's load shape.
struct RunPlan {
  enum class Mode { kRate, kConcurrency };
  Mode mode = Mode::kRate;
  double request_rate = 1.0;  // kRate: mean requests per second (infinity = all at once)
  double burstiness = 1.0;    // kRate: gamma shape (1 = Poisson)
  int concurrency = 1;        // kConcurrency: requests kept in flight
  // kConcurrency from `--concurrency pool`: `concurrency` is what the server's KV pool holds at
  // once (PoolConcurrency), set once the server has answered.
  bool fill_pool = false;
  int max_concurrency = 0;   // kRate: at most this many in flight (0 = no cap)
  int64_t num_requests = 0;  // stop sending after this many (0 = no bound)
  // Streams kept in flight beside the load, restarted as they end, from before its first request
  // (once each has its first token) until its last request ends; 0 = none.
  int background_streams = 0;
  double duration_s = 0;  // stop sending after this long (0 = no bound)
  uint64_t seed = 0;

  // "rate 4/s", "rate 4/s gamma 0.5", "concurrency 8", "concurrency 12 (pool)",
  // "rate 0.1/s + 8 background".
  std::string Label() const;
};

// The most requests of `request_tokens` tokens each (prompt + output) that a KV pool of
// `num_blocks` blocks of `block_size` tokens holds at once, and that the server runs at once
// (`max_batch`): the load at which a pool is full without preemption. An error names the flag
// when not one request fits.
absl::StatusOr<int> PoolConcurrency(int64_t num_blocks, int block_size, int max_batch,
                                    int64_t request_tokens);

struct RunResult {
  RunPlan plan;
  int64_t sent = 0;                    // requests started
  std::vector<RequestRecord> records;  // in completion order, one per request sent
  double wall_s = 0;                   // first send to the last stream's end
  int peak_in_flight = 0;
  bool interrupted = false;  // stopped early by a signal
};

// Live counts for the progress line (read from another thread).
struct LiveCounters {
  std::atomic<int64_t> sent{0};
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> failed{0};
  std::atomic<int64_t> output_tokens{0};
  std::atomic<int64_t> in_flight{0};
  void Reset() { sent = done = failed = output_tokens = in_flight = 0; }
};

}  // namespace sals::loadtest
