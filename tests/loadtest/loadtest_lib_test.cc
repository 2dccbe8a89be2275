// The load generator's pieces without a server: arrival statistics, workloads, percentiles,
// summaries, SLOs and the report formats.
#include <cmath>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>

#include "gtest/gtest.h"
#include "loadtest/arrivals.h"
#include "loadtest/report.h"
#include "loadtest/run_plan.h"
#include "loadtest/stats.h"
#include "loadtest/workload.h"
#include "nlohmann/json.hpp"
#include "tests/common/temp_dir.h"

namespace sals::loadtest {
namespace {

// Mean and coefficient of variation of `n` gaps.
std::pair<double, double> GapStats(ArrivalProcess& arrivals, int n) {
  std::vector<double> gaps(n);
  for (double& g : gaps) g = arrivals.NextGapSeconds();
  const double mean = std::accumulate(gaps.begin(), gaps.end(), 0.0) / n;
  double var = 0;
  for (double g : gaps) var += (g - mean) * (g - mean);
  return {mean, std::sqrt(var / (n - 1)) / mean};
}

TEST(ArrivalsTest, PoissonHasTheRateAndUnitVariation) {
  ArrivalProcess arrivals(4.0, 1.0, 7);
  const auto [mean, cv] = GapStats(arrivals, 200000);
  EXPECT_NEAR(mean, 0.25, 0.25 * 0.01);
  EXPECT_NEAR(cv, 1.0, 0.02);
}

TEST(ArrivalsTest, BurstinessKeepsTheRateAndScalesTheVariation) {
  for (double shape : {0.25, 4.0}) {
    ArrivalProcess arrivals(10.0, shape, 11);
    const auto [mean, cv] = GapStats(arrivals, 200000);
    EXPECT_NEAR(mean, 0.1, 0.1 * 0.02) << shape;
    EXPECT_NEAR(cv, 1.0 / std::sqrt(shape), 0.05 / std::sqrt(shape)) << shape;
  }
}

TEST(ArrivalsTest, SeededAndInfiniteRate) {
  ArrivalProcess a(3.0, 0.5, 42), b(3.0, 0.5, 42);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.NextGapSeconds(), b.NextGapSeconds());
  ArrivalProcess burst(std::numeric_limits<double>::infinity(), 1.0, 1);
  EXPECT_EQ(burst.NextGapSeconds(), 0.0);
}

TEST(WorkloadTest, ParsesLengthRanges) {
  auto fixed = ParseLengthRange("128", "prompt_len", 1);
  ASSERT_TRUE(fixed.ok());
  EXPECT_EQ(fixed->min, 128);
  EXPECT_EQ(fixed->max, 128);
  auto range = ParseLengthRange("16:64", "prompt_len", 1);
  ASSERT_TRUE(range.ok());
  EXPECT_EQ(range->min, 16);
  EXPECT_EQ(range->max, 64);
  for (const char* bad : {"", "0", "8:4", "a", "1:2:3", "-3"}) {
    EXPECT_FALSE(ParseLengthRange(bad, "prompt_len", 1).ok()) << bad;
  }
}

TEST(WorkloadTest, SyntheticPromptsHaveTheirLengthsAndSharedPrefix) {
  const ModelLimits limits{100, 512};
  auto w = Workload::Synthetic({10, 20}, {5, 5}, 4, limits, 3);
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<uint32_t> prefix;
  bool lengths_vary = false;
  for (int i = 0; i < 200; ++i) {
    const WorkItem item = w->Next();
    EXPECT_TRUE(item.prompt_text.empty());
    ASSERT_GE(item.prompt_ids.size(), 10u);
    ASSERT_LE(item.prompt_ids.size(), 20u);
    lengths_vary |= item.prompt_ids.size() != 10u;
    EXPECT_EQ(item.max_tokens, 5);
    for (uint32_t id : item.prompt_ids) EXPECT_LT(id, 100u);
    const std::vector<uint32_t> head(item.prompt_ids.begin(), item.prompt_ids.begin() + 4);
    if (prefix.empty()) prefix = head;
    EXPECT_EQ(head, prefix);
  }
  EXPECT_TRUE(lengths_vary);
  EXPECT_EQ(w->MaxRequestTokens(), 25);
}

TEST(WorkloadTest, SyntheticRefusesWhatTheContextCannotHold) {
  EXPECT_FALSE(Workload::Synthetic({10, 400}, {1, 200}, 0, {100, 512}, 0).ok());
  EXPECT_FALSE(Workload::Synthetic({10, 20}, {1, 2}, 11, {100, 512}, 0).ok());
}

TEST(WorkloadTest, ReadsJsonlDatasets) {
  testing::TempDir dir;
  const std::string path = dir / "requests.jsonl";
  std::ofstream(path) << R"({"prompt": "hello there", "output_tokens": 7})"
                      << "\n\n"
                      << R"({"prompt_token_ids": [1, 2, 3], "output_tokens": 4})"
                      << "\n"
                      << R"({"prompt_tokens": 30, "output_tokens": 2})"
                      << "\n"
                      << R"({"prompt_tokens": 500, "output_tokens": 100})"
                      << "\n";
  auto w = Workload::FromJsonl(path, std::nullopt, {100, 512}, 1);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->dataset_size(), 3u);
  EXPECT_EQ(w->skipped(), 1);
  int text = 0, ids = 0, lengths = 0;
  for (int i = 0; i < 6; ++i) {
    const WorkItem item = w->Next();
    if (!item.prompt_text.empty()) {
      ++text;
      EXPECT_EQ(item.prompt_text, "hello there");
      EXPECT_EQ(item.max_tokens, 7);
    } else if (item.prompt_ids.size() == 3) {
      ++ids;
      EXPECT_EQ(item.prompt_ids, (std::vector<uint32_t>{1, 2, 3}));
      EXPECT_EQ(item.max_tokens, 4);
    } else {
      ++lengths;
      EXPECT_EQ(item.prompt_ids.size(), 30u);
      EXPECT_EQ(item.max_tokens, 2);
    }
  }
  EXPECT_EQ(text, 2);  // cycled twice
  EXPECT_EQ(ids, 2);
  EXPECT_EQ(lengths, 2);

