// The server's log: one event per line on stderr, with a level, as plain text or as JSON lines
// (time, level, request_id, message) for log collectors. Events below the configured level are
// dropped. protobuf's own log lines (e.g. one per request that is not valid UTF-8, which an
// unauthenticated client could send at will) come through here at debug level.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sals {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class LogFormat { kText, kJson };

// "debug", "info", "warning", "error" / "text", "json"; InvalidArgument otherwise.
absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name);
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view name);
std::string_view LogLevelName(LogLevel level);

// One event as its line, without the newline. Text: "[sals-server HH:MM:SS.mmm] LEVEL
// [request_id] message"; JSON: {"time":"RFC 3339 UTC","level":"info","request_id":"...",
// "message":"..."} (request_id only when there is one).
std::string FormatLogLine(LogFormat format, absl::Time time, LogLevel level,
                          std::string_view request_id, std::string_view message);

// Process-wide: the least level written and the format (defaults: info, text); where lines go
// (stderr unless a test says otherwise). Also routes protobuf's log through Log at debug level.
void ConfigureLogging(LogLevel min_level, LogFormat format, std::FILE* out = stderr);

// Writes one event when its level is at least the configured one. Thread-safe.
void Log(LogLevel level, std::string_view message, std::string_view request_id = {});

}  // namespace sals
