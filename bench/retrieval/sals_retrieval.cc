// sals-retrieval: long-context retrieval accuracy of dense attention against SALS configurations.
// Reads cases (make_cases.py's JSONL), runs every case greedily through one engine per KV pool
// preset (CPU reference or CUDA backend) for each configuration, scores exact matches, measures
// the top-k recall of the true attention mass for the SALS configurations (dense CPU reference),
// and prints a table per task and length (--json for everything, plot.py for a figure).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/retrieval/attention_recall.h"
#include "bench/retrieval/bench_config.h"
#include "bench/retrieval/cases.h"
#include "bench/retrieval/engine_pass.h"
#include "bench/retrieval/report.h"
#include "bench/retrieval/scoring.h"
#include "engine/common/absl_compat.h"
#include "engine/model/config.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/model_setup.h"
#include "engine/tokenizer/tokenizer.h"
#include "tools/common/flag_names.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::string, backend, "cpu",
          "cpu (fp32 reference) or cuda (libsals_backend_cuda.so next to this program or on "
          "LD_LIBRARY_PATH)");
ABSL_FLAG(std::string, cases, "", "cases, one JSON object per line (make_cases.py)");
ABSL_FLAG(std::vector<std::string>, configs,
          absl::StrSplit(sals::kDefaultBenchConfigs, ',', absl::SkipEmpty()),
          "configurations: dense, sals-25, sals-12.5 (each also with -fp8: fp8 e4m3 keys), each "
          "SALS one optionally with :topk=F, :budget=N, :score_dims=N, :rank=N, "
          ":selection=shared|per_kv_head, :sinks=N, :recent=N; any with :hit to score it on "
          "prefix-cache hits");
ABSL_FLAG(std::string, json, "", "write the full results here");
ABSL_FLAG(std::string, calibration, "",
          "calibration file (default: sals_calibration.safetensors in --model)");
ABSL_FLAG(std::vector<std::string>, dense_layers, {},
          "layers kept dense in the SALS pools (default: the first two and the last)");
ABSL_FLAG(int, max_cases, 0, "> 0: at most this many cases per task and length (file order)");
ABSL_FLAG(int, recall_cases, -1,
          "cases per task and length whose attention-mass recall is measured (-1 = all)");
ABSL_FLAG(int, extra_tokens, 8, "generated tokens beyond the answer's own token count");
ABSL_FLAG(int, max_in_flight, 16, "requests in the engine at once");
ABSL_FLAG(bool, accuracy, true,
          "false: no engine passes, only the recall of the SALS configurations (dense CPU "
          "reference runs): much faster on the CPU");
ABSL_FLAG(bool, prefix_hits, false,
          "also score every configuration on prefix-cache hits (adds CONFIG:hit for each)");

namespace sals {
namespace {

// Keeps the first `max` cases of every task and length.
std::vector<RetrievalCase> FirstPerGroup(std::vector<RetrievalCase> cases, int max) {
  if (max <= 0) return cases;
  std::map<std::pair<std::string, int64_t>, int> seen;
  std::vector<RetrievalCase> kept;
  for (RetrievalCase& c : cases) {
    if (seen[{c.task, c.length}]++ < max) kept.push_back(std::move(c));
  }
  return kept;
}

// The answer's tokens as they follow the prompt: the tail of the prompt + answer's encoding when
// the prompt's encoding is its prefix (the answer begins with a space: a SentencePiece model
// encoding it alone would add a second one), else the answer encoded alone.
std::vector<int32_t> AnswerTokens(const Tokenizer& tokenizer, const RetrievalCase& c,
                                  const std::vector<int32_t>& prompt) {
  std::vector<int32_t> joint = tokenizer.Encode(c.prompt + c.answer, /*add_bos=*/true);
  if (joint.size() > prompt.size() && std::equal(prompt.begin(), prompt.end(), joint.begin())) {
    return std::vector<int32_t>(joint.begin() + prompt.size(), joint.end());
  }
  std::vector<int32_t> alone = tokenizer.Encode(c.answer, /*add_bos=*/false);
  if (alone.empty()) alone = tokenizer.Encode(c.items[0], /*add_bos=*/false);
  return alone;
}

// What every configuration shares: prompts and answers as tokens.
struct Prepared {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> answers;
  std::vector<int32_t> max_tokens;
  int64_t max_prompt = 0;
  int64_t max_total = 0;
};

absl::StatusOr<Prepared> Prepare(const std::vector<RetrievalCase>& cases,
                                 const Tokenizer& tokenizer, const ModelConfig& config) {
  Prepared p;
  const int extra = absl::GetFlag(FLAGS_extra_tokens);
  if (extra < 0) return absl::InvalidArgumentError("--extra_tokens must be >= 0");
  const size_t n = cases.size();
  p.prompts.resize(n);
  p.answers.resize(n);
  // Encoding is most of the set-up for long cases (4 x 600 prompts of 32K tokens are 280 MB of
  // text, about 2 minutes on one thread): cases are encoded on several threads, each taking every
  // num_threads-th case (Tokenizer::Encode is const and thread-safe).
  const size_t num_threads =
      std::clamp<size_t>(std::thread::hardware_concurrency(), 1, std::max<size_t>(1, n / 16));
  auto encode = [&](size_t first) {
    for (size_t i = first; i < n; i += num_threads) {
      p.prompts[i] = tokenizer.Encode(cases[i].prompt, /*add_bos=*/true);
      p.answers[i] = AnswerTokens(tokenizer, cases[i], p.prompts[i]);
    }
  };
  std::vector<std::thread> threads;
  for (size_t t = 1; t < num_threads; ++t) threads.emplace_back(encode, t);
  encode(0);
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < n; ++i) {
    const RetrievalCase& c = cases[i];
    p.max_tokens.push_back(static_cast<int32_t>(p.answers[i].size()) + std::max(1, extra));
    const int64_t total = static_cast<int64_t>(p.prompts[i].size()) + p.max_tokens.back();
    if (total > config.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("case ", c.task, "/", c.length, "/seed ", c.seed, ": ", p.prompts[i].size(),
                       " prompt + ", p.max_tokens.back(), " generated tokens exceed the model's ",
                       config.max_position_embeddings, " positions"));
    }
    p.max_prompt = std::max<int64_t>(p.max_prompt, p.prompts[i].size());
    p.max_total = std::max(p.max_total, total);
  }
  return p;
}

