// The real sals-server binary: SIGTERM turns health NOT_SERVING, lets the in-flight stream finish
// and exits 0.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <utility>

#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace sals {
namespace {

// Two distinct ports the kernel just handed out on loopback (both sockets held until both are
// known; free now, almost surely still free next).
std::pair<int, int> FreePorts() {
  int fds[2];
  int ports[2];
  for (int i = 0; i < 2; ++i) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fds[i], reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    getsockname(fds[i], reinterpret_cast<sockaddr*>(&addr), &len);
    ports[i] = ntohs(addr.sin_port);
  }
  close(fds[0]);
  close(fds[1]);
  return {ports[0], ports[1]};
}

TEST(ServerSigtermTest, DrainsInFlightStreamsAndExitsZero) {
  const auto [grpc_port, metrics_port] = FreePorts();
  const std::string listen = "127.0.0.1:" + std::to_string(grpc_port);
  const std::string metrics = "127.0.0.1:" + std::to_string(metrics_port);
  const std::string model = std::string(SALS_FIXTURES_DIR) + "/llama2-mha";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(SALS_SERVER_BINARY, SALS_SERVER_BINARY, "--model", model.c_str(), "--listen",
          listen.c_str(), "--metrics-listen", metrics.c_str(), "--set",
          "kv_cache.format=dense;kv_cache.num_blocks=256", static_cast<char*>(nullptr));
    _exit(127);
  }
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
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  client.join();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.complete.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(result.tokens.size(), 400u);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace sals
