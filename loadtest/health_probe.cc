// sals-health-probe: asks a gRPC server's grpc.health.v1.Health/Check and exits 0 when it answers
// SERVING, 1 otherwise (NOT_SERVING, an error, or no answer in time). For container health checks
// (the Dockerfile's HEALTHCHECK), where Kubernetes' own gRPC probes are not available.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tools/common/flag_names.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "the server's gRPC address, HOST:PORT");
ABSL_FLAG(std::string, service, "", "the service to ask about (\"\" = the server as a whole)");
ABSL_FLAG(double, timeout_s, 3.0, "how long to wait for the answer, connecting included");
ABSL_FLAG(bool, quiet, false, "print nothing");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-health-probe [--addr HOST:PORT] [--service NAME] [--timeout_s S]: exit 0 when "
      "SERVING");
  sals::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const std::string addr = absl::GetFlag(FLAGS_addr);
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_wait_for_ready(true);  // connecting counts against the timeout, not as a failure
  context.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000.0)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  const bool quiet = absl::GetFlag(FLAGS_quiet);
  if (!status.ok()) {
    if (!quiet) {
      std::fprintf(stderr, "%s: health check failed: %s\n", addr.c_str(),
                   status.error_message().c_str());
    }
    return 1;
  }
  const bool serving = response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  if (!quiet) {
    std::printf(
        "%s: %s\n", addr.c_str(),
        grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  }
  return serving ? 0 : 1;
}