  auto overridden = Workload::FromJsonl(path, LengthRange{9, 9}, {100, 512}, 1);
  ASSERT_TRUE(overridden.ok());
  EXPECT_EQ(overridden->Next().max_tokens, 9);

  // A text prompt's length is the server's to say; token prompts give the longest request.
  EXPECT_EQ(w->MaxRequestTokens(), std::nullopt);
  const std::string tokens_only = dir / "tokens.jsonl";
  std::ofstream(tokens_only) << R"({"prompt_token_ids": [1, 2, 3], "output_tokens": 40})"
                             << "\n"
                             << R"({"prompt_tokens": 30, "output_tokens": 2})"
                             << "\n";
  auto counted = Workload::FromJsonl(tokens_only, std::nullopt, {100, 512}, 1);
  ASSERT_TRUE(counted.ok()) << counted.status();
  EXPECT_EQ(counted->MaxRequestTokens(), 43);
}

TEST(WorkloadTest, DatasetErrorsNameTheLine) {
  testing::TempDir dir;
  const std::string path = dir / "bad.jsonl";
  std::ofstream(path) << R"({"prompt": "ok", "output_tokens": 3})"
                      << "\n"
                      << R"({"prompt_token_ids": [1, 200], "output_tokens": 3})"
                      << "\n";
  auto w = Workload::FromJsonl(path, std::nullopt, {100, 512}, 1);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("bad.jsonl:2"), absl::string_view::npos) << w.status();
  std::ofstream(path) << "not json\n";
  EXPECT_FALSE(Workload::FromJsonl(path, std::nullopt, {100, 512}, 1).ok());
  EXPECT_FALSE(Workload::FromJsonl(dir / "missing.jsonl", std::nullopt, {100, 512}, 1).ok());
}

