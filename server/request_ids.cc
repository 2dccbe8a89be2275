#include "server/request_ids.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/common/absl_compat.h"

namespace sals {

std::string NewRequestId() {
  unsigned char bytes[16];
  size_t filled = 0;
  while (filled < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + filled, sizeof(bytes) - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::abort();  // the kernel's CSPRNG is gone: no safe id can be made
    }
    filled += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

std::string EngineRequestId(std::string_view client, std::string_view id) {
  // The client's length first: "ab" + "c" and "a" + "bc" stay apart.
  return absl::StrCat(client.size(), ":", ToAbsl(client), "/", ToAbsl(id));
}

}  // namespace sals
