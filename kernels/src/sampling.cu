// On-device sampling (sampling.h). One block per sampled row; the row (at most 8 MB) stays in L2
// across the passes. Passes whose result does not depend on order (maxima, sums, the radix
// histograms) walk the row with a block stride; the passes that need id order (ties at a cut, the
// draw) walk it in tiles of kThreads x kItems with a block scan.
//
// A row: max -> greedy argmax, or: top-k threshold (radix select over the logits' order-preserving
// keys, counts) -> top-p cut (radix select again, weighted by the fixed-point masses of the top-k
// survivors, then the ties at the cut value in id order) -> min-p -> one draw over the survivors in
// id order. Logprobs come from the raw logits before the penalties are applied.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "device_utils.cuh"
#include "sals/kernels/sampling.h"

namespace sals::kernels {
namespace {

using internal::BlockMax;
using internal::LastLaunchStatus;

constexpr int kThreads = 1024;
constexpr int kItems = 4;
constexpr int kTile = kThreads * kItems;
constexpr float kMinLogWeight = -87.0f;  // as logits_processors.cc
constexpr double kFixedOne = 0x1p42;     // weight 1 (the max) in fixed point

struct RowStats {
  float max_raw;
  double log_sum;  // log of the softmax denominator relative to the max
};

__device__ __forceinline__ float Sanitized(float l) { return isnan(l) ? -INFINITY : l; }

// logits_processors.cc's PortableExp, operation for operation: the explicit _rn intrinsics keep
// nvcc from contracting into FMAs (the host side is compiled with -ffp-contract=off).
__device__ __forceinline__ float PortableExp(float s) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  const float t = s < kMinLogWeight ? kMinLogWeight : s;
  const int32_t n = __float2int_rz(__fsub_rn(__fmul_rn(t, kLog2e), 0.5f));
  const float nf = static_cast<float>(n);
  const float r = __fsub_rn(__fsub_rn(t, __fmul_rn(nf, kLn2Hi)), __fmul_rn(nf, kLn2Lo));
  float p = 1.9875691500e-4f;
  p = __fadd_rn(__fmul_rn(p, r), 1.3981999507e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 8.3334519073e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 4.1665795894e-2f);
  p = __fadd_rn(__fmul_rn(p, r), 1.6666665459e-1f);
  p = __fadd_rn(__fmul_rn(p, r), 5.0000001201e-1f);
  p = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(p, r), r), r), 1.0f);
  const float two_n = __int_as_float((n + 127) << 23);
  return s < kMinLogWeight ? 0.0f : __fmul_rn(p, two_n);
}

// The host's Scale: log-weight and weight relative to the row's max after temperature; +inf
// logits share the whole mass.
struct Scale {
  float max_logit;
  float inv_temperature;

  __device__ float LogWeight(float l) const {
    if (max_logit == INFINITY) return l == INFINITY ? 0.0f : -INFINITY;
    return __fmul_rn(__fsub_rn(l, max_logit), inv_temperature);
  }
  __device__ float Weight(float l) const { return PortableExp(LogWeight(l)); }
};

__device__ __forceinline__ uint64_t Fixed(float weight) {
  return static_cast<uint64_t>(static_cast<double>(weight) * kFixedOne);
}

// An unsigned key that orders like the float (-0 and +0 share one); NaN never reaches it.
__device__ __forceinline__ uint32_t Key(float l) {
  const uint32_t b = __float_as_uint(l == 0.0f ? 0.0f : l);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float FromKey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

template <typename T>
__device__ T BlockSum(T x) {
  using Reduce = cub::BlockReduce<T, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ T result;
  __syncthreads();  // tmp and result may still be read by a previous call
  const T total = Reduce(tmp).Sum(x);
  if (threadIdx.x == 0) result = total;
  __syncthreads();
  return result;
}

__device__ int BlockMinInt(int x) {
  __shared__ int partial[kThreads / 32];
  __shared__ int result;
  for (int off = 16; off > 0; off /= 2) x = min(x, __shfl_xor_sync(0xffffffffu, x, off));
  __syncthreads();  // partial and result may still be read by a previous call
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = x;
  __syncthreads();
  if (threadIdx.x < 32) {
    x = partial[threadIdx.x];
    for (int off = 16; off > 0; off /= 2) x = min(x, __shfl_xor_sync(0xffffffffu, x, off));
    if (threadIdx.x == 0) result = x;
  }
  __syncthreads();
  return result;
}

__device__ float RowMax(const float* row, int vocab) {
  float m = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += kThreads) m = fmaxf(m, Sanitized(row[i]));
  return BlockMax(m);
}

