#include "loadtest/report.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace sals::loadtest {
namespace {

// Latencies: three significant figures or so.
std::string Millis(double v) {
  if (v >= 100) return absl::StrFormat("%.0f", v);
  if (v >= 10) return absl::StrFormat("%.1f", v);
  return absl::StrFormat("%.2f", v);
}

std::string PercentileTriple(const Distribution& d) {
  if (d.count == 0) return "-";
  std::vector<std::string> parts;
  for (double v : d.percentiles) parts.push_back(Millis(v));
  return absl::StrJoin(parts, " / ");
}

nlohmann::ordered_json DistributionJson(const Distribution& d,
                                        const std::vector<double>& percentiles) {
  nlohmann::ordered_json j = {{"count", d.count}, {"mean", d.mean}, {"min", d.min}, {"max", d.max}};
  for (size_t i = 0; i < percentiles.size(); ++i)
    j[PercentileKey(percentiles[i])] = d.percentiles[i];
  return j;
}

nlohmann::ordered_json NumberOrInf(double v) {
  if (std::isinf(v)) return "inf";
  return v;
}

std::string ModeName(const RunPlan& plan) {
  return plan.mode == RunPlan::Mode::kRate ? "rate" : "concurrency";
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string quoted = "\"";
  for (char c : s) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

std::string ErrorsText(const std::map<std::string, int64_t>& errors) {
  std::vector<std::string> parts;
  for (const auto& [code, count] : errors) parts.push_back(absl::StrCat(code, ":", count));
  return absl::StrJoin(parts, ";");
}

std::vector<std::string> CsvHeader(const std::vector<double>& percentiles) {
  std::vector<std::string> h = {"label",
                                "run",
                                "mode",
                                "request_rate",
                                "burstiness",
                                "concurrency",
                                "max_concurrency",
                                "sent",
                                "completed",
                                "failed",
                                "errors",
                                "duration_s",
                                "request_throughput",
                                "output_token_throughput",
                                "total_token_throughput",
                                "goodput",
                                "prompt_tokens",
                                "output_tokens",
                                "background_streams"};
  for (const char* metric : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "background_itl_ms"}) {
    h.push_back(absl::StrCat(metric, "_mean"));
    for (double p : percentiles) h.push_back(absl::StrCat(metric, "_", PercentileKey(p)));
  }
  return h;
}

std::vector<std::string> CsvRow(const ReportContext& context, const RunSummary& s) {
  const RunPlan& plan = s.plan;
  const bool by_rate = plan.mode == RunPlan::Mode::kRate;
  std::vector<std::string> row = {
      context.label,
      plan.Label(),
      ModeName(plan),
      by_rate ? (std::isinf(plan.request_rate) ? "inf" : absl::StrCat(plan.request_rate)) : "",
      by_rate ? absl::StrCat(plan.burstiness) : "",
      by_rate ? "" : absl::StrCat(plan.concurrency),
      by_rate ? absl::StrCat(plan.max_concurrency) : "",
      absl::StrCat(s.sent),
      absl::StrCat(s.completed),
      absl::StrCat(s.failed),
      ErrorsText(s.errors),
      absl::StrFormat("%.3f", s.duration_s),
      absl::StrFormat("%.4f", s.request_throughput),
      absl::StrFormat("%.3f", s.output_throughput),
      absl::StrFormat("%.3f", s.total_token_throughput),
      absl::StrFormat("%.4f", s.goodput),
      absl::StrCat(s.prompt_tokens),
      absl::StrCat(s.completed_output_tokens),
      absl::StrCat(plan.background_streams)};
  for (const Distribution* d :
       {&s.ttft_ms, &s.tpot_ms, &s.itl_ms, &s.e2e_ms, &s.background_itl_ms}) {
    row.push_back(absl::StrFormat("%.3f", d->mean));
    for (double v : d->percentiles) row.push_back(absl::StrFormat("%.3f", v));
  }
  for (std::string& field : row) field = CsvField(field);
  return row;
}

nlohmann::ordered_json ConfigJson(const std::vector<ReportContext::Flag>& flags) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const ReportContext::Flag& flag : flags) {
    double number = 0;
    if (flag.is_text) {
      j[flag.name] = flag.value;
    } else if (flag.value == "true" || flag.value == "false") {
      j[flag.name] = flag.value == "true";
    } else if (absl::SimpleAtod(flag.value, &number) && std::isfinite(number)) {
      j[flag.name] = number;
    } else {
      j[flag.name] = flag.value;
    }
  }
  return j;
}

}  // namespace

std::string PercentileKey(double p) { return absl::StrCat("p", p); }

