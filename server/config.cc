#include "server/config.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "server/log.h"

namespace sals {
namespace {

// One settable key: how to read it from a YAML node and how to print it back.
struct Key {
  std::function<void(const YAML::Node&)> read;  // throws YAML::Exception on a bad value
  std::function<YAML::Node()> write;
};

template <typename T>
Key Field(T* field) {
  return Key{[field](const YAML::Node& n) { *field = n.as<T>(); },
             [field] { return YAML::Node(*field); }};
}

template <typename T>
Key OptionalField(std::optional<T>* field) {
  return Key{[field](const YAML::Node& n) {
               if (n.IsNull()) {
                 field->reset();
               } else {
                 *field = n.as<T>();
               }
             },
             [field] { return *field ? YAML::Node(**field) : YAML::Node(YAML::NodeType::Null); }};
}

// attention.selection, spelled as SalsSelectionName.
Key SelectionField(SalsSelection* field) {
  return Key{[field](const YAML::Node& n) {
               absl::StatusOr<SalsSelection> s = ParseSalsSelection(n.as<std::string>());
               if (!s.ok()) throw YAML::Exception(n.Mark(), std::string(s.status().message()));
               *field = *s;
             },
             [field] { return YAML::Node(std::string(SalsSelectionName(*field))); }};
}

// section -> key -> accessor, over one ServerConfig.
using Schema = std::map<std::string, std::map<std::string, Key>>;

Schema MakeSchema(ServerConfig* c) {
  EngineConfig& e = c->engine;
  SalsPolicy& p = e.default_policy;
  return {
      {"model",
       {{"path", Field(&e.model_path)},
        {"synthetic", Field(&e.synthetic_model)},
        {"synthetic_seed", Field(&e.synthetic_seed)},
        {"calibration", Field(&e.calibration_file)}}},
      {"backend",
       {{"type", Field(&e.backend)},
        {"cpu_threads", Field(&e.cpu_threads)},
        {"cuda_dtype", Field(&e.cuda_dtype)}}},
      {"kv_cache",
       {{"format", Field(&e.kv_format)},
        {"dtype", Field(&e.kv_dtype)},
        {"dense_dtype", Field(&e.dense_dtype)},
        {"latent_dtype", Field(&e.latent_dtype)},
        {"block_size", Field(&e.block_size)},
        {"memory_gib", Field(&e.kv_memory_gib)},
        {"num_blocks", Field(&e.num_blocks)},
        {"value_bits", OptionalField(&e.value_bits)},
        {"value_group_size", OptionalField(&e.value_group_size)},
        {"sink_tokens", OptionalField(&e.sink_tokens)},
        {"recent_tokens", OptionalField(&e.recent_tokens)},
        {"dense_layers", OptionalField(&e.dense_layers)}}},
      {"attention",
       {{"select_all", Field(&p.select_all)},
        {"rank", Field(&p.rank)},
        {"score_dims", Field(&p.score_dims)},
        {"topk_fraction", Field(&p.topk_fraction)},
        {"token_budget", Field(&p.token_budget)},
        {"sink_tokens", Field(&p.sink_tokens)},
        {"recent_tokens", Field(&p.recent_tokens)},
        {"selection", SelectionField(&p.selection)}}},
      {"scheduler",
       {{"max_num_seqs", Field(&e.max_num_seqs)},
        {"max_num_batched_tokens", Field(&e.max_num_batched_tokens)},
        {"max_prefill_tokens", Field(&e.max_prefill_tokens)},
        {"max_prefill_chunk", Field(&e.max_prefill_chunk)},
        {"max_num_partial_prefills", Field(&e.max_num_partial_prefills)},
        {"max_waiting_requests", Field(&e.max_waiting_requests)},
        {"max_model_len", Field(&e.max_model_len)},
        {"enable_prefix_caching", Field(&e.enable_prefix_caching)},
        {"seed", Field(&e.seed)}}},
      {"server",
       {{"listen", Field(&c->listen)},
        {"metrics_listen", Field(&c->metrics_listen)},
        {"shutdown_grace_seconds", Field(&c->shutdown_grace_seconds)},
        {"default_max_tokens", Field(&c->default_max_tokens)},
        {"tokenizer_threads", Field(&c->tokenizer_threads)},
        {"max_receive_message_bytes", Field(&c->max_receive_message_bytes)},
        {"max_streams_per_client", Field(&c->max_streams_per_client)},
        {"metrics_threads", Field(&c->metrics_threads)},
        {"metrics_request_timeout_ms", Field(&c->metrics_request_timeout_ms)},
        {"reflection", Field(&c->reflection)}}},
      {"logging", {{"level", Field(&c->log_level)}, {"format", Field(&c->log_format)}}},
      {"tls",
       {{"cert_file", Field(&c->tls_cert_file)},
        {"key_file", Field(&c->tls_key_file)},
        {"client_ca_file", Field(&c->tls_client_ca_file)},
        {"require_client_cert", Field(&c->tls_require_client_cert)}}},
      {"auth", {{"tokens_file", Field(&c->auth_tokens_file)}}},
  };
}

absl::Status SetKey(Schema& schema, const std::string& section, const std::string& key,
                    const YAML::Node& value, std::string_view source) {
  auto sec = schema.find(section);
  if (sec == schema.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": unknown section '", section, "'"));
  }
  auto k = sec->second.find(key);
  if (k == sec->second.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": unknown key '", section, ".", key, "'"));
  }
  try {
    k->second.read(value);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": bad value for '", section, ".", key, "': ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status CheckRanges(const ServerConfig& c, std::string_view source) {
  auto bad = [&](std::string_view key, std::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": '", std::string(key), "' ", std::string(what)));
  };
  if (c.engine.backend != "cpu" && c.engine.backend != "cuda") {
    return bad("backend.type", "must be cpu or cuda");
  }
  if (c.engine.cpu_threads < 0) return bad("backend.cpu_threads", "must be >= 0");
  if (c.engine.cuda_dtype != "f16" && c.engine.cuda_dtype != "bf16") {
    return bad("backend.cuda_dtype", "must be f16 or bf16");
  }
  if (c.engine.block_size < 1) return bad("kv_cache.block_size", "must be positive");
  if (c.engine.num_blocks < 0) return bad("kv_cache.num_blocks", "must be >= 0");
  if (!(c.engine.kv_memory_gib > 0)) return bad("kv_cache.memory_gib", "must be positive");
  if (c.engine.max_num_seqs < 1) return bad("scheduler.max_num_seqs", "must be positive");
  if (c.engine.max_num_batched_tokens < 1) {
    return bad("scheduler.max_num_batched_tokens", "must be positive");
  }
  if (c.engine.max_prefill_tokens < 0) return bad("scheduler.max_prefill_tokens", "must be >= 0");
  if (c.engine.max_prefill_tokens > c.engine.max_num_batched_tokens) {
    return bad("scheduler.max_prefill_tokens",
               absl::StrCat("(", c.engine.max_prefill_tokens,
                            ") must be <= scheduler.max_num_batched_tokens (",
                            c.engine.max_num_batched_tokens, ")"));
  }
  if (c.engine.max_prefill_chunk < 0) return bad("scheduler.max_prefill_chunk", "must be >= 0");
  if (c.engine.max_num_partial_prefills < 0) {
    return bad("scheduler.max_num_partial_prefills", "must be >= 0");
  }
  if (c.engine.max_waiting_requests < 1) {
    return bad("scheduler.max_waiting_requests", "must be positive");
  }
  if (!(c.shutdown_grace_seconds >= 0)) return bad("server.shutdown_grace_seconds", "must be >= 0");
  if (c.default_max_tokens < 1) return bad("server.default_max_tokens", "must be positive");
  if (c.tokenizer_threads < 1) return bad("server.tokenizer_threads", "must be positive");
  if (c.max_receive_message_bytes < 1024) {
    return bad("server.max_receive_message_bytes", "must be at least 1024");
  }
  if (c.max_streams_per_client < 0) return bad("server.max_streams_per_client", "must be >= 0");
  if (c.metrics_threads < 1) return bad("server.metrics_threads", "must be positive");
  if (c.metrics_request_timeout_ms < 1) {
    return bad("server.metrics_request_timeout_ms", "must be positive");
  }
  if (!ParseLogLevel(c.log_level).ok()) {
    return bad("logging.level", "must be debug, info, warning or error");
  }
  if (!ParseLogFormat(c.log_format).ok()) return bad("logging.format", "must be text or json");
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    return bad("tls.cert_file", "and tls.key_file must be set together");
  }
  if (!c.tls_client_ca_file.empty() && c.tls_cert_file.empty()) {
    return bad("tls.client_ca_file", "needs tls.cert_file and tls.key_file");
  }
  if (c.tls_require_client_cert && c.tls_client_ca_file.empty()) {
    return bad("tls.require_client_cert", "needs tls.client_ca_file");
  }
  return absl::OkStatus();
}

}  // namespace