// The first index holding `value` (vocab if none).
__device__ int FirstIndexOf(const float* row, int vocab, float value) {
  int first = INT_MAX;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    if (Sanitized(row[i]) == value) {
      first = i;
      break;
    }
  }
  first = BlockMinInt(first);
  return first == INT_MAX ? vocab : first;
}

// Log-weight buckets of 1/16 nat for the top-p cut (the last one catches everything below -127
// nats, and -inf); monotone: a larger logit never lands in a later bucket.
constexpr int kBuckets = 2048;
__device__ __forceinline__ uint32_t Bucket(float log_weight) {
  return static_cast<uint32_t>(fminf(-log_weight * 16.0f, kBuckets - 1.0f));
}

// hist[bin] += m for each lane whose bin is not `none`, with one atomic per distinct bin in the
// warp: lanes of equal bins add first (the leading radix passes put most of a row in one or two
// bins, where an atomic per element would serialize). Every lane of the warp must call it; m is
// at most 2^42, so two 21-bit halves sum over 32 lanes without overflow.
__device__ __forceinline__ void WarpAggregatedAdd(unsigned long long* hist, uint32_t bin,
                                                  uint32_t none, uint64_t m) {
  // Most warps of the later radix passes hold no element of the prefix searched.
  if (__ballot_sync(0xffffffffu, bin != none) == 0) return;
  const unsigned peers = __match_any_sync(0xffffffffu, bin);
  const uint32_t lo = __reduce_add_sync(peers, static_cast<uint32_t>(m & 0x1fffffu));
  const uint32_t hi = __reduce_add_sync(peers, static_cast<uint32_t>(m >> 21));
  if (bin != none && (threadIdx.x % 32) == static_cast<unsigned>(__ffs(peers) - 1)) {
    atomicAdd(&hist[bin], (static_cast<unsigned long long>(hi) << 21) + lo);
  }
}

// Walking keys from the largest down, the key K at which the cumulative mass of {key >= K}
// first reaches `need` (>= 1, at most the total mass); *ahead gets the mass of {key > K}.
// mass(i, l) is an element's mass (0: it takes no part). Four radix passes of 8 bits.
template <typename Mass>
__device__ uint32_t RadixFindKey(const float* row, int vocab, uint64_t need, Mass mass,
                                 uint64_t* ahead) {
  __shared__ unsigned long long hist[256];
  __shared__ uint32_t s_digit;
  __shared__ unsigned long long s_excl;
  uint32_t prefix = 0, mask = 0;
  *ahead = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    __syncthreads();  // the previous pass's readers are done with hist and s_*
    for (int d = threadIdx.x; d < 256; d += kThreads) hist[d] = 0;
    __syncthreads();
    // Warp-aggregated: lanes with the same digit add their masses first (the leading passes put
    // most of a row in one or two bins, where one atomic per element would serialize).
    for (int base = 0; base < vocab; base += kThreads) {
      const int i = base + static_cast<int>(threadIdx.x);
      uint32_t digit = 256;  // none
      uint64_t m = 0;
      if (i < vocab) {
        const float l = Sanitized(row[i]);
        const uint32_t k = Key(l);
        if ((k & mask) == prefix) {
          m = mass(i, l);
          if (m != 0) digit = (k >> shift) & 255u;
        }
      }
      WarpAggregatedAdd(hist, digit, 256, m);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane j holds digits 255 - 8j down to 248 - 8j; a scan over lanes finds the one where
      // the cumulative mass reaches `need`, and that lane finds the digit.
      const int lane = threadIdx.x;
      uint64_t own = 0;
      for (int q = 0; q < 8; ++q) own += hist[255 - 8 * lane - q];
      uint64_t incl = own;
      for (int off = 1; off < 32; off *= 2) {
        const uint64_t v = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += v;
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, incl >= need);
      const int found = ballot != 0 ? __ffs(ballot) - 1 : 31;  // 31: only through a caller bug
      if (lane == found) {
        uint64_t cum = incl - own;
        int digit = 248 - 8 * lane;
        for (int q = 0; q < 8; ++q) {
          const int d = 255 - 8 * lane - q;
          if (cum + hist[d] >= need || q == 7) {
            digit = d;
            break;
          }
          cum += hist[d];
        }
        s_digit = static_cast<uint32_t>(digit);
        s_excl = cum;
      }
    }
    __syncthreads();
    prefix |= s_digit << shift;
    mask |= 0xffu << shift;
    need -= s_excl;
    *ahead += s_excl;
  }
  return prefix;
}