TEST(RunPlanTest, PoolConcurrencyIsTheRequestsWhoseBlocksFit) {
  // 1600 tokens: 100 blocks of 16; one token more takes a 101st block.
  EXPECT_EQ(PoolConcurrency(512, 16, 8, 1600).value(), 5);
  EXPECT_EQ(PoolConcurrency(500, 16, 8, 1600).value(), 5);
  EXPECT_EQ(PoolConcurrency(499, 16, 8, 1600).value(), 4);
  EXPECT_EQ(PoolConcurrency(505, 16, 8, 1601).value(), 5);
  EXPECT_EQ(PoolConcurrency(504, 16, 8, 1601).value(), 4);
  // The server's running-sequence cap bounds it.
  EXPECT_EQ(PoolConcurrency(512, 16, 8, 16).value(), 8);
  EXPECT_EQ(PoolConcurrency(int64_t{1} << 40, 16, 256, 33024).value(), 256);
  // Not one request fits, or the server reports no pool: an error naming the flag.
  for (const auto& status :
       {PoolConcurrency(10, 16, 8, 161).status(), PoolConcurrency(0, 16, 8, 10).status(),
        PoolConcurrency(512, 0, 8, 10).status(), PoolConcurrency(512, 16, 0, 10).status()}) {
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(status.message().find("--concurrency pool"), std::string::npos) << status;
  }
  RunPlan plan;
  plan.mode = RunPlan::Mode::kConcurrency;
  plan.concurrency = 5;
  EXPECT_EQ(plan.Label(), "concurrency 5");
  plan.fill_pool = true;
  EXPECT_EQ(plan.Label(), "concurrency 5 (pool)");
}

TEST(StatsTest, PercentilesInterpolateLikeNumpy) {
  const std::vector<double> v = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 2.5);
  EXPECT_DOUBLE_EQ(Percentile(v, 90), 3.7);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 4.0);
  EXPECT_DOUBLE_EQ(Percentile({5.0}, 99), 5.0);
  EXPECT_DOUBLE_EQ(Percentile({}, 50), 0.0);
  const Distribution d = Summarize({4, 1, 3, 2}, {50, 99});
  EXPECT_EQ(d.count, 4);
  EXPECT_DOUBLE_EQ(d.mean, 2.5);
  EXPECT_DOUBLE_EQ(d.min, 1);
  EXPECT_DOUBLE_EQ(d.max, 4);
  EXPECT_DOUBLE_EQ(d.percentiles[0], 2.5);
  EXPECT_DOUBLE_EQ(d.percentiles[1], 3.97);
}

TEST(StatsTest, ParsesPercentilesAndSlos) {
  auto p = ParsePercentiles("50,90,99.9");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (std::vector<double>{50, 90, 99.9}));
  EXPECT_FALSE(ParsePercentiles("0").ok());
  EXPECT_FALSE(ParsePercentiles("50,x").ok());
  auto slo = ParseSlo("ttft_ms=500,tpot_ms=50");
  ASSERT_TRUE(slo.ok());
  EXPECT_EQ(*slo->ttft_ms, 500);
  EXPECT_EQ(*slo->tpot_ms, 50);
  EXPECT_FALSE(slo->e2e_ms.has_value());
  EXPECT_EQ(slo->ToString(), "ttft_ms=500,tpot_ms=50");
  EXPECT_TRUE(ParseSlo("")->empty());
  EXPECT_FALSE(ParseSlo("ttft=5").ok());
  EXPECT_FALSE(ParseSlo("ttft_ms=-1").ok());
}