ServerConfig DefaultServerConfig() {
  ServerConfig c;
  c.engine.model_path = "models/default";
  return c;
}

absl::StatusOr<ServerConfig> ParseServerConfig(std::string_view yaml, std::string_view source,
                                               const std::vector<std::string>& overrides) {
  ServerConfig config = DefaultServerConfig();
  Schema schema = MakeSchema(&config);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(source), ": ", e.what()));
  }
  if (root.IsDefined() && !root.IsNull()) {
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(source), ": the top level must be a map of sections"));
    }
    for (const auto& section : root) {
      const std::string name = section.first.as<std::string>();
      if (!section.second.IsMap()) {
        return absl::InvalidArgumentError(
            absl::StrCat(std::string(source), ": section '", name, "' must be a map"));
      }
      for (const auto& kv : section.second) {
        absl::Status s = SetKey(schema, name, kv.first.as<std::string>(), kv.second, source);
        if (!s.ok()) return s;
      }
    }
  }
  for (const std::string& o : overrides) {
    const size_t eq = o.find('=');
    const size_t dot = o.find('.');
    if (eq == std::string::npos || dot == std::string::npos || dot > eq) {
      return absl::InvalidArgumentError(
          absl::StrCat("--set '", o, "': expected section.key=value"));
    }
    YAML::Node value;
    try {
      value = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("--set '", o, "': ", e.what()));
    }
    absl::Status s =
        SetKey(schema, o.substr(0, dot), o.substr(dot + 1, eq - dot - 1), value, "--set");
    if (!s.ok()) return s;
  }
  if (absl::Status s = CheckRanges(config, source); !s.ok()) return s;
  return config;
}

absl::StatusOr<ServerConfig> LoadServerConfig(const std::string& path,
                                              const std::vector<std::string>& overrides) {
  if (path.empty()) return ParseServerConfig("", "defaults", overrides);
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream text;
  text << in.rdbuf();
  return ParseServerConfig(text.str(), path, overrides);
}

std::string ConfigToYaml(const ServerConfig& config) {
  ServerConfig copy = config;
  YAML::Node root;
  for (const auto& [section, keys] : MakeSchema(&copy)) {
    for (const auto& [key, accessor] : keys) root[section][key] = accessor.write();
  }
  YAML::Emitter out;
  out << root;
  return out.c_str();
}

}  // namespace sals
