// Bearer-token authentication of gRPC calls: the tokens file holds one client a line, "NAME
// TOKEN" (blank lines and lines starting with # are skipped); a call is that client when its
// `authorization` metadata is "Bearer TOKEN". Tokens are compared in constant time.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sals {

// Equal strings, in time that depends on the lengths only.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

class TokenAuthenticator {
 public:
  // Errors name the file and line (a line without a token, a duplicate name, no client at all).
  static absl::StatusOr<TokenAuthenticator> Parse(std::string_view text, std::string_view source);
  static absl::StatusOr<TokenAuthenticator> FromFile(const std::string& path);

  // The client's name for the value of the `authorization` header; Unauthenticated otherwise
  // (the message never repeats what was sent).
  absl::StatusOr<std::string> Authenticate(std::string_view authorization) const;
  size_t num_clients() const { return clients_.size(); }

 private:
  std::vector<std::pair<std::string, std::string>> clients_;  // name, token
};

}  // namespace sals
