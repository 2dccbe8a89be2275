// The server's configuration: one YAML file (every key optional, defaults below and in
// configs/server.yaml), then `--set section.key=value` overrides from the command line. Unknown
// keys and bad values are errors that name the key.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/runtime/engine_config.h"

namespace sals {

struct ServerConfig {
  EngineConfig engine;
  std::string listen = "0.0.0.0:50051";
  std::string metrics_listen = "0.0.0.0:9464";
  double shutdown_grace_seconds = 30.0;
  int default_max_tokens = 256;
  int tokenizer_threads = 2;                // text prompts are tokenized here, off gRPC's threads
  int max_receive_message_bytes = 4 << 20;  // gRPC's limit on one request message
  int max_streams_per_client = 0;           // Generate streams in flight per client; 0 = no limit
  int metrics_threads = 8;                  // HTTP worker threads of the metrics endpoint
  int metrics_request_timeout_ms = 5000;    // an HTTP client that sends nothing is dropped then
  bool reflection = true;  // gRPC server reflection (open to all, like grpc.health.v1)

  std::string log_level = "info";   // debug, info, warning, error
  std::string log_format = "text";  // text or json (JSON lines)

  // TLS: on when cert_file and key_file are set (PEM files).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;  // PEM CAs of client certificates; set: clients may present one
  bool tls_require_client_cert = false;  // with client_ca_file: refuse clients without a valid one

  // Bearer-token authentication of sals.v1.Generation: on when tokens_file is set ("NAME TOKEN"
  // per line). grpc.health.v1 stays open (probes carry no token), reflection while it is on.
  std::string auth_tokens_file;
};

ServerConfig DefaultServerConfig();

// Parses YAML text over the defaults; `source` names the file in messages. Each override is
// "section.key=value" (value in YAML syntax) and wins over the file.
absl::StatusOr<ServerConfig> ParseServerConfig(std::string_view yaml, std::string_view source,
                                               const std::vector<std::string>& overrides = {});

// Reads `path` ("" = defaults only) and applies the overrides.
absl::StatusOr<ServerConfig> LoadServerConfig(const std::string& path,
                                              const std::vector<std::string>& overrides = {});

// The effective configuration as YAML (logged at start).
std::string ConfigToYaml(const ServerConfig& config);

}  // namespace sals
