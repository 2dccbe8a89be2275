// Compiled with -fno-trapping-math (so the exp loop vectorizes; nothing here reads FP exception
// flags) and -ffp-contract=off (so no platform fuses the exp polynomial differently): see
// CMakeLists.txt.
#include "engine/sampling/logits_processors.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>

#include "Eigen/Core"

namespace sals {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

// Relative log-weights below this (weights < ~1.6e-38 of the max, about float's smallest normal)
// count as zero; it also turns -inf into exactly 0.
constexpr float kMinLogWeight = -87.0f;

using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

ConstArrayMap AsArray(std::span<const float> s) {
  return ConstArrayMap(s.data(), static_cast<Eigen::Index>(s.size()));
}

// exp(s) for s <= 0 from plain IEEE float operations (Cody-Waite reduction + the Cephes expf
// polynomial, relative error < 1e-7): unlike libm's expf it gives the same bits on every
// platform, so a seeded request samples the same tokens everywhere, and the loop over a row
// vectorizes. 0 below kMinLogWeight.
inline float PortableExp(float s) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  const float t = s < kMinLogWeight ? kMinLogWeight : s;      // keeps 2^n a normal float
  const int32_t n = static_cast<int32_t>(t * kLog2e - 0.5f);  // round(t * log2 e) as t <= 0
  const float nf = static_cast<float>(n);
  const float r = (t - nf * kLn2Hi) - nf * kLn2Lo;  // |r| <= ~0.35
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float two_n = std::bit_cast<float>((n + 127) << 23);
  return s < kMinLogWeight ? 0.0f : p * two_n;
}

std::vector<float>& WeightScratch() {
  thread_local std::vector<float> weights;
  return weights;
}

bool InVocab(int32_t token, size_t vocab) {
  return token >= 0 && static_cast<size_t>(token) < vocab;
}

// Requires a sanitized row (Eigen's max is unspecified with NaN).
float MaxLogit(std::span<const float> logits) {
  return logits.empty() ? kNegInf : AsArray(logits).maxCoeff();
}

// top-p buckets: log-weight slices of width 1/8 (monotone in the logit), the last one catching
// everything below.
constexpr float kBucketsPerUnit = 8.0f;
constexpr int kBuckets = static_cast<int>(-kMinLogWeight * kBucketsPerUnit) + 2;
using BucketMass = std::array<double, kBuckets>;

// Log-weight and weight of a logit relative to the row's max, after temperature. +inf logits (a
// broken model) take the whole mass between them: the limit of the softmax.
struct Scale {
  float max_logit;
  float inv_temperature;

  float LogWeight(float l) const {
    if (max_logit == kPosInf) return l == kPosInf ? 0.0f : kNegInf;
    return (l - max_logit) * inv_temperature;
  }
  float Weight(float l) const { return PortableExp(LogWeight(l)); }
  int Bucket(float l) const {
    return static_cast<int>(std::min(-LogWeight(l) * kBucketsPerUnit, kBuckets - 1.0f));
  }
};

// Sum of a long float row: vectorized float sums over blocks, accumulated in double (a
// sequential double sum is a long dependency chain, one float sum loses precision).
constexpr size_t kSumBlock = 4096;
double BlockSum(std::span<const float> w) { return AsArray(w).sum(); }
double BlockedSum(std::span<const float> w) {
  double total = 0.0;
  for (size_t b = 0; b < w.size(); b += kSumBlock) {
    total += BlockSum(w.subspan(b, std::min(kSumBlock, w.size() - b)));
  }
  return total;
}

// Scale::Weight over the whole row into *weights and, when `buckets` is given, Scale::Bucket
// into it: straight-line loops the compiler vectorizes.
void DenseWeights(std::span<const float> logits, const Scale& scale, std::vector<float>* weights,
                  std::vector<int32_t>* buckets = nullptr) {
  const size_t n = logits.size();
  weights->resize(n);
  if (buckets != nullptr) buckets->resize(n);
  if (scale.max_logit == kPosInf) {  // rare: no need to be fast
    for (size_t i = 0; i < n; ++i) {
      (*weights)[i] = scale.Weight(logits[i]);
      if (buckets != nullptr) (*buckets)[i] = scale.Bucket(logits[i]);
    }
    return;
  }
  float* __restrict w = weights->data();
  const float* __restrict l = logits.data();
  const float max_logit = scale.max_logit;
  const float inv_t = scale.inv_temperature;
  for (size_t i = 0; i < n; ++i) w[i] = PortableExp((l[i] - max_logit) * inv_t);
  if (buckets == nullptr) return;
  int32_t* __restrict b = buckets->data();
  for (size_t i = 0; i < n; ++i) {
    // Same float operations as Scale::Bucket, so both agree bit for bit.
    const float s = (l[i] - max_logit) * inv_t;
    b[i] = static_cast<int32_t>(std::min(-s * kBucketsPerUnit, kBuckets - 1.0f));
  }
}

