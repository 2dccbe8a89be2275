// The retrieval benchmark's pieces: case parsing, scoring, configuration specs and the JSON
// report's arithmetic.
#include <fstream>

#include "bench/retrieval/bench_config.h"
#include "bench/retrieval/cases.h"
#include "bench/retrieval/report.h"
#include "bench/retrieval/scoring.h"
#include "gtest/gtest.h"
#include "tests/common/temp_dir.h"

namespace sals {
namespace {

TEST(RetrievalCaseTest, ParsesStringListAndItems) {
  auto c = ParseRetrievalCase(
      R"({"task":"passkey","length":512,"seed":1000000007,"prompt":"p","answer":" 71432"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->task, "passkey");
  EXPECT_EQ(c->length, 512);
  EXPECT_EQ(c->seed, 1000000007u);
  EXPECT_EQ(c->answer, " 71432");
  EXPECT_EQ(c->items, std::vector<std::string>{"71432"});

  c = ParseRetrievalCase(R"({"task":"mv","length":1,"seed":1,"prompt":"p","answer":["a","b"]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->answer, "a, b");
  EXPECT_EQ(c->items, (std::vector<std::string>{"a", "b"}));

  c = ParseRetrievalCase(
      R"({"task":"vt","length":1,"seed":1,"prompt":"p","answer":" A, B","items":["A","B"],"x":0})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->answer, " A, B");
  EXPECT_EQ(c->items, (std::vector<std::string>{"A", "B"}));
}

TEST(RetrievalCaseTest, ErrorsNameTheKey) {
  const std::pair<const char*, const char*> bad[] = {
      {R"([1])", "JSON object"},
      {R"({"length":1,"seed":1,"prompt":"p","answer":"a"})", "task"},
      {R"({"task":"t","length":0,"seed":1,"prompt":"p","answer":"a"})", "length"},
      {R"({"task":"t","length":1,"seed":-1,"prompt":"p","answer":"a"})", "seed"},
      {R"({"task":"t","length":1,"seed":1,"prompt":"p","answer":[]})", "answer"},
      {R"({"task":"t","length":1,"seed":1,"prompt":"p","answer":"a","items":[1]})", "items"},
      {R"({"task":"t","length":1,"seed":1,"prompt":"p","answer":"  "})", "empty"},
  };
  for (const auto& [line, word] : bad) {
    auto c = ParseRetrievalCase(line);
    ASSERT_FALSE(c.ok()) << line;
    EXPECT_NE(std::string(c.status().message()).find(word), std::string::npos) << c.status();
  }
}

TEST(RetrievalCaseTest, ReadsFileSkippingBlankLinesAndNamesTheBadLine) {
  testing::TempDir dir;
  {
    std::ofstream f(dir / "ok.jsonl");
    f << R"({"task":"a","length":8,"seed":1,"prompt":"p","answer":"x"})"
      << "\n\n"
      << R"({"task":"b","length":8,"seed":2,"prompt":"q","answer":"y"})"
      << "\n";
  }
  auto cases = ReadRetrievalCases(dir / "ok.jsonl");
  ASSERT_TRUE(cases.ok()) << cases.status();
  ASSERT_EQ(cases->size(), 2u);
  EXPECT_EQ((*cases)[1].task, "b");
  {
    std::ofstream f(dir / "bad.jsonl");
    f << R"({"task":"a","length":8,"seed":1,"prompt":"p","answer":"x"})"
      << "\n{\n";
  }
  auto bad = ReadRetrievalCases(dir / "bad.jsonl");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("bad.jsonl:2"), std::string::npos);
  EXPECT_FALSE(ReadRetrievalCases(dir / "missing.jsonl").ok());
}

TEST(ScoreAnswerTest, OneItemMustStartTheOutputAsAWord) {
  const std::vector<std::string> key = {"71432"};
  EXPECT_TRUE(ScoreAnswer(" 71432", key).correct);
  EXPECT_TRUE(ScoreAnswer("\n 71432. Remember it.", key).correct);
  EXPECT_FALSE(ScoreAnswer(" 714325", key).correct);
  EXPECT_FALSE(ScoreAnswer(" the key is 71432", key).correct);
  EXPECT_DOUBLE_EQ(ScoreAnswer(" the key is 71432", key).items, 1.0);
  EXPECT_FALSE(ScoreAnswer("", key).correct);
  EXPECT_FALSE(ScoreAnswer("7143", key).correct);
}

TEST(ScoreAnswerTest, SeveralItemsAllOnTheFirstLineInAnyOrder) {
  const std::vector<std::string> values = {"11", "22", "33"};
  EXPECT_TRUE(ScoreAnswer(" 33, 11, 22", values).correct);
  const AnswerScore partial = ScoreAnswer(" 11, 22\n33", values);
  EXPECT_FALSE(partial.correct);
  EXPECT_NEAR(partial.items, 2.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(ScoreAnswer(" 111, 222, 333", values).items, 0.0);
}

TEST(BenchConfigTest, ParsesPresetsAndPolicyKeys) {
  auto dense = ParseBenchConfig("dense");
  ASSERT_TRUE(dense.ok());
  EXPECT_FALSE(dense->is_sals());
  auto quarter = ParseBenchConfig("sals-12.5:topk=1/4:sinks=8");
  ASSERT_TRUE(quarter.ok()) << quarter.status();
  EXPECT_EQ(quarter->kv_format, "sals-12.5");
  EXPECT_DOUBLE_EQ(quarter->policy.topk_fraction, 0.25);
  EXPECT_EQ(quarter->policy.sink_tokens, 8);
  auto budget = ParseBenchConfig("sals-25:budget=256");
  ASSERT_TRUE(budget.ok());
  EXPECT_EQ(budget->policy.token_budget, 256);
  EXPECT_EQ(budget->policy.topk_fraction, 0.0);  // exactly the budget, whatever the context

  auto hit = ParseBenchConfig("sals-12.5:topk=1/4:hit");
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_TRUE(hit->prefix_hit);
  EXPECT_DOUBLE_EQ(hit->policy.topk_fraction, 0.25);
  EXPECT_FALSE(quarter->prefix_hit);
  auto dense_hit = ParseBenchConfig("dense:hit");
  ASSERT_TRUE(dense_hit.ok()) << dense_hit.status();
  EXPECT_TRUE(dense_hit->prefix_hit);

  // The fp8 presets: dense-fp8 is no SALS pool (takes no policy keys), sals-*-fp8 are.
  auto dense_fp8 = ParseBenchConfig("dense-fp8");
  ASSERT_TRUE(dense_fp8.ok()) << dense_fp8.status();
  EXPECT_FALSE(dense_fp8->is_sals());
  auto sals_fp8 = ParseBenchConfig("sals-12.5-fp8:topk=1/4");
  ASSERT_TRUE(sals_fp8.ok()) << sals_fp8.status();
  EXPECT_TRUE(sals_fp8->is_sals());
  EXPECT_EQ(sals_fp8->kv_format, "sals-12.5-fp8");

  auto per_head = ParseBenchConfig("sals-25:selection=per_kv_head");
  ASSERT_TRUE(per_head.ok()) << per_head.status();
  EXPECT_EQ(per_head->policy.selection, SalsSelection::kPerKvHead);
  EXPECT_EQ(quarter->policy.selection, SalsSelection::kShared);
  for (const char* bad :
       {"sals-50", "dense:topk=0.5", "sals-25:topk=x", "sals-25:topk=1/0", "sals-25:colour=red",
        "sals-25:budget", "sals-25:hits", "dense-fp8:topk=0.5", "sals-25-fp4",
        "sals-25:selection=per_head", "dense:selection=shared"}) {
    EXPECT_FALSE(ParseBenchConfig(bad).ok()) << bad;
  }
  auto defaults = ParseBenchConfigs(
      {"dense", "sals-25", "sals-12.5", "sals-12.5:topk=1/4", "sals-12.5:topk=1/16"});
  EXPECT_TRUE(defaults.ok());
  EXPECT_FALSE(ParseBenchConfigs({"dense", "dense"}).ok());
  EXPECT_FALSE(ParseBenchConfigs({}).ok());
}

TEST(ReportTest, CountsAddUpAndRecallIsWeightedByPositions) {
  BenchReport report;
  for (int i = 0; i < 4; ++i) {
    RetrievalCase c;
    c.task = i < 2 ? "passkey" : "vartrack";
    c.length = 512;
    c.seed = 1000000000u + i;
    c.answer = " 1";
    c.items = {"1"};
    report.cases.push_back(c);
    report.prompt_tokens.push_back(500 + i);
  }
  ConfigRun dense;
  dense.config = *ParseBenchConfig("dense");
  ConfigRun sparse;
  sparse.config = *ParseBenchConfig("sals-12.5");
  ConfigRun missing;
  missing.config = *ParseBenchConfig("sals-25");
  missing.status = "unimplemented on cuda: no SALS pools";
  for (int i = 0; i < 4; ++i) {
    dense.cases.push_back(CaseRun{true, 1.0, " 1", 1, "stop"});
    sparse.cases.push_back(CaseRun{i != 3, i != 3 ? 1.0 : 0.0, " 1", 1, "stop"});
  }
  sparse.recall.resize(4);
  RecallStats a, b;
  a.samples = 1;
  a.mean = 0.5;
  a.min = 0.5;
  b.samples = 3;
  b.mean = 0.9;
  b.min = 0.8;
  sparse.recall[2] = a;
  sparse.recall[3] = b;
  report.runs = {dense, sparse, missing};

  const nlohmann::json j = ReportToJson(report);
  EXPECT_EQ(j["num_cases"], 4);
  ASSERT_EQ(j["configs"].size(), 3u);
  EXPECT_EQ(j["configs"][2]["status"], "unimplemented on cuda: no SALS pools");
  ASSERT_EQ(j["results"].size(), 4u);  // 2 tasks x 2 configurations that ran
  const nlohmann::json& vt = j["results"][3];
  EXPECT_EQ(vt["config"], "sals-12.5");
  EXPECT_EQ(vt["task"], "vartrack");
  EXPECT_EQ(vt["cases"], 2);
  EXPECT_EQ(vt["correct"], 1);
  EXPECT_DOUBLE_EQ(vt["accuracy"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(vt["recall"]["mean"].get<double>(), (0.5 + 3 * 0.9) / 4);
  EXPECT_DOUBLE_EQ(vt["recall"]["min"].get<double>(), 0.5);
  EXPECT_EQ(vt["recall"]["cases"], 2);
  EXPECT_TRUE(j["results"][0]["recall"].is_null());
  EXPECT_EQ(j["totals"][1]["correct"], 3);
  ASSERT_EQ(j["cases"].size(), 4u);
  EXPECT_FALSE(j["cases"][0]["results"].contains("sals-25"));
  EXPECT_FALSE(j["cases"][3]["results"]["sals-12.5"]["correct"].get<bool>());
}

}  // namespace
}  // namespace sals
