#include "server/log.h"

#include <google/protobuf/stubs/logging.h>

#include <atomic>
#include <mutex>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/common/absl_compat.h"

namespace sals {
namespace {

struct LogState {
  std::mutex mu;
  std::atomic<int> min_level{static_cast<int>(LogLevel::kInfo)};
  LogFormat format = LogFormat::kText;
  std::FILE* out = stderr;
};

LogState& State() {
  static LogState* state = new LogState();
  return *state;
}

void ProtobufLogHandler(google::protobuf::LogLevel level, const char* filename, int line,
                        const std::string& message) {
  // FATAL aborts the process right after: keep it loud.
  const LogLevel ours =
      level >= google::protobuf::LOGLEVEL_FATAL ? LogLevel::kError : LogLevel::kDebug;
  Log(ours, absl::StrCat("libprotobuf ", filename, ":", line, ": ", message));
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(ToAbsl(name));
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warning") return LogLevel::kWarning;
  if (lower == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(
      absl::StrCat("'", ToAbsl(name), "' is not a log level (debug, info, warning, error)"));
}

absl::StatusOr<LogFormat> ParseLogFormat(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(ToAbsl(name));
  if (lower == "text") return LogFormat::kText;
  if (lower == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("'", ToAbsl(name), "' is not a log format (text, json)"));
}

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "?";
}

std::string FormatLogLine(LogFormat format, absl::Time time, LogLevel level,
                          std::string_view request_id, std::string_view message) {
  if (format == LogFormat::kJson) {
    nlohmann::ordered_json event;
    event["time"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone());
    event["level"] = std::string(LogLevelName(level));
    if (!request_id.empty()) event["request_id"] = std::string(request_id);
    event["message"] = std::string(message);
    // Invalid UTF-8 (from a client's id, say) is replaced rather than thrown on.
    return event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  std::string line =
      absl::StrCat("[sals-server ", absl::FormatTime("%H:%M:%E3S", time, absl::UTCTimeZone()), "] ",
                   absl::AsciiStrToUpper(ToAbsl(LogLevelName(level))), " ");
  if (!request_id.empty()) absl::StrAppend(&line, "[", ToAbsl(request_id), "] ");
  absl::StrAppend(&line, ToAbsl(message));
  return line;
}

void ConfigureLogging(LogLevel min_level, LogFormat format, std::FILE* out) {
  LogState& state = State();
  {
    std::lock_guard<std::mutex> lock(state.mu);
    state.format = format;
    state.out = out;
  }
  state.min_level = static_cast<int>(min_level);
  google::protobuf::SetLogHandler(&ProtobufLogHandler);
}

void Log(LogLevel level, std::string_view message, std::string_view request_id) {
  LogState& state = State();
  if (static_cast<int>(level) < state.min_level.load()) return;
  const absl::Time now = absl::Now();
  std::lock_guard<std::mutex> lock(state.mu);
  const std::string line = FormatLogLine(state.format, now, level, request_id, message);
  std::fprintf(state.out, "%s\n", line.c_str());
  std::fflush(state.out);
}

}  // namespace sals
