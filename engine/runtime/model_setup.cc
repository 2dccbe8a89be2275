#include "engine/runtime/model_setup.h"

#include <filesystem>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cuda_loader.h"
#include "engine/model/weight_source.h"
#include "engine/sals/basis.h"

namespace sals {

absl::StatusOr<KvCacheFormat> ResolveKvFormat(const EngineConfig& config,
                                              const ModelConfig& model) {
  auto format = MakeKvCacheFormat(model, config.kv_format);
  if (!format.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache.format: ", format.status().message()));
  }
  if (config.dense_layers) {
    if (!format->sals) {
      return absl::InvalidArgumentError("kv_cache.dense_layers needs a SALS format");
    }
    format->dense_layer.assign(model.num_layers, false);
    for (int l : *config.dense_layers) {
      if (l < 0 || l >= model.num_layers) {
        return absl::InvalidArgumentError(absl::StrCat("kv_cache.dense_layers: layer ", l,
                                                       " outside [0, ", model.num_layers, ")"));
      }
      format->dense_layer[l] = true;
    }
  }
  for (const auto& [key, value, dense, latent] :
       {std::tuple{"kv_cache.dtype", &config.kv_dtype, true, true},
        std::tuple{"kv_cache.dense_dtype", &config.dense_dtype, true, false},
        std::tuple{"kv_cache.latent_dtype", &config.latent_dtype, false, true}}) {
    auto dtype = ParseKvDType(*value);
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(key, ": ", dtype.status().message()));
    }
    if (!dtype->has_value()) continue;
    if (dense) format->dense_dtype = **dtype;
    if (latent && format->sals) format->sals->latent_dtype = **dtype;
    if (latent && !dense && !format->sals) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " needs a SALS format (kv_cache.format sals-25 or sals-12.5)"));
    }
  }
  if (format->sals) {
    SalsStorage& s = *format->sals;
    if (config.value_bits) s.values.bits = *config.value_bits;
    if (config.value_group_size) s.values.group_size = *config.value_group_size;
    if (config.sink_tokens) s.sink_tokens = *config.sink_tokens;
    if (config.recent_tokens) s.recent_tokens = *config.recent_tokens;
  }
  if (absl::Status st = ValidateKvCacheFormat(model, *format); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache: ", st.message()));
  }
  return *format;
}

absl::StatusOr<LoadedModel> LoadModel(const EngineConfig& config) {
  LoadedModel m;
  std::unique_ptr<WeightSource> weights;
  if (config.model_path.empty() == config.synthetic_model.empty()) {
    return absl::InvalidArgumentError("set exactly one of model.path and model.synthetic");
  }
  if (!config.synthetic_model.empty()) {
    auto model = SyntheticModelConfig(config.synthetic_model);
    if (!model.ok()) return model.status();
    m.config = *model;
    m.name = "synthetic:" + config.synthetic_model;
    weights = MakeRandomWeights(m.config, config.synthetic_seed);
  } else {
    auto model = LoadModelConfig(config.model_path);
    if (!model.ok()) return model.status();
    m.config = *model;
    m.name = std::filesystem::path(config.model_path).lexically_normal().filename().string();
    auto w = OpenSafetensorsWeights(config.model_path);
    if (!w.ok()) return w.status();
    weights = std::move(*w);
    auto tokenizer = LoadTokenizer(config.model_path);
    if (!tokenizer.ok()) return tokenizer.status();
    m.tokenizer = std::move(*tokenizer);
  }

  auto format = ResolveKvFormat(config, m.config);
  if (!format.ok()) return format.status();
  if (config.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache.block_size must be positive, got ", config.block_size));
  }
  if (config.max_num_seqs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler.max_num_seqs must be positive, got ", config.max_num_seqs));
  }
  m.kv_bytes = ComputeKvBytes(m.config, *format, config.block_size);
  m.pool.block_size = config.block_size;
  m.pool.format = *format;
  m.pool.max_sequences = format->sals ? config.max_num_seqs : 0;
  if (config.num_blocks > 0) {
    m.pool.num_blocks = config.num_blocks;
  } else {
    // The exact sink/recent copies of every possible sequence come off the top.
    const double bytes = config.kv_memory_gib * (1ull << 30) -
                         static_cast<double>(m.kv_bytes.exact_per_sequence) * m.pool.max_sequences;
    m.pool.num_blocks = static_cast<int>(bytes / static_cast<double>(m.kv_bytes.per_block));
    if (m.pool.num_blocks < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kv_cache.memory_gib ", config.kv_memory_gib, " holds no block of ", m.kv_bytes.per_block,
          " bytes (after exact copies for ", m.pool.max_sequences, " sequences)"));
    }
  }

  CpuBackendOptions options;
  options.num_threads = config.cpu_threads;
  if (format->sals) {
    if (!config.synthetic_model.empty()) {
      // No calibration data for random weights: the leading coordinates serve as the basis.
      options.basis = IdentityBasis(m.config);
    } else {
      const std::filesystem::path file =
          config.calibration_file.empty()
              ? std::filesystem::path(config.model_path) / kCalibrationFileName
              : std::filesystem::path(config.calibration_file);
      std::error_code ec;
      if (!std::filesystem::exists(file, ec)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "kv_cache.format '", config.kv_format, "' needs the model's SALS calibration, and ",
            file.string(), " does not exist. Either calibrate once: sals-calibrate --model ",
            config.model_path, " --data TEXT_FILE",
            config.calibration_file.empty() ? "" : absl::StrCat(" --out ", file.string()),
            " (TEXT_FILE: general text of the model's domain), or serve without SALS: "
            "kv_cache.format=dense"));
      }
      auto basis = LoadSalsBasis(file, m.config, format->sals->rank);
      if (!basis.ok()) return basis.status();
      options.basis = std::move(*basis);
    }
  }
  if (config.backend == "cuda") {
    CudaBackendOptions cuda_options;
    if (config.cuda_dtype != "f16" && config.cuda_dtype != "bf16") {
      return absl::InvalidArgumentError(
          absl::StrCat("backend.cuda_dtype must be f16 or bf16, got '", config.cuda_dtype, "'"));
    }
    cuda_options.dtype = config.cuda_dtype == "bf16" ? DType::kBF16 : DType::kF16;
    cuda_options.sals_basis = std::move(options.basis);
    auto backend = LoadCudaBackend(m.config, *weights, m.pool, cuda_options);
    if (!backend.ok()) return backend.status();
    m.backend = std::move(*backend);
    return m;
  }
  if (config.backend != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend.type must be cpu or cuda, got '", config.backend, "'"));
  }
  auto backend = CreateCpuBackend(m.config, *weights, m.pool, std::move(options));
  if (!backend.ok()) return backend.status();
  m.backend = std::move(*backend);
  return m;
}

}  // namespace sals
