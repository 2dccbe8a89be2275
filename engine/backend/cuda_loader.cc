#include "engine/backend/cuda_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sals {
namespace {

using AbiVersionFn = int (*)();
using CreateFn = CudaBackend* (*)(const ModelConfig*, const WeightSource*, const KvPoolConfig*,
                                  const CudaBackendOptions*, absl::Status*);

// Where to look, in order (see the header).
std::vector<std::string> Candidates(const std::string& library_path) {
  if (!library_path.empty()) return {library_path};
  if (const char* env = std::getenv("SALS_CUDA_BACKEND_LIBRARY"); env != nullptr && *env != '\0') {
    return {env};
  }
  std::vector<std::string> out;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const std::filesystem::path beside = exe.parent_path() / kCudaBackendLibrary;
    if (std::filesystem::exists(beside, ec)) out.push_back(beside.string());
  }
  out.push_back(kCudaBackendLibrary);  // a bare name: the dynamic linker's own search
  return out;
}

// The library's handle, opened once per process and never closed: backends it created run its
// code.
absl::StatusOr<void*> OpenLibrary(const std::string& library_path) {
  std::vector<std::string> failures;
  for (const std::string& candidate : Candidates(library_path)) {
    void* handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) return handle;
    const char* error = dlerror();
    failures.push_back(absl::StrCat(candidate, ": ", error != nullptr ? error : "unknown error"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("CUDA backend unavailable: cannot load ", kCudaBackendLibrary, " (tried ",
                   absl::StrJoin(failures, "; "),
                   "); put it next to the executable or on LD_LIBRARY_PATH, with CUDA's "
                   "libraries (libcudart, libcublas) on LD_LIBRARY_PATH"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> LoadCudaBackend(const ModelConfig& config,
                                                             const WeightSource& weights,
                                                             const KvPoolConfig& pool,
                                                             const CudaBackendOptions& options,
                                                             const std::string& library_path) {
  absl::StatusOr<void*> handle = OpenLibrary(library_path);
  if (!handle.ok()) return handle.status();
  auto version = reinterpret_cast<AbiVersionFn>(dlsym(*handle, "SalsCudaBackendAbiVersion"));
  auto create = reinterpret_cast<CreateFn>(dlsym(*handle, "SalsCreateCudaBackend"));
  if (version == nullptr || create == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(kCudaBackendLibrary, " lacks the backend's entry points"));
  }
  if (version() != kCudaBackendAbiVersion) {
    return absl::FailedPreconditionError(absl::StrCat(kCudaBackendLibrary, " has ABI version ",
                                                      version(), ", this program expects ",
                                                      kCudaBackendAbiVersion, ": rebuild both"));
  }
  absl::Status status;
  std::unique_ptr<CudaBackend> backend(create(&config, &weights, &pool, &options, &status));
  if (backend != nullptr) return backend;
  return status.ok() ? absl::InternalError("the CUDA backend returned neither backend nor error")
                     : status;
}

}  // namespace sals
