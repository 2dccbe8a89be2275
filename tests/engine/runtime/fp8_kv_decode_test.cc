// kv_cache.dtype=fp8_e4m3 end to end on the CPU reference with models/default (the trained
// demo model): fp8 storage moves the next-token distribution of a greedy continuation much less
// than SALS-12.5%'s selection does, and changes the greedy token only at near ties. Label heavy:
// five 16-step runs of the model, 2 s in Release.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "engine/runtime/model_setup.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace sals {
namespace {

constexpr char kPrompt[] =
    "In the beginning God created the heaven and the earth. And the earth was without form, and "
    "void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face "
    "of the waters. And God said, Let there be light: and there was light. And God saw the light, "
    "that it was good: and God divided the light from the darkness.";
constexpr int kSteps = 16;

struct DecodeRun {
  std::vector<int32_t> tokens;             // greedy continuation (teacher-forced runs: the input)
  std::vector<std::vector<float>> logits;  // per decode step
};

// Prefills `prompt` in one step, then decodes kSteps tokens one at a time: its own greedy picks,
// or those of `forced` (so that every format is compared on the same positions).
DecodeRun Decode(const std::string& format, const std::vector<int32_t>& prompt,
                 const std::vector<int32_t>* forced) {
  EngineConfig c;
  c.model_path = std::string(SALS_DEFAULT_MODEL_DIR);
  c.kv_format = format;
  c.block_size = 16;
  c.num_blocks = 16;
  c.max_num_seqs = 1;
  c.cpu_threads = 1;
  auto model = LoadModel(c);
  EXPECT_TRUE(model.ok()) << model.status();
  DecodeRun run;
  if (!model.ok()) return run;
  const int vocab = model->config.vocab_size;
  std::vector<int32_t> table(c.num_blocks);
  std::iota(table.begin(), table.end(), 0);
  SalsPolicy policy;  // few sinks and recent tokens, so the decode steps select
  policy.sink_tokens = 4;
  policy.recent_tokens = 8;
  policy.topk_fraction = 0.25;
  std::vector<int32_t> next = prompt;
  int64_t context = 0;
  for (int step = 0; step <= kSteps; ++step) {
    ForwardBatch batch;
    SequenceSlice slice;
    slice.num_tokens = static_cast<int32_t>(next.size());
    slice.context_len = context;
    slice.block_table = table;
    slice.exact_slot = 0;
    slice.policy = policy;
    batch.seqs.push_back(slice);
    batch.tokens = next;
    ForwardOutput out;
    const absl::Status st = model->backend->Forward(batch, &out);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return run;
    context += slice.num_tokens;
    if (step == kSteps) break;
    run.logits.emplace_back(out.logits.end() - vocab, out.logits.end());
    const auto& row = run.logits.back();
    const auto pick = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
    run.tokens.push_back(forced ? (*forced)[step] : pick);
    next = {run.tokens.back()};
  }
  return run;
}

int32_t Argmax(const std::vector<float>& row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

// KL(p_want || p_got) in nats of the softmax of two logit rows.
double Kl(const std::vector<float>& want, const std::vector<float>& got) {
  auto log_softmax = [](const std::vector<float>& x) {
    const double m = *std::max_element(x.begin(), x.end());
    double z = 0.0;
    for (float v : x) z += std::exp(v - m);
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] - m - std::log(z);
    return out;
  };
  const std::vector<double> lw = log_softmax(want), lg = log_softmax(got);
  double kl = 0.0;
  for (size_t i = 0; i < lw.size(); ++i) kl += std::exp(lw[i]) * (lw[i] - lg[i]);
  return kl;
}

// Mean KL over the decode steps. With check_top, the top token must agree at every step where
// the reference's top-2 margin is at least kMargin logits (measured: fp8 flips it only at
// margins of 0.10 and 0.06; SALS-12.5% itself flips it at margins of 1.5 and 1.05).
constexpr float kMargin = 0.5f;
double MeanKl(const DecodeRun& want, const DecodeRun& got, const std::string& what,
              bool check_top) {
  double sum = 0.0;
  for (size_t s = 0; s < want.logits.size(); ++s) {
    sum += Kl(want.logits[s], got.logits[s]);
    std::vector<float> top = want.logits[s];
    std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<float>());
    if (check_top && top[0] - top[1] >= kMargin) {
      EXPECT_EQ(Argmax(got.logits[s]), Argmax(want.logits[s])) << what << " step " << s;
    }
  }
  return sum / static_cast<double>(want.logits.size());
}

TEST(Fp8KvDecodeTest, GreedyDecodeOfTheDefaultModel) {
  auto tokenizer = LoadTokenizer(SALS_DEFAULT_MODEL_DIR);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::vector<int32_t> prompt = (*tokenizer)->Encode(kPrompt, true);
  ASSERT_GT(prompt.size(), 40u);
  ASSERT_LE(prompt.size() + kSteps, 256u);

  const DecodeRun dense = Decode("dense", prompt, nullptr);
  ASSERT_EQ(dense.tokens.size(), static_cast<size_t>(kSteps));
  // Free-running greedy decode with fp8 K/V: the same first 12 tokens (measured: 14; the 15th is
  // a near tie, top-2 margin 0.1 logit).
  const DecodeRun dense_fp8_free = Decode("dense-fp8", prompt, nullptr);
  ASSERT_EQ(dense_fp8_free.tokens.size(), static_cast<size_t>(kSteps));
  EXPECT_TRUE(
      std::equal(dense.tokens.begin(), dense.tokens.begin() + 12, dense_fp8_free.tokens.begin()));

  // The same continuation (dense's tokens) through every format, compared step by step.
  const DecodeRun dense_fp8 = Decode("dense-fp8", prompt, &dense.tokens);
  const DecodeRun sals = Decode("sals-12.5", prompt, &dense.tokens);
  const DecodeRun sals_fp8 = Decode("sals-12.5-fp8", prompt, &dense.tokens);
  ASSERT_EQ(sals_fp8.logits.size(), static_cast<size_t>(kSteps));
  const double kl_dense = MeanKl(dense, dense_fp8, "dense-fp8 vs dense", true);
  const double kl_sals = MeanKl(sals, sals_fp8, "sals-12.5-fp8 vs sals-12.5", true);
  const double kl_selection = MeanKl(dense, sals, "sals-12.5 vs dense", false);
  std::printf(
      "mean KL over %d steps: dense-fp8 vs dense %.4f, sals-12.5-fp8 vs sals-12.5 %.4f, "
      "sals-12.5 vs dense %.4f nats\n",
      kSteps, kl_dense, kl_sals, kl_selection);
  // fp8 is in effect (the distribution moves) ...
  EXPECT_GT(kl_dense, 0.0);
  EXPECT_GT(kl_sals, 0.0);
  // ... by little. e4m3 keeps 3 mantissa bits (relative error <= 2^-4 per element), which moves
  // this model's logits by 3-5% (relative L2); measured mean KL 0.0066 (dense) and 0.037 (SALS,
  // where a moved latent score may also change a selected token). Bounds: 0.05 nats, and under
  // half of what SALS-12.5%'s selection itself costs (measured 0.20).
  EXPECT_LT(kl_dense, 0.05);
  EXPECT_LT(kl_sals, 0.05);
  EXPECT_LT(kl_dense, 0.5 * kl_selection);
  EXPECT_LT(kl_sals, 0.5 * kl_selection);
}

}  // namespace
}  // namespace sals
