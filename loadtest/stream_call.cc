#include "loadtest/stream_call.h"

#include <utility>

namespace sals::loadtest {
namespace {

std::string FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_ABORT:
      return "abort";
    default:
      return "unspecified";
  }
}

double MillisBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

}  // namespace

StreamCall::StreamCall(v1::GenerateRequest request, DoneCallback done)
    : request_(std::move(request)), done_(std::move(done)) {}

void StreamCall::Start(v1::Generation::Stub* stub, v1::GenerateRequest request,
                       std::chrono::milliseconds timeout, Clock::time_point run_start, bool warmup,
                       DoneCallback done, FirstTokenCallback first_token) {
  auto* call = new StreamCall(std::move(request), std::move(done));
  call->first_token_ = std::move(first_token);
  call->record_.warmup = warmup;
  call->record_.max_tokens = static_cast<int>(call->request_.sampling().max_tokens());
  call->context_.set_deadline(std::chrono::system_clock::now() + timeout);
  call->sent_ = Clock::now();
  call->record_.start_s = std::chrono::duration<double>(call->sent_ - run_start).count();
  stub->async()->Generate(&call->context_, &call->request_, call);
  call->StartRead(&call->response_);
  call->StartCall();
}

void StreamCall::OnReadDone(bool ok) {
  if (!ok) return;  // the stream ended: OnDone follows
  const Clock::time_point now = Clock::now();
  if (response_.has_chunk()) {
    const int tokens = response_.chunk().token_ids_size();
    if (tokens > 0) {
      ++record_.chunks;
      int shared_tokens = tokens;
      if (record_.output_tokens == 0) {
        record_.ttft_ms = MillisBetween(sent_, now);
        for (int i = 1; i < tokens; ++i) record_.itl_ms.push_back(0.0f);
        if (first_token_) first_token_();
      } else {
        const double gap = MillisBetween(last_chunk_, now) / shared_tokens;
        for (int i = 0; i < tokens; ++i) record_.itl_ms.push_back(static_cast<float>(gap));
      }
      record_.output_tokens += tokens;
      last_chunk_ = now;
    }
  } else if (response_.has_complete()) {
    const v1::GenerateComplete& complete = response_.complete();
    record_.has_complete = true;
    record_.finish_reason = FinishReasonName(complete.finish_reason());
    record_.usage_prompt_tokens = static_cast<int>(complete.usage().prompt_tokens());
    record_.usage_completion_tokens = static_cast<int>(complete.usage().completion_tokens());
    record_.usage_cached_prompt_tokens = static_cast<int>(complete.usage().cached_prompt_tokens());
  }
  StartRead(&response_);
}

void StreamCall::OnDone(const grpc::Status& status) {
  record_.e2e_ms = MillisBetween(sent_, Clock::now());
  record_.code = status.error_code();
  if (!status.ok()) record_.error_message = status.error_message();
  if (status.ok() && !record_.has_complete) {
    record_.code = grpc::StatusCode::DATA_LOSS;
    record_.error_message = "the stream ended without its complete message";
  }
  DoneCallback done = std::move(done_);
  RequestRecord record = std::move(record_);
  delete this;
  done(std::move(record));
}

}  // namespace sals::loadtest