EngineConfig BaseEngineConfig(const std::string& kv_format, const std::vector<int>& dense_layers,
                              const Prepared& prepared, bool prefix_hits = false) {
  EngineConfig ec;
  ec.model_path = absl::GetFlag(FLAGS_model);
  ec.backend = absl::GetFlag(FLAGS_backend);
  ec.calibration_file = absl::GetFlag(FLAGS_calibration);
  ec.kv_format = kv_format;
  if (IsSalsPreset(kv_format) && !dense_layers.empty()) ec.dense_layers = dense_layers;
  ConfigureForPass(prepared.max_prompt, prepared.max_total, absl::GetFlag(FLAGS_max_in_flight), &ec,
                   prefix_hits);
  return ec;
}

// Runs every configuration of one KV preset through one engine. A SALS preset the backend cannot
// build (Unimplemented, or any refusal by the CUDA backend, whose SALS support has limits of its
// own) marks its configurations as not run and the benchmark goes on; other errors stop it.
absl::Status RunPreset(const std::string& kv_format, const std::vector<RetrievalCase>& cases,
                       const Prepared& prepared, const std::vector<int>& dense_layers,
                       std::vector<ConfigRun*> runs) {
  // With a configuration scored on hits the engine caches prefixes; every other request then
  // bypasses the cache (reproducible), so that it is prefilled whole as without one.
  const bool prefix_hits = std::any_of(runs.begin(), runs.end(),
                                       [](const ConfigRun* r) { return r->config.prefix_hit; });
  const EngineConfig ec = BaseEngineConfig(kv_format, dense_layers, prepared, prefix_hits);
  auto engine = Engine::Create(ec, nullptr);
  if (!engine.ok()) {
    const absl::Status& s = engine.status();
    const bool carry_on = s.code() == absl::StatusCode::kUnimplemented ||
                          (ec.backend == "cuda" && IsSalsPreset(kv_format));
    if (!carry_on) {
      return absl::Status(s.code(), absl::StrCat(kv_format, " engine: ", s.message()));
    }
    for (ConfigRun* run : runs) {
      run->status = absl::StrCat("not run on ", ec.backend, ": ",
                                 absl::StatusCodeToString(s.code()), ": ", s.message());
      std::fprintf(stderr, "[sals-retrieval] %s: %s\n", run->config.name.c_str(),
                   run->status.c_str());
    }
    return absl::OkStatus();
  }
  const auto& sals_storage = (*engine)->info().pool.format.sals;
  for (ConfigRun* run : runs) {
    if (ec.backend == "cuda" && run->config.policy.selection != SalsSelection::kShared) {
      // The CUDA backend refuses it (Engine): recorded as not run, the others go on.
      run->status = absl::StrCat("not run on cuda: selection ",
                                 ToAbsl(SalsSelectionName(run->config.policy.selection)),
                                 " is CPU reference only");
      std::fprintf(stderr, "[sals-retrieval] %s: %s\n", run->config.name.c_str(),
                   run->status.c_str());
      continue;
    }
    if (sals_storage) {
      if (absl::Status s = ValidateSalsPolicy(run->config.policy, *sals_storage); !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("config '", run->config.name, "': ", s.message()));
      }
    }
    std::vector<PassRequest> requests(cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      requests[i].prompt = prepared.prompts[i];
      requests[i].max_tokens = prepared.max_tokens[i];
      if (run->config.is_sals()) requests[i].policy = run->config.policy;
      requests[i].reproducible = prefix_hits;
    }
    // On hits: every prompt run twice, the second run scored.
    const int stride = run->config.prefix_hit ? 2 : 1;
    if (run->config.prefix_hit) requests = PrefixHitRequests(requests);
    PassOptions options;
    options.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
    const absl::Time start = absl::Now();
    const std::string name = run->config.name;
    options.progress = [&](int done, int total) {
      if (done % stride != 0) return;  // a prefix-filling run
      done /= stride;
      total /= stride;
      if (done % 10 == 0 || done == total) {
        std::fprintf(stderr, "[sals-retrieval] %s: %d/%d cases, %.0f s\n", name.c_str(), done,
                     total, absl::ToDoubleSeconds(absl::Now() - start));
      }
    };
    auto results = RunPass(**engine, requests, options);
    if (!results.ok()) {
      return absl::Status(results.status().code(),
                          absl::StrCat("config '", name, "': ", results.status().message()));
    }
    run->seconds = absl::ToDoubleSeconds(absl::Now() - start);
    for (size_t i = 0; i < cases.size(); ++i) {
      const PassResult& r = (*results)[stride * i + stride - 1];
      CaseRun cr;
      cr.cached_prompt_tokens = r.completion.cached_prompt_tokens;
      cr.output = r.text;
      const AnswerScore score = ScoreAnswer(r.text, cases[i].items);
      cr.correct = score.correct;
      cr.items = score.items;
      cr.completion_tokens = r.completion.completion_tokens;
      cr.finish = std::string(FinishReasonName(r.completion.reason));
      run->cases.push_back(std::move(cr));
    }
  }
  return absl::OkStatus();
}

