// JSON text from files and request bodies, parsed with bounded nesting. nlohmann's parser is
// iterative, but copying, comparing and dumping a value recurse once per level: a config.json
// nested 40,000 deep parsed fine and then overflowed the stack when it was copied. Deeper parts
// are dropped while parsing (memory stays bounded) and the text refused.
//
//   try { j = parse_json(in); } catch (const JsonTextError& e) { throw ...(path + ": invalid JSON: " + e.what()); }
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>

namespace modula {

// Real files nest a handful of levels (tokenizer.json: ~6); YAML has the same limit.
constexpr int kJsonMaxDepth = 256;

// What is wrong with the text (nlohmann's message, or the nesting); the caller names the source.
struct JsonTextError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Parses `input` (a string, a stream, or an iterator pair's first element), nesting at most
// max_depth levels; JsonTextError on invalid JSON, a number beyond double, or deeper nesting.
template <typename Input>
nlohmann::json parse_json(Input&& input, int max_depth = kJsonMaxDepth) {
  using json = nlohmann::json;
  bool too_deep = false;
  auto limit = [&too_deep, max_depth](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) && depth >= max_depth)
      too_deep = true;
    return !too_deep;
  };
  json j;
  try {
    j = json::parse(std::forward<Input>(input), limit);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for 1e999
    throw JsonTextError(e.what());
  }
  if (too_deep) throw JsonTextError("nested deeper than " + std::to_string(max_depth) + " levels");
  return j;
}

}  // namespace modula
