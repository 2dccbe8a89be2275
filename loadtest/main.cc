// sals-loadtest: drives a sals-server with many concurrent Generate streams (Poisson / gamma
// arrivals at a request rate, or a fixed number in flight) and reports TTFT, TPOT, inter-token
// and end-to-end latency percentiles, throughput and goodput; JSON and CSV for plot.py.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "loadtest/progress.h"
#include "loadtest/report.h"
#include "loadtest/runner.h"
#include "loadtest/stats.h"
#include "loadtest/workload.h"
#include "tools/common/flag_names.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "the server's gRPC address, HOST:PORT");
ABSL_FLAG(std::string, request_rate, "",
          "requests per second, or a list for a sweep (\"1,2,4,inf\"); inf sends every request "
          "at once");
ABSL_FLAG(double, burstiness, 1.0,
          "gamma shape of the gaps between arrivals: 1 = Poisson, < 1 burstier, > 1 steadier");
ABSL_FLAG(
    std::string, concurrency, "",
    "instead of a rate: keep this many requests in flight, or a list for a sweep (\"1,8,32\"); "
    "pool: as many as the server's KV pool holds at once at the longest prompt + output "
    "(\"1,8,pool\"; alone and with no --num_requests or --duration_s, that many requests)");
ABSL_FLAG(int, max_concurrency, 0, "with --request_rate: at most this many in flight (0 = no cap)");
ABSL_FLAG(int64_t, num_requests, 0, "requests per run (0 = bounded by --duration_s alone)");
ABSL_FLAG(double, duration_s, 0,
          "seconds of sending per run (0 = bounded by --num_requests alone); requests in flight "
          "then finish");
ABSL_FLAG(int, warmup_requests, 8, "requests sent first and left out of every statistic");
ABSL_FLAG(std::string, prompt_len, "128", "prompt tokens: N, or MIN:MAX drawn uniformly");
ABSL_FLAG(std::string, output_len, "",
          "tokens to generate: N or MIN:MAX (default: 128 for synthetic prompts, each row's "
          "output_tokens with --dataset, which this then overrides)");
ABSL_FLAG(int, shared_prefix_len, 0, "first prompt tokens common to every request (prefix cache)");
ABSL_FLAG(std::string, dataset, "",
          "JSONL file, one request a line: \"prompt\" (text), \"prompt_token_ids\" or "
          "\"prompt_tokens\" (a length), and \"output_tokens\"");
ABSL_FLAG(int, background_streams, 0,
          "streams kept in flight beside the load (restarted as they end) from before its first "
          "request until its last one ends; their inter-token latency while the load's requests "
          "are in flight is reported apart (e.g. 8 decoding streams while 32K prompts arrive)");
ABSL_FLAG(std::string, background_prompt_len, "128",
          "prompt tokens of a background stream: N or MIN:MAX");
ABSL_FLAG(std::string, background_output_len, "512",
          "tokens a background stream generates: N or MIN:MAX");
ABSL_FLAG(bool, ignore_eos, true, "generate exactly the output length (past end-of-sequence)");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature (0 = greedy)");
ABSL_FLAG(std::string, policy, "",
          "attention policy preset for every request: dense, sals-25, sals-12.5 (\"\" = the "
          "server's default)");
ABSL_FLAG(double, timeout_s, 600, "deadline of each request");
ABSL_FLAG(double, connect_timeout_s, 60, "how long to wait for the server to answer GetModelInfo");
ABSL_FLAG(int, channels, 4, "gRPC connections the streams are spread over");
ABSL_FLAG(int64_t, seed, -1,
          "seeds prompts and arrivals (run i's arrivals use seed + i); -1 = a random seed, so "
          "repeated invocations do not replay prompts the server's prefix cache holds");
ABSL_FLAG(std::string, percentiles, "50,90,99", "latency percentiles to report");
ABSL_FLAG(std::string, goodput, "",
          "SLOs a good request meets, e.g. \"ttft_ms=500,tpot_ms=50\" (also itl_ms: largest gap, "
          "e2e_ms)");