// Descending logit, ascending id: the order of top-p's prefix and of the returned top logprobs.
bool Before(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// top-p without sorting everything: only the cut needs an order. `mass` holds the weight per
// bucket; the cut lies in the first bucket whose end reaches top_p of the total. Every token of
// an earlier bucket is kept, every token of a later one dropped, and only the cut's bucket is
// sorted (TrimAtTopPCut).
struct TopPCut {
  int bucket;
  double ahead;   // mass of the buckets before `bucket`
  double target;  // top_p * total mass
};

TopPCut FindTopPCut(const BucketMass& mass, float top_p) {
  double total = 0.0;
  for (double m : mass) total += m;
  TopPCut cut{0, 0.0, static_cast<double>(top_p) * total};
  int last = 0;
  for (int b = 0; b < kBuckets; ++b) {
    if (mass[b] == 0.0) continue;
    if (cut.ahead + mass[b] >= cut.target) {
      cut.bucket = b;
      return cut;
    }
    cut.ahead += mass[b];
    last = b;
  }
  // Only through rounding: cut inside the last non-empty bucket.
  cut.bucket = last;
  cut.ahead -= mass[last];
  return cut;
}

bool ById(const Candidate& a, const Candidate& b) { return a.id < b.id; }

// Keeps the candidates of buckets before the cut, plus those of the cut's bucket, in Before
// order, while the mass ahead of them is below the target. `c` arrives in id order and leaves in
// id order (the order draws walk, as on the device): the partitions are stable, and the kept part
// of the cut's bucket is merged back.
template <typename BucketOf>
void TrimAtTopPCut(const TopPCut& cut, BucketOf bucket_of, std::vector<Candidate>* c) {
  auto at_cut = std::stable_partition(
      c->begin(), c->end(), [&](const Candidate& x) { return bucket_of(x) < cut.bucket; });
  auto after_cut = std::stable_partition(
      at_cut, c->end(), [&](const Candidate& x) { return bucket_of(x) == cut.bucket; });
  std::sort(at_cut, after_cut, Before);
  double ahead = cut.ahead;
  auto kept_end = at_cut;
  for (; kept_end != after_cut && ahead < cut.target; ++kept_end) ahead += kept_end->weight;
  std::sort(at_cut, kept_end, ById);
  std::inplace_merge(c->begin(), at_cut, kept_end, ById);
  c->erase(kept_end, c->end());
}

// Draws an index of `weights` in proportion to them. Walks block sums first, so only one block
// is walked element by element.
int32_t WalkWeights(std::span<const float> weights, double uniform) {
  const size_t num_blocks = (weights.size() + kSumBlock - 1) / kSumBlock;
  thread_local std::vector<double> block_sums;
  block_sums.resize(num_blocks);
  double total = 0.0;
  for (size_t b = 0; b < num_blocks; ++b) {
    const size_t begin = b * kSumBlock;
    block_sums[b] = BlockSum(weights.subspan(begin, std::min(kSumBlock, weights.size() - begin)));
    total += block_sums[b];
  }
  const double target = uniform * total;
  double cum = 0.0;
  for (size_t b = 0; b < num_blocks; ++b) {
    if (cum + block_sums[b] <= target) {
      cum += block_sums[b];
      continue;
    }
    const size_t end = std::min(weights.size(), (b + 1) * kSumBlock);
    for (size_t i = b * kSumBlock; i < end; ++i) {
      cum += weights[i];
      if (cum > target) return static_cast<int32_t>(i);
    }
    // Rounding (the block's vectorized sum came out a hair larger): go on to the next block.
  }
  for (size_t i = weights.size(); i-- > 0;) {  // only reachable through rounding
    if (weights[i] > 0.0f) return static_cast<int32_t>(i);
  }
  return 0;
}

}  // namespace

void SanitizeLogits(std::span<float> logits) {
  for (float& l : logits) l = std::isnan(l) ? kNegInf : l;  // branch-free: vectorizes
}