// Calls on_match(rank, i) for the first `limit` indices i (in id order) with match(i, l), rank
// counting from 0. Every thread must call it with the same arguments.
template <typename Match, typename OnMatch>
__device__ void OrderedMatches(const float* row, int vocab, uint32_t limit, Match match,
                               OnMatch on_match) {
  using Scan = cub::BlockScan<uint32_t, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  uint32_t base = 0;
  for (int t0 = 0; t0 < vocab && base < limit; t0 += kTile) {
    const int i0 = t0 + static_cast<int>(threadIdx.x) * kItems;
    bool hit[kItems];
    uint32_t count = 0;
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const int i = i0 + q;
      hit[q] = i < vocab && match(i, Sanitized(row[i]));
      count += hit[q];
    }
    uint32_t excl, total;
    __syncthreads();  // tmp reuse
    Scan(tmp).ExclusiveSum(count, excl, total);
    uint32_t rank = base + excl;
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      if (hit[q]) {
        if (rank < limit) on_match(rank, i0 + q);
        ++rank;
      }
    }
    base += total;
  }
  __syncthreads();
}

// The index where the cumulative mass (id order) first exceeds `target` (< the total mass);
// -1 only if it never does.
template <typename Mass>
__device__ int DrawIndex(const float* row, int vocab, uint64_t target, Mass mass) {
  using Scan = cub::BlockScan<uint64_t, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int found;
  if (threadIdx.x == 0) found = -1;
  uint64_t base = 0;
  for (int t0 = 0; t0 < vocab; t0 += kTile) {
    const int i0 = t0 + static_cast<int>(threadIdx.x) * kItems;
    uint64_t m[kItems];
    uint64_t sum = 0;
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const int i = i0 + q;
      m[q] = i < vocab ? mass(i, Sanitized(row[i])) : 0;
      sum += m[q];
    }
    uint64_t excl, total;
    __syncthreads();
    Scan(tmp).ExclusiveSum(sum, excl, total);
    if (base + total > target) {
      uint64_t cum = base + excl;
#pragma unroll
      for (int q = 0; q < kItems; ++q) {
        if (cum <= target && target < cum + m[q]) found = i0 + q;
        cum += m[q];
      }
      break;
    }
    base += total;
  }
  __syncthreads();
  return found;
}

