#include "bench/retrieval/report.h"

#include <algorithm>
#include <map>
#include <utility>

namespace sals {
namespace {

// A task and a nominal length; tasks keep their order of first appearance.
struct Group {
  std::string task;
  int64_t length = 0;
  std::vector<int> cases;
};

std::vector<Group> GroupCases(const std::vector<RetrievalCase>& cases) {
  std::map<std::string, int> task_order;
  std::map<std::pair<int, int64_t>, Group> groups;
  for (int i = 0; i < static_cast<int>(cases.size()); ++i) {
    const RetrievalCase& c = cases[i];
    const int order = task_order.emplace(c.task, static_cast<int>(task_order.size())).first->second;
    Group& g = groups[{order, c.length}];
    g.task = c.task;
    g.length = c.length;
    g.cases.push_back(i);
  }
  std::vector<Group> out;
  for (auto& [key, g] : groups) out.push_back(std::move(g));
  return out;
}

std::vector<int64_t> Lengths(const std::vector<Group>& groups) {
  std::vector<int64_t> lengths;
  for (const Group& g : groups) lengths.push_back(g.length);
  std::sort(lengths.begin(), lengths.end());
  lengths.erase(std::unique(lengths.begin(), lengths.end()), lengths.end());
  return lengths;
}

// Recall over several cases, weighted by their measured positions.
struct RecallSum {
  int cases = 0;
  int64_t samples = 0;
  double sum = 0.0, min = 1.0, random = 0.0, attended = 0.0;

