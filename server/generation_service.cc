#include "server/generation_service.h"

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/log.h"
#include "server/request_ids.h"
#include "server/request_mapping.h"

namespace sals {
namespace {

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case absl::StatusCode::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case absl::StatusCode::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case absl::StatusCode::kAlreadyExists:
      return grpc::StatusCode::ALREADY_EXISTS;
    case absl::StatusCode::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case absl::StatusCode::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
    case absl::StatusCode::kCancelled:
      return grpc::StatusCode::CANCELLED;
    case absl::StatusCode::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    default:
      return grpc::StatusCode::INTERNAL;
  }
}

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(ToGrpcCode(s.code()), std::string(s.message()));
}

const grpc::Status kNotReady(grpc::StatusCode::UNAVAILABLE, "the model is still loading");

// A call the client gave up on before its request arrived (deadline passed or cancelled): gRPC
// still runs the handler, with no request (an invalid buffer), which is no client error. Its
// status, or OK.
absl::Status AlreadyOver(grpc::CallbackServerContext& context, const grpc::ByteBuffer& raw) {
  const bool expired = context.deadline() <= std::chrono::system_clock::now();
  if (!raw.Valid() || expired) {
    if (expired) {
      return absl::DeadlineExceededError("the deadline passed before the request was read");
    }
    return absl::CancelledError("the call ended before its request arrived");
  }
  return absl::OkStatus();
}

// A raw request as T, or INVALID_ARGUMENT when protobuf rejects it.
template <typename T>
absl::StatusOr<T> ParseRequest(const grpc::ByteBuffer& raw) {
  grpc::ByteBuffer copy(raw);  // Deserialize consumes its buffer; the copy shares the slices
  T message;
  if (!grpc::SerializationTraits<T>::Deserialize(&copy, &message).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request is not a valid ", T::descriptor()->full_name(),
                     " message (its string fields, such as text and stop, must be UTF-8)"));
  }
  return message;
}

template <typename T>
grpc::ByteBuffer SerializeResponse(const T& message) {
  grpc::ByteBuffer out;
  bool own_buffer = false;
  grpc::SerializationTraits<T>::Serialize(message, &out, &own_buffer);
  return out;
}

