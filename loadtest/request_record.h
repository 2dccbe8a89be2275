// What one request saw, as the stream driver records it and the statistics read it.
#pragma once

#include <grpcpp/support/status_code_enum.h>

#include <chrono>
#include <string>
#include <vector>

namespace sals::loadtest {

using Clock = std::chrono::steady_clock;

// What one request saw. Times in milliseconds.
struct RequestRecord {
  bool warmup = false;
  bool background = false;  // one of --background_streams, not a request of the run's load
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  std::string error_message;
  double start_s = 0;     // when it was sent, from the run's start
  int max_tokens = 0;     // what it asked for
  int output_tokens = 0;  // counted from the chunks
  int chunks = 0;
  double ttft_ms = -1;  // first token; -1 when none arrived
  double e2e_ms = 0;    // sent to the stream's end
  // One gap per token after the first: a chunk's gap to the previous chunk, shared evenly by the
  // tokens it carries (the server coalesces tokens while a write is in flight); tokens that came
  // with the first token count 0.
  std::vector<float> itl_ms;
  bool has_complete = false;  // the server's final message arrived
  std::string finish_reason;  // "stop", "length" or "abort", from the final message
  int usage_prompt_tokens = 0;
  int usage_completion_tokens = 0;
  int usage_cached_prompt_tokens = 0;

  bool ok() const { return code == grpc::StatusCode::OK; }
  // Time per output token after the first; 0 with fewer than two tokens.
  double tpot_ms() const {
    return output_tokens > 1 ? (e2e_ms - ttft_ms) / (output_tokens - 1) : 0.0;
  }
};

}  // namespace sals::loadtest
