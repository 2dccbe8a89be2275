// A load test's results as a Markdown table (stdout), JSON (every number, for plot.py and
// scripts), a CSV summary row per run (appended, so sweeps accumulate in one file), and an
// optional CSV with one row per request.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "loadtest/stats.h"

namespace sals::loadtest {

// Facts about the whole invocation.
struct ReportContext {
  std::string target;
  std::string model;
  std::string backend;
  std::string kv_cache_format;
  std::string workload;
  std::string label;       // free text from --label
  std::string started_at;  // UTC, ISO 8601
  std::vector<double> percentiles;
  Slo slo;
  TokenTotals warmup;
  // The flags: name, value as text, and whether the value is text (else a number or a boolean,
  // written as such in the JSON).
  struct Flag {
    std::string name;
    std::string value;
    bool is_text = false;
  };
  std::vector<Flag> config;
};

// "p50", "p99.9".
std::string PercentileKey(double p);

std::string FormatTable(const ReportContext& context, const std::vector<RunSummary>& runs);
// The JSON document (indented text).
std::string ToJson(const ReportContext& context, const std::vector<RunSummary>& runs);

absl::Status WriteJson(const std::string& path, const std::string& json);
// Appends one row per run, writing the header first when the file is new or empty; a file whose
// header differs (other percentiles) is an error rather than a silently mixed table.
absl::Status AppendCsv(const std::string& path, const ReportContext& context,
                       const std::vector<RunSummary>& runs);
// One row per request (warm-up included, marked), for ad-hoc analysis.
absl::Status WriteRequestsCsv(const std::string& path, const std::vector<RunResult>& runs);

}  // namespace sals::loadtest