// One Generate stream. The engine writes into it from its step thread (as the request's sink);
// gRPC calls OnWriteDone / OnCancel / OnDone on its own threads; a text prompt is tokenized and
// submitted from the tokenizer pool. Output is coalesced while a write is in flight, so a slow
// client never blocks the engine.
class GenerateReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // The shared half (engine, tokenizer pool, gRPC callbacks). It outlives the reactor when the
  // engine or the pool still holds it.
  class Sink : public RequestSink, public std::enable_shared_from_this<Sink> {
   public:
    Sink(GenerateReactor* reactor, const Tokenizer* tokenizer, std::string request_id)
        : reactor_(reactor), tokenizer_(tokenizer), request_id_(std::move(request_id)) {}
    void OnChunk(TokenChunk chunk) override {
      std::lock_guard<std::mutex> lock(mu_);
      if (pending_.empty() || !pending_.back().has_chunk()) pending_.emplace_back();
      FillChunk(chunk, tokenizer_, pending_.back().mutable_chunk());
      MaybeWriteLocked();
    }
    void OnComplete(const Completion& completion) override {
      std::lock_guard<std::mutex> lock(mu_);
      if (!completion.error.ok()) {
        // The engine could not serve it: the chunks so far, then the error as the status.
        Log(LogLevel::kWarning, absl::StrCat("stream ends with ", completion.error.ToString()),
            request_id_);
        final_error_ = ToGrpc(completion.error);
      } else {
        FillComplete(completion, pending_.emplace_back().mutable_complete());
      }
      MaybeWriteLocked();
    }
    // From OnWriteDone: the previous write finished.
    void WriteDone(bool ok) {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) {
        // The stream is broken (client gone): stop writing; OnCancel/OnDone follow.
        broken_ = true;
        return;
      }
      MaybeWriteLocked();
    }
    void Detach() {
      std::lock_guard<std::mutex> lock(mu_);
      reactor_ = nullptr;
    }

    // Converts (tokenizing a text prompt) and submits the request, unless the call is over by
    // then; refusals finish the call. Runs on a gRPC thread or in the tokenizer pool.
    void Admit(Engine* engine, const v1::GenerateRequest& request, int default_max_tokens,
               std::string engine_id, ServerMetrics* metrics) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (finished_) return;  // cancelled while queued: don't tokenize
      }
      auto converted = ToGenerationRequest(request, *engine, default_max_tokens);
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      absl::Status status = converted.status();
      if (status.ok()) {
        converted->id = engine_id;
        status = engine->Submit(std::move(*converted), shared_from_this());
      }
      if (status.ok()) {
        engine_id_ = std::move(engine_id);
        engine_ = engine;
        return;
      }
      metrics->OnRejected(std::string(absl::StatusCodeToString(status.code())));
      FinishLocked(ToGrpc(status));
    }
    void Finish(const grpc::Status& status) {
      std::lock_guard<std::mutex> lock(mu_);
      FinishLocked(status);
    }
    void FinishLocked(const grpc::Status& status) {
      if (finished_) return;
      finished_ = true;
      if (reactor_ != nullptr) reactor_->Finish(status);
    }
    // Client cancel or deadline: abort the sequence (its blocks are freed in the engine's next
    // step) and end the call.
    void Cancel() {
      std::lock_guard<std::mutex> lock(mu_);
      if (engine_ != nullptr) engine_->Abort(engine_id_);
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }

   private:
    void MaybeWriteLocked() {
      if (reactor_ == nullptr || writing_ || broken_ || finished_) return;
      if (pending_.empty()) {
        if (final_error_) FinishLocked(*final_error_);
        return;
      }
      v1::GenerateResponse& next = pending_.front();
      // The id once, in the stream's first message (a client learns a server-made id there).
      if (!id_sent_) next.set_request_id(request_id_);
      id_sent_ = true;
      const bool last = next.has_complete();
      current_ = SerializeResponse(next);
      pending_.pop_front();
      if (last) {
        // The last message: write it and finish the call in one operation.
        finished_ = true;
        reactor_->StartWriteAndFinish(&current_, grpc::WriteOptions(), grpc::Status::OK);
        return;
      }
      writing_ = true;
      reactor_->StartWrite(&current_);
    }

    std::mutex mu_;
    GenerateReactor* reactor_;
    const Tokenizer* tokenizer_;
    const std::string request_id_;  // as the client sees it
    Engine* engine_ = nullptr;      // set once submitted
    std::string engine_id_;
    std::deque<v1::GenerateResponse> pending_;
    std::optional<grpc::Status> final_error_;
    grpc::ByteBuffer current_;  // the message being written
    bool id_sent_ = false;
    bool writing_ = false;
    bool broken_ = false;
    bool finished_ = false;
  };

  GenerateReactor(GenerationService* service, Engine* engine, ServerMetrics* metrics,
                  v1::GenerateRequest request, const std::string& client, std::string limit_key)
      : service_(service), limit_key_(std::move(limit_key)) {
    const std::string id = request.request_id().empty() ? NewRequestId() : request.request_id();
    sink_ = std::make_shared<Sink>(this, engine->tokenizer(), id);
    std::string engine_id = EngineRequestId(client, id);
    const int default_max_tokens = service->options().default_max_tokens;
    if (request.prompt_case() != v1::GenerateRequest::kText) {
      sink_->Admit(engine, request, default_max_tokens, std::move(engine_id), metrics);
      return;
    }
    const bool posted = service->tokenizer_pool().Post(
        [sink = sink_, engine, request = std::move(request), default_max_tokens,
         engine_id = std::move(engine_id), metrics]() mutable {
          sink->Admit(engine, request, default_max_tokens, std::move(engine_id), metrics);
        });
    if (!posted) {
      sink_->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is stopping"));
    }
  }

  void OnWriteDone(bool ok) override { sink_->WriteDone(ok); }
  void OnCancel() override { sink_->Cancel(); }
  void OnDone() override {
    sink_->Detach();
    if (!limit_key_.empty()) service_->ReleaseStream(limit_key_);
    delete this;
  }

 private:
  GenerationService* service_;
  std::string limit_key_;  // "" when no per-client limit applies
  std::shared_ptr<Sink> sink_;
};

// A reactor that fails at once.
class ErrorReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit ErrorReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

std::string PeerHost(const std::string& peer) {
  // "ipv4:10.0.0.7:41234", "ipv6:[::1]:41234": drop the port.
  const size_t colon = peer.rfind(':');
  return colon == std::string::npos ? peer : peer.substr(0, colon);
}

}  // namespace

GenerationService::GenerationService(GenerationServiceOptions options, ServerMetrics* metrics)
    : options_(std::move(options)),
      metrics_(metrics),
      tokenizer_pool_(options_.tokenizer_threads) {}

GenerationService::~GenerationService() { Shutdown(); }

void GenerationService::Shutdown() { tokenizer_pool_.Shutdown(); }

