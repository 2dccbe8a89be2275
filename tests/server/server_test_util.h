// Helpers for server tests over real loopback gRPC: blocking client calls, the metrics page.
#pragma once

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "sals/v1/generate.grpc.pb.h"

namespace sals::testing {

struct StreamResult {
  grpc::Status status;
  std::vector<uint32_t> tokens;
  std::string text;
  int chunks = 0;
  bool has_complete = false;
  v1::GenerateComplete complete;
  std::string request_id;  // the first one a response carried
  int messages_with_id = 0;
};

// Polls `done` every few milliseconds until it holds or `timeout` passes; whether it held. Tests
// wait with this, never without a bound, so that a failure fails instead of hanging.
inline bool WaitUntil(const std::function<bool()>& done,
                      std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// Runs one Generate stream to its end. `on_chunk` (optional) sees each chunk as it arrives and
// may cancel the call through the context it is given.
inline StreamResult RunStream(
    v1::Generation::Stub& stub, const v1::GenerateRequest& request,
    std::chrono::milliseconds deadline = std::chrono::milliseconds(120000),
    const std::function<void(grpc::ClientContext&, const v1::GenerateChunk&)>& on_chunk = {},
    const std::string& bearer_token = "") {
  StreamResult r;
  grpc::ClientContext context;
  if (!bearer_token.empty()) context.AddMetadata("authorization", "Bearer " + bearer_token);
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (!response.request_id().empty()) {
      if (r.messages_with_id++ == 0) r.request_id = response.request_id();
    }
    if (response.has_chunk()) {
      ++r.chunks;
      r.tokens.insert(r.tokens.end(), response.chunk().token_ids().begin(),
                      response.chunk().token_ids().end());
      r.text += response.chunk().text();
      if (on_chunk) on_chunk(context, response.chunk());
    } else if (response.has_complete()) {
      r.has_complete = true;
      r.complete = response.complete();
    }
  }
  r.status = reader->Finish();
  return r;
}

inline v1::GenerateRequest GreedyIds(const std::vector<uint32_t>& ids, uint32_t max_tokens) {
  v1::GenerateRequest r;
  for (uint32_t id : ids) r.mutable_token_ids()->add_ids(id);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_ignore_eos(true);
  return r;
}

// The health of `service` ("" = the whole server); UNKNOWN when the call fails, SERVICE_UNKNOWN
// when the server does not know the name.
inline grpc::health::v1::HealthCheckResponse::ServingStatus Health(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service = "") {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status s = stub->Check(&context, request, &response);
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
    return grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN;
  }
  return s.ok() ? response.status() : grpc::health::v1::HealthCheckResponse::UNKNOWN;
}

// GET /metrics over plain HTTP/1.0 on loopback; the body, or "" on failure (nothing within
// `timeout` included).
inline std::string FetchMetrics(int port,
                                std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>(timeout.count() % 1000 * 1000);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[4096];
      for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, n);
    }
  }
  close(fd);
  const size_t body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

// Parses the Prometheus text format into "name{labels}" -> value; comment lines must be well
// formed and every sample line must have a number.
inline bool ParseMetrics(const std::string& text, std::map<std::string, double>* out) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      if (line.rfind("# HELP ", 0) != 0 && line.rfind("# TYPE ", 0) != 0) return false;
      continue;
    }
    const size_t space = line.rfind(' ');
    if (space == std::string::npos) return false;
    try {
      (*out)[line.substr(0, space)] = std::stod(line.substr(space + 1));
    } catch (...) {
      return false;
    }
  }
  return !out->empty();
}

}  // namespace sals::testing