// The raw distribution's max and log-sum, and the top logprobs; before the penalties.
__global__ void __launch_bounds__(kThreads)
    LogprobStatsKernel(const float* logits, int vocab, const SampleRowParams* params,
                       RowStats* stats, SampleRowResult* results) {
  const SampleRowParams p = params[blockIdx.x];
  SampleRowResult& out = results[blockIdx.x];
  if (p.num_logprobs < 0) {
    if (threadIdx.x == 0) out.num_top = 0;
    return;
  }
  const float* row = logits + static_cast<int64_t>(p.row) * vocab;
  const float max_raw = RowMax(row, vocab);
  double sum = 0.0;
  if (max_raw != -INFINITY) {
    const Scale scale{max_raw, 1.0f};
    for (int i = threadIdx.x; i < vocab; i += kThreads) sum += scale.Weight(Sanitized(row[i]));
  }
  sum = BlockSum(sum);
  const double log_sum = max_raw != -INFINITY ? log(sum) : 0.0;
  if (threadIdx.x == 0) stats[blockIdx.x] = RowStats{max_raw, log_sum};

  const int n = min(p.num_logprobs, min(vocab, kMaxSampleLogprobs));
  __shared__ int top_ids[kMaxSampleLogprobs];
  __shared__ float top_vals[kMaxSampleLogprobs];
  __shared__ int num_above;
  if (n > 0) {
    // Everything above the n-th largest key, then its ties in id order.
    uint64_t above = 0;
    const uint32_t kth = RadixFindKey(
        row, vocab, n, [](int, float) { return uint64_t{1}; }, &above);
    if (threadIdx.x == 0) num_above = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const float l = Sanitized(row[i]);
      if (Key(l) > kth) {
        const int slot = atomicAdd(&num_above, 1);
        top_ids[slot] = i;
        top_vals[slot] = l;
      }
    }
    OrderedMatches(
        row, vocab, static_cast<uint32_t>(n - above), [kth](int, float l) { return Key(l) == kth; },
        [&](uint32_t rank, int i) {
          top_ids[above + rank] = i;
          top_vals[above + rank] = Sanitized(row[i]);
        });
  }
  if (threadIdx.x != 0) return;
  // Descending value, ascending id (n <= 20: insertion sort).
  for (int a = 1; a < n; ++a) {
    const int id = top_ids[a];
    const float v = top_vals[a];
    int b = a;
    for (; b > 0 && (top_vals[b - 1] < v || (top_vals[b - 1] == v && top_ids[b - 1] > id)); --b) {
      top_ids[b] = top_ids[b - 1];
      top_vals[b] = top_vals[b - 1];
    }
    top_ids[b] = id;
    top_vals[b] = v;
  }
  out.num_top = n;
  for (int a = 0; a < n; ++a) out.top_tokens[a] = top_ids[a];
  for (int a = 0; a < n; ++a) {
    // As ComputeLogprobs on the host (double arithmetic, -inf below float's range).
    const float l = top_vals[a];
    float lp;
    if (max_raw == -INFINITY) {
      lp = -INFINITY;
    } else if (max_raw == INFINITY) {
      lp = l == INFINITY ? static_cast<float>(-log_sum) : -INFINITY;
    } else {
      const double d = static_cast<double>(l) - max_raw - log_sum;
      lp = d < -3.402823466e38 ? -INFINITY : static_cast<float>(d);
    }
    out.top_logprobs[a] = lp;
  }
}

// Applies each row's penalties in place, saving the raw values (for the chosen token's logprob).
__global__ void PenaltyKernel(float* logits, int vocab, const SampleRowParams* params,
                              const PenaltyEntry* penalties, float* saved_raw) {
  const SampleRowParams p = params[blockIdx.x];
  float* row = logits + static_cast<int64_t>(p.row) * vocab;
  const bool freq_pres = p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
  for (int e = p.penalty_begin + threadIdx.x; e < p.penalty_begin + p.penalty_count;
       e += blockDim.x) {
    const PenaltyEntry entry = penalties[e];
    if (entry.token < 0 || entry.token >= vocab) continue;
    float l = Sanitized(row[entry.token]);
    saved_raw[e] = l;
    if (p.repetition_penalty != 1.0f) {
      l = l > 0.0f ? __fdiv_rn(l, p.repetition_penalty) : __fmul_rn(l, p.repetition_penalty);
    }
    if (entry.output_count > 0 && freq_pres) {
      l = __fsub_rn(l, __fmul_rn(p.frequency_penalty, static_cast<float>(entry.output_count)));
      l = __fsub_rn(l, p.presence_penalty);
    }
    row[entry.token] = l;
  }
}

