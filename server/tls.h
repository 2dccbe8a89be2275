// The gRPC port's credentials from the config: plaintext, or TLS with gRPC's own implementation
// (certificate and key from PEM files; optionally client certificates checked against CAs).
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <memory>

#include "absl/status/statusor.h"
#include "server/config.h"

namespace sals {

// Errors name the config key of a file that cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerConfig& config);

}  // namespace sals
