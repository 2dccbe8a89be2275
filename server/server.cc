#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/warmup.h"

namespace sals {

void ServerLog(const std::string& message) {
  std::fprintf(stderr, "[sals-server %s] %s\n",
               absl::FormatTime("%H:%M:%E3S", absl::Now(), absl::UTCTimeZone()).c_str(),
               message.c_str());
}

SalsServer::SalsServer(ServerConfig config) : config_(std::move(config)) {}

SalsServer::~SalsServer() {
  if (!drained_ && server_ != nullptr) Drain(absl::ZeroDuration());
}

absl::Status SalsServer::Start() {
  if (absl::Status s = Listen(); !s.ok()) return s;
  return Load();
}

absl::Status SalsServer::Listen() {
  metrics_ = std::make_shared<ServerMetrics>(
      config_.engine.max_model_len > 0 ? config_.engine.max_model_len : 131072);
  if (absl::Status s = metrics_->StartExposer(config_.metrics_listen); !s.ok()) return s;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  service_ = std::make_unique<GenerationService>(config_.default_max_tokens, metrics_.get());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config_.listen, grpc::InsecureServerCredentials(), &grpc_port_);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", config_.listen));
  }
  server_->GetHealthCheckService()->SetServingStatus(false);  // until loaded and warmed up
  ServerLog(absl::StrCat("gRPC on port ", grpc_port_, ", metrics on port ", metrics_->port()));
  return absl::OkStatus();
}

absl::Status SalsServer::Load() {
  ServerLog("loading the model");

  auto engine = Engine::Create(config_.engine, metrics_);
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
  server_->GetHealthCheckService()->SetServingStatus(true);
  const EngineInfo& info = engine_->info();
  ServerLog(absl::StrCat("serving ", info.model, " on ", info.backend, ": KV pool ",
                         info.pool.num_blocks, " blocks of ", info.pool.block_size, " tokens, ",
                         info.kv_bytes.per_token, " bytes/token (dense fp16 ",
                         info.kv_bytes.dense_fp16_per_token, ")"));
  return absl::OkStatus();
}

int SalsServer::Drain(absl::Duration grace) {
  drained_ = true;
  if (server_ != nullptr) server_->GetHealthCheckService()->SetServingStatus(false);
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
  if (service_ != nullptr) service_->SetEngine(nullptr);
  engine_.reset();
  return left;
}

}  // namespace sals