__device__ int SampleFiltered(const float* row, int vocab, const SampleRowParams& p,
                              float max_logit) {
  const Scale scale{max_logit, __fdiv_rn(1.0f, p.temperature)};
  // top-k: a threshold key (ties at the boundary kept); 0 keeps everything.
  uint32_t kth_key = 0;
  if (p.top_k > 0 && p.top_k < vocab) {
    uint64_t unused;
    kth_key = RadixFindKey(
        row, vocab, static_cast<uint64_t>(p.top_k), [](int, float) { return uint64_t{1}; },
        &unused);
  }
  auto candidate_mass = [&](float l) -> uint64_t {
    if (Key(l) < kth_key) return 0;  // the cheap test first: most tokens stop here under top-k
    return Fixed(scale.Weight(l));
  };

  // top-p over the top-k distribution: keep a token iff the mass ahead of it in (descending
  // logit, ascending id) order is below top_p of the total, i.e. everything up to and including
  // the token at which the cumulative mass reaches it: (cut_key, cut_id). One pass (the only one
  // that takes every candidate's exp) sums the masses into log-weight buckets of 1/16 nat; the
  // cut's bucket is then searched exactly, by key, and its ties by id.
  const bool use_top_p = p.top_p < 1.0f;
  uint32_t cut_key = 0;
  int cut_id = vocab;
  if (use_top_p) {
    __shared__ unsigned long long bucket_mass[kBuckets];
    __shared__ int s_cut_bucket;
    __shared__ unsigned long long s_bucket_ahead;
    for (int b = threadIdx.x; b < kBuckets; b += kThreads) bucket_mass[b] = 0;
    __syncthreads();
    uint64_t total = 0;
    for (int base = 0; base < vocab; base += kThreads) {
      const int i = base + static_cast<int>(threadIdx.x);
      uint32_t bucket = kBuckets;  // none
      uint64_t m = 0;
      if (i < vocab) {
        const float l = Sanitized(row[i]);
        m = candidate_mass(l);
        if (m != 0) bucket = Bucket(scale.LogWeight(l));
      }
      total += m;
      WarpAggregatedAdd(bucket_mass, bucket, kBuckets, m);
    }
    total = BlockSum(total);  // its barrier also publishes bucket_mass
    // mass >= top_p * total <=> mass >= ceil(top_p * total) for integer masses.
    uint64_t target = static_cast<uint64_t>(ceil(static_cast<double>(p.top_p) * total));
    if (target == 0) target = 1;
    if (threadIdx.x < 32) {
      // Lane j sums buckets [j * 64, j * 64 + 64) (descending logits); a scan over lanes finds
      // the bucket where the cumulative mass reaches the target.
      constexpr int kPerLane = kBuckets / 32;
      const int lane = threadIdx.x;
      uint64_t own = 0;
      for (int q = 0; q < kPerLane; ++q) own += bucket_mass[lane * kPerLane + q];
      uint64_t incl = own;
      for (int off = 1; off < 32; off *= 2) {
        const uint64_t v = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += v;
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, incl >= target);
      const int found = ballot != 0 ? __ffs(ballot) - 1 : 31;
      if (lane == found) {
        uint64_t cum = incl - own;
        int bucket = lane * kPerLane + kPerLane - 1;
        for (int q = 0; q < kPerLane; ++q) {
          const int b = lane * kPerLane + q;
          if (cum + bucket_mass[b] >= target) {
            bucket = b;
            break;
          }
          cum += bucket_mass[b];
        }
        s_cut_bucket = bucket;
        s_bucket_ahead = cum;
      }
    }
    __syncthreads();
    const uint32_t cut_bucket = static_cast<uint32_t>(s_cut_bucket);
    const uint64_t bucket_ahead = s_bucket_ahead;
    // Within the cut's bucket: the key at which the mass reaches the target.
    uint64_t key_ahead = 0;
    cut_key = RadixFindKey(
        row, vocab, target - bucket_ahead,
        [&](int, float l) -> uint64_t {
          if (Key(l) < kth_key || Bucket(scale.LogWeight(l)) != cut_bucket) return 0;
          return Fixed(scale.Weight(l));
        },
        &key_ahead);
    // Ties at the cut value all weigh the same: the j-th of them (id order) reaches the target.
    const uint64_t tie_mass = Fixed(scale.Weight(FromKey(cut_key)));
    const uint64_t need = target - bucket_ahead - key_ahead;
    const uint32_t j =
        tie_mass != 0 ? static_cast<uint32_t>((need + tie_mass - 1) / tie_mass - 1) : 0;
    __shared__ int s_cut_id;
    if (threadIdx.x == 0) s_cut_id = vocab;
    __syncthreads();
    OrderedMatches(
        row, vocab, j + 1, [&](int, float l) { return Key(l) == cut_key && Key(l) >= kth_key; },
        [&](uint32_t rank, int i) {
          if (rank == j) s_cut_id = i;
        });
    cut_id = s_cut_id;
  }
  // The survivors' masses; cheap tests first, so that only survivors take an exp.
  auto kept_mass = [&](int i, float l) -> uint64_t {
    const uint32_t k = Key(l);
    if (k < kth_key) return 0;
    if (use_top_p && (k < cut_key || (k == cut_key && i > cut_id))) return 0;
    const float log_weight = scale.LogWeight(l);
    if (!(log_weight >= p.log_min_p)) return 0;
    return Fixed(PortableExp(log_weight));
  };
  uint64_t kept = 0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) kept += kept_mass(i, Sanitized(row[i]));
  kept = BlockSum(kept);
  if (kept == 0) return -1;
  uint64_t target = static_cast<uint64_t>(p.uniform * static_cast<double>(kept));
  if (target >= kept) target = kept - 1;
  return DrawIndex(row, vocab, target, kept_mass);
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* logits, int vocab, const SampleRowParams* params,
                 const PenaltyEntry* penalties, const float* saved_raw, const RowStats* stats,
                 SampleRowResult* results) {
  const SampleRowParams p = params[blockIdx.x];
  const float* row = logits + static_cast<int64_t>(p.row) * vocab;
  const float max_logit = RowMax(row, vocab);
  int token = 0;
  if (p.temperature == 0.0f || max_logit != -INFINITY) {
    const int drawn = p.temperature == 0.0f ? -1 : SampleFiltered(row, vocab, p, max_logit);
    token = drawn >= 0 ? drawn : FirstIndexOf(row, vocab, max_logit);
    if (token >= vocab) token = 0;
  }
  if (p.num_logprobs < 0) {
    if (threadIdx.x == 0) {
      results[blockIdx.x].token = token;
      results[blockIdx.x].logprob = 0.0f;
    }
    return;
  }
  // The chosen token's raw logit: saved by PenaltyKernel if it was penalized.
  __shared__ float s_raw;
  if (threadIdx.x == 0) s_raw = Sanitized(row[token]);
  __syncthreads();
  for (int e = p.penalty_begin + threadIdx.x; e < p.penalty_begin + p.penalty_count;
       e += kThreads) {
    if (penalties[e].token == token) s_raw = saved_raw[e];  // distinct tokens: one writer
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  const RowStats st = stats[blockIdx.x];
  float lp;
  if (st.max_raw == -INFINITY) {
    lp = -INFINITY;
  } else if (st.max_raw == INFINITY) {
    lp = s_raw == INFINITY ? static_cast<float>(-st.log_sum) : -INFINITY;
  } else {
    const double d = static_cast<double>(s_raw) - st.max_raw - st.log_sum;
    lp = d < -3.402823466e38 ? -INFINITY : static_cast<float>(d);
  }
  results[blockIdx.x].token = token;
  results[blockIdx.x].logprob = lp;
}

size_t Align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

size_t SampleRowsWorkspaceBytes(int64_t num_rows, int64_t num_penalties) {
  return Align256(static_cast<size_t>(std::max<int64_t>(num_rows, 1)) * sizeof(RowStats)) +
         Align256(static_cast<size_t>(std::max<int64_t>(num_penalties, 1)) * sizeof(float));
}

absl::Status SampleRows(float* logits, int vocab, const SampleRowParams* params, int64_t num_rows,
                        const PenaltyEntry* penalties, int64_t num_penalties, void* workspace,
                        size_t workspace_bytes, SampleRowResult* results, cudaStream_t stream) {
  if (vocab <= 0 || vocab > kMaxSampleVocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleRows: vocab must be in [1, ", kMaxSampleVocab, "], got ", vocab));
  }
  if (num_rows < 0 || num_rows > INT_MAX || num_penalties < 0 || num_penalties > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleRows: bad counts rows=", num_rows, " penalties=", num_penalties));
  }
  if (workspace_bytes < SampleRowsWorkspaceBytes(num_rows, num_penalties)) {
    return absl::InvalidArgumentError("SampleRows: workspace too small");
  }
  if (num_rows == 0) return absl::OkStatus();
  auto* stats = static_cast<RowStats*>(workspace);
  auto* saved_raw = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                             Align256(num_rows * sizeof(RowStats)));
  const auto grid = static_cast<unsigned>(num_rows);
  LogprobStatsKernel<<<grid, kThreads, 0, stream>>>(logits, vocab, params, stats, results);
  SALS_KERNELS_RETURN_IF_ERROR(LastLaunchStatus("LogprobStatsKernel"));
  if (num_penalties > 0) {
    PenaltyKernel<<<grid, 256, 0, stream>>>(logits, vocab, params, penalties, saved_raw);
    SALS_KERNELS_RETURN_IF_ERROR(LastLaunchStatus("PenaltyKernel"));
  }
  SampleKernel<<<grid, kThreads, 0, stream>>>(logits, vocab, params, penalties, saved_raw, stats,
                                              results);
  return LastLaunchStatus("SampleKernel");
}

}  // namespace sals::kernels