std::vector<PenaltyToken> CollectPenaltyTokens(std::span<const int32_t> prompt,
                                               std::span<const int32_t> output,
                                               bool include_prompt) {
  PenaltyTokenList list;
  if (include_prompt) {
    for (int32_t t : prompt) list.Add(t, 0);
  }
  for (int32_t t : output) list.Add(t, 1);
  return list.tokens();
}

void ApplyPenalties(std::span<float> logits, std::span<const PenaltyToken> tokens, float repetition,
                    float frequency, float presence) {
  const bool freq_pres = frequency != 0.0f || presence != 0.0f;
  for (const PenaltyToken& e : tokens) {
    if (!InVocab(e.token, logits.size())) continue;
    float& l = logits[e.token];
    if (repetition != 1.0f) l = l > 0.0f ? l / repetition : l * repetition;
    if (e.output_count > 0 && freq_pres) {
      l -= frequency * static_cast<float>(e.output_count);
      l -= presence;
    }
  }
}

int32_t GreedyArgmax(std::span<const float> logits) {
  // Vectorized max, then the first index holding it (ties -> lowest id, as torch.argmax).
  const float max_logit = MaxLogit(logits);
  const auto it = std::find(logits.begin(), logits.end(), max_logit);
  return it == logits.end() ? 0 : static_cast<int32_t>(it - logits.begin());
}

float KthLargest(std::span<const float> logits, int64_t k) {
  if (k <= 1024) {
    // Small k (the common case): one pass against a min-heap of the k best, no vocab copy.
    thread_local std::vector<float> heap;
    heap.assign(logits.begin(), logits.begin() + k);
    std::make_heap(heap.begin(), heap.end(), std::greater<>());
    for (size_t i = k; i < logits.size(); ++i) {
      if (logits[i] > heap.front()) {
        std::pop_heap(heap.begin(), heap.end(), std::greater<>());
        heap.back() = logits[i];
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
      }
    }
    return heap.front();
  }
  thread_local std::vector<float> copy;
  copy.assign(logits.begin(), logits.end());
  std::nth_element(copy.begin(), copy.begin() + (k - 1), copy.end(), std::greater<>());
  return copy[k - 1];
}

void SelectCandidates(std::span<const float> logits, const CandidateFilter& filter,
                      std::vector<Candidate>* out) {
  out->clear();
  const int64_t vocab = static_cast<int64_t>(logits.size());
  const float max_logit = MaxLogit(logits);
  if (max_logit == kNegInf) return;
  const Scale scale{max_logit, 1.0f / filter.temperature};
  const bool use_top_p = filter.top_p < 1.0f;
  // min-p in log space: p >= min_p * p_max <=> log-weight >= log(min_p); exact for min_p = 1.
  // Like the top-k and top-p cuts it only ever removes a tail of the sorted order, so it can be
  // applied before or after top-p without changing the mass ahead of any kept token.
  const float log_min_p = filter.min_p > 0.0f ? std::log(filter.min_p) : kNegInf;
  auto passes_min_p = [&](float l) { return scale.LogWeight(l) >= log_min_p; };
  BucketMass mass{};

  if (filter.top_k > 0 && filter.top_k < vocab) {
    // top-k: a threshold on the logit, ties at the boundary kept (as vLLM). Few survivors, so
    // only they get an exp. top-p then works on the top-k distribution.
    const float kth = KthLargest(logits, filter.top_k);
    for (int64_t i = 0; i < vocab; ++i) {
      if (logits[i] < kth) continue;
      const float w = scale.Weight(logits[i]);
      if (w == 0.0f) continue;
      out->push_back(Candidate{logits[i], static_cast<int32_t>(i), w});
      if (use_top_p) mass[scale.Bucket(logits[i])] += w;
    }
    if (use_top_p) {
      TrimAtTopPCut(
          FindTopPCut(mass, filter.top_p),
          [&](const Candidate& c) { return scale.Bucket(c.logit); }, out);
    }
    if (filter.min_p > 0.0f) {
      std::erase_if(*out, [&](const Candidate& c) { return !passes_min_p(c.logit); });
    }
    return;
  }

  if (!use_top_p) {
    // Only min-p (or nothing): a plain threshold, exp only for the survivors.
    for (int64_t i = 0; i < vocab; ++i) {
      if (!passes_min_p(logits[i])) continue;
      const float w = scale.Weight(logits[i]);
      if (w > 0.0f) out->push_back(Candidate{logits[i], static_cast<int32_t>(i), w});
    }
    return;
  }

  // top-p over the whole vocab: every weight counts toward the total, but only the tokens up
  // to the cut's bucket become candidates, and only the cut's bucket is sorted.
  std::vector<float>& weights = WeightScratch();
  thread_local std::vector<int32_t> buckets;
  DenseWeights(logits, scale, &weights, &buckets);
  // Four interleaved histograms: consecutive tokens often share a bucket, and one array would
  // chain every add through memory.
  thread_local std::array<BucketMass, 4> partial;
  for (BucketMass& m : partial) m.fill(0.0);
  for (int64_t i = 0; i < vocab; ++i) partial[i & 3][buckets[i]] += weights[i];
  for (int b = 0; b < kBuckets; ++b) {
    mass[b] = (partial[0][b] + partial[1][b]) + (partial[2][b] + partial[3][b]);
  }
  const TopPCut cut = FindTopPCut(mass, filter.top_p);
  for (int64_t i = 0; i < vocab; ++i) {
    if (buckets[i] > cut.bucket || weights[i] == 0.0f) continue;
    if (filter.min_p > 0.0f && !passes_min_p(logits[i])) continue;
    out->push_back(Candidate{logits[i], static_cast<int32_t>(i), weights[i]});
  }
  TrimAtTopPCut(
      cut, [&](const Candidate& c) { return buckets[c.id]; }, out);
}