std::string FormatTable(const ReportContext& context, const std::vector<RunSummary>& runs) {
  std::vector<std::string> pct;
  for (double p : context.percentiles) pct.push_back(PercentileKey(p));
  const std::string which = absl::StrJoin(pct, "/");
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"load", "sent", "ok", "err", "req/s", "out tok/s", "total tok/s",
                  absl::StrCat("TTFT ", which, " ms"), absl::StrCat("TPOT ", which, " ms"),
                  absl::StrCat("ITL ", which, " ms"), absl::StrCat("E2E ", which, " ms"),
                  context.slo.empty() ? "goodput req/s" : "goodput req/s (SLO)"});
  // Background streams: the running streams' inter-token latency while the load arrives.
  const bool background = std::any_of(
      runs.begin(), runs.end(), [](const RunSummary& s) { return s.plan.background_streams > 0; });
  if (background) {
    rows.front().push_back("bg streams ok/err");
    rows.front().push_back(absl::StrCat("bg ITL ", which, " ms"));
  }
  for (const RunSummary& s : runs) {
    rows.push_back({s.plan.Label() + (s.interrupted ? " (interrupted)" : ""), absl::StrCat(s.sent),
                    absl::StrCat(s.completed), absl::StrCat(s.failed),
                    absl::StrFormat("%.2f", s.request_throughput),
                    absl::StrFormat("%.1f", s.output_throughput),
                    absl::StrFormat("%.1f", s.total_token_throughput), PercentileTriple(s.ttft_ms),
                    PercentileTriple(s.tpot_ms), PercentileTriple(s.itl_ms),
                    PercentileTriple(s.e2e_ms), absl::StrFormat("%.2f", s.goodput)});
    if (background) {
      rows.back().push_back(s.plan.background_streams > 0
                                ? absl::StrCat(s.plan.background_streams, ": ",
                                               s.background_completed, "/", s.background_failed)
                                : "-");
      rows.back().push_back(PercentileTriple(s.background_itl_ms));
    }
  }
  std::vector<size_t> width(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::ostringstream out;
  out << "sals-loadtest: " << context.target << ", model " << context.model << " ("
      << context.backend << ", KV " << context.kv_cache_format << "), " << context.workload;
  if (!context.slo.empty()) out << ", SLO " << context.slo.ToString();
  out << "\n\n";
  for (size_t r = 0; r < rows.size(); ++r) {
    out << "|";
    for (size_t i = 0; i < rows[r].size(); ++i) {
      const bool left = i == 0;
      out << " " << (left ? "" : std::string(width[i] - rows[r][i].size(), ' ')) << rows[r][i]
          << (left ? std::string(width[i] - rows[r][i].size(), ' ') : "") << " |";
    }
    out << "\n";
    if (r == 0) {
      out << "|";
      for (size_t i = 0; i < width.size(); ++i) {
        out << (i == 0 ? ":" : "-") << std::string(width[i], '-') << (i == 0 ? "-" : ":") << "|";
      }
      out << "\n";
    }
  }
  for (const RunSummary& s : runs) {
    if (!s.errors.empty()) out << "\n" << s.plan.Label() << ": errors " << ErrorsText(s.errors);
    if (s.token_count_mismatches > 0) {
      out << "\n"
          << s.plan.Label() << ": " << s.token_count_mismatches
          << " requests whose streamed token count differs from the server's usage";
    }
  }
  out << "\n";
  return out.str();
}

