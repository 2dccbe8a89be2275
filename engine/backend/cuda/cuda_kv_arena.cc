#include "engine/backend/cuda/cuda_kv_arena.h"

#include <algorithm>
#include <random>
#include <utility>

#include "engine/backend/cuda/step_plan.h"
#include "engine/common/dtype.h"
#include "engine/kv/kv_format.h"

namespace sals::cuda {
namespace {

namespace kn = ::sals::kernels;

// Byte offsets of one layer's regions in the arena.
struct Offsets {
  size_t k = 0, v = 0, latent = 0, codes = 0, scale_zero = 0, exact_k = 0, exact_v = 0;
};

// The storage shape every sparse layer shares (pointers unset).
kn::SalsKvCache SalsShape(const ModelConfig& c, const KvPoolConfig& pool) {
  kn::SalsKvCache shape;
  const SalsStorage& s = *pool.format.sals;
  shape.num_kv_heads = c.num_kv_heads;
  shape.head_dim = c.head_dim;
  shape.block_size = pool.block_size;
  shape.rank = static_cast<int>(RoundUp(s.rank, 8));
  shape.basis_stride = shape.rank;
  shape.value_bits = s.values.bits;
  shape.value_group_size = s.values.group_size;
  shape.sink_tokens = s.sink_tokens;
  shape.recent_tokens = s.recent_tokens;
  return shape;
}

// Bases: the stored rank's leading columns of each sparse layer's U, fp16, zero padded to the
// padded rank; dense layers' slices stay zero.
std::vector<uint16_t> HostBases(const ModelConfig& c, const KvCacheFormat& format,
                                const SalsBasis& basis, int padded_rank) {
  const int64_t width = c.kv_width();
  const size_t per_layer = static_cast<size_t>(width) * padded_rank;
  std::vector<uint16_t> host(per_layer * c.num_layers, 0);
  for (int l = 0; l < c.num_layers; ++l) {
    if (format.IsDense(l)) continue;
    const std::vector<float>& u = basis.layers[l];
    for (int64_t i = 0; i < width; ++i) {
      for (int j = 0; j < format.sals->rank; ++j) {
        host[l * per_layer + i * padded_rank + j] = F32ToF16(u[i * basis.rank + j]);
      }
    }
  }
  return host;
}

}  // namespace

absl::StatusOr<KvArena> KvArena::Allocate(const ModelConfig& c, const KvPoolConfig& pool,
                                          const SalsBasis& basis) {
  const int64_t slots = static_cast<int64_t>(pool.num_blocks) * pool.block_size;
  const int64_t width = c.kv_width();
  const KvCacheFormat& format = pool.format;
  KvArena a;
  a.num_sparse_ = format.NumSparseLayers();
  a.layers_.assign(c.num_layers, LayerKv{});
  size_t at = 0;
  auto take = [&at](int64_t bytes) {
    const size_t offset = at;
    at = RoundUp(at + static_cast<size_t>(bytes), 256);
    return offset;
  };
  std::vector<Offsets> off(c.num_layers);
  const kn::SalsKvCache shape = a.num_sparse_ > 0 ? SalsShape(c, pool) : kn::SalsKvCache{};
  const int64_t code_bytes =
      shape.value_bits == 16 ? width * 2 : width * shape.value_bits / 8;  // bits 16: fp16 values
  const int64_t exact = static_cast<int64_t>(pool.max_sequences) * shape.exact_rows() * width;
  for (int l = 0; l < c.num_layers; ++l) {
    if (format.IsDense(l)) {
      off[l].k = take(slots * width * 2);
      off[l].v = take(slots * width * 2);
    } else {
      off[l].latent = take(slots * shape.rank * 2);
      off[l].codes = take(slots * code_bytes);
      off[l].scale_zero = take(slots * shape.groups() * 4);
      off[l].exact_k = take(exact * 2);
      off[l].exact_v = take(exact * 2);
    }
  }
  auto arena = kn::DeviceBuffer<uint8_t>::Allocate(std::max<size_t>(at, 256));
  if (!arena.ok()) return arena.status();
  a.arena_ = std::move(*arena);
  // Never-written slots read as zeros, not as whatever the allocator left.
  SALS_CUDA_RETURN_IF_ERROR(cudaMemset(a.arena_.get(), 0, a.arena_.bytes()));

  if (a.num_sparse_ > 0) {
    const std::vector<uint16_t> host = HostBases(c, format, basis, shape.rank);
    auto d_basis = kn::DeviceBuffer<__half>::Allocate(host.size());
    if (!d_basis.ok()) return d_basis.status();
    a.basis_ = std::move(*d_basis);
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpy(a.basis_.get(), host.data(),
                                         host.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
  }
  uint8_t* base = a.arena_.get();
  for (int l = 0; l < c.num_layers; ++l) {
    LayerKv& kv = a.layers_[l];
    kv.dense = format.IsDense(l);
    if (kv.dense) {
      kv.k = reinterpret_cast<__half*>(base + off[l].k);
      kv.v = reinterpret_cast<__half*>(base + off[l].v);
      continue;
    }
    kv.sals = shape;
    kv.sals.latent = reinterpret_cast<__half*>(base + off[l].latent);
    kv.sals.value_codes = base + off[l].codes;
    kv.sals.value_scale_zero = reinterpret_cast<__half2*>(base + off[l].scale_zero);
    kv.sals.exact_k = reinterpret_cast<__half*>(base + off[l].exact_k);
    kv.sals.exact_v = reinterpret_cast<__half*>(base + off[l].exact_v);
    kv.sals.basis = a.basis_.get() + static_cast<size_t>(l) * width * shape.rank;
    if (absl::Status s = kn::ValidateSalsKvCache(kv.sals); !s.ok()) return s;
  }
  return a;
}

int KvArena::first_sparse_layer() const {
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    if (!layers_[l].dense) return l;
  }
  return -1;
}

absl::Status KvArena::FillRandom(uint64_t seed, cudaStream_t stream) {
  // A random 32 MiB pattern of fp16 values, then doubling copies over the whole arena.
  const size_t total = arena_.size() / sizeof(uint16_t);
  std::vector<uint16_t> pattern(std::min<size_t>(total, size_t{16} << 20));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (uint16_t& h : pattern) h = F32ToF16(dist(rng));
  auto* base = reinterpret_cast<uint16_t*>(arena_.get());
  // On the stream, so that the copies below see the pattern.
  SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(base, pattern.data(), pattern.size() * sizeof(uint16_t),
                                            cudaMemcpyHostToDevice, stream));
  for (size_t filled = pattern.size(); filled < total;) {
    const size_t n = std::min(filled, total - filled);
    SALS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(base + filled, base, n * sizeof(uint16_t),
                                              cudaMemcpyDeviceToDevice, stream));
    filled += n;
  }
  // The pattern's host memory must outlive its copy.
  SALS_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

}  // namespace sals::cuda