int32_t SampleCandidate(std::span<const Candidate> candidates, double uniform) {
  if (candidates.empty()) return 0;
  double total = 0.0;
  for (const Candidate& c : candidates) total += c.weight;
  const double target = uniform * total;
  double cum = 0.0;
  for (const Candidate& c : candidates) {
    cum += c.weight;
    if (cum > target) return c.id;
  }
  return candidates.back().id;  // unreachable up to rounding: the last sum equals `total`
}

int32_t SampleToken(std::span<const float> logits, const CandidateFilter& filter, double uniform) {
  const bool filtered = (filter.top_k > 0 && filter.top_k < static_cast<int64_t>(logits.size())) ||
                        filter.top_p < 1.0f || filter.min_p > 0.0f;
  if (filtered) {
    thread_local std::vector<Candidate> candidates;
    SelectCandidates(logits, filter, &candidates);
    return SampleCandidate(candidates, uniform);  // empty (all -inf) -> 0
  }
  // Plain temperature sampling keeps every token: draw straight from the dense weights.
  const float max_logit = MaxLogit(logits);
  if (max_logit == kNegInf) return 0;
  std::vector<float>& weights = WeightScratch();
  DenseWeights(logits, Scale{max_logit, 1.0f / filter.temperature}, &weights);
  return WalkWeights(weights, uniform);
}

void ComputeLogprobs(std::span<const float> raw, int32_t chosen, int num_top,
                     SampleResult* result) {
  result->top.clear();
  const float max_logit = MaxLogit(raw);
  // log of the softmax denominator relative to the max (with +inf logits: of their count).
  double log_sum = 0.0;
  if (max_logit != kNegInf) {
    std::vector<float>& weights = WeightScratch();
    DenseWeights(raw, Scale{max_logit, 1.0f}, &weights);
    log_sum = std::log(BlockedSum(weights));
  }
  auto logprob = [&](float l) -> float {
    if (max_logit == kNegInf) return kNegInf;  // no distribution at all
    if (max_logit == kPosInf) return l == kPosInf ? static_cast<float>(-log_sum) : kNegInf;
    // In double: l - max can overflow float for huge logits of opposite signs.
    const double lp = static_cast<double>(l) - max_logit - log_sum;
    return lp < -std::numeric_limits<float>::max() ? kNegInf : static_cast<float>(lp);
  };
  result->logprob = InVocab(chosen, raw.size()) ? logprob(raw[chosen]) : kNegInf;

  // The top few by insertion into a short sorted list: one pass, no vocab-sized buffer. Ids
  // arrive ascending, so an equal logit never displaces an earlier entry.
  const size_t n = std::min(static_cast<size_t>(std::max(num_top, 0)), raw.size());
  if (n == 0) return;
  std::vector<Candidate> best;
  best.reserve(n + 1);
  for (size_t i = 0; i < raw.size(); ++i) {
    if (best.size() == n && !(raw[i] > best.back().logit)) continue;
    const Candidate c{raw[i], static_cast<int32_t>(i), 0.0f};
    best.insert(std::upper_bound(best.begin(), best.end(), c, Before), c);
    if (best.size() > n) best.pop_back();
  }
  result->top.reserve(n);
  for (const Candidate& c : best) result->top.push_back(TokenLogprob{c.id, logprob(c.logit)});
}

}  // namespace sals
