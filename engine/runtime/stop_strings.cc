#include "engine/runtime/stop_strings.h"

#include <algorithm>

namespace sals {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (s.empty()) continue;
    Stop stop{std::move(s), {}, 0};
    // fail[i]: length of the longest proper prefix of text[0, i] that is also its suffix.
    stop.fail.assign(stop.text.size(), 0);
    for (size_t i = 1, k = 0; i < stop.text.size(); ++i) {
      while (k > 0 && stop.text[i] != stop.text[k]) k = stop.fail[k - 1];
      if (stop.text[i] == stop.text[k]) ++k;
      stop.fail[i] = k;
    }
    stops_.push_back(std::move(stop));
  }
}

StopStringMatcher::Result StopStringMatcher::Feed(std::string_view text) {
  Result r;
  if (stopped_) return r;
  const size_t base = pending_.size();  // text[j] lands at pending_[base + j]
  pending_ += text;
  size_t best_start = std::string::npos;
  const Stop* best = nullptr;
  for (Stop& stop : stops_) {
    const size_t n = stop.text.size();
    size_t state = stop.state;
    for (size_t j = 0; j < text.size(); ++j) {
      while (state > 0 && text[j] != stop.text[state]) state = stop.fail[state - 1];
      if (text[j] == stop.text[state]) ++state;
      if (state == n) {
        const size_t start = base + j + 1 - n;
        if (start < best_start || (start == best_start && n > best->text.size())) {
          best_start = start;
          best = &stop;
        }
        break;  // this string's first occurrence; later ones start later
      }
    }
    stop.state = state;
  }
  if (best != nullptr) {
    r.emit = pending_.substr(0, best_start);
    r.matched = best->text;
    pending_.clear();
    stopped_ = true;
    return r;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const Stop& stop : stops_) hold = std::max(hold, stop.state);
  r.emit = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return r;
}

std::string StopStringMatcher::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace sals
