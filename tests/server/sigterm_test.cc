// The real sals-server binary: SIGTERM turns health NOT_SERVING, lets the in-flight stream finish
// and exits 0.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <utility>

#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace sals {
namespace {

// Reads the child's stderr until its "gRPC on port N, metrics on port M" line (the server binds
// port 0 and reports what the kernel gave it: no port is picked here and released, where another
// process could take it). False at EOF or after `timeout`.
bool ReadPorts(int fd, int* grpc_port, int* metrics_port, std::chrono::seconds timeout) {
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const size_t at = text.find("gRPC on port ");
    if (at != std::string::npos && text.find('\n', at) != std::string::npos) {
      return std::sscanf(text.c_str() + at, "gRPC on port %d, metrics on port %d", grpc_port,
                         metrics_port) == 2;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[4096];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) return false;
    text.append(buf, static_cast<size_t>(n));
  }
}

TEST(ServerSigtermTest, DrainsInFlightStreamsAndExitsZero) {
  const std::string model = std::string(SALS_FIXTURES_DIR) + "/llama2-mha";
  int err[2];
  ASSERT_EQ(pipe(err), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(err[1], STDERR_FILENO);
    close(err[0]);
    close(err[1]);
    execl(SALS_SERVER_BINARY, SALS_SERVER_BINARY, "--model", model.c_str(), "--listen",
          "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--set",
          "kv_cache.format=dense;kv_cache.num_blocks=256", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(err[1]);
  int grpc_port = 0, metrics_port = 0;
  const bool listening = ReadPorts(err[0], &grpc_port, &metrics_port, std::chrono::seconds(60));
  // The rest of its log is not read: drain it so that the server never blocks on a full pipe.
  std::thread drain_log([fd = err[0]] {
    char buf[4096];
    while (read(fd, buf, sizeof(buf)) > 0) {
    }
    close(fd);
  });
  bool reaped = false;
  // On any early return: no server left running, no thread left joinable.
  struct Cleanup {
    std::function<void()> run;
    ~Cleanup() { run(); }
  } cleanup{[&] {
    if (!reaped) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (drain_log.joinable()) drain_log.join();
  }};
  ASSERT_TRUE(listening) << "no port line from the server";
  ASSERT_GT(metrics_port, 0);
  const std::string listen = "127.0.0.1:" + std::to_string(grpc_port);
  auto channel = grpc::CreateChannel(listen, grpc::InsecureChannelCredentials());
  bool serving = false;
  for (int i = 0; i < 600 && !serving; ++i) {
    serving = testing::Health(channel) == grpc::health::v1::HealthCheckResponse::SERVING;
    if (!serving) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(serving) << "the server never became SERVING";
  auto stub = v1::Generation::NewStub(channel);
  std::atomic<bool> started{false};
  testing::StreamResult result;
  std::thread client([&] {
    result =
        testing::RunStream(*stub, testing::GreedyIds({1, 4, 7}, 400), std::chrono::seconds(120),
                           [&](grpc::ClientContext&, const v1::GenerateChunk&) { started = true; });
  });
  EXPECT_TRUE(testing::WaitUntil([&] { return started.load(); }))
      << "no chunk: SIGTERM now tests less";
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  client.join();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  reaped = true;
  EXPECT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.complete.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(result.tokens.size(), 400u);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace sals