// Recall for the SALS configurations that ran: one dense CPU run per measured case over its
// prompt and expected answer, measured at the positions whose queries produce the answer.
absl::Status MeasureRecalls(const std::vector<RetrievalCase>& cases, const Prepared& prepared,
                            const std::vector<int>& dense_layers, const ModelConfig& model,
                            BenchReport* report) {
  const int per_group = absl::GetFlag(FLAGS_recall_cases);
  if (per_group == 0) return absl::OkStatus();
  std::vector<ConfigRun*> runs;
  std::vector<RecallTarget> targets;
  std::vector<int> ranks;
  for (ConfigRun& run : report->runs) {
    // Recall depends on the policy only: a hit twin repeats its configuration's.
    if (!run.ran() || !run.config.is_sals() || run.config.prefix_hit) continue;
    auto format =
        ResolveKvFormat(BaseEngineConfig(run.config.kv_format, dense_layers, prepared), model);
    if (!format.ok()) return format.status();
    RecallTarget t;
    t.policy = run.config.policy;
    t.rank = format->sals->rank;
    for (int l = 0; l < model.num_layers; ++l) {
      if (!format->IsDense(l)) t.layers.push_back(l);
    }
    if (t.layers.empty()) continue;  // every layer dense: nothing is selected
    runs.push_back(&run);
    targets.push_back(std::move(t));
    ranks.push_back(targets.back().rank);
  }
  if (runs.empty()) return absl::OkStatus();

  std::vector<int> measured;
  std::map<std::pair<std::string, int64_t>, int> seen;
  int64_t max_len = 0;
  for (int i = 0; i < static_cast<int>(cases.size()); ++i) {
    if (per_group > 0 && seen[{cases[i].task, cases[i].length}]++ >= per_group) continue;
    measured.push_back(i);
    max_len = std::max<int64_t>(max_len, prepared.prompts[i].size() + prepared.answers[i].size());
  }
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  const absl::Time start = absl::Now();
  auto meter =
      AttentionRecallMeter::Create(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_calibration),
                                   ranks, static_cast<int>(max_len));
  if (!meter.ok()) return meter.status();
  for (ConfigRun* run : runs) run->recall.resize(cases.size());
  for (size_t m = 0; m < measured.size(); ++m) {
    const int i = measured[m];
    // The prompt, then the answer but its last token: the queries at positions prompt-1.. each
    // produce one answer token. (An answer of no tokens measures the last prompt position.)
    std::vector<int32_t> tokens = prepared.prompts[i];
    if (!prepared.answers[i].empty()) {
      tokens.insert(tokens.end(), prepared.answers[i].begin(), prepared.answers[i].end() - 1);
    }
    auto stats =
        (*meter)->Measure(tokens, static_cast<int64_t>(prepared.prompts[i].size()) - 1, targets);
    if (!stats.ok()) return stats.status();
    for (size_t t = 0; t < runs.size(); ++t) runs[t]->recall[i] = (*stats)[t];
    if ((m + 1) % 10 == 0 || m + 1 == measured.size()) {
      std::fprintf(stderr, "[sals-retrieval] recall: %zu/%zu cases, %.0f s\n", m + 1,
                   measured.size(), absl::ToDoubleSeconds(absl::Now() - start));
    }
  }
  report->recall_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return absl::OkStatus();
}

