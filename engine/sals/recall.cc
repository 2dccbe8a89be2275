#include "engine/sals/recall.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/cpu_ops.h"
#include "engine/sals/selection.h"

namespace sals {
namespace {

struct Sample {
  double recall = 0.0;
  double selected = 0.0;
  double random = 0.0;
};

// What one layer needs, post-RoPE copies and latent keys made once.
struct LayerInputs {
  const float* q_pre = nullptr;  // the recording's
  std::vector<float> q_post, k_post;
  std::vector<float> latent;  // tokens x score_dims: the scoring prefix of U^T k_pre
  const float* basis = nullptr;
};

LayerInputs PrepareLayer(const ModelConfig& c, const SalsBasis& basis, const SalsPolicy& policy,
                         const std::vector<double>& inv_freq, const QueryKeyRecorder& recorder,
                         int layer) {
  const int qw = c.q_width(), kvw = c.kv_width(), sd = policy.score_dims;
  const int64_t tokens = recorder.tokens(layer);
  LayerInputs in;
  in.q_pre = recorder.queries(layer).data();
  in.q_post = recorder.queries(layer);
  in.k_post = recorder.keys(layer);
  in.basis = basis.layers[layer].data();
  in.latent.assign(tokens * sd, 0.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* k = recorder.keys(layer).data() + t * kvw;
    for (int i = 0; i < kvw; ++i) {
      const float* row = in.basis + static_cast<int64_t>(i) * basis.rank;
      for (int j = 0; j < sd; ++j) in.latent[t * sd + j] += row[j] * k[i];
    }
    cpu::ApplyRope(in.q_post.data() + t * qw, c.num_heads, c.head_dim, inv_freq, t);
    cpu::ApplyRope(in.k_post.data() + t * kvw, c.num_kv_heads, c.head_dim, inv_freq, t);
  }
  return in;
}

// Marks the positions the policy attends to at decode position p (token p itself included), one
// mask per selection list (selection.h: shared, or one per KV head).
std::vector<std::vector<char>> SelectedPositions(const ModelConfig& c, const SalsBasis& basis,
                                                 const SalsPolicy& policy, const LayerInputs& in,
                                                 int64_t p, const SelectionPlan& plan) {
  std::vector<char> fixed(p + 1, 0);
  std::fill(fixed.begin(), fixed.begin() + plan.sink_end, 1);
  std::fill(fixed.begin() + plan.recent_begin, fixed.end(), 1);
  const int64_t middle = plan.recent_begin - plan.sink_end;
  if (plan.topk == middle) {
    std::fill(fixed.begin() + plan.sink_end, fixed.begin() + plan.recent_begin, 1);
    return {fixed};
  }
  if (plan.topk == 0) return {fixed};
  // Latent queries as the backend forms them (selection.h).
  const int sd = policy.score_dims;
  const int lists = SelectionLists(c, policy.selection);
  const std::vector<float> q_latent =
      LatentQueries(c, std::span(in.basis, static_cast<size_t>(basis.width) * basis.rank),
                    basis.rank, sd, in.q_pre + p * c.q_width(), policy.selection);
  std::vector<std::vector<char>> selected(lists, fixed);
  std::vector<float> scores(middle);
  for (int l = 0; l < lists; ++l) {
    const float* q = q_latent.data() + static_cast<int64_t>(l) * sd;
    for (int64_t m = 0; m < middle; ++m) {
      const float* latent = in.latent.data() + (plan.sink_end + m) * sd;
      float acc = 0.0f;
      for (int j = 0; j < sd; ++j) acc += q[j] * latent[j];
      scores[m] = acc;
    }
    for (int64_t m : SelectTopK(scores, plan.topk)) selected[l][plan.sink_end + m] = 1;
  }
  return selected;
}

Sample MeasurePosition(const ModelConfig& c, const SalsBasis& basis, const SalsPolicy& policy,
                       const LayerInputs& in, int64_t p) {
  const SelectionPlan plan = PlanSelection(policy, p);
  const std::vector<std::vector<char>> lists = SelectedPositions(c, basis, policy, in, p, plan);
  const int64_t context = p + 1;
  const int64_t middle = plan.recent_begin - plan.sink_end;
  const int kvw = c.kv_width(), group = c.group_size();
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  std::vector<double> logits(context);
  Sample s;
  for (int h = 0; h < c.num_heads; ++h) {
    const std::vector<char>& selected = lists[lists.size() == 1 ? 0 : h / group];
    const float* q = in.q_post.data() + p * c.q_width() + h * c.head_dim;
    const float* k = in.k_post.data() + (h / group) * c.head_dim;
    double max_logit = -INFINITY;
    for (int64_t j = 0; j < context; ++j) {
      double dot = 0.0;
      for (int i = 0; i < c.head_dim; ++i) dot += static_cast<double>(q[i]) * k[j * kvw + i];
      logits[j] = dot * scale;
      max_logit = std::max(max_logit, logits[j]);
    }
    double total = 0.0, kept = 0.0, middle_mass = 0.0;
    for (int64_t j = 0; j < context; ++j) {
      const double w = std::exp(logits[j] - max_logit);
      total += w;
      if (selected[j]) kept += w;
      if (j >= plan.sink_end && j < plan.recent_begin) middle_mass += w;
    }
    const double exact = total - middle_mass;
    const double random_kept =
        exact + (middle > 0 ? middle_mass * static_cast<double>(plan.topk) / middle : 0.0);
    s.recall += kept / total;
    s.random += random_kept / total;
  }
  s.recall /= c.num_heads;
  s.random /= c.num_heads;
  // Every list attends as many tokens.
  s.selected = static_cast<double>(std::count(lists[0].begin(), lists[0].end(), 1)) / context;
  return s;
}

RecallStats Summarize(std::span<const Sample> samples) {
  RecallStats st;
  st.samples = static_cast<int64_t>(samples.size());
  for (const Sample& s : samples) {
    st.mean += s.recall;
    st.min = std::min(st.min, s.recall);
    st.selected_fraction += s.selected;
    st.random_recall += s.random;
  }
  if (st.samples > 0) {
    st.mean /= st.samples;
    st.selected_fraction /= st.samples;
    st.random_recall /= st.samples;
  }
  return st;
}

}  // namespace

QueryKeyRecorder::QueryKeyRecorder(const ModelConfig& config)
    : q_width_(config.q_width()),
      kv_width_(config.kv_width()),
      queries_(config.num_layers),
      keys_(config.num_layers) {}

void QueryKeyRecorder::Observe(int layer, std::span<const float> qkv_pre_rope, int64_t tokens) {
  const int64_t row = q_width_ + 2 * int64_t{kv_width_};
  for (int64_t t = 0; t < tokens; ++t) {
    const float* src = qkv_pre_rope.data() + t * row;
    queries_[layer].insert(queries_[layer].end(), src, src + q_width_);
    keys_[layer].insert(keys_[layer].end(), src + q_width_, src + q_width_ + kv_width_);
  }
}

int64_t QueryKeyRecorder::tokens(int layer) const {
  return static_cast<int64_t>(keys_[layer].size()) / kv_width_;
}

absl::StatusOr<RecallReport> MeasureRecall(const ModelConfig& config, const SalsBasis& basis,
                                           const QueryKeyRecorder& recorder,
                                           const RecallOptions& options) {
  if (basis.width != config.kv_width() ||
      static_cast<int>(basis.layers.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "basis of width ", basis.width, " for ", basis.layers.size(), " layers; the model has ",
        "kv_width ", config.kv_width(), " and ", config.num_layers, " layers"));
  }
  SalsStorage storage;
  storage.rank = basis.rank;
  storage.sink_tokens = options.policy.sink_tokens;
  storage.recent_tokens = options.policy.recent_tokens;
  if (absl::Status s = ValidateSalsPolicy(options.policy, storage); !s.ok()) return s;
  const SalsPolicy policy = options.policy.Resolved(storage);

