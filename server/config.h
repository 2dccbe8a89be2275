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
