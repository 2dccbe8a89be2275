#include "loadtest/arrivals.h"

#include <cmath>

namespace sals::loadtest {

// Gamma(shape k, scale 1 / (rate k)) has mean 1 / rate and variance 1 / (rate^2 k).
ArrivalProcess::ArrivalProcess(double rate_per_s, double burstiness, uint64_t seed)
    : unlimited_(std::isinf(rate_per_s)),
      rng_(seed),
      gap_(burstiness, unlimited_ ? 1.0 : 1.0 / (rate_per_s * burstiness)) {}

double ArrivalProcess::NextGapSeconds() { return unlimited_ ? 0.0 : gap_(rng_); }

}  // namespace sals::loadtest
