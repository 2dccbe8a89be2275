#include "loadtest/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace sals::loadtest {
std::string StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return absl::StrCat("CODE_", static_cast<int>(code));
  }
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(rank));
  const size_t above = std::min(below + 1, sorted.size() - 1);
  const double fraction = rank - static_cast<double>(below);
  return sorted[below] + (sorted[above] - sorted[below]) * fraction;
}

Distribution Summarize(std::vector<double> samples, const std::vector<double>& percentiles) {
  Distribution d;
  d.count = static_cast<int64_t>(samples.size());
  d.percentiles.assign(percentiles.size(), 0.0);
  if (samples.empty()) return d;
  std::sort(samples.begin(), samples.end());
  d.min = samples.front();
  d.max = samples.back();
  d.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / samples.size();
  for (size_t i = 0; i < percentiles.size(); ++i) {
    d.percentiles[i] = Percentile(samples, percentiles[i]);
  }
  return d;
}

absl::StatusOr<std::vector<double>> ParsePercentiles(absl::string_view spec) {
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(spec, ',')) {
    double p = 0;
    if (!absl::SimpleAtod(part, &p) || !(p > 0 && p <= 100)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--percentiles='", spec, "': expected numbers in (0, 100], e.g. 50,90,99"));
    }
    out.push_back(p);
  }
  return out;
}

bool Slo::Met(const RequestRecord& r) const {
  if (!r.ok()) return false;
  if (ttft_ms && !(r.ttft_ms >= 0 && r.ttft_ms <= *ttft_ms)) return false;
  if (tpot_ms && r.tpot_ms() > *tpot_ms) return false;
  if (itl_ms && !r.itl_ms.empty() &&
      *std::max_element(r.itl_ms.begin(), r.itl_ms.end()) > *itl_ms) {
    return false;
  }
  if (e2e_ms && r.e2e_ms > *e2e_ms) return false;
  return true;
}

std::string Slo::ToString() const {
  std::vector<std::string> parts;
  if (ttft_ms) parts.push_back(absl::StrCat("ttft_ms=", *ttft_ms));
  if (tpot_ms) parts.push_back(absl::StrCat("tpot_ms=", *tpot_ms));
  if (itl_ms) parts.push_back(absl::StrCat("itl_ms=", *itl_ms));
  if (e2e_ms) parts.push_back(absl::StrCat("e2e_ms=", *e2e_ms));
  return absl::StrJoin(parts, ",");
}

absl::StatusOr<Slo> ParseSlo(absl::string_view spec) {
  Slo slo;
  if (spec.empty()) return slo;
  for (absl::string_view part : absl::StrSplit(spec, ',')) {
    const std::vector<absl::string_view> kv = absl::StrSplit(part, '=');
    double value = 0;
    if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &value) || !(value > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("--goodput: '", part,
                                                     "' is not KEY=MILLISECONDS with a positive "
                                                     "value"));
    }
    if (kv[0] == "ttft_ms") {
      slo.ttft_ms = value;
    } else if (kv[0] == "tpot_ms") {
      slo.tpot_ms = value;
    } else if (kv[0] == "itl_ms") {
      slo.itl_ms = value;
    } else if (kv[0] == "e2e_ms") {
      slo.e2e_ms = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "--goodput: unknown SLO '", kv[0], "' (known: ttft_ms, tpot_ms, itl_ms, e2e_ms)"));
    }
  }
  return slo;
}

RunSummary Summarize(const RunResult& run, const std::vector<double>& percentiles, const Slo& slo) {
  RunSummary s;
  s.plan = run.plan;
  s.interrupted = run.interrupted;
  s.duration_s = run.wall_s;
  s.peak_in_flight = run.peak_in_flight;
  s.sent = run.sent;
  std::vector<double> ttft, tpot, itl, e2e, background_itl;
  // The load's span, in milliseconds from the run's start.
  double load_from = std::numeric_limits<double>::infinity();
  double load_to = -load_from;
  for (const RequestRecord& r : run.records) {
    if (r.background) continue;
    load_from = std::min(load_from, r.start_s * 1e3);
    load_to = std::max(load_to, r.start_s * 1e3 + r.e2e_ms);
  }
  for (const RequestRecord& r : run.records) {
    if (r.background) {
      r.ok() ? ++s.background_completed : ++s.background_failed;
      s.background_output_tokens += r.output_tokens;
      if (r.ttft_ms < 0) continue;
      // Token k's arrival: the first token's, plus the gaps up to k.
      double t = r.start_s * 1e3 + r.ttft_ms;
      for (const float gap : r.itl_ms) {
        t += gap;
        if (t >= load_from && t <= load_to) background_itl.push_back(gap);
      }
      continue;
    }
    s.output_tokens += r.output_tokens;
    if (!r.ok()) {
      ++s.failed;
      ++s.errors[StatusCodeName(r.code)];
      continue;
    }
    ++s.completed;
    ++s.finish_reasons[r.finish_reason];
    s.prompt_tokens += r.usage_prompt_tokens;
    s.cached_prompt_tokens += r.usage_cached_prompt_tokens;
    s.completed_output_tokens += r.output_tokens;
    s.server_completion_tokens += r.usage_completion_tokens;
    s.requested_output_tokens += r.max_tokens;
    if (r.output_tokens != r.usage_completion_tokens) ++s.token_count_mismatches;
    if (slo.Met(r)) ++s.good_requests;
    e2e.push_back(r.e2e_ms);
    if (r.ttft_ms >= 0) ttft.push_back(r.ttft_ms);
    if (r.output_tokens > 1) tpot.push_back(r.tpot_ms());
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
  }
  if (s.duration_s > 0) {
    s.request_throughput = s.completed / s.duration_s;
    s.output_throughput = s.completed_output_tokens / s.duration_s;
    s.total_token_throughput = (s.prompt_tokens + s.completed_output_tokens) / s.duration_s;
    s.goodput = s.good_requests / s.duration_s;
  }
  s.ttft_ms = Summarize(std::move(ttft), percentiles);
  s.tpot_ms = Summarize(std::move(tpot), percentiles);
  s.itl_ms = Summarize(std::move(itl), percentiles);
  s.e2e_ms = Summarize(std::move(e2e), percentiles);
  s.background_itl_ms = Summarize(std::move(background_itl), percentiles);
  return s;
}

TokenTotals CountTokens(const RunResult& run) {
  TokenTotals t;
  for (const RequestRecord& r : run.records) {
    if (!r.ok()) continue;
    ++t.requests;
    t.prompt_tokens += r.usage_prompt_tokens;
    t.output_tokens += r.output_tokens;
  }
  return t;
}

}  // namespace sals::loadtest
