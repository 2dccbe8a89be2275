// Stop-string detection over streamed text: text that could still turn into a stop string is held
// back, text from the stop string on is dropped (as vLLM and OpenAI do). Each stop string keeps a
// Knuth-Morris-Pratt state (the longest prefix of it that ends the text so far), so a byte of
// text costs O(1) amortized per stop string however long the strings and the held-back text are.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sals {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);

  struct Result {
    std::string emit;                    // safe to send now
    std::optional<std::string> matched;  // the stop string that ended the text, if one did
  };
  // Adds newly decoded (valid UTF-8) text. Of the stop strings that end inside it, the one that
  // starts first wins (at the same start the longer one). After a match, calls return nothing.
  Result Feed(std::string_view text);
  // The text still held back, at the end of a stream that did not stop on a string.
  std::string Flush();

 private:
  struct Stop {
    std::string text;
    std::vector<size_t> fail;  // KMP prefix function
    size_t state = 0;          // bytes of `text` matched by the end of the text so far
  };
  std::vector<Stop> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace sals
