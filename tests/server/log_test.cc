// The server's log: levels filter, text lines carry the level, JSON lines parse and hold time,
// level, request id and message; protobuf's own log lines are kept to debug level.
#include "server/log.h"

#include <google/protobuf/stubs/logging.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sals {
namespace {

std::vector<std::string> Lines(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::vector<std::string> lines;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), f) != nullptr) {
    std::string line(buf);
    if (!line.empty() && line.back() == '\n') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

TEST(LogTest, ParsesLevelsAndFormatsByName) {
  EXPECT_EQ(*ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("WARNING"), LogLevel::kWarning);
  EXPECT_FALSE(ParseLogLevel("loud").ok());
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_FALSE(ParseLogFormat("xml").ok());
}

TEST(LogTest, TextLinesCarryTheLevelAndRequestId) {
  const absl::Time t = absl::FromUnixSeconds(1700000000) + absl::Milliseconds(250);
  EXPECT_EQ(FormatLogLine(LogFormat::kText, t, LogLevel::kWarning, "abc", "slow client"),
            "[sals-server 22:13:20.250] WARNING [abc] slow client");
  EXPECT_EQ(FormatLogLine(LogFormat::kText, t, LogLevel::kInfo, "", "ready"),
            "[sals-server 22:13:20.250] INFO ready");
}

TEST(LogTest, JsonLinesAreOneObjectWithTheFields) {
  const absl::Time t = absl::FromUnixSeconds(1700000000) + absl::Milliseconds(250);
  const std::string line =
      FormatLogLine(LogFormat::kJson, t, LogLevel::kError, "id-\xff", "two\nlines \"quoted\"");
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  const nlohmann::json event = nlohmann::json::parse(line);
  EXPECT_EQ(event["time"], "2023-11-14T22:13:20.250Z");
  EXPECT_EQ(event["level"], "error");
  EXPECT_EQ(event["message"], "two\nlines \"quoted\"");
  EXPECT_TRUE(event["request_id"].is_string());  // invalid UTF-8 replaced, not thrown on
  EXPECT_FALSE(nlohmann::json::parse(FormatLogLine(LogFormat::kJson, t, LogLevel::kInfo, "", "x"))
                   .contains("request_id"));
}

TEST(LogTest, LevelsBelowTheConfiguredOneAreDropped) {
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  ConfigureLogging(LogLevel::kWarning, LogFormat::kJson, out);
  Log(LogLevel::kDebug, "not shown");
  Log(LogLevel::kInfo, "not shown either");
  Log(LogLevel::kWarning, "shown", "r1");
  Log(LogLevel::kError, "shown too");
  // protobuf's own errors (such as one per request that is not UTF-8) are debug-level here.
  GOOGLE_LOG(ERROR) << "String field contains invalid UTF-8 data";
  const std::vector<std::string> lines = Lines(out);
  ConfigureLogging(LogLevel::kInfo, LogFormat::kText, stderr);
  std::fclose(out);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(nlohmann::json::parse(lines[0])["request_id"], "r1");
  EXPECT_EQ(nlohmann::json::parse(lines[1])["level"], "error");
}

TEST(LogTest, DebugLevelShowsProtobufLines) {
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  ConfigureLogging(LogLevel::kDebug, LogFormat::kText, out);
  GOOGLE_LOG(ERROR) << "String field contains invalid UTF-8 data";
  const std::vector<std::string> lines = Lines(out);
  ConfigureLogging(LogLevel::kInfo, LogFormat::kText, stderr);
  std::fclose(out);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("DEBUG libprotobuf"), std::string::npos) << lines[0];
}

}  // namespace
}  // namespace sals
