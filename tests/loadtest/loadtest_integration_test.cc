// sals-loadtest against the real sals-server binary on a fixture model, over loopback only and
// bounded in count and time: the report's counts add up, its percentiles are ordered, and its
// token totals equal what the server's own metrics counted. sals-health-probe against the same
// server.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/temp_dir.h"
#include "tests/server/server_test_util.h"

namespace sals {
namespace {

using nlohmann::json;

// Runs `argv` to completion with stdout and stderr in `log`; its exit code (-1 when killed).
int RunProgram(const std::vector<std::string>& argv, const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// sals-server on the fixture model, on ports the kernel picks (read back from its log).
class ServerProcess {
 public:
  explicit ServerProcess(const std::string& log) : log_(log) {
    const std::string model = std::string(SALS_FIXTURES_DIR) + "/llama31-bpe";
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, STDERR_FILENO);
      execl(SALS_SERVER_BINARY, SALS_SERVER_BINARY, "--model", model.c_str(), "--listen",
            "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--set",
            "scheduler.max_num_seqs=8;kv_cache.num_blocks=512", static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
  }

  // Waits until the log names both ports and health says SERVING.
  bool WaitServing() {
    for (int i = 0; i < 1200; ++i) {
      if (grpc_port_ == 0) {
        const std::string text = ReadFile(log_);
        const size_t at = text.find("gRPC on port ");
        if (at != std::string::npos) {
          std::sscanf(text.c_str() + at, "gRPC on port %d, metrics on port %d", &grpc_port_,
                      &metrics_port_);
        }
      }
      if (grpc_port_ > 0) {
        auto channel = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
        if (testing::Health(channel) == grpc::health::v1::HealthCheckResponse::SERVING) {
          return true;
        }
      }
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = 0;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  std::map<std::string, double> Metrics() const {
    std::map<std::string, double> m;
    EXPECT_TRUE(testing::ParseMetrics(testing::FetchMetrics(metrics_port_), &m));
    return m;
  }

 private:
  std::string log_;
  pid_t pid_ = 0;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
};

void ExpectOrdered(const json& d, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_GT(d["count"].get<int64_t>(), 0);
  EXPECT_LE(d["min"].get<double>(), d["p50"].get<double>());
  EXPECT_LE(d["p50"].get<double>(), d["p90"].get<double>());
  EXPECT_LE(d["p90"].get<double>(), d["p99"].get<double>());
  EXPECT_LE(d["p99"].get<double>(), d["max"].get<double>());
  EXPECT_LE(d["min"].get<double>(), d["mean"].get<double>());
  EXPECT_LE(d["mean"].get<double>(), d["max"].get<double>());
  EXPECT_GE(d["min"].get<double>(), 0.0);
}

// The checks every run passes, whatever its load.
void CheckRun(const json& run) {
  SCOPED_TRACE(run["label"].get<std::string>());
  const json& requests = run["requests"];
  const int64_t completed = requests["completed"], failed = requests["failed"];
  EXPECT_EQ(requests["sent"].get<int64_t>(), completed + failed);
  int64_t errors = 0;
  for (const auto& [code, count] : run["errors"].items()) errors += count.get<int64_t>();
  EXPECT_EQ(errors, failed);
  EXPECT_EQ(run["finish_reasons"].value("length", 0), completed);  // ignore_eos: exact lengths
  const json& tokens = run["tokens"];
  EXPECT_EQ(tokens["count_mismatches"], 0);
  EXPECT_EQ(tokens["completed_output"], tokens["server_completion"]);
  EXPECT_EQ(tokens["completed_output"], tokens["requested_output"]);
  const json& latency = run["latency_ms"];
  for (const char* metric : {"ttft", "tpot", "itl", "e2e"}) ExpectOrdered(latency[metric], metric);
  EXPECT_EQ(latency["ttft"]["count"], completed);
  EXPECT_EQ(latency["e2e"]["count"], completed);
  EXPECT_EQ(latency["itl"]["count"].get<int64_t>(),
            tokens["completed_output"].get<int64_t>() - completed);
  EXPECT_LE(latency["ttft"]["max"].get<double>(), latency["e2e"]["max"].get<double>());
  const double duration = run["duration_s"];
  ASSERT_GT(duration, 0);
  EXPECT_NEAR(run["throughput"]["requests_per_s"].get<double>(), completed / duration, 1e-6);
  EXPECT_NEAR(run["throughput"]["output_tokens_per_s"].get<double>(),
              tokens["completed_output"].get<double>() / duration, 1e-3);
  EXPECT_LE(run["peak_in_flight"].get<int>(), 8);
}

TEST(LoadtestIntegrationTest, ReportAddsUpAndMatchesTheServersMetrics) {
  testing::TempDir dir;
  ServerProcess server(dir / "server.log");
  ASSERT_TRUE(server.WaitServing()) << ReadFile(dir / "server.log");
  const std::map<std::string, double> before = server.Metrics();

  // A fixed concurrency, synthetic token-id prompts of varied lengths, with a warm-up.
  const std::string csv = dir / "runs.csv";
  const std::string first_json = dir / "concurrency.json";
  ASSERT_EQ(RunProgram({SALS_LOADTEST_BINARY,
                        "--target",
                        server.address(),
                        "--concurrency",
                        "8",
                        "--num-requests",
                        "40",
                        "--duration-s",
                        "50",
                        "--warmup-requests",
                        "4",
                        "--prompt-len",
                        "8:40",
                        "--output-len",
                        "4:24",
                        "--timeout-s",
                        "50",
                        "--goodput",
                        "ttft_ms=30000",
                        "--json",
                        first_json,
                        "--csv",
                        csv,
                        "--quiet"},
                       dir / "concurrency.log"),
            0)
      << ReadFile(dir / "concurrency.log");

  // Bursty gamma arrivals with a cap, replaying a dataset whose one over-long text prompt the
  // server must refuse (INVALID_ARGUMENT), so errors by status are exercised.
  const std::string dataset = dir / "requests.jsonl";
  std::string too_long = R"({"prompt": ")";
  for (int i = 0; i < 1500; ++i) too_long += "word ";
  std::ofstream(dataset) << R"({"prompt": "Once upon a time", "output_tokens": 12})"
                         << "\n"
                         << R"({"prompt_token_ids": [5, 6, 7, 8], "output_tokens": 9})"
                         << "\n"
                         << R"({"prompt_tokens": 30, "output_tokens": 6})"
                         << "\n"
                         << too_long << R"(", "output_tokens": 4000})"
                         << "\n";
  const std::string second_json = dir / "rate.json";
  ASSERT_EQ(RunProgram({SALS_LOADTEST_BINARY,
                        "--target",
                        server.address(),
                        "--request-rate",
                        "200",
                        "--burstiness",
                        "0.5",
                        "--max-concurrency",
                        "8",
                        "--num-requests",
                        "24",
                        "--duration-s",
                        "50",
                        "--warmup-requests",
                        "0",
                        "--dataset",
                        dataset,
                        "--timeout-s",
                        "50",
                        "--json",
                        second_json,
                        "--csv",
                        csv,
                        "--quiet"},
                       dir / "rate.log"),
            0)
      << ReadFile(dir / "rate.log");
  const std::map<std::string, double> after = server.Metrics();

  const json first = json::parse(ReadFile(first_json));
  const json second = json::parse(ReadFile(second_json));
  ASSERT_EQ(first["runs"].size(), 1u);
  ASSERT_EQ(second["runs"].size(), 1u);
  const json& concurrency_run = first["runs"][0];
  const json& rate_run = second["runs"][0];
  CheckRun(concurrency_run);
  CheckRun(rate_run);
  EXPECT_EQ(concurrency_run["requests"]["completed"], 40);
  EXPECT_EQ(concurrency_run["requests"]["good"], 40);
  EXPECT_EQ(first["warmup"]["requests"], 4);
  EXPECT_EQ(rate_run["requests"]["sent"], 24);
  const int64_t refused = rate_run["errors"].value("INVALID_ARGUMENT", 0);
  EXPECT_GT(refused, 0);
  EXPECT_EQ(rate_run["requests"]["failed"].get<int64_t>(), refused);

  // Every token and request the load tests counted is one the server counted, and no more.
  const auto delta = [&](const std::string& name) { return after.at(name) - before.at(name); };
  const int64_t requests = first["warmup"]["requests"].get<int64_t>() +
                           concurrency_run["requests"]["completed"].get<int64_t>() +
                           rate_run["requests"]["completed"].get<int64_t>();
  const int64_t output = first["warmup"]["output_tokens"].get<int64_t>() +
                         concurrency_run["tokens"]["output"].get<int64_t>() +
                         rate_run["tokens"]["output"].get<int64_t>();
  const int64_t prompt = first["warmup"]["prompt_tokens"].get<int64_t>() +
                         concurrency_run["tokens"]["prompt"].get<int64_t>() +
                         rate_run["tokens"]["prompt"].get<int64_t>();
  EXPECT_EQ(delta("sals:generation_tokens_total"), output);
  EXPECT_EQ(delta("sals:prompt_tokens_total"), prompt);
  EXPECT_EQ(delta("sals:request_success_total{finished_reason=\"length\"}"), requests);
  EXPECT_EQ(after.at("sals:request_rejected_total{code=\"INVALID_ARGUMENT\"}") -
                (before.count("sals:request_rejected_total{code=\"INVALID_ARGUMENT\"}")
                     ? before.at("sals:request_rejected_total{code=\"INVALID_ARGUMENT\"}")
                     : 0.0),
            refused);

  // One CSV row per run, under one header.
  std::ifstream in(csv);
  int lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  EXPECT_EQ(lines, 3);
}

// Long prompts arriving while background streams decode: the load's figures are the long
// prompts' alone, and the background streams' gaps during the load are reported apart.
TEST(LoadtestIntegrationTest, BackgroundStreamsAreReportedApart) {
  testing::TempDir dir;
  ServerProcess server(dir / "server.log");
  ASSERT_TRUE(server.WaitServing()) << ReadFile(dir / "server.log");
  const std::string out = dir / "background.json";
  ASSERT_EQ(RunProgram({SALS_LOADTEST_BINARY,
                        "--target",
                        server.address(),
                        "--request-rate",
                        "20",
                        "--num-requests",
                        "3",
                        "--prompt-len",
                        "1500",
                        "--output-len",
                        "3",
                        "--background-streams",
                        "2",
                        "--background-prompt-len",
                        "8",
                        "--background-output-len",
                        "24",
                        "--warmup-requests",
                        "0",
                        "--timeout-s",
                        "50",
                        "--json",
                        out,
                        "--quiet"},
                       dir / "background.log"),
            0)
      << ReadFile(dir / "background.log");
  const json report = json::parse(ReadFile(out));
  ASSERT_EQ(report["runs"].size(), 1u);
  const json& run = report["runs"][0];
  CheckRun(run);
  EXPECT_EQ(run["requests"]["completed"], 3);
  EXPECT_EQ(run["tokens"]["completed_output"], 9);
  const json& background = run["background"];
  EXPECT_EQ(background["streams"], 2);
  EXPECT_GE(background["completed"].get<int64_t>(), 2);
  EXPECT_EQ(background["failed"], 0);
  EXPECT_EQ(background["output_tokens"].get<int64_t>() % 24, 0);
  ExpectOrdered(background["itl_ms_during_load"], "background itl");
  EXPECT_NE(ReadFile(dir / "background.log").find("bg ITL p50/p90/p99 ms"), std::string::npos);
}

TEST(LoadtestIntegrationTest, HealthProbeAndBadFlags) {
  testing::TempDir dir;
  ServerProcess server(dir / "server.log");
  ASSERT_TRUE(server.WaitServing()) << ReadFile(dir / "server.log");
  EXPECT_EQ(RunProgram({SALS_HEALTH_PROBE_BINARY, "--addr", server.address()}, dir / "probe.log"),
            0)
      << ReadFile(dir / "probe.log");
  EXPECT_NE(ReadFile(dir / "probe.log").find("SERVING"), std::string::npos);
  // Nothing listens on port 1 of loopback.
  EXPECT_EQ(RunProgram({SALS_HEALTH_PROBE_BINARY, "--addr", "127.0.0.1:1", "--timeout-s", "0.5"},
                       dir / "dead.log"),
            1);
  // A run needs a bound; a rate and a concurrency exclude each other.
  EXPECT_EQ(RunProgram({SALS_LOADTEST_BINARY, "--target", server.address(), "--concurrency", "2"},
                       dir / "unbounded.log"),
            2);
  EXPECT_NE(ReadFile(dir / "unbounded.log").find("--num_requests"), std::string::npos);
  EXPECT_EQ(RunProgram({SALS_LOADTEST_BINARY, "--target", server.address(), "--concurrency", "2",
                        "--request-rate", "3", "--num-requests", "2"},
                       dir / "both.log"),
            2);
  // Lengths the model's context cannot hold are refused before anything is sent.
  EXPECT_EQ(RunProgram({SALS_LOADTEST_BINARY, "--target", server.address(), "--concurrency", "1",
                        "--num-requests", "1", "--prompt-len", "4000", "--output-len", "200"},
                       dir / "long.log"),
            2);
  EXPECT_NE(ReadFile(dir / "long.log").find("context limit"), std::string::npos);
  // --concurrency pool needs lengths in tokens: text prompts are refused before anything is sent.
  const std::string text = dir / "text.jsonl";
  std::ofstream(text) << R"({"prompt": "Once upon a time", "output_tokens": 12})"
                      << "\n";
  EXPECT_EQ(RunProgram({SALS_LOADTEST_BINARY, "--target", server.address(), "--concurrency", "pool",
                        "--num-requests", "1", "--dataset", text},
                       dir / "pool_text.log"),
            2);
  EXPECT_NE(ReadFile(dir / "pool_text.log").find("--concurrency pool"), std::string::npos);
}

// --concurrency pool: the server's pool (512 blocks of 16 tokens, 8 sequences at most) holds five
// requests of 1500 + 100 tokens (100 blocks each), and the run keeps exactly that many in flight.
TEST(LoadtestIntegrationTest, PoolConcurrencyIsWhatThePoolHolds) {
  testing::TempDir dir;
  ServerProcess server(dir / "server.log");
  ASSERT_TRUE(server.WaitServing()) << ReadFile(dir / "server.log");
  const std::string out = dir / "pool.json";
  ASSERT_EQ(
      RunProgram({SALS_LOADTEST_BINARY, "--target", server.address(), "--concurrency", "2,pool",
                  "--num-requests", "5", "--warmup-requests", "0", "--prompt-len", "1500",
                  "--output-len", "100", "--timeout-s", "100", "--json", out, "--quiet"},
                 dir / "pool.log"),
      0)
      << ReadFile(dir / "pool.log");
  EXPECT_NE(ReadFile(dir / "pool.log").find("--concurrency pool: 5 requests of up to 1600 tokens"),
            std::string::npos)
      << ReadFile(dir / "pool.log");
  const json report = json::parse(ReadFile(out));
  ASSERT_EQ(report["runs"].size(), 2u);
  const json& fixed = report["runs"][0];
  const json& pool = report["runs"][1];
  EXPECT_EQ(fixed["label"], "concurrency 2");
  EXPECT_EQ(fixed["peak_in_flight"], 2);
  EXPECT_EQ(pool["label"], "concurrency 5 (pool)");
  EXPECT_EQ(pool["concurrency"], 5);
  EXPECT_EQ(pool["peak_in_flight"], 5);
  CheckRun(pool);
  EXPECT_EQ(pool["requests"]["completed"], 5);

  // Alone and unbounded: one pool's worth of requests.
  const std::string once = dir / "once.json";
  ASSERT_EQ(RunProgram({SALS_LOADTEST_BINARY, "--target", server.address(), "--concurrency", "pool",
                        "--warmup-requests", "0", "--prompt-len", "1500", "--output-len", "8",
                        "--timeout-s", "100", "--json", once, "--quiet"},
                       dir / "once.log"),
            0)
      << ReadFile(dir / "once.log");
  const json one_pool = json::parse(ReadFile(once))["runs"][0];
  EXPECT_EQ(one_pool["label"], "concurrency 5 (pool)");
  EXPECT_EQ(one_pool["bounds"]["num_requests"], 5);
  EXPECT_EQ(one_pool["requests"]["completed"], 5);
}

}  // namespace
}  // namespace sals
