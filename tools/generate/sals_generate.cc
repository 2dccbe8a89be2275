// sals-generate: prints a continuation of a prompt as it is generated, through the engine the
// server runs (so every KV format, attention policy and backend of the server's configuration is
// here too, and sampling happens where the backend does it: on the device for CUDA). A model
// directory (HF format) or a synthetic model (random weights for a named shape, no files).
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/runtime/engine.h"
#include "engine/runtime/engine_config.h"
#include "engine/runtime/request.h"
#include "tools/common/flag_names.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::string, synthetic, "",
          "instead of --model: a named shape with random weights (tiny, llama-2-7b, llama-3.1-8b)");
ABSL_FLAG(std::string, prompt, "Once upon a time", "prompt text (with --model)");
ABSL_FLAG(int, prompt_len, 32, "random prompt length in tokens (with --synthetic)");
ABSL_FLAG(int, max_tokens, 64, "tokens to generate");
ABSL_FLAG(bool, ignore_eos, false, "keep generating after an end-of-sequence token");
ABSL_FLAG(float, temperature, 0.0f, "0 = greedy");
ABSL_FLAG(int, top_k, 0, "0 = disabled");
ABSL_FLAG(float, top_p, 1.0f, "nucleus sampling mass");
ABSL_FLAG(float, min_p, 0.0f, "minimum probability relative to the most likely token");
ABSL_FLAG(float, repetition_penalty, 1.0f, "CTRL-style repetition penalty");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed (and the synthetic weights' and prompt's)");
ABSL_FLAG(std::string, backend, "cpu", "cpu (fp32 reference) or cuda (libsals_backend_cuda.so)");
ABSL_FLAG(std::string, cuda_dtype, "f16", "with --backend cuda: f16 or bf16 weights/activations");
ABSL_FLAG(int, cpu_threads, 0, "with --backend cpu: OpenMP threads (0 = every core)");
ABSL_FLAG(std::string, kv_format, "sals-25", "KV cache: dense, sals-25 or sals-12.5");
ABSL_FLAG(double, kv_memory_gib, 0.25, "KV pool size");
ABSL_FLAG(int, block_size, 16, "KV cache block size in tokens");
ABSL_FLAG(double, topk_fraction, 0.125, "SALS: selected tokens as a fraction of the context");
ABSL_FLAG(int, token_budget, 0, "SALS: > 0 selects exactly this many tokens instead");
ABSL_FLAG(bool, select_all, false, "SALS: attend every cached token (no top-k)");

namespace sals {
namespace {

// Prints chunks as they come (on the engine's thread) and hands the completion back.
class PrintingSink : public RequestSink {
 public:
  explicit PrintingSink(bool has_text) : has_text_(has_text) {}

  void OnChunk(TokenChunk chunk) override {
    if (has_text_) {
      std::cout << chunk.text << std::flush;
    } else {
      for (int32_t t : chunk.token_ids) std::cout << t << ' ';
      std::cout << std::flush;
    }
  }
  void OnComplete(const Completion& completion) override {
    std::lock_guard<std::mutex> lock(mu_);
    completion_ = completion;
    done_ = true;
    cv_.notify_all();
  }
  Completion Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
    return completion_;
  }

 private:
  const bool has_text_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  Completion completion_;
};

absl::Status Generate() {
  EngineConfig config;
  config.model_path = absl::GetFlag(FLAGS_model);
  config.synthetic_model = absl::GetFlag(FLAGS_synthetic);
  if (config.model_path.empty() == config.synthetic_model.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model and --synthetic");
  }
  config.synthetic_seed = absl::GetFlag(FLAGS_seed);
  config.backend = absl::GetFlag(FLAGS_backend);
  config.cuda_dtype = absl::GetFlag(FLAGS_cuda_dtype);
  config.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  config.kv_format = absl::GetFlag(FLAGS_kv_format);
  config.kv_memory_gib = absl::GetFlag(FLAGS_kv_memory_gib);
  config.block_size = absl::GetFlag(FLAGS_block_size);
  config.default_policy.topk_fraction = absl::GetFlag(FLAGS_topk_fraction);
  config.default_policy.token_budget = absl::GetFlag(FLAGS_token_budget);
  config.default_policy.select_all = absl::GetFlag(FLAGS_select_all);
  config.max_num_seqs = 1;
  config.enable_prefix_caching = false;
  auto engine = Engine::Create(config, nullptr);
  if (!engine.ok()) return engine.status();

  GenerationRequest request;
  const Tokenizer* tokenizer = (*engine)->tokenizer();
  if (tokenizer != nullptr) {
    request.prompt = tokenizer->Encode(absl::GetFlag(FLAGS_prompt), /*add_bos=*/true);
    std::cout << absl::GetFlag(FLAGS_prompt) << std::flush;
  } else {
    std::mt19937 rng(static_cast<uint32_t>(absl::GetFlag(FLAGS_seed)));
    request.prompt.resize(absl::GetFlag(FLAGS_prompt_len));
    for (int32_t& t : request.prompt)
      t = static_cast<int32_t>(rng() % (*engine)->info().config.vocab_size);
  }
  request.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  request.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  SamplingParams& params = request.sampling;
  params.temperature = absl::GetFlag(FLAGS_temperature);
  params.top_k = absl::GetFlag(FLAGS_top_k);
  params.top_p = absl::GetFlag(FLAGS_top_p);
  params.min_p = absl::GetFlag(FLAGS_min_p);
  params.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  params.seed = absl::GetFlag(FLAGS_seed);

  auto sink = std::make_shared<PrintingSink>(tokenizer != nullptr);
  const size_t prompt_tokens = request.prompt.size();
  if (absl::Status s = (*engine)->Submit(std::move(request), sink); !s.ok()) return s;
  const Completion done = sink->Wait();
  std::cout << std::endl;
  const double decode_s = (done.total_ms - done.ttft_ms) / 1e3;
  std::fprintf(
      stderr,
      "[sals-generate] %s, %s KV: prompt %zu tokens, first token after %.1f ms; %d "
      "tokens generated (%s), decode %.1f tok/s\n",
      config.backend.c_str(), config.kv_format.c_str(), prompt_tokens, done.ttft_ms,
      done.completion_tokens, std::string(FinishReasonName(done.reason)).c_str(),
      done.completion_tokens > 1 && decode_s > 0 ? (done.completion_tokens - 1) / decode_s : 0.0);
  return absl::OkStatus();
}

}  // namespace
}  // namespace sals

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sals-generate --model DIR --prompt TEXT [--max-tokens N] [--backend cpu|cuda] "
      "[--kv-format dense|sals-25|sals-12.5]\n"
      "  or: sals-generate --synthetic tiny|llama-2-7b|llama-3.1-8b [--prompt-len N] ...");
  sals::NormalizeFlagNames(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = sals::Generate();
  if (!status.ok()) {
    std::fprintf(stderr, "sals-generate: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
