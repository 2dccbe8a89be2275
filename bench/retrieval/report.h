// The retrieval benchmark's results: per configuration and case the scored output (and the
// attention-mass recall where measured), summed up per task and length as a table and as JSON.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "bench/retrieval/bench_config.h"
#include "bench/retrieval/cases.h"
#include "engine/sals/recall.h"
#include "nlohmann/json.hpp"

namespace sals {

struct CaseRun {
  bool correct = false;
  double items = 0.0;  // share of the answer's items found (RULER's string match)
  std::string output;
  int32_t completion_tokens = 0;
  std::string finish;                // "stop" or "length"
  int32_t cached_prompt_tokens = 0;  // served by the prefix cache (configurations with "hit")
};

struct ConfigRun {
  BenchConfig config;
  std::string status = "ok";   // else why it did not run (e.g. the backend's Unimplemented)
  double seconds = 0.0;        // engine pass, model load excluded
  std::vector<CaseRun> cases;  // per case; empty when it did not run
  // Per case, where measured (SALS configurations with sparse layers, --recall-cases).
  std::vector<std::optional<RecallStats>> recall;

  bool ran() const { return status == "ok"; }
};

struct BenchReport {
  std::string model;
  std::string backend;
  std::string cases_file;
  std::vector<RetrievalCase> cases;
  std::vector<int32_t> prompt_tokens;  // per case, BOS included
  std::vector<ConfigRun> runs;
  double recall_seconds = 0.0;  // the dense runs and measurements behind every recall
};

// {"model", "backend", "cases_file", "num_cases", "configs": [...], "results": [one per task,
// length and configuration: cases, correct, accuracy, prompt tokens, recall], "totals": [per
// configuration], "cases": [per case: outputs and scores per configuration]}.
nlohmann::json ReportToJson(const BenchReport& report);

// Accuracy per task x length x configuration (with an "all" row per length), then recall.
void PrintReport(const BenchReport& report, std::FILE* out);

}  // namespace sals
