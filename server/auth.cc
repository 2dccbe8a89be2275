#include "server/auth.h"

#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/common/absl_compat.h"

namespace sals {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

absl::StatusOr<TokenAuthenticator> TokenAuthenticator::Parse(std::string_view text,
                                                             std::string_view source_view) {
  const std::string source(source_view);
  TokenAuthenticator auth;
  absl::flat_hash_set<std::string> names;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(ToAbsl(text), '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ":", line_number, ": expected \"NAME TOKEN\" (two fields), got ", fields.size()));
    }
    if (!names.insert(std::string(fields[0])).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_number, ": client '", fields[0], "' appears twice"));
    }
    auth.clients_.emplace_back(std::string(fields[0]), std::string(fields[1]));
  }
  if (auth.clients_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no client tokens"));
  }
  return auth;
}

absl::StatusOr<TokenAuthenticator> TokenAuthenticator::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the tokens file ", path));
  std::stringstream text;
  text << in.rdbuf();
  return Parse(text.str(), path);
}

absl::StatusOr<std::string> TokenAuthenticator::Authenticate(std::string_view authorization) const {
  constexpr std::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(ToAbsl(authorization), ToAbsl(kBearer))) {
    return absl::UnauthenticatedError(
        "missing or malformed authorization metadata: expected \"Bearer TOKEN\"");
  }
  const absl::string_view stripped =
      absl::StripAsciiWhitespace(ToAbsl(authorization.substr(kBearer.size())));
  const std::string_view token(stripped.data(), stripped.size());
  // Every token is compared, whichever matches: the time does not tell which.
  const std::string* found = nullptr;
  for (const auto& [name, expected] : clients_) {
    if (ConstantTimeEquals(token, expected) && found == nullptr) found = &name;
  }
  if (found == nullptr) return absl::UnauthenticatedError("invalid bearer token");
  return *found;
}

}  // namespace sals
