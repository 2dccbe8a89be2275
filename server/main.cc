// sals-server: serves sals.v1.Generation, grpc.health.v1 and reflection over gRPC and Prometheus
// metrics over HTTP; drains gracefully on SIGTERM / SIGINT and exits 0.
#include <signal.h>

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/config.h"
#include "server/log.h"
#include "server/server.h"
#include "tools/common/flag_names.h"

ABSL_FLAG(std::string, config, "", "YAML config file (see configs/server.yaml)");
ABSL_FLAG(std::string, model, "", "shortcut for --set model.path=DIR");
ABSL_FLAG(std::string, listen, "", "shortcut for --set server.listen=HOST:PORT");
ABSL_FLAG(std::string, metrics_listen, "", "shortcut for --set server.metrics_listen=HOST:PORT");
ABSL_FLAG(std::string, set, "",
          "config overrides section.key=value, separated by ';' (e.g. "
          "\"kv_cache.format=dense;scheduler.max_num_seqs=8\")");

namespace sals {
namespace {

std::vector<std::string> Overrides() {
  std::vector<std::string> out;
  const std::string set = absl::GetFlag(FLAGS_set);
  for (size_t begin = 0; begin < set.size();) {
    size_t end = set.find(';', begin);
    if (end == std::string::npos) end = set.size();
    if (end > begin) out.push_back(set.substr(begin, end - begin));
    begin = end + 1;
  }
  // Shortcuts come last, so they win; quoted, so YAML reads them as strings.
  const auto shortcut = [&](const std::string& value, const char* key) {
    if (!value.empty()) out.push_back(absl::StrCat(key, "=\"", value, "\""));
  };
  shortcut(absl::GetFlag(FLAGS_model), "model.path");
  shortcut(absl::GetFlag(FLAGS_listen), "server.listen");
  shortcut(absl::GetFlag(FLAGS_metrics_listen), "server.metrics_listen");
  return out;
}

int Run() {
  // Signals are taken by sigwait below: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto config = LoadServerConfig(absl::GetFlag(FLAGS_config), Overrides());
  if (!config.ok()) {
    Log(LogLevel::kError, absl::StrCat("config error: ", config.status().message()));
    return 2;
  }
  ConfigureLogging(*ParseLogLevel(config->log_level), *ParseLogFormat(config->log_format));
  ServerLog("effective config:\n" + ConfigToYaml(*config));
  SalsServer server(*config);
  if (absl::Status s = server.Start(); !s.ok()) {
    Log(LogLevel::kError, std::string(s.message()));
    return 1;
  }
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  ServerLog(absl::StrCat("signal ", signal_number, ": draining for up to ",
                         config->shutdown_grace_seconds, " s"));
  const int cut = server.Drain(absl::Seconds(config->shutdown_grace_seconds));
  ServerLog(absl::StrCat("stopped; ", cut, " requests cut at the grace deadline"));
  return 0;
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-server [--config FILE] [--model DIR] [--listen HOST:PORT] [--set key=value;...]");
  sals::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  return sals::Run();
}