absl::Status Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  const std::string cases_file = absl::GetFlag(FLAGS_cases);
  if (model_dir.empty() || cases_file.empty()) {
    return absl::InvalidArgumentError("--model and --cases are required");
  }
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "cpu" && backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend must be cpu or cuda, not '", backend, "'"));
  }
  if (absl::GetFlag(FLAGS_max_in_flight) < 1) {
    return absl::InvalidArgumentError("--max_in_flight must be positive");
  }
  std::vector<std::string> specs = absl::GetFlag(FLAGS_configs);
  if (absl::GetFlag(FLAGS_prefix_hits)) {
    const size_t n = specs.size();
    for (size_t i = 0; i < n; ++i) {
      if (!absl::EndsWith(specs[i], ":hit")) specs.push_back(specs[i] + ":hit");
    }
  }
  auto configs = ParseBenchConfigs(specs);
  if (!configs.ok()) return configs.status();
  auto dense_layers = ParseIntListFlag("dense_layers", absl::GetFlag(FLAGS_dense_layers));
  if (!dense_layers.ok()) return dense_layers.status();
  auto cases = ReadRetrievalCases(cases_file);
  if (!cases.ok()) return cases.status();
  auto model = LoadModelConfig(model_dir);
  if (!model.ok()) return model.status();
  auto tokenizer = LoadTokenizer(model_dir);
  if (!tokenizer.ok()) return tokenizer.status();

  BenchReport report;
  report.model = model_dir;
  report.backend = backend;
  report.cases_file = cases_file;
  report.cases = FirstPerGroup(std::move(*cases), absl::GetFlag(FLAGS_max_cases));
  auto prepared = Prepare(report.cases, **tokenizer, *model);
  if (!prepared.ok()) return prepared.status();
  for (const auto& p : prepared->prompts) {
    report.prompt_tokens.push_back(static_cast<int32_t>(p.size()));
  }
  std::fprintf(stderr,
               "[sals-retrieval] %s on %s: %zu cases (prompts up to %lld tokens), %zu "
               "configurations\n",
               model_dir.c_str(), backend.c_str(), report.cases.size(),
               static_cast<long long>(prepared->max_prompt), configs->size());

  for (BenchConfig& c : *configs) {
    ConfigRun run;
    run.config = std::move(c);
    report.runs.push_back(std::move(run));
  }
  // One engine per KV preset, presets in order of first mention.
  std::vector<std::string> presets;
  for (const ConfigRun& run : report.runs) {
    if (std::find(presets.begin(), presets.end(), run.config.kv_format) == presets.end()) {
      presets.push_back(run.config.kv_format);
    }
  }
  for (const std::string& preset : presets) {
    if (!absl::GetFlag(FLAGS_accuracy)) break;
    std::vector<ConfigRun*> runs;
    for (ConfigRun& run : report.runs) {
      if (run.config.kv_format == preset) runs.push_back(&run);
    }
    if (absl::Status s = RunPreset(preset, report.cases, *prepared, *dense_layers, runs); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = MeasureRecalls(report.cases, *prepared, *dense_layers, *model, &report);
      !s.ok()) {
    return s;
  }

  PrintReport(report, stdout);
  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << ReportToJson(report).dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
        << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", json_path));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-retrieval --model DIR --cases FILE.jsonl [--backend cpu|cuda] [--json OUT]\n"
      "    [--configs dense,sals-25,sals-12.5,sals-12.5:topk=1/4,sals-12.5:budget=256]\n"
      "    [--max-cases N] [--recall-cases N] [--dense-layers 0,1,7] [--prefix-hits]\n"
      "CPU threads: OMP_NUM_THREADS (the engine's step thread reads it at start).\n"
      "Accuracy: the greedy output starts with the answer (every value present for multi-value\n"
      "answers). Recall: share of the true attention mass on the tokens SALS selects.");
  sals::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = sals::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "sals-retrieval: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