ABSL_FLAG(std::string, json, "", "write every result to this JSON file (input of plot.py)");
ABSL_FLAG(std::string, csv, "", "append one summary row per run to this CSV file");
ABSL_FLAG(std::string, requests_csv, "", "write one row per request to this CSV file");
ABSL_FLAG(std::string, label, "", "free text stored with the results (e.g. the config tested)");
ABSL_FLAG(bool, quiet, false, "no progress line");

namespace sals::loadtest {
namespace {

std::atomic<bool> g_stop{false};

void OnSigint(int) { g_stop = true; }

absl::StatusOr<std::vector<double>> ParseNumberList(const std::string& spec, const char* flag,
                                                    bool allow_inf) {
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(spec, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    double v = 0;
    if (allow_inf && (part == "inf" || part == "infinity")) {
      out.push_back(std::numeric_limits<double>::infinity());
    } else if (absl::SimpleAtod(part, &v) && v > 0 && std::isfinite(v)) {
      out.push_back(v);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, "='", spec, "': expected positive numbers separated by ','"));
    }
  }
  return out;
}

absl::StatusOr<std::vector<RunPlan>> MakePlans(uint64_t seed) {
  const std::string rates = absl::GetFlag(FLAGS_request_rate);
  const std::string concurrencies = absl::GetFlag(FLAGS_concurrency);
  if (rates.empty() == concurrencies.empty()) {
    return absl::InvalidArgumentError("give exactly one of --request_rate and --concurrency");
  }
  RunPlan base;
  base.num_requests = absl::GetFlag(FLAGS_num_requests);
  base.duration_s = absl::GetFlag(FLAGS_duration_s);
  base.burstiness = absl::GetFlag(FLAGS_burstiness);
  base.max_concurrency = absl::GetFlag(FLAGS_max_concurrency);
  base.background_streams = absl::GetFlag(FLAGS_background_streams);
  if (base.num_requests < 0 || base.duration_s < 0 || base.max_concurrency < 0 ||
      base.background_streams < 0) {
    return absl::InvalidArgumentError(
        "--num_requests, --duration_s, --max_concurrency and --background_streams must be >= 0");
  }
  // `--concurrency pool` alone may go unbounded: one pool's worth of requests (ResolvePoolPlans).
  if (base.num_requests == 0 && base.duration_s == 0 && concurrencies != "pool") {
    return absl::InvalidArgumentError(
        "bound each run: give --num_requests and/or --duration_s (or --concurrency pool alone: "
        "one pool's worth of requests)");
  }
  if (!(base.burstiness > 0)) return absl::InvalidArgumentError("--burstiness must be positive");
  std::vector<RunPlan> plans;
  if (!rates.empty()) {
    auto values = ParseNumberList(rates, "request_rate", /*allow_inf=*/true);
    if (!values.ok()) return values.status();
    for (double rate : *values) {
      if (std::isinf(rate) && base.num_requests == 0 && base.max_concurrency == 0) {
        return absl::InvalidArgumentError(
            "--request_rate=inf needs --num_requests or --max_concurrency, or it never stops "
            "opening streams");
      }
      RunPlan plan = base;
      plan.mode = RunPlan::Mode::kRate;
      plan.request_rate = rate;
      plans.push_back(plan);
    }
  } else {
    for (absl::string_view part : absl::StrSplit(concurrencies, ',', absl::SkipWhitespace())) {
      part = absl::StripAsciiWhitespace(part);
      RunPlan plan = base;
      plan.mode = RunPlan::Mode::kConcurrency;
      if (part == "pool") {
        plan.fill_pool = true;  // ResolvePoolPlans sets it
      } else {
        auto values = ParseNumberList(std::string(part), "concurrency", /*allow_inf=*/false);
        if (!values.ok()) return values.status();
        const double n = values->front();
        if (n != std::floor(n)) {
          return absl::InvalidArgumentError("--concurrency takes integers or pool");
        }
        plan.concurrency = static_cast<int>(n);
      }
      plans.push_back(plan);
    }
  }
  for (size_t i = 0; i < plans.size(); ++i) plans[i].seed = seed + i;
  return plans;
}

