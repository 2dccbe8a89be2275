// sals-generate: prints a continuation of a prompt as it is generated, on one sequence, with the
// CPU reference backend or the CUDA backend (loaded at run time). A model directory (HF format) or
// a synthetic model (random weights for a named shape, no files) can be used.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cuda_loader.h"
#include "engine/model/config.h"
#include "engine/model/weight_source.h"
#include "engine/sampling/sampler.h"
#include "engine/tokenizer/tokenizer.h"
#include "tools/common/flag_names.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::string, synthetic, "",
          "random weights for a named shape instead of --model: tiny, llama-2-7b, llama-3.1-8b");
ABSL_FLAG(std::string, prompt, "Once upon a time", "prompt text (with --model)");
ABSL_FLAG(int, prompt_len, 32, "random prompt length in tokens (with --synthetic)");
ABSL_FLAG(int, max_tokens, 64, "tokens to generate");
ABSL_FLAG(bool, ignore_eos, false, "keep generating after an end-of-sequence token");
ABSL_FLAG(float, temperature, 0.0f, "0 = greedy");
ABSL_FLAG(int, top_k, 0, "0 = disabled");
ABSL_FLAG(float, top_p, 1.0f, "nucleus sampling mass");
ABSL_FLAG(float, min_p, 0.0f, "minimum probability relative to the most likely token");
ABSL_FLAG(float, repetition_penalty, 1.0f, "CTRL-style repetition penalty");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed");
ABSL_FLAG(int, block_size, 16, "KV cache block size in tokens");
ABSL_FLAG(std::string, backend, "cpu",
          "cpu (fp32 reference) or cuda (libsals_backend_cuda.so next to this program or on "
          "LD_LIBRARY_PATH)");
ABSL_FLAG(std::string, cuda_dtype, "f16", "with --backend cuda: f16 or bf16 weights/activations");

namespace sals {
namespace {

struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
  std::unique_ptr<Tokenizer> tokenizer;  // null for synthetic models
};

absl::StatusOr<LoadedModel> LoadModel() {
  LoadedModel m;
  const std::string dir = absl::GetFlag(FLAGS_model);
  const std::string synthetic = absl::GetFlag(FLAGS_synthetic);
  if (dir.empty() == synthetic.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model and --synthetic");
  }
  if (!synthetic.empty()) {
    auto config = SyntheticModelConfig(synthetic);
    if (!config.ok()) return config.status();
    m.config = *config;
    m.weights = MakeRandomWeights(m.config, absl::GetFlag(FLAGS_seed));
    return m;
  }
  auto config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  m.config = *config;
  auto weights = OpenSafetensorsWeights(dir);
  if (!weights.ok()) return weights.status();
  m.weights = std::move(*weights);
  auto tokenizer = LoadTokenizer(dir);
  if (!tokenizer.ok()) return tokenizer.status();
  m.tokenizer = std::move(*tokenizer);
  return m;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const ModelConfig& config,
                                                       const WeightSource& weights,
                                                       const KvPoolConfig& pool) {
  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend == "cpu") return CreateCpuBackend(config, weights, pool);
  if (backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend must be cpu or cuda, not '", backend, "'"));
  }
  const std::string dtype = absl::GetFlag(FLAGS_cuda_dtype);
  if (dtype != "f16" && dtype != "bf16") {
    return absl::InvalidArgumentError(
        absl::StrCat("--cuda_dtype must be f16 or bf16, not '", dtype, "'"));
  }
  CudaBackendOptions options;
  options.dtype = dtype == "f16" ? DType::kF16 : DType::kBF16;
  return LoadCudaBackend(config, weights, pool, options);
}