  if (!options.layer_score_dims.empty()) {
    if (static_cast<int>(options.layer_score_dims.size()) != config.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer score dims: ", options.layer_score_dims.size(), " for ",
                       config.num_layers, " layers"));
    }
  }
  std::vector<int> layers = options.layers;
  if (layers.empty()) {
    for (int l = 0; l < config.num_layers; ++l) layers.push_back(l);
  }
  const int64_t tokens = recorder.tokens(0);
  for (int l : layers) {
    if (l < 0 || l >= config.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, " outside [0, ", config.num_layers, ")"));
    }
    if (!options.layer_score_dims.empty() &&
        (options.layer_score_dims[l] < 1 || options.layer_score_dims[l] > basis.rank)) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": score dims must be in [1, ",
                                                     basis.rank, "], got ",
                                                     options.layer_score_dims[l]));
    }
    if (recorder.tokens(l) != tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, " recorded ", recorder.tokens(l), " tokens, layer 0 ", tokens));
    }
  }
  if (options.start < 0 || options.start >= tokens) {
    return absl::InvalidArgumentError(absl::StrCat("start position ", options.start,
                                                   " leaves nothing to measure in ", tokens,
                                                   " recorded tokens"));
  }

  const std::vector<double> inv_freq = RopeInverseFrequencies(config);
  RecallReport report;
  std::vector<Sample> all;
  for (int l : layers) {
    SalsPolicy layer_policy = policy;
    if (!options.layer_score_dims.empty()) layer_policy.score_dims = options.layer_score_dims[l];
    const LayerInputs in = PrepareLayer(config, basis, layer_policy, inv_freq, recorder, l);
    std::vector<Sample> samples(tokens - options.start);
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t p = options.start; p < tokens; ++p) {
      samples[p - options.start] = MeasurePosition(config, basis, layer_policy, in, p);
    }
    report.layers.push_back(LayerRecall{l, Summarize(samples)});
    all.insert(all.end(), samples.begin(), samples.end());
  }
  report.overall = Summarize(all);
  return report;
}

}  // namespace sals
