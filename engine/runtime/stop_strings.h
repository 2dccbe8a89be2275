// Stop-string detection over streamed text: text that could still turn into a stop string is held
// back, text from the stop string on is dropped (as vLLM and OpenAI do).
#pragma once

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
  // Adds newly decoded (valid UTF-8) text. After a match, further calls return nothing.
  Result Feed(std::string_view text);
  // The text still held back, at the end of a stream that did not stop on a string.
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace sals