  void Add(const RecallStats& s) {
    ++cases;
    samples += s.samples;
    sum += s.mean * s.samples;
    random += s.random_recall * s.samples;
    attended += s.selected_fraction * s.samples;
    min = std::min(min, s.min);
  }
  double mean() const { return samples > 0 ? sum / samples : 0.0; }
  nlohmann::json ToJson() const {
    if (samples == 0) return nullptr;
    return {{"mean", mean()},
            {"min", min},
            {"random", random / samples},
            {"attended", attended / samples},
            {"samples", samples},
            {"cases", cases}};
  }
};

struct Tally {
  int cases = 0;
  int correct = 0;
  double items = 0.0;
  RecallSum recall;
  double accuracy() const { return cases > 0 ? static_cast<double>(correct) / cases : 0.0; }
  double score() const { return cases > 0 ? items / cases : 0.0; }
};

Tally Count(const ConfigRun& run, const std::vector<int>& cases) {
  Tally t;
  for (int i : cases) {
    ++t.cases;
    if (i < static_cast<int>(run.cases.size())) {  // none: recall only (--accuracy=false)
      if (run.cases[i].correct) ++t.correct;
      t.items += run.cases[i].items;
    }
    if (i < static_cast<int>(run.recall.size()) && run.recall[i]) t.recall.Add(*run.recall[i]);
  }
  return t;
}

std::vector<int> CasesOfLength(const std::vector<Group>& groups, int64_t length) {
  std::vector<int> cases;
  for (const Group& g : groups) {
    if (g.length == length) cases.insert(cases.end(), g.cases.begin(), g.cases.end());
  }
  return cases;
}

nlohmann::json PolicyJson(const BenchConfig& c) {
  if (!c.is_sals()) return nullptr;
  const SalsPolicy& p = c.policy;
  return {{"topk_fraction", p.topk_fraction},
          {"token_budget", p.token_budget},
          {"rank", p.rank},
          {"score_dims", p.score_dims},
          {"sink_tokens", p.sink_tokens},
          {"recent_tokens", p.recent_tokens}};
}

double MeanTokens(const BenchReport& report, const std::vector<int>& cases) {
  double sum = 0.0;
  for (int i : cases) sum += report.prompt_tokens[i];
  return cases.empty() ? 0.0 : sum / static_cast<double>(cases.size());
}

}  // namespace

nlohmann::json ReportToJson(const BenchReport& report) {
  const std::vector<Group> groups = GroupCases(report.cases);
  nlohmann::json j;
  j["model"] = report.model;
  j["backend"] = report.backend;
  j["cases_file"] = report.cases_file;
  j["num_cases"] = report.cases.size();
  j["recall_seconds"] = report.recall_seconds;
  j["configs"] = nlohmann::json::array();
  for (const ConfigRun& run : report.runs) {
    j["configs"].push_back({{"name", run.config.name},
                            {"kv_format", run.config.kv_format},
                            {"policy", PolicyJson(run.config)},
                            {"prefix_hit", run.config.prefix_hit},
                            {"status", run.status},
                            {"seconds", run.seconds}});
  }
  j["results"] = nlohmann::json::array();
  j["totals"] = nlohmann::json::array();
  for (const ConfigRun& run : report.runs) {
    if (!run.ran()) continue;
    for (const Group& g : groups) {
      const Tally t = Count(run, g.cases);
      int32_t lo = INT32_MAX, hi = 0;
      for (int i : g.cases) {
        lo = std::min(lo, report.prompt_tokens[i]);
        hi = std::max(hi, report.prompt_tokens[i]);
      }
      j["results"].push_back(
          {{"task", g.task},
           {"length", g.length},
           {"config", run.config.name},
           {"cases", t.cases},
           {"correct", t.correct},
           {"accuracy", t.accuracy()},
           {"score", t.score()},
           {"prompt_tokens", {{"mean", MeanTokens(report, g.cases)}, {"min", lo}, {"max", hi}}},
           {"recall", t.recall.ToJson()}});
    }
    std::vector<int> all(report.cases.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
    const Tally t = Count(run, all);
    j["totals"].push_back({{"config", run.config.name},
                           {"cases", t.cases},
                           {"correct", t.correct},
                           {"accuracy", t.accuracy()},
                           {"score", t.score()},
                           {"recall", t.recall.ToJson()}});
  }
  j["cases"] = nlohmann::json::array();
  for (size_t i = 0; i < report.cases.size(); ++i) {
    const RetrievalCase& c = report.cases[i];
    nlohmann::json results = nlohmann::json::object();
    for (const ConfigRun& run : report.runs) {
      if (!run.ran()) continue;
      nlohmann::json entry = nlohmann::json::object();
      if (i < run.cases.size()) {
        const CaseRun& r = run.cases[i];
        entry = {{"output", r.output}, {"correct", r.correct},
                 {"items", r.items},   {"completion_tokens", r.completion_tokens},
                 {"finish", r.finish}, {"cached_prompt_tokens", r.cached_prompt_tokens}};
      }
      if (i < run.recall.size() && run.recall[i]) entry["recall"] = run.recall[i]->mean;
      results[run.config.name] = std::move(entry);
    }
    j["cases"].push_back({{"task", c.task},
                          {"length", c.length},
                          {"seed", c.seed},
                          {"prompt_tokens", report.prompt_tokens[i]},
                          {"answer", c.answer},
                          {"items", c.items},
                          {"results", std::move(results)}});
  }
  return j;
}

void PrintReport(const BenchReport& report, std::FILE* out) {
  const std::vector<Group> groups = GroupCases(report.cases);
  std::vector<const ConfigRun*> ran, with_recall;
  for (const ConfigRun& run : report.runs) {
    if (!run.ran()) {
      std::fprintf(out, "%s: not run: %s\n", run.config.name.c_str(), run.status.c_str());
      continue;
    }
    if (!run.cases.empty()) ran.push_back(&run);  // else recall only (--accuracy=false)
    if (std::any_of(run.recall.begin(), run.recall.end(), [](const auto& r) { return r; })) {
      with_recall.push_back(&run);
    }
  }
  auto table = [&](const char* title, const std::vector<const ConfigRun*>& runs, bool recall) {
    if (runs.empty()) return;
    std::fprintf(out, "\n%s\n%-20s %7s %7s %5s", title, "task", "length", "tokens", "cases");
    for (const ConfigRun* r : runs) {
      std::fprintf(out, " %*s", static_cast<int>(std::max<size_t>(9, r->config.name.size())),
                   r->config.name.c_str());
    }
    std::fprintf(out, "\n");
    auto row = [&](const std::string& task, int64_t length, const std::vector<int>& cases) {
      std::fprintf(out, "%-20s %7lld %7.0f %5zu", task.c_str(), static_cast<long long>(length),
                   MeanTokens(report, cases), cases.size());
      for (const ConfigRun* r : runs) {
        const Tally t = Count(*r, cases);
        const int width = static_cast<int>(std::max<size_t>(9, r->config.name.size()));
        if (recall && t.recall.samples == 0) {
          std::fprintf(out, " %*s", width, "-");
        } else {
          std::fprintf(out, " %*.3f", width, recall ? t.recall.mean() : t.accuracy());
        }
      }
      std::fprintf(out, "\n");
    };
    for (const Group& g : groups) row(g.task, g.length, g.cases);
    for (int64_t length : Lengths(groups)) row("all", length, CasesOfLength(groups, length));
  };
  table("accuracy (exact match, greedy)", ran, false);
  table(
      "recall of the true attention mass (sparse layers, heads and the positions producing the "
      "answer)",
      with_recall, true);
  std::fprintf(out, "\n");
  for (const ConfigRun* r : ran)
    std::fprintf(out, "%s: %.1f s\n", r->config.name.c_str(), r->seconds);
  if (!with_recall.empty()) std::fprintf(out, "recall: %.1f s\n", report.recall_seconds);
}

}  // namespace sals
