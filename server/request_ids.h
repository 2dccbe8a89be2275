// Request ids: the ones the server makes are random (128 bits from the kernel's CSPRNG), so no
// client can guess another's; the ones clients choose live in that client's namespace (its
// authenticated identity, else its connection), so two clients may use the same id and neither
// can reach the other's requests.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace sals {

// Longest request_id a client may send, in bytes.
inline constexpr size_t kMaxRequestIdBytes = 128;

// 32 lowercase hex digits from getrandom(2).
std::string NewRequestId();

// The engine's key for `id` in `client`'s namespace; distinct (client, id) pairs never collide.
std::string EngineRequestId(std::string_view client, std::string_view id);

}  // namespace sals