absl::Status Generate() {
  auto model = LoadModel();
  if (!model.ok()) return model.status();
  const ModelConfig& config = model->config;

  std::vector<int32_t> prompt;
  if (model->tokenizer) {
    prompt = model->tokenizer->Encode(absl::GetFlag(FLAGS_prompt), /*add_bos=*/true);
  } else {
    std::mt19937 rng(static_cast<uint32_t>(absl::GetFlag(FLAGS_seed)));
    prompt.resize(absl::GetFlag(FLAGS_prompt_len));
    for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % config.vocab_size);
  }
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  const int total = static_cast<int>(prompt.size()) + max_tokens;
  if (prompt.empty() || max_tokens < 1 || total > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", prompt.size(), " tokens) + max_tokens (", max_tokens,
        ") must be positive and within max_position_embeddings ", config.max_position_embeddings));
  }

  SamplingParams params;
  params.temperature = absl::GetFlag(FLAGS_temperature);
  params.top_k = absl::GetFlag(FLAGS_top_k);
  params.top_p = absl::GetFlag(FLAGS_top_p);
  params.min_p = absl::GetFlag(FLAGS_min_p);
  params.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  params.seed = absl::GetFlag(FLAGS_seed);
  if (absl::Status s = ValidateSamplingParams(params); !s.ok()) return s;

  const int block_size = absl::GetFlag(FLAGS_block_size);
  if (block_size < 1) return absl::InvalidArgumentError("--block_size must be positive");
  KvPoolConfig pool;
  pool.num_blocks = (total + block_size - 1) / block_size;
  pool.block_size = block_size;
  auto backend = CreateBackend(config, *model->weights, pool);
  if (!backend.ok()) return backend.status();

  SequenceSampler sampler(params, absl::GetFlag(FLAGS_seed));
  std::optional<IncrementalDetokenizer> detok;
  if (model->tokenizer) {
    detok.emplace(*model->tokenizer, prompt, /*skip_special=*/true);
    std::cout << absl::GetFlag(FLAGS_prompt) << std::flush;
  }
  std::vector<int32_t> table(pool.num_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::vector<int32_t> output;
  ForwardBatch batch;
  batch.tokens = prompt;
  SequenceSlice slice;
  slice.num_tokens = static_cast<int32_t>(prompt.size());
  slice.block_table = table;
  batch.seqs.push_back(slice);

  const absl::Time start = absl::Now();
  absl::Duration prefill_time;
  ForwardOutput out;
  for (int step = 0; step < max_tokens; ++step) {
    if (absl::Status s = (*backend)->Forward(batch, &out); !s.ok()) return s;
    if (step == 0) prefill_time = absl::Now() - start;
    const SampleResult r =
        sampler.Sample(std::span<float>(out.logits.data(), config.vocab_size), prompt, output);
    output.push_back(r.token);
    if (detok) {
      std::cout << detok->Append(r.token) << std::flush;
    } else {
      std::cout << r.token << ' ' << std::flush;
    }
    const std::vector<int> eos = config.eos_token_ids;
    if (!absl::GetFlag(FLAGS_ignore_eos) && std::find(eos.begin(), eos.end(), r.token) != eos.end())
      break;
    batch.seqs[0].context_len += batch.seqs[0].num_tokens;
    batch.seqs[0].num_tokens = 1;
    batch.tokens.assign(1, r.token);
  }
  if (detok) std::cout << detok->Flush();
  std::cout << std::endl;
  const double decode_s = absl::ToDoubleSeconds(absl::Now() - start - prefill_time);
  std::fprintf(stderr,
               "[sals-generate] prompt %zu tokens, prefill %.1f ms (%.0f tok/s); "
               "%zu tokens generated, decode %.1f tok/s\n",
               prompt.size(), absl::ToDoubleMilliseconds(prefill_time),
               prompt.size() / absl::ToDoubleSeconds(prefill_time), output.size(),
               output.size() > 1 ? (output.size() - 1) / decode_s : 0.0);
  return absl::OkStatus();
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-generate --model DIR --prompt TEXT [--max-tokens N] [--backend cpu|cuda]\n"
      "  or: sals-generate --synthetic tiny|llama-2-7b|llama-3.1-8b [--prompt-len N] "
      "[--backend cpu|cuda]");
  sals::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = sals::Generate();
  if (!status.ok()) {
    std::fprintf(stderr, "sals-generate: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