// `--concurrency pool` runs get the most requests of the workload's longest size the server's pool
// holds at once (a full pool, no preemption).
absl::Status ResolvePoolPlans(const v1::GetModelInfoResponse& info, const Workload& workload,
                              std::vector<RunPlan>* plans) {
  if (std::none_of(plans->begin(), plans->end(), [](const RunPlan& p) { return p.fill_pool; })) {
    return absl::OkStatus();
  }
  const std::optional<int64_t> tokens = workload.MaxRequestTokens();
  if (!tokens) {
    return absl::InvalidArgumentError(
        "--concurrency pool needs prompt lengths in tokens: synthetic prompts, or a dataset of "
        "prompt_token_ids / prompt_tokens (text prompts are as long as the server tokenizes them)");
  }
  const v1::KvCacheInfo& kv = info.kv_cache();
  auto fit = PoolConcurrency(kv.num_blocks(), static_cast<int>(kv.block_size()),
                             static_cast<int>(info.max_batch()), *tokens);
  if (!fit.ok()) return fit.status();
  std::fprintf(stderr,
               "sals-loadtest: --concurrency pool: %d requests of up to %lld tokens (the pool: %u "
               "blocks of %u tokens; at most %u running)\n",
               *fit, static_cast<long long>(*tokens), kv.num_blocks(), kv.block_size(),
               info.max_batch());
  for (RunPlan& plan : *plans) {
    if (!plan.fill_pool) continue;
    plan.concurrency = *fit;
    if (plan.num_requests == 0 && plan.duration_s == 0) plan.num_requests = *fit;  // one full pool
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::AttentionPolicy> MakePolicy(const std::string& name) {
  v1::AttentionPolicy policy;
  if (name.empty()) return policy;
  if (name == "dense") {
    policy.set_preset(v1::AttentionPolicy::PRESET_DENSE);
  } else if (name == "sals-25") {
    policy.set_preset(v1::AttentionPolicy::PRESET_SALS_25);
  } else if (name == "sals-12.5") {
    policy.set_preset(v1::AttentionPolicy::PRESET_SALS_12_5);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--policy='", name, "': expected dense, sals-25 or sals-12.5"));
  }
  return policy;
}

// Asks the server what it serves, retrying while it loads (UNAVAILABLE) or is not up yet.
absl::StatusOr<v1::GetModelInfoResponse> GetModelInfo(const std::shared_ptr<grpc::Channel>& channel,
                                                      double timeout_s) {
  auto stub = v1::Generation::NewStub(channel);
  const absl::Time deadline = absl::Now() + absl::Seconds(timeout_s);
  grpc::Status last;
  while (true) {
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::GetModelInfoResponse info;
    last = stub->GetModelInfo(&context, {}, &info);
    if (last.ok()) return info;
    if (absl::Now() >= deadline || g_stop) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return absl::UnavailableError(
      absl::StrCat("no answer from GetModelInfo within ", timeout_s, " s: ", last.error_message()));
}

// The flags as the report records them.
std::vector<ReportContext::Flag> FlagValues(uint64_t seed) {
  const auto text = [](const char* name, const std::string& value) {
    return ReportContext::Flag{name, value, /*is_text=*/true};
  };
  const auto number = [](const char* name, auto value) {
    return ReportContext::Flag{name, absl::StrCat(value), /*is_text=*/false};
  };
  return {text("target", absl::GetFlag(FLAGS_target)),
          text("request_rate", absl::GetFlag(FLAGS_request_rate)),
          number("burstiness", absl::GetFlag(FLAGS_burstiness)),
          text("concurrency", absl::GetFlag(FLAGS_concurrency)),
          number("max_concurrency", absl::GetFlag(FLAGS_max_concurrency)),
          number("num_requests", absl::GetFlag(FLAGS_num_requests)),
          number("duration_s", absl::GetFlag(FLAGS_duration_s)),
          number("warmup_requests", absl::GetFlag(FLAGS_warmup_requests)),
          text("prompt_len", absl::GetFlag(FLAGS_prompt_len)),
          text("output_len", absl::GetFlag(FLAGS_output_len)),
          number("shared_prefix_len", absl::GetFlag(FLAGS_shared_prefix_len)),
          text("dataset", absl::GetFlag(FLAGS_dataset)),
          number("background_streams", absl::GetFlag(FLAGS_background_streams)),
          text("background_prompt_len", absl::GetFlag(FLAGS_background_prompt_len)),
          text("background_output_len", absl::GetFlag(FLAGS_background_output_len)),
          {"ignore_eos", absl::GetFlag(FLAGS_ignore_eos) ? "true" : "false", false},
          number("temperature", absl::GetFlag(FLAGS_temperature)),
          text("policy", absl::GetFlag(FLAGS_policy)),
          number("timeout_s", absl::GetFlag(FLAGS_timeout_s)),
          number("channels", absl::GetFlag(FLAGS_channels)),
          number("seed", seed),
          text("goodput", absl::GetFlag(FLAGS_goodput))};
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "sals-loadtest: %s\n", std::string(status.message()).c_str());
  return 2;
}

int Run() {
  const int64_t seed_flag = absl::GetFlag(FLAGS_seed);
  const uint64_t seed =
      seed_flag >= 0 ? static_cast<uint64_t>(seed_flag) : std::random_device()() & 0xffffffu;
  auto plans = MakePlans(seed);
  if (!plans.ok()) return Fail(plans.status());
  auto percentiles = ParsePercentiles(absl::GetFlag(FLAGS_percentiles));
  if (!percentiles.ok()) return Fail(percentiles.status());
  auto slo = ParseSlo(absl::GetFlag(FLAGS_goodput));
  if (!slo.ok()) return Fail(slo.status());
  auto policy = MakePolicy(absl::GetFlag(FLAGS_policy));
  if (!policy.ok()) return Fail(policy.status());
  const int num_channels = absl::GetFlag(FLAGS_channels);
  if (num_channels < 1) return Fail(absl::InvalidArgumentError("--channels must be positive"));

  struct sigaction action = {};
  action.sa_handler = OnSigint;
  action.sa_flags = SA_RESETHAND;  // a second Ctrl-C kills at once
  sigaction(SIGINT, &action, nullptr);

  // Separate connections: a distinct channel argument keeps gRPC from sharing one subchannel.
  const std::string target = absl::GetFlag(FLAGS_target);
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < num_channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("sals.loadtest.connection", i);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetMaxReceiveMessageSize(-1);
    channels.push_back(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  }
  auto info = GetModelInfo(channels.front(), absl::GetFlag(FLAGS_connect_timeout_s));
  if (!info.ok()) return Fail(info.status());
  const ModelLimits limits{info->vocab_size(), info->max_context()};

  absl::StatusOr<Workload> workload = absl::UnknownError("unset");
  const std::string output_spec = absl::GetFlag(FLAGS_output_len);
  std::optional<LengthRange> output_len;
  if (!output_spec.empty()) {
    auto parsed = ParseLengthRange(output_spec, "output_len", 1);
    if (!parsed.ok()) return Fail(parsed.status());
    output_len = *parsed;
  }
  if (!absl::GetFlag(FLAGS_dataset).empty()) {
    workload = Workload::FromJsonl(absl::GetFlag(FLAGS_dataset), output_len, limits, seed);
  } else {
    auto prompt_len = ParseLengthRange(absl::GetFlag(FLAGS_prompt_len), "prompt_len", 1);
    if (!prompt_len.ok()) return Fail(prompt_len.status());
    if (!output_len) output_len = LengthRange{128, 128};
    workload = Workload::Synthetic(*prompt_len, *output_len, absl::GetFlag(FLAGS_shared_prefix_len),
                                   limits, seed);
  }
  if (!workload.ok()) return Fail(workload.status());
  if (absl::Status s = ResolvePoolPlans(*info, *workload, &*plans); !s.ok()) return Fail(s);
  // Background streams: synthetic prompts of their own lengths, seeded apart from the load's.
  std::optional<Workload> background;
  if (absl::GetFlag(FLAGS_background_streams) > 0) {
    auto prompt =
        ParseLengthRange(absl::GetFlag(FLAGS_background_prompt_len), "background_prompt_len", 1);
    if (!prompt.ok()) return Fail(prompt.status());
    auto output =
        ParseLengthRange(absl::GetFlag(FLAGS_background_output_len), "background_output_len", 1);
    if (!output.ok()) return Fail(output.status());
    auto made = Workload::Synthetic(*prompt, *output, 0, limits, seed ^ 0x6267u);
    if (!made.ok()) return Fail(made.status());
    background = *std::move(made);
  }

  RequestTemplate request_template;
  request_template.sampling.set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  request_template.sampling.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  request_template.attention = *policy;
  request_template.timeout =
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000.0));

  ReportContext context;
  context.target = target;
  context.model = info->model();
  context.backend = info->backend();
  context.kv_cache_format = info->kv_cache().format();
  context.workload = workload->Describe();
  context.label = absl::GetFlag(FLAGS_label);
  context.started_at = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  context.percentiles = *percentiles;
  context.slo = *slo;
  context.config = FlagValues(seed);
  if (background) {
    context.workload += absl::StrCat("; ", absl::GetFlag(FLAGS_background_streams),
                                     " background streams: ", background->Describe());
  }
  std::fprintf(stderr, "sals-loadtest: %s serves %s on %s; %s\n", target.c_str(),
               info->model().c_str(), info->backend().c_str(), context.workload.c_str());

  LiveCounters live;
  ProgressLine progress(&live, !absl::GetFlag(FLAGS_quiet));
  Runner runner(channels, request_template, &*workload, &live, &g_stop,
                background ? &*background : nullptr);
  std::vector<RunResult> results;
  if (const int warmup = absl::GetFlag(FLAGS_warmup_requests); warmup > 0) {
    const RunPlan& first = plans->front();
    const int concurrency = first.mode == RunPlan::Mode::kConcurrency
                                ? first.concurrency
                                : (first.max_concurrency > 0 ? first.max_concurrency : 8);
    progress.Begin("warm-up");
    RunResult result = runner.WarmUp(warmup, std::min(concurrency, warmup));
    progress.End();
    context.warmup = CountTokens(result);
    if (const int64_t failed = result.sent - context.warmup.requests; failed > 0) {
      std::string first_error;
      for (const RequestRecord& r : result.records) {
        if (!r.ok()) {
          first_error = StatusCodeName(r.code) + ": " + r.error_message;
          break;
        }
      }
      std::fprintf(stderr, "sals-loadtest: %lld of %d warm-up requests failed (first: %s)\n",
                   static_cast<long long>(failed), warmup, first_error.c_str());
    }
    results.push_back(std::move(result));
  }
  std::vector<RunSummary> summaries;
  for (size_t i = 0; i < plans->size() && !g_stop; ++i) {
    const RunPlan& plan = (*plans)[i];
    progress.Begin(plans->size() > 1
                       ? absl::StrCat(plan.Label(), " (", i + 1, "/", plans->size(), ")")
                       : plan.Label());
    RunResult result = runner.Run(plan);
    progress.End();
    summaries.push_back(Summarize(result, *percentiles, *slo));
    results.push_back(std::move(result));
  }

  std::cout << FormatTable(context, summaries) << std::flush;
  int rc = 0;
  const auto report = [&](const absl::Status& s, const std::string& path) {
    if (s.ok()) {
      std::fprintf(stderr, "sals-loadtest: wrote %s\n", path.c_str());
    } else {
      std::fprintf(stderr, "sals-loadtest: %s\n", std::string(s.message()).c_str());
      rc = 1;
    }
  };
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    report(WriteJson(path, ToJson(context, summaries)), path);
  }
  if (const std::string path = absl::GetFlag(FLAGS_csv); !path.empty()) {
    report(AppendCsv(path, context, summaries), path);
  }
  if (const std::string path = absl::GetFlag(FLAGS_requests_csv); !path.empty()) {
    report(WriteRequestsCsv(path, results), path);
  }
  return g_stop ? 130 : rc;
}

}  // namespace
}  // namespace sals::loadtest

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-loadtest --target HOST:PORT (--request_rate R[,R...] | --concurrency N[,N...]) "
      "(--num_requests N | --duration_s S) [--prompt_len N|MIN:MAX] [--output_len N|MIN:MAX] "
      "[--dataset FILE.jsonl] [--goodput ttft_ms=500,tpot_ms=50] [--json FILE] [--csv FILE]");
  sals::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  return sals::loadtest::Run();
}