absl::StatusOr<std::string> GenerationService::Identify(const grpc::CallbackServerContext& context,
                                                        std::string* limit_key) const {
  if (options_.auth != nullptr) {
    const auto& metadata = context.client_metadata();
    auto it = metadata.find("authorization");
    const std::string_view value = it == metadata.end()
                                       ? std::string_view()
                                       : std::string_view(it->second.data(), it->second.size());
    absl::StatusOr<std::string> name = options_.auth->Authenticate(value);
    if (!name.ok()) return name.status();
    if (limit_key != nullptr) *limit_key = absl::StrCat("client:", *name);
    return absl::StrCat("client:", *name);
  }
  const std::string peer = context.peer();
  if (limit_key != nullptr) *limit_key = absl::StrCat("host:", PeerHost(peer));
  return absl::StrCat("peer:", peer);
}

bool GenerationService::AcquireStream(const std::string& key) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  int& n = streams_[key];
  if (options_.max_streams_per_client > 0 && n >= options_.max_streams_per_client) {
    if (n == 0) streams_.erase(key);
    return false;
  }
  ++n;
  return true;
}

void GenerationService::ReleaseStream(const std::string& key) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  auto it = streams_.find(key);
  if (it != streams_.end() && --it->second <= 0) streams_.erase(it);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  auto refuse = [&](const absl::Status& status) {
    metrics_->OnRejected(std::string(absl::StatusCodeToString(status.code())));
    return new ErrorReactor(ToGrpc(status));
  };
  if (absl::Status over = AlreadyOver(*context, *raw); !over.ok()) return refuse(over);
  std::string limit_key;
  absl::StatusOr<std::string> client = Identify(*context, &limit_key);
  if (!client.ok()) return refuse(client.status());
  Engine* engine = engine_.load();
  if (engine == nullptr) return new ErrorReactor(kNotReady);
  absl::StatusOr<v1::GenerateRequest> request = ParseRequest<v1::GenerateRequest>(*raw);
  if (!request.ok()) return refuse(request.status());
  if (request->request_id().size() > kMaxRequestIdBytes) {
    return refuse(absl::InvalidArgumentError(absl::StrCat(
        "request_id: ", request->request_id().size(), " bytes, at most ", kMaxRequestIdBytes)));
  }
  if (!AcquireStream(limit_key)) {
    return refuse(absl::ResourceExhaustedError(
        absl::StrCat("this client has ", options_.max_streams_per_client,
                     " streams in flight already (server.max_streams_per_client)")));
  }
  return new GenerateReactor(this, engine, metrics_, std::move(*request), *client,
                             std::move(limit_key));
}

grpc::ServerUnaryReactor* GenerationService::Abort(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* raw,
                                                   grpc::ByteBuffer* raw_response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status over = AlreadyOver(*context, *raw); !over.ok()) {
    reactor->Finish(ToGrpc(over));
    return reactor;
  }
  absl::StatusOr<std::string> client = Identify(*context, nullptr);
  Engine* engine = engine_.load();
  absl::StatusOr<v1::AbortRequest> request = ParseRequest<v1::AbortRequest>(*raw);
  if (!client.ok()) {
    reactor->Finish(ToGrpc(client.status()));
  } else if (engine == nullptr) {
    reactor->Finish(kNotReady);
  } else if (!request.ok()) {
    reactor->Finish(ToGrpc(request.status()));
  } else if (request->request_id().empty()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id is empty"));
  } else if (request->request_id().size() > kMaxRequestIdBytes) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 absl::StrCat("request_id: ", request->request_id().size(),
                                              " bytes, at most ", kMaxRequestIdBytes)));
  } else {
    v1::AbortResponse response;
    response.set_found(engine->Abort(EngineRequestId(*client, request->request_id())));
    *raw_response = SerializeResponse(response);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* raw,
                                                          grpc::ByteBuffer* raw_response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status over = AlreadyOver(*context, *raw); !over.ok()) {
    reactor->Finish(ToGrpc(over));
    return reactor;
  }
  absl::StatusOr<std::string> client = Identify(*context, nullptr);
  Engine* engine = engine_.load();
  absl::StatusOr<v1::GetModelInfoRequest> request = ParseRequest<v1::GetModelInfoRequest>(*raw);
  if (!client.ok()) {
    reactor->Finish(ToGrpc(client.status()));
  } else if (engine == nullptr) {
    reactor->Finish(kNotReady);
  } else if (!request.ok()) {
    reactor->Finish(ToGrpc(request.status()));
  } else {
    v1::GetModelInfoResponse response;
    FillModelInfo(engine->info(), &response);
    *raw_response = SerializeResponse(response);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

}  // namespace sals
