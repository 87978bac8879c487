// The expression half of the chat-template renderer (chat_template.h): Jinja expressions
// parsed and evaluated in one pass over nlohmann::json values. Private to src/serve.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace modula::serve::jinja {

using json = nlohmann::json;

// Jinja's Undefined (a missing variable, attribute or index): renders as "", is falsy.
extern const json kUndefined;

bool truthy(const json& v);
std::string to_text(const json& v);              // how {{ v }} prints it (Python's str for scalars)
[[noreturn]] void fail(const std::string& msg);  // std::invalid_argument "[chat template] msg"

// Variables, innermost scope last; each scope an object.
struct Env {
  std::vector<json> scopes;
  const json& lookup(const std::string& name) const;
};

// Parses the whole of `src` as one expression and evaluates it in `env`; live = false only
// checks the syntax (a branch not taken: no raise_exception, no errors from values).
json eval(const std::string& src, Env& env, bool live);

}  // namespace modula::serve::jinja