RequestRecord Record(grpc::StatusCode code, double ttft, double e2e, int tokens) {
  RequestRecord r;
  r.code = code;
  r.ttft_ms = tokens > 0 ? ttft : -1;
  r.e2e_ms = e2e;
  r.output_tokens = tokens;
  r.max_tokens = tokens;
  r.has_complete = code == grpc::StatusCode::OK;
  r.finish_reason = "length";
  r.usage_prompt_tokens = code == grpc::StatusCode::OK ? 10 : 0;
  r.usage_completion_tokens = code == grpc::StatusCode::OK ? tokens : 0;
  for (int i = 1; i < tokens; ++i)
    r.itl_ms.push_back(static_cast<float>((e2e - ttft) / (tokens - 1)));
  return r;
}

TEST(StatsTest, SummarizesARun) {
  RunResult run;
  run.plan.mode = RunPlan::Mode::kConcurrency;
  run.plan.concurrency = 2;
  run.sent = 4;
  run.wall_s = 2.0;
  run.records.push_back(Record(grpc::StatusCode::OK, 100, 1100, 11));  // tpot 100
  run.records.push_back(Record(grpc::StatusCode::OK, 300, 800, 6));    // tpot 100
  run.records.push_back(Record(grpc::StatusCode::OK, 50, 50, 1));      // no tpot
  run.records.push_back(Record(grpc::StatusCode::RESOURCE_EXHAUSTED, 0, 5, 0));
  auto slo = ParseSlo("ttft_ms=200");
  const RunSummary s = Summarize(run, {50, 90, 99}, *slo);
  EXPECT_EQ(s.sent, 4);
  EXPECT_EQ(s.completed, 3);
  EXPECT_EQ(s.failed, 1);
  EXPECT_EQ(s.errors.at("RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(s.finish_reasons.at("length"), 3);
  EXPECT_EQ(s.prompt_tokens, 30);
  EXPECT_EQ(s.completed_output_tokens, 18);
  EXPECT_EQ(s.server_completion_tokens, 18);
  EXPECT_EQ(s.token_count_mismatches, 0);
  EXPECT_DOUBLE_EQ(s.request_throughput, 1.5);
  EXPECT_DOUBLE_EQ(s.output_throughput, 9.0);
  EXPECT_DOUBLE_EQ(s.total_token_throughput, 24.0);
  EXPECT_EQ(s.good_requests, 2);  // the 300 ms TTFT misses the SLO
  EXPECT_DOUBLE_EQ(s.goodput, 1.0);
  EXPECT_EQ(s.ttft_ms.count, 3);
  EXPECT_EQ(s.tpot_ms.count, 2);
  EXPECT_DOUBLE_EQ(s.tpot_ms.mean, 100.0);
  EXPECT_EQ(s.itl_ms.count, 15);
  EXPECT_EQ(s.e2e_ms.count, 3);
  EXPECT_DOUBLE_EQ(s.e2e_ms.max, 1100);
}

// Background streams are summarized apart: the load's figures leave them out, and only their
// gaps that ended while the load's requests were in flight count.
TEST(StatsTest, BackgroundStreamsAreApartAndWindowedByTheLoad) {
  RunResult run;
  run.plan.mode = RunPlan::Mode::kRate;
  run.plan.request_rate = 0.5;
  run.plan.background_streams = 2;
  run.sent = 1;
  run.wall_s = 1.0;
  // The load: one request from 1.0 s to 1.5 s.
  RequestRecord load = Record(grpc::StatusCode::OK, 400, 500, 2);
  load.start_s = 1.0;
  run.records.push_back(load);
  // A stream sent at 0, first token at 0.1 s, then gaps of 200 ms but one of 250 ms: tokens at
  // 0.3, 0.5, 0.7, 0.9, 1.1, 1.35, 1.55, ... s; two of them inside the load's span.
  RequestRecord stream = Record(grpc::StatusCode::OK, 100, 1950, 10);
  stream.background = true;
  stream.itl_ms.assign(9, 200.0f);
  stream.itl_ms[5] = 250.0f;
  run.records.push_back(stream);
  RequestRecord failed = Record(grpc::StatusCode::CANCELLED, 0, 10, 0);
  failed.background = true;
  run.records.push_back(failed);
  const RunSummary s = Summarize(run, {50, 99}, Slo{});
  EXPECT_EQ(s.completed, 1);
  EXPECT_EQ(s.failed, 0);
  EXPECT_EQ(s.completed_output_tokens, 2);
  EXPECT_EQ(s.itl_ms.count, 1);
  EXPECT_EQ(s.background_completed, 1);
  EXPECT_EQ(s.background_failed, 1);
  EXPECT_EQ(s.background_output_tokens, 10);
  EXPECT_EQ(s.background_itl_ms.count, 2);
  EXPECT_DOUBLE_EQ(s.background_itl_ms.max, 250.0);

  ReportContext context;
  context.percentiles = {50, 99};
  const std::vector<RunSummary> runs = {s};
  const std::string table = FormatTable(context, runs);
  EXPECT_NE(table.find("rate 0.5/s + 2 background"), std::string::npos) << table;
  EXPECT_NE(table.find("bg ITL p50/p99 ms"), std::string::npos) << table;
  EXPECT_NE(table.find("2: 1/1"), std::string::npos) << table;
  const nlohmann::json j = nlohmann::json::parse(ToJson(context, runs));
  EXPECT_EQ(j["runs"][0]["background"]["streams"], 2);
  EXPECT_EQ(j["runs"][0]["background"]["itl_ms_during_load"]["count"], 2);
}

TEST(ReportTest, TableJsonAndCsv) {
  RunResult run;
  run.plan.mode = RunPlan::Mode::kRate;
  run.plan.request_rate = std::numeric_limits<double>::infinity();
  run.plan.num_requests = 2;
  run.sent = 2;
  run.wall_s = 1.0;
  run.records.push_back(Record(grpc::StatusCode::OK, 10, 100, 10));
  run.records.push_back(Record(grpc::StatusCode::UNAVAILABLE, 0, 1, 0));
  ReportContext context;
  context.target = "127.0.0.1:1";
  context.model = "m";
  context.percentiles = {50, 99.9};
  const std::vector<RunSummary> runs = {Summarize(run, context.percentiles, Slo{})};

  const std::string table = FormatTable(context, runs);
  EXPECT_NE(table.find("| rate inf"), std::string::npos) << table;
  EXPECT_NE(table.find("TTFT p50/p99.9 ms"), std::string::npos) << table;
  EXPECT_NE(table.find("errors UNAVAILABLE:1"), std::string::npos) << table;

  const nlohmann::json j = nlohmann::json::parse(ToJson(context, runs));
  EXPECT_EQ(j["runs"][0]["request_rate"], "inf");
  EXPECT_EQ(j["runs"][0]["requests"]["failed"], 1);
  EXPECT_EQ(j["runs"][0]["errors"]["UNAVAILABLE"], 1);
  EXPECT_TRUE(j["runs"][0]["latency_ms"]["ttft"].contains("p99.9"));

  testing::TempDir dir;
  const std::string csv = dir / "runs.csv";
  ASSERT_TRUE(AppendCsv(csv, context, runs).ok());
  ASSERT_TRUE(AppendCsv(csv, context, runs).ok());
  std::ifstream in(csv);
  std::string header, row1, row2, extra;
  std::getline(in, header);
  std::getline(in, row1);
  std::getline(in, row2);
  EXPECT_FALSE(std::getline(in, extra));
  EXPECT_NE(header.find("ttft_ms_p99.9"), std::string::npos);
  EXPECT_EQ(row1, row2);
  context.percentiles = {50};
  EXPECT_FALSE(AppendCsv(csv, context, runs).ok());  // other columns: refused
}

}  // namespace
}  // namespace sals::loadtest
