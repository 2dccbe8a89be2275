// Turns an EngineConfig into the pieces an engine runs: model description, tokenizer, KV pool
// (format resolved, size in blocks), SALS bases and the backend.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/kv/kv_format.h"
#include "engine/model/config.h"
#include "engine/runtime/engine_config.h"
#include "engine/tokenizer/tokenizer.h"

namespace sals {

struct LoadedModel {
  std::string name;  // directory name or "synthetic:<shape>"
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;  // null for synthetic models
  KvPoolConfig pool;
  KvBytes kv_bytes;
  std::unique_ptr<Backend> backend;
};

// Resolves the KV format preset and its overrides (errors name the config key).
absl::StatusOr<KvCacheFormat> ResolveKvFormat(const EngineConfig& config, const ModelConfig& model);

absl::StatusOr<LoadedModel> LoadModel(const EngineConfig& config);

}  // namespace sals
