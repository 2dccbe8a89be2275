// StopStringMatcher against a plain search of the whole held-back text (the definition), on
// random streams cut into random chunks; and streams that would make a plain search quadratic.
#include "engine/runtime/stop_strings.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace sals {
namespace {

// The definition: search the held-back text plus the new text for every stop string.
class ReferenceMatcher {
 public:
  explicit ReferenceMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
    std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
  }
  StopStringMatcher::Result Feed(const std::string& text) {
    StopStringMatcher::Result r;
    if (stopped_) return r;
    pending_ += text;
    size_t best = std::string::npos;
    for (const std::string& stop : stops_) {
      const size_t at = pending_.find(stop);
      if (at == std::string::npos) continue;
      if (at < best || (at == best && stop.size() > r.matched->size())) {
        best = at;
        r.matched = stop;
      }
    }
    if (r.matched) {
      r.emit = pending_.substr(0, best);
      pending_.clear();
      stopped_ = true;
      return r;
    }
    size_t hold = 0;
    for (const std::string& stop : stops_) {
      for (size_t n = std::min(stop.size() - 1, pending_.size()); n > hold; --n) {
        if (pending_.compare(pending_.size() - n, n, stop, 0, n) == 0) {
          hold = n;
          break;
        }
      }
    }
    r.emit = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return r;
  }
  std::string Flush() { return std::exchange(pending_, {}); }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

std::string RandomText(std::mt19937& rng, size_t max_len, const std::string& alphabet) {
  std::string s(rng() % (max_len + 1), ' ');
  for (char& c : s) c = alphabet[rng() % alphabet.size()];
  return s;
}

TEST(StopStringMatcherTest, MatchesTheDefinitionOnRandomStreams) {
  std::mt19937 rng(7);
  int matched = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    // A small alphabet, so stop strings overlap, repeat and share prefixes often.
    const std::string alphabet = trial % 2 == 0 ? "ab" : "abc";
    std::vector<std::string> stops;
    for (int k = static_cast<int>(rng() % 4); k >= 0; --k)
      stops.push_back(RandomText(rng, 6, alphabet));
    StopStringMatcher got(stops);
    ReferenceMatcher want(stops);
    std::string sent_got, sent_want;
    std::optional<std::string> stop_got, stop_want;
    for (int chunk = 0; chunk < 12 && !stop_want; ++chunk) {
      const std::string text = RandomText(rng, 5, alphabet);
      StopStringMatcher::Result g = got.Feed(text);
      StopStringMatcher::Result w = want.Feed(text);
      ASSERT_EQ(g.emit, w.emit) << "trial " << trial << " chunk " << chunk;
      ASSERT_EQ(g.matched, w.matched) << "trial " << trial << " chunk " << chunk;
      sent_got += g.emit;
      sent_want += w.emit;
      stop_got = g.matched;
      stop_want = w.matched;
    }
    if (stop_want) {
      ++matched;
      EXPECT_TRUE(got.Feed("abc").emit.empty());  // nothing after a match
    } else {
      EXPECT_EQ(got.Flush(), want.Flush()) << "trial " << trial;
    }
  }
  EXPECT_GT(matched, 500);
  EXPECT_LT(matched, 2900);
}

TEST(StopStringMatcherTest, EarliestStartWinsThenTheLongerString) {
  StopStringMatcher m({"c", "abcd", "ab"});
  StopStringMatcher::Result r = m.Feed("xxabcd");
  EXPECT_EQ(r.emit, "xx");
  ASSERT_TRUE(r.matched.has_value());
  EXPECT_EQ(*r.matched, "abcd");  // starts where "ab" does, and is longer
  StopStringMatcher streamed({"c", "abcd"});
  EXPECT_EQ(streamed.Feed("xxab").emit, "xx");  // "ab" might become "abcd": held back
  r = streamed.Feed("cd");                      // both end in this text; "abcd" starts first
  EXPECT_EQ(r.emit, "");
  EXPECT_EQ(r.matched, "abcd");
  StopStringMatcher early({"c", "abcd"});
  early.Feed("xxab");
  r = early.Feed("c");  // "c" is whole, "abcd" not yet: the stream stops on "c"
  EXPECT_EQ(r.emit, "ab");
  EXPECT_EQ(r.matched, "c");
}

// Text that keeps almost matching a long stop string: everything is held back (it could still
// become the stop string) until the one byte that breaks it, then released at once. A plain search
// of the held-back text would do about 10^10 byte comparisons here.
TEST(StopStringMatcherTest, LongAlmostMatchingStreams) {
  const std::string stop = std::string(100000, 'a') + "b";
  StopStringMatcher m({stop, "zz"});
  size_t emitted = 0;
  for (int i = 0; i < 99999; ++i) emitted += m.Feed("a").emit.size();
  EXPECT_EQ(emitted, 0u);
  StopStringMatcher::Result r = m.Feed("c");
  EXPECT_EQ(r.emit.size(), 100000u);
  EXPECT_FALSE(r.matched.has_value());
  for (int i = 0; i < 100000; ++i) emitted += m.Feed("a").emit.size();
  r = m.Feed("b");
  ASSERT_TRUE(r.matched.has_value());
  EXPECT_EQ(r.matched->size(), stop.size());
  EXPECT_EQ(r.emit, "");
}

}  // namespace
}  // namespace sals
