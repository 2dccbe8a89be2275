#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/log.h"
#include "server/tls.h"
#include "server/warmup.h"

namespace sals {

void ServerLog(const std::string& message) { Log(LogLevel::kInfo, message); }

namespace {

// Server reflection on this server or not, as its config says: linking gRPC's reflection library
// registers its plugin for every server the process builds, so here it is dropped, or added
// where it is missing.
class ReflectionOption : public grpc::ServerBuilderOption {
 public:
  explicit ReflectionOption(bool enabled) : enabled_(enabled) {}
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    const std::string name = grpc::reflection::ProtoServerReflectionPlugin().name();
    const auto is_reflection = [&](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
      return p->name() == name;
    };
    if (!enabled_) {
      std::erase_if(*plugins, is_reflection);
    } else if (std::none_of(plugins->begin(), plugins->end(), is_reflection)) {
      plugins->push_back(std::make_unique<grpc::reflection::ProtoServerReflectionPlugin>());
    }
  }

 private:
  bool enabled_;
};

}  // namespace

// The engine's observer: passes everything to the metrics, and takes the server out of service
// when the engine fails (a backend error does not recover: Kubernetes should restart the pod).
class SalsServer::EngineWatch : public EngineObserver {
 public:
  EngineWatch(std::shared_ptr<ServerMetrics> metrics, SalsServer* server)
      : metrics_(std::move(metrics)), server_(server) {}
  void OnStep(const StepStats& stats) override { metrics_->OnStep(stats); }
  void OnTokens(int32_t count, double gap_ms) override { metrics_->OnTokens(count, gap_ms); }
  void OnRequestFinished(const Completion& completion, double prefill_ms,
                         double decode_ms) override {
    metrics_->OnRequestFinished(completion, prefill_ms, decode_ms);
  }
  void OnEngineFailed(const absl::Status& status) override {
    Log(LogLevel::kError,
        absl::StrCat("the engine failed, health NOT_SERVING until restarted: ", status.ToString()));
    server_->engine_failed_ = true;
    server_->SetServing(false);
  }

 private:
  std::shared_ptr<ServerMetrics> metrics_;
  SalsServer* server_;
};

SalsServer::SalsServer(ServerConfig config, EngineFactory engine_factory)
    : config_(std::move(config)), engine_factory_(std::move(engine_factory)) {
  if (!engine_factory_) {
    engine_factory_ = [](const EngineConfig& c, std::shared_ptr<EngineObserver> o) {
      return Engine::Create(c, std::move(o));
    };
  }
}

SalsServer::~SalsServer() {
  if (!drained_ && server_ != nullptr) Drain(absl::ZeroDuration());
}

void SalsServer::SetServing(bool serving) {
  if (server_ == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  const bool status = serving && !engine_failed_;
  health->SetServingStatus("", status);
  health->SetServingStatus(kGenerationServiceName, status);
}

absl::Status SalsServer::Start() {
  if (absl::Status s = Listen(); !s.ok()) return s;
  return Load();
}

absl::Status SalsServer::Listen() {
  ConfigureLogging(*ParseLogLevel(config_.log_level), *ParseLogFormat(config_.log_format));
  metrics_ = std::make_shared<ServerMetrics>(
      config_.engine.max_model_len > 0 ? config_.engine.max_model_len : 131072);
  if (absl::Status s = metrics_->StartExposer(config_.metrics_listen, config_.metrics_threads,
                                              config_.metrics_request_timeout_ms);
      !s.ok()) {
    return s;
  }
  watch_ = std::make_shared<EngineWatch>(metrics_, this);

  GenerationServiceOptions options;
  options.default_max_tokens = config_.default_max_tokens;
  options.tokenizer_threads = config_.tokenizer_threads;
  options.max_streams_per_client = config_.max_streams_per_client;
  if (!config_.auth_tokens_file.empty()) {
    auto auth = TokenAuthenticator::FromFile(config_.auth_tokens_file);
    if (!auth.ok()) {
      return absl::Status(auth.status().code(),
                          absl::StrCat("auth.tokens_file: ", auth.status().message()));
    }
    ServerLog(absl::StrCat("bearer-token authentication on: ", auth->num_clients(), " clients"));
    options.auth = std::make_shared<const TokenAuthenticator>(std::move(*auth));
  }
  auto credentials = MakeServerCredentials(config_);
  if (!credentials.ok()) return credentials.status();

  grpc::EnableDefaultHealthCheckService(true);
  service_ = std::make_unique<GenerationService>(std::move(options), metrics_.get());
  grpc::ServerBuilder builder;
  builder.SetOption(std::make_unique<ReflectionOption>(config_.reflection));
  builder.AddListeningPort(config_.listen, *credentials, &grpc_port_);
  builder.SetMaxReceiveMessageSize(config_.max_receive_message_bytes);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", config_.listen));
  }
  SetServing(false);  // until loaded and warmed up
  ServerLog(absl::StrCat("gRPC on port ", grpc_port_, config_.tls_cert_file.empty() ? "" : " (TLS)",
                         ", metrics on port ", metrics_->port()));
  return absl::OkStatus();
}

absl::Status SalsServer::Load() {
  ServerLog("loading the model");

  auto engine = engine_factory_(config_.engine, watch_);
  if (!engine.ok()) {
    return absl::Status(engine.status().code(),
                        absl::StrCat("cannot start the engine: ", engine.status().message()));
  }
  engine_ = std::move(*engine);
  metrics_->SetEngineInfo(engine_->info());
  if (absl::Status s = WarmUp(*engine_); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("warm-up failed: ", s.message()));
  }
  service_->SetEngine(engine_.get());
  SetServing(true);
  const EngineInfo& info = engine_->info();
  ServerLog(absl::StrCat("serving ", info.model, " on ", info.backend, ": KV pool ",
                         info.pool.num_blocks, " blocks of ", info.pool.block_size, " tokens, ",
                         info.kv_bytes.per_token, " bytes/token (dense fp16 ",
                         info.kv_bytes.dense_fp16_per_token, ")"));
  return absl::OkStatus();
}

int SalsServer::Drain(absl::Duration grace) {
  drained_ = true;
  SetServing(false);
  int left = 0;
  if (engine_ != nullptr) {
    engine_->StopAdmitting();
    const absl::Time deadline = absl::Now() + grace;
    while (engine_->num_live() > 0 && absl::Now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    left = engine_->num_live();
  }
  // Streams still open are cancelled (their sequences abort); then the engine stops.
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  if (service_ != nullptr) {
    service_->SetEngine(nullptr);
    service_->Shutdown();  // no tokenizer thread uses the engine any more
  }
  engine_.reset();
  return left;
}

}  // namespace sals