std::string ToJson(const ReportContext& context, const std::vector<RunSummary>& runs) {
  nlohmann::ordered_json slo = nlohmann::ordered_json::object();
  if (context.slo.ttft_ms) slo["ttft_ms"] = *context.slo.ttft_ms;
  if (context.slo.tpot_ms) slo["tpot_ms"] = *context.slo.tpot_ms;
  if (context.slo.itl_ms) slo["itl_ms"] = *context.slo.itl_ms;
  if (context.slo.e2e_ms) slo["e2e_ms"] = *context.slo.e2e_ms;
  nlohmann::ordered_json j = {
      {"tool", "sals-loadtest"},
      {"format_version", 1},
      {"started_at", context.started_at},
      {"label", context.label},
      {"target", context.target},
      {"model", context.model},
      {"backend", context.backend},
      {"kv_cache_format", context.kv_cache_format},
      {"workload", context.workload},
      {"percentiles", context.percentiles},
      {"slo", slo},
      {"config", ConfigJson(context.config)},
      {"warmup",
       {{"requests", context.warmup.requests},
        {"prompt_tokens", context.warmup.prompt_tokens},
        {"output_tokens", context.warmup.output_tokens}}},
  };
  nlohmann::ordered_json out_runs = nlohmann::ordered_json::array();
  for (const RunSummary& s : runs) {
    const RunPlan& plan = s.plan;
    const bool by_rate = plan.mode == RunPlan::Mode::kRate;
    nlohmann::ordered_json run = {
        {"label", plan.Label()},
        {"mode", ModeName(plan)},
        {"request_rate", by_rate ? NumberOrInf(plan.request_rate) : nlohmann::ordered_json()},
        {"burstiness",
         by_rate ? nlohmann::ordered_json(plan.burstiness) : nlohmann::ordered_json()},
        {"concurrency",
         by_rate ? nlohmann::ordered_json() : nlohmann::ordered_json(plan.concurrency)},
        {"max_concurrency",
         by_rate ? nlohmann::ordered_json(plan.max_concurrency) : nlohmann::ordered_json()},
        {"bounds", {{"num_requests", plan.num_requests}, {"duration_s", plan.duration_s}}},
        {"seed", plan.seed},
        {"interrupted", s.interrupted},
        {"duration_s", s.duration_s},
        {"peak_in_flight", s.peak_in_flight},
        {"requests",
         {{"sent", s.sent},
          {"completed", s.completed},
          {"failed", s.failed},
          {"good", s.good_requests}}},
        {"errors", s.errors},
        {"finish_reasons", s.finish_reasons},
        {"tokens",
         {{"prompt", s.prompt_tokens},
          {"cached_prompt", s.cached_prompt_tokens},
          {"output", s.output_tokens},
          {"completed_output", s.completed_output_tokens},
          {"server_completion", s.server_completion_tokens},
          {"requested_output", s.requested_output_tokens},
          {"count_mismatches", s.token_count_mismatches}}},
        {"throughput",
         {{"requests_per_s", s.request_throughput},
          {"output_tokens_per_s", s.output_throughput},
          {"total_tokens_per_s", s.total_token_throughput},
          {"goodput_requests_per_s", s.goodput}}},
        {"latency_ms",
         {{"ttft", DistributionJson(s.ttft_ms, context.percentiles)},
          {"tpot", DistributionJson(s.tpot_ms, context.percentiles)},
          {"itl", DistributionJson(s.itl_ms, context.percentiles)},
          {"e2e", DistributionJson(s.e2e_ms, context.percentiles)}}},
        {"background",
         {{"streams", plan.background_streams},
          {"completed", s.background_completed},
          {"failed", s.background_failed},
          {"output_tokens", s.background_output_tokens},
          {"itl_ms_during_load", DistributionJson(s.background_itl_ms, context.percentiles)}}},
    };
    out_runs.push_back(std::move(run));
  }
  j["runs"] = std::move(out_runs);
  return j.dump(2);
}

absl::Status WriteJson(const std::string& path, const std::string& json) {
  std::ofstream out(path);
  out << json << "\n";
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status AppendCsv(const std::string& path, const ReportContext& context,
                       const std::vector<RunSummary>& runs) {
  const std::string header = absl::StrJoin(CsvHeader(context.percentiles), ",");
  std::string existing_header;
  {
    std::ifstream in(path);
    if (in) std::getline(in, existing_header);
  }
  if (!existing_header.empty() && existing_header != header) {
    return absl::FailedPreconditionError(
        absl::StrCat(path,
                     " holds rows with other columns (other --percentiles?): use another "
                     "file"));
  }
  std::ofstream out(path, std::ios::app);
  if (existing_header.empty()) out << header << "\n";
  for (const RunSummary& s : runs) out << absl::StrJoin(CsvRow(context, s), ",") << "\n";
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status WriteRequestsCsv(const std::string& path, const std::vector<RunResult>& runs) {
  std::ofstream out(path);
  out << "run,warmup,background,start_s,status,max_tokens,output_tokens,prompt_tokens,cached_"
         "prompt_tokens,"
         "server_completion_tokens,ttft_ms,tpot_ms,e2e_ms,itl_max_ms,chunks\n";
  for (const RunResult& run : runs) {
    const std::string label =
        CsvField(run.records.empty() || !run.records.front().warmup ? run.plan.Label()
                                                                    : std::string("warmup"));
    for (const RequestRecord& r : run.records) {
      const double itl_max =
          r.itl_ms.empty() ? 0.0 : *std::max_element(r.itl_ms.begin(), r.itl_ms.end());
      out << label << "," << (r.warmup ? 1 : 0) << "," << (r.background ? 1 : 0) << ","
          << absl::StrFormat("%.6f", r.start_s) << "," << StatusCodeName(r.code) << ","
          << r.max_tokens << "," << r.output_tokens << "," << r.usage_prompt_tokens << ","
          << r.usage_cached_prompt_tokens << "," << r.usage_completion_tokens << ","
          << absl::StrFormat("%.3f", r.ttft_ms) << "," << absl::StrFormat("%.3f", r.tpot_ms())
          << "," << absl::StrFormat("%.3f", r.e2e_ms) << "," << absl::StrFormat("%.3f", itl_max)
          << "," << r.chunks << "\n";
    }
  }
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace sals::loadtest
