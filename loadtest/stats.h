// Turns a run's request records into its summary: counts, errors by gRPC status, token totals,
// throughput, goodput under SLOs, and latency distributions whose percentiles are computed exactly
// from every stored sample.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loadtest/run_plan.h"

namespace sals::loadtest {

// "RESOURCE_EXHAUSTED" and so on.
std::string StatusCodeName(grpc::StatusCode code);

// The value at percentile `p` (0..100) of ascending `sorted`, interpolating linearly between the
// two nearest ranks (numpy's default); 0 when empty.
double Percentile(const std::vector<double>& sorted, double p);

struct Distribution {
  int64_t count = 0;
  double mean = 0, min = 0, max = 0;
  std::vector<double> percentiles;  // one per requested percentile, in the same order
};

Distribution Summarize(std::vector<double> samples, const std::vector<double>& percentiles);

// "50,90,99" -> {50, 90, 99}; each in (0, 100].
absl::StatusOr<std::vector<double>> ParsePercentiles(absl::string_view spec);

// Service-level objectives a request must meet, all of those set, to count as goodput.
struct Slo {
  std::optional<double> ttft_ms, tpot_ms, itl_ms, e2e_ms;  // itl: the request's largest gap
  bool empty() const { return !ttft_ms && !tpot_ms && !itl_ms && !e2e_ms; }
  bool Met(const RequestRecord& r) const;
  std::string ToString() const;  // "ttft_ms=500,tpot_ms=50"
};

// "ttft_ms=500,tpot_ms=50" (keys ttft_ms, tpot_ms, itl_ms, e2e_ms); "" = none.
absl::StatusOr<Slo> ParseSlo(absl::string_view spec);

struct RunSummary {
  RunPlan plan;
  bool interrupted = false;
  int64_t sent = 0, completed = 0, failed = 0;
  std::map<std::string, int64_t> errors;          // gRPC status code name -> count
  std::map<std::string, int64_t> finish_reasons;  // of completed requests
  int64_t prompt_tokens = 0;  // of completed requests, as the server counted them
  int64_t cached_prompt_tokens = 0;
  int64_t output_tokens = 0;             // every token received, failed requests included
  int64_t completed_output_tokens = 0;   // counted from the chunks of completed requests
  int64_t server_completion_tokens = 0;  // the servers' usage of completed requests
  int64_t token_count_mismatches = 0;    // completed requests whose two counts differ
  int64_t requested_output_tokens = 0;   // max_tokens of completed requests
  double duration_s = 0;
  int peak_in_flight = 0;
  double request_throughput = 0, output_throughput = 0, total_token_throughput = 0;
  int64_t good_requests = 0;
  double goodput = 0;  // requests per second meeting the SLOs (completed ones when none are set)
  Distribution ttft_ms, tpot_ms, itl_ms, e2e_ms;
  // Background streams (RunPlan::background_streams); everything above leaves them out.
  int64_t background_completed = 0, background_failed = 0, background_output_tokens = 0;
  // Their inter-token gaps that ended while the run's requests were in flight (from the first
  // one's send to the last one's end): the latency running streams see while the load arrives.
  Distribution background_itl_ms;
};

RunSummary Summarize(const RunResult& run, const std::vector<double>& percentiles, const Slo& slo);

// The token totals of a run (warm-up included in the JSON's server cross-check).
struct TokenTotals {
  int64_t requests = 0, prompt_tokens = 0, output_tokens = 0;
};
TokenTotals CountTokens(const RunResult& run);

}  // namespace sals::loadtest
