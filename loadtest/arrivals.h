// When the load generator releases requests: gamma-distributed gaps between arrivals at a mean
// rate. Shape 1 (burstiness 1) is a Poisson process; a smaller shape gives burstier traffic with
// the same mean rate (coefficient of variation 1/sqrt(burstiness)), a larger one steadier traffic.
#pragma once

#include <cstdint>
#include <random>

namespace sals::loadtest {

class ArrivalProcess {
 public:
  // `rate_per_s` > 0 (infinity: every request at once); `burstiness` > 0. Seeded, so a run's
  // arrival times repeat exactly.
  ArrivalProcess(double rate_per_s, double burstiness, uint64_t seed);

  // Seconds from the previous arrival to the next one (0 when the rate is infinite).
  double NextGapSeconds();

 private:
  bool unlimited_;
  std::mt19937_64 rng_;
  std::gamma_distribution<double> gap_;
};

}  // namespace sals::loadtest
