// Between the public protobuf API and the engine's types: request validation and conversion, and
// the responses built from engine output.
#pragma once

#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"
#include "sals/v1/generate.pb.h"

namespace sals {

// The longest text prompt accepted, in bytes: the context limit times the longest token.
int64_t MaxTextBytes(const EngineInfo& info);

// Converts and checks what the engine can't know about (prompt form, policy presets against the
// pool); the engine validates the rest. Messages name the proto field.
absl::StatusOr<GenerationRequest> ToGenerationRequest(const v1::GenerateRequest& request,
                                                      const Engine& engine, int default_max_tokens);

void FillChunk(const TokenChunk& chunk, const Tokenizer* tokenizer, v1::GenerateChunk* out);
void FillComplete(const Completion& completion, v1::GenerateComplete* out);
void FillModelInfo(const EngineInfo& info, v1::GetModelInfoResponse* out);

}  // namespace sals
