// sals-capacity: what the KV cache presets cost for a model shape and how many contexts fit in a
// memory budget. Bytes per token cover the whole model: dense layers, latent keys, value codes
// and their scales (fp8 codes and their scales too), and each sequence's exact sink/recent tokens
// amortized over its context.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/kv/kv_format.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "nlohmann/json.hpp"
#include "tools/common/flag_names.h"

ABSL_FLAG(std::string, shape, "llama-2-7b",
          "named shape (tiny, llama-2-7b, llama-3.1-8b) or a Hugging Face model directory");
ABSL_FLAG(double, gib, 120.0, "KV pool memory in GiB");
ABSL_FLAG(int, block_size, 16, "KV block size in tokens");
ABSL_FLAG(std::string, json, "", "also write the numbers to this JSON file");

namespace sals {
namespace {

constexpr int64_t kContexts[] = {4096, 32768, 131072};
// Rows: every preset, then SALS-12.5% with fp8 on one side only (what each side buys).
struct Row {
  const char* label;
  const char* preset;
  std::optional<KvDType> dense_dtype, latent_dtype;  // overrides of the preset's
};
const Row kRows[] = {
    {"dense", "dense", {}, {}},
    {"dense-fp8", "dense-fp8", {}, {}},
    {"sals-25", "sals-25", {}, {}},
    {"sals-25-fp8", "sals-25-fp8", {}, {}},
    {"sals-12.5", "sals-12.5", {}, {}},
    {"sals-12.5-fp8", "sals-12.5-fp8", {}, {}},
    {"sals-12.5+fp8 latents", "sals-12.5", {}, KvDType::kFp8E4M3},
    {"sals-12.5+fp8 dense", "sals-12.5", KvDType::kFp8E4M3, {}},
};

absl::StatusOr<ModelConfig> LoadShape(const std::string& shape) {
  std::error_code ec;
  if (std::filesystem::is_directory(shape, ec)) return LoadModelConfig(shape);
  return SyntheticModelConfig(shape);
}

std::string DenseLayers(const KvCacheFormat& format) {
  std::string out;
  for (size_t l = 0; l < format.dense_layer.size(); ++l) {
    if (format.dense_layer[l]) absl::StrAppend(&out, out.empty() ? "" : ", ", l);
  }
  return out;
}

absl::Status Capacity() {
  const std::string shape = absl::GetFlag(FLAGS_shape);
  auto config = LoadShape(shape);
  if (!config.ok()) return config.status();
  const double gib = absl::GetFlag(FLAGS_gib);
  const int block_size = absl::GetFlag(FLAGS_block_size);
  if (!(gib > 0.0) || block_size < 1) {
    return absl::InvalidArgumentError("--gib and --block-size must be positive");
  }
  const auto budget = static_cast<int64_t>(gib * static_cast<double>(int64_t{1} << 30));

  nlohmann::json json = {
      {"shape", shape}, {"num_layers", config->num_layers}, {"kv_width", config->kv_width()},
      {"gib", gib},     {"block_size", block_size},         {"presets", nlohmann::json::array()}};
  std::printf("%s: %d layers, kv_width %d (%d KV heads x %d); %g GiB, blocks of %d tokens\n",
              shape.c_str(), config->num_layers, config->kv_width(), config->num_kv_heads,
              config->head_dim, gib, block_size);
  std::printf("%-21s | %-29s | %-20s | %-22s |\n", "", "KV bytes per token at",
              "x smaller than dense", "contexts that fit");
  std::printf("%-21s | %9s %9s %9s | %6s %6s %6s | %6s %7s %7s | %s\n", "preset", "4K", "32K",
              "128K", "4K", "32K", "128K", "4K", "32K", "128K", "dense layers");
  for (const Row& r : kRows) {
    const char* preset = r.label;
    auto format = MakeKvCacheFormat(*config, r.preset);
    if (!format.ok()) {
      std::printf("%-21s | not available: %s\n", preset,
                  std::string(format.status().message()).c_str());
      json["presets"].push_back(
          {{"preset", preset}, {"error", std::string(format.status().message())}});
      continue;
    }
    if (r.dense_dtype) format->dense_dtype = *r.dense_dtype;
    if (r.latent_dtype && format->sals) format->sals->latent_dtype = *r.latent_dtype;
    const KvBytes bytes = ComputeKvBytes(*config, *format, block_size);
    nlohmann::json row = {
        {"preset", preset},
        {"paged_bytes_per_token", bytes.per_token},
        {"exact_bytes_per_sequence", bytes.exact_per_sequence},
        {"sparse_layers", format->NumSparseLayers()},
        {"dense_dtype", KvDTypeName(format->dense_dtype)},
        {"latent_dtype", format->sals ? KvDTypeName(format->sals->latent_dtype) : "none"},
        {"contexts", nlohmann::json::array()}};
    std::string per_token, ratio, fit;
    for (int64_t context : kContexts) {
      const double at = bytes.PerTokenAt(context);
      const double x = static_cast<double>(bytes.dense_fp16_per_token) / at;
      const int64_t n = bytes.ContextsThatFit(context, budget);
      absl::StrAppend(&per_token, absl::StrFormat(" %9.0f", at));
      absl::StrAppend(&ratio, absl::StrFormat(" %6.2f", x));
      absl::StrAppend(&fit, absl::StrFormat(" %7d", n));
      row["contexts"].push_back(
          {{"tokens", context}, {"bytes_per_token", at}, {"compression", x}, {"fit", n}});
    }
    std::printf("%-21s |%s |%s |%s | %s\n", preset, per_token.c_str(), ratio.c_str(), fit.c_str(),
                format->sals ? DenseLayers(*format).c_str() : "all");
    json["presets"].push_back(std::move(row));
  }

  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (json_path.empty()) return absl::OkStatus();
  std::ofstream out(json_path, std::ios::trunc);
  out << json.dump(2) << "\n";
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", json_path));
  return absl::OkStatus();
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-capacity --shape llama-2-7b|llama-3.1-8b|tiny|DIR [--gib 120] [--json FILE]");
  sals::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = sals::Capacity();
  if (!status.ok()) {
    std::fprintf(stderr, "sals-capacity: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
