#include "server/generation_service.h"

#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
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
    default:
      return grpc::StatusCode::INTERNAL;
  }
}

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(ToGrpcCode(s.code()), std::string(s.message()));
}

const grpc::Status kNotReady(grpc::StatusCode::UNAVAILABLE, "the model is still loading");

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
// gRPC calls OnWriteDone / OnCancel / OnDone on its own threads. Output is coalesced while a
// write is in flight, so a slow client never blocks the engine.
class GenerateReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // The engine-facing half. It outlives the reactor when the engine still holds it.
  class Sink : public RequestSink {
   public:
    Sink(GenerateReactor* reactor, const Tokenizer* tokenizer)
        : reactor_(reactor), tokenizer_(tokenizer) {}
    void OnChunk(TokenChunk chunk) override {
      std::lock_guard<std::mutex> lock(mu_);
      if (pending_.empty() || !pending_.back().has_chunk()) pending_.emplace_back();
      FillChunk(chunk, tokenizer_, pending_.back().mutable_chunk());
      MaybeWriteLocked();
    }
    void OnComplete(const Completion& completion) override {
      std::lock_guard<std::mutex> lock(mu_);
      FillComplete(completion, pending_.emplace_back().mutable_complete());
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

   private:
    void MaybeWriteLocked() {
      if (reactor_ == nullptr || writing_ || broken_ || finished_) return;
      if (pending_.empty()) return;
      v1::GenerateResponse& next = pending_.front();
      next.set_request_id(request_id_);
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

    friend class GenerateReactor;
    std::mutex mu_;
    GenerateReactor* reactor_;
    const Tokenizer* tokenizer_;
    std::string request_id_;
    std::deque<v1::GenerateResponse> pending_;
    grpc::ByteBuffer current_;  // the message being written
    bool writing_ = false;
    bool broken_ = false;
    bool finished_ = false;
  };

  GenerateReactor(Engine* engine, const v1::GenerateRequest& request, int default_max_tokens,
                  ServerMetrics* metrics)
      : engine_(engine), sink_(std::make_shared<Sink>(this, engine->tokenizer())) {
    auto converted = ToGenerationRequest(request, *engine, default_max_tokens);
    absl::Status status = converted.status();
    if (status.ok()) {
      if (converted->id.empty()) converted->id = absl::StrCat("grpc-", NextId());
      id_ = converted->id;
      sink_->request_id_ = id_;
      status = engine->Submit(std::move(*converted), sink_);
    }
    if (!status.ok()) {
      metrics->OnRejected(std::string(absl::StatusCodeToString(status.code())));
      sink_->Detach();
      std::lock_guard<std::mutex> lock(sink_->mu_);
      sink_->finished_ = true;
      Finish(ToGrpc(status));
    }
  }

  void OnWriteDone(bool ok) override { sink_->WriteDone(ok); }

  void OnCancel() override {
    // Client cancel or deadline: free the sequence's blocks in the engine's next step.
    if (!id_.empty()) engine_->Abort(id_);
    std::lock_guard<std::mutex> lock(sink_->mu_);
    if (!sink_->finished_) {
      sink_->finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }
  }

  void OnDone() override {
    sink_->Detach();
    delete this;
  }

 private:
  static uint64_t NextId() {
    static std::atomic<uint64_t> next{1};
    return next++;
  }

  Engine* engine_;
  std::shared_ptr<Sink> sink_;
  std::string id_;
};

// A reactor that fails at once.
class ErrorReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit ErrorReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(
    grpc::CallbackServerContext* /*context*/, const grpc::ByteBuffer* raw) {
  Engine* engine = engine_.load();
  if (engine == nullptr) return new ErrorReactor(kNotReady);
  absl::StatusOr<v1::GenerateRequest> request = ParseRequest<v1::GenerateRequest>(*raw);
  if (!request.ok()) {
    metrics_->OnRejected(std::string(absl::StatusCodeToString(request.status().code())));
    return new ErrorReactor(ToGrpc(request.status()));
  }
  return new GenerateReactor(engine, *request, default_max_tokens_, metrics_);
}

grpc::ServerUnaryReactor* GenerationService::Abort(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* raw,
                                                   grpc::ByteBuffer* raw_response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Engine* engine = engine_.load();
  absl::StatusOr<v1::AbortRequest> request = ParseRequest<v1::AbortRequest>(*raw);
  if (engine == nullptr) {
    reactor->Finish(kNotReady);
  } else if (!request.ok()) {
    reactor->Finish(ToGrpc(request.status()));
  } else if (request->request_id().empty()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id is empty"));
  } else {
    v1::AbortResponse response;
    response.set_found(engine->Abort(request->request_id()));
    *raw_response = SerializeResponse(response);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(
    grpc::CallbackServerContext* context, const v1::GetModelInfoRequest* /*request*/,
    v1::GetModelInfoResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Engine* engine = engine_.load();
  if (engine == nullptr) {
    reactor->Finish(kNotReady);
  } else {
    FillModelInfo(engine->info(), response);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

}  // namespace sals
